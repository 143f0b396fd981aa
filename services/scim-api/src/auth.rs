//! Bearer-token authentication: each request's token names its tenant. Verified tokens are
//! cached for a few seconds (so a revocation takes effect within that time) to keep
//! PostgreSQL off the hot path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rollcall_store::tenant::Scope;
use rollcall_store::Store;
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use crate::error::ApiError;
use crate::AppState;

/// How long a verified token is trusted without asking PostgreSQL again.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);

/// Who is calling: a tenant, through one of its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant.
    pub tenant: String,
    /// The token's public id (recorded as the actor of every event).
    pub token_id: String,
}

/// A verification outcome (`None`: refused) and when it was made.
type Verified = (Option<Principal>, Instant);

/// Verified tokens by the SHA-256 of the presented token.
#[derive(Debug, Clone, Default)]
pub struct TokenCache {
    entries: Arc<RwLock<HashMap<[u8; 32], Verified>>>,
}

impl TokenCache {
    async fn verify(&self, store: &Store, presented: &str) -> Result<Option<Principal>, ApiError> {
        let key: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some((principal, at)) = self.entries.read().await.get(&key) {
            if at.elapsed() < TOKEN_CACHE_TTL {
                return Ok(principal.clone());
            }
        }
        let principal = store
            .verify_token(presented, Scope::Scim)
            .await?
            .map(|info| Principal {
                tenant: info.tenant,
                token_id: info.id,
            });
        let mut entries = self.entries.write().await;
        if entries.len() > 10_000 {
            entries.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
        }
        entries.insert(key, (principal.clone(), Instant::now()));
        Ok(principal)
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let (scheme, token) = header
            .trim()
            .split_once(' ')
            .ok_or(ApiError::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized);
        }
        let principal = state
            .tokens
            .verify(&state.store, token.trim())
            .await?
            .ok_or(ApiError::Unauthorized)?;
        tracing::Span::current().record("tenant", principal.tenant.as_str());
        if let Some(caller) = parts.extensions.get::<crate::request_log::Caller>() {
            caller.set(&principal);
        }
        Ok(principal)
    }
}
