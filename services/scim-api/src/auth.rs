//! Bearer-token authentication: each request's token names its tenant. Tokens are checked by
//! the shared [`TokenVerifier`] (verified ones cached for a few seconds, so a revocation takes
//! effect within that time, refused ones never cached).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
pub use rollcall_store::tenant::TokenVerifier;

use crate::error::ApiError;
use crate::AppState;

/// Who is calling: a tenant, through one of its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant.
    pub tenant: String,
    /// The token's public id (recorded as the actor of every event).
    pub token_id: String,
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = rollcall_http::bearer_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let info = state
            .tokens
            .verify(&state.store, token)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let principal = Principal {
            tenant: info.tenant,
            token_id: info.id,
        };
        tracing::Span::current().record("tenant", principal.tenant.as_str());
        if let Some(caller) = parts.extensions.get::<crate::request_log::Caller>() {
            caller.set(&principal);
        }
        Ok(principal)
    }
}
