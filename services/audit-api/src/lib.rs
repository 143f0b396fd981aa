//! The audit API: lifecycle history that auditors can query, reconstruct at any instant, export
//! and verify. Read-only, over the `audit_event` record the projector keeps (hash-chained per
//! tenant) and the SCIM request log; authenticated with auditor tokens, one tenant each.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod history;
pub mod http;
pub mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use ed25519_dalek::SigningKey;
use rollcall_eventlog::LoadError;
use rollcall_store::{Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::net::TcpListener;
use utoipa::OpenApi;

/// An audit failure.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// NATS failed.
    #[error(transparent)]
    Log(#[from] LoadError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored data could not be read.
    #[error("{0}")]
    Corrupt(String),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

/// Everything the audit API reads from the environment.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "audit")]
pub struct Config {
    /// Socket address the audit API binds to.
    #[arg(
        id = "audit_addr",
        long = "audit-addr",
        env = "ROLLCALL_AUDIT_ADDR",
        default_value = "127.0.0.1:8082"
    )]
    pub addr: SocketAddr,
    /// Ed25519 key (64 hex characters, from `rollcall audit keygen`) that signs checkpoints.
    #[arg(long = "audit-signing-key", env = "ROLLCALL_AUDIT_SIGNING_KEY", hide_env_values = true, value_parser = secret)]
    pub signing_key: Option<SecretString>,
}

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
            signing_key: None,
        }
    }
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AuditState {
    /// The read models and audit record.
    pub store: Store,
    /// The checkpoint signing key, if configured.
    pub signing_key: Option<Arc<SigningKey>>,
    auditors: http::AuditorCache,
}

impl AuditState {
    /// The state from configuration.
    pub fn new(config: &Config, store: Store) -> Result<Self, AuditError> {
        let signing_key = match &config.signing_key {
            Some(hex) => Some(Arc::new(
                checkpoint::signing_key(hex.expose_secret()).map_err(AuditError::Config)?,
            )),
            None => None,
        };
        Ok(Self {
            store,
            signing_key,
            auditors: http::AuditorCache::default(),
        })
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rollcall audit API",
        description = "Lifecycle history, as-of state, membership intervals, exports, the SCIM request log and signed checkpoints. Authenticate with an audit token: Authorization: Bearer <token>."
    ),
    paths(
        http::find_users,
        http::find_groups,
        http::user_history,
        http::group_history,
        http::user_as_of,
        http::group_as_of,
        http::members_as_of,
        http::intervals,
        http::search,
        http::export,
        http::scim_requests,
        http::checkpoint,
        http::openapi
    )
)]
struct ApiDoc;

/// The OpenAPI document, generated from the handlers.
pub fn openapi_document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

/// The routes.
pub fn router(state: AuditState) -> Router {
    Router::new()
        .route("/audit/v1/users", get(http::find_users))
        .route("/audit/v1/users/{id}", get(http::user_as_of))
        .route("/audit/v1/users/{id}/history", get(http::user_history))
        .route("/audit/v1/groups", get(http::find_groups))
        .route("/audit/v1/groups/{id}", get(http::group_as_of))
        .route("/audit/v1/groups/{id}/history", get(http::group_history))
        .route("/audit/v1/groups/{id}/members", get(http::members_as_of))
        .route("/audit/v1/groups/{id}/intervals", get(http::intervals))
        .route("/audit/v1/events", get(http::search))
        .route("/audit/v1/export", get(http::export))
        .route("/audit/v1/scim-requests", get(http::scim_requests))
        .route("/audit/v1/checkpoint", get(http::checkpoint))
        .route("/audit/v1/openapi.json", get(http::openapi))
        .route("/audit/", get(http::page))
        .route("/audit", get(http::page_redirect))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AuditState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AuditError> {
    axum::serve(listener, router(state).into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| AuditError::Config(e.to_string()))
}
