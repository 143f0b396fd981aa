//! Auditor authentication: an audit token (`rollcall tokens create --tenant T --scope audit`)
//! names one tenant. Checked by the shared [`TokenVerifier`], as SCIM tokens are.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
pub use rollcall_store::tenant::TokenVerifier;

use crate::error::ApiError;
use crate::AuditState;

/// An auditor: a tenant, through one of its audit tokens.
#[derive(Debug, Clone)]
pub struct Auditor {
    /// The tenant.
    pub tenant: String,
}

impl FromRequestParts<AuditState> for Auditor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AuditState) -> Result<Self, ApiError> {
        let token = rollcall_http::bearer_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let info = state
            .tokens
            .verify(&state.store, token)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        tracing::Span::current().record("tenant", info.tenant.as_str());
        Ok(Auditor {
            tenant: info.tenant,
        })
    }
}
