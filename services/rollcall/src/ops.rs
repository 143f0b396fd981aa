//! The operations listener (`--metrics-addr`): `GET /metrics` (Prometheus text), `GET /healthz`
//! and `GET /readyz` for a process whose roles have no HTTP listener of their own to carry them
//! (a projector-only process), or wherever an operator wants them on a port of their own.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rollcall_store::Store;
use serde_json::json;

use crate::role::{Role, Roles};

/// How long `/readyz` waits for PostgreSQL to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which of an instance's roles are still running (each role's task clears its bit when it
/// ends).
#[derive(Debug)]
pub struct Running {
    started: Roles,
    bits: AtomicU8,
}

impl Running {
    /// All of `roles` running.
    pub fn new(roles: Roles) -> Self {
        let bits = roles.iter().fold(0u8, |bits, role| bits | role.bit());
        Self {
            started: roles,
            bits: AtomicU8::new(bits),
        }
    }

    /// Records that `role` stopped.
    pub fn stopped(&self, role: Role) {
        self.bits.fetch_and(!role.bit(), Ordering::AcqRel);
    }

    /// The started roles that stopped.
    pub fn stopped_roles(&self) -> Vec<Role> {
        let bits = self.bits.load(Ordering::Acquire);
        self.started
            .iter()
            .filter(|role| bits & role.bit() == 0)
            .collect()
    }
}

/// What the operations listener reports on.
#[derive(Debug, Clone)]
pub struct OpsState {
    /// The instance's roles.
    pub roles: Roles,
    /// Which are still running.
    pub running: Arc<Running>,
    /// The NATS connection (its state counts for readiness).
    pub client: async_nats::Client,
    /// PostgreSQL (it must answer for readiness).
    pub store: Store,
}

/// The routes of the operations listener.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The process's metrics in the Prometheus text format.
fn render_metrics() -> String {
    // The one place the operations listener renders metrics: the process-wide recorder.
    rollcall_telemetry::metrics::render()
}

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            rollcall_telemetry::metrics::CONTENT_TYPE,
        )],
        render_metrics(),
    )
        .into_response()
}

fn names(roles: impl IntoIterator<Item = Role>) -> Vec<&'static str> {
    roles.into_iter().map(Role::as_str).collect()
}

/// `GET /healthz`: `200` while the process serves.
async fn healthz(State(state): State<OpsState>) -> Response {
    Json(json!({"status": "ok", "roles": names(state.roles.iter())})).into_response()
}

/// `GET /readyz`: `200` when every role runs, NATS is connected and PostgreSQL answers; else
/// `503` with the reasons.
async fn readyz(State(state): State<OpsState>) -> Response {
    let mut reasons = Vec::new();
    let stopped = state.running.stopped_roles();
    if !stopped.is_empty() {
        reasons.push(format!("stopped: {}", names(stopped).join(",")));
    }
    if state.client.connection_state() != async_nats::connection::State::Connected {
        reasons.push("NATS is not connected".to_owned());
    }
    let probe = sqlx::query("SELECT 1").execute(state.store.pool());
    if !matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_))) {
        reasons.push("PostgreSQL does not answer".to_owned());
    }
    let roles = names(state.roles.iter());
    if reasons.is_empty() {
        Json(json!({"status": "ready", "roles": roles})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "roles": roles, "reasons": reasons})),
        )
            .into_response()
    }
}
