//! The audit API: lifecycle history that auditors can query, reconstruct at any instant, export
//! and verify. Read-only, over the `audit_event` record the projector keeps (hash-chained per
//! tenant) and the SCIM request log; authenticated with auditor tokens, one tenant each.
//!
//! Auditors' queries run on a PostgreSQL pool of their own ([`Config::pool_size`] connections,
//! each with a statement timeout), so that no audit query, however large, can take a connection
//! SCIM or the projector needs.
#![warn(missing_docs)]

pub mod access;
pub mod auth;
pub mod checkpoint;
pub mod error;
pub mod export;
pub mod history;
pub mod http;
pub mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use ed25519_dalek::SigningKey;
use rollcall_eventlog::LoadError;
use rollcall_store::tenant::{Scope, TokenVerifier};
use rollcall_store::{PoolBounds, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use utoipa::OpenApi;

use crate::export::ExportSlots;

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
    /// PostgreSQL connections the audit API uses at most: a pool of its own, apart from the one
    /// SCIM and the projector use.
    #[arg(
        long = "audit-pool-size",
        env = "ROLLCALL_AUDIT_POOL_SIZE",
        default_value_t = 4
    )]
    pub pool_size: u32,
    /// PostgreSQL cancels an audit query running longer (the client gets `503`); an export
    /// reads in pages, each one query. `30s`, `500ms`, `2m`.
    #[arg(
        long = "audit-statement-timeout",
        env = "ROLLCALL_AUDIT_STATEMENT_TIMEOUT",
        default_value = "30s",
        value_parser = rollcall_http::duration
    )]
    pub statement_timeout: Duration,
    /// Exports and access reconstructions (as of an instant, intervals) one tenant may run at
    /// once; one more answers `503` with `Retry-After`.
    #[arg(
        long = "audit-max-exports",
        env = "ROLLCALL_AUDIT_MAX_EXPORTS",
        default_value_t = 2
    )]
    pub max_exports: usize,
}

/// How long an audit query waits for a free connection of the audit pool before answering `503`.
pub const POOL_WAIT: Duration = Duration::from_secs(2);

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
            signing_key: None,
            pool_size: 4,
            statement_timeout: Duration::from_secs(30),
            max_exports: 2,
        }
    }
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AuditState {
    /// The read models and audit record, through the audit API's own bounded pool.
    pub store: Store,
    /// The checkpoint signing key, if configured.
    pub signing_key: Option<Arc<SigningKey>>,
    /// Audit tokens.
    pub tokens: TokenVerifier,
    /// Exports running, per tenant.
    pub exports: ExportSlots,
}

impl AuditState {
    /// The state from configuration, over a pool of its own on `store`'s database.
    pub fn new(config: &Config, store: Store) -> Result<Self, AuditError> {
        let signing_key = match &config.signing_key {
            Some(hex) => Some(Arc::new(
                checkpoint::signing_key(hex.expose_secret()).map_err(AuditError::Config)?,
            )),
            None => None,
        };
        let store = store.bounded(PoolBounds {
            max_connections: config.pool_size,
            acquire_timeout: POOL_WAIT,
            statement_timeout: config.statement_timeout,
        });
        Ok(Self {
            store,
            signing_key,
            tokens: TokenVerifier::new(Scope::Audit),
            exports: ExportSlots::new(config.max_exports),
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
        http::application_access,
        http::user_access,
        http::application_history,
        http::application_intervals,
        http::search,
        export::export,
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

/// The routes; every answer, refusals included, is JSON (but the auditors' page).
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
        .route("/audit/v1/users/{id}/access", get(http::user_access))
        .route(
            "/audit/v1/applications/{name}/access",
            get(http::application_access),
        )
        .route(
            "/audit/v1/applications/{name}/history",
            get(http::application_history),
        )
        .route(
            "/audit/v1/applications/{name}/intervals",
            get(http::application_intervals),
        )
        .route("/audit/v1/events", get(http::search))
        .route("/audit/v1/export", get(export::export))
        .route("/audit/v1/scim-requests", get(http::scim_requests))
        .route("/audit/v1/checkpoint", get(http::checkpoint))
        .route("/audit/v1/openapi.json", get(http::openapi))
        .route("/audit/", get(http::page))
        .route("/audit", get(http::page_redirect))
        .route("/metrics", get(rollcall_telemetry::http::metrics))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

/// Serves on `listener` (a `TcpListener` gets the default HTTP timeouts) until `shutdown`
/// resolves.
pub async fn serve(
    listener: impl Into<rollcall_http::Listener>,
    state: AuditState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AuditError> {
    rollcall_http::serve(listener.into(), "audit", router(state), shutdown)
        .await
        .map_err(|e| AuditError::Config(e.to_string()))
}
