//! `GET /healthz`, `GET /readyz` and `GET /metrics` of the SCIM API: whether the pipeline
//! behind a write keeps its promise. Degraded when a write was not applied within the bound in
//! the last minute, or when the projector holds quarantined events; `/readyz` then answers
//! `503`. `/metrics` is the process's Prometheus text, as every role serves it.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollcall_telemetry::metrics;
use serde_json::json;

use crate::AppState;

async fn report(state: &AppState) -> (bool, serde_json::Value) {
    let health = state.checkpoint.health();
    let quarantined = state.store.quarantine_open().await;
    let degraded_since = health.degraded_since();
    let mut reasons = Vec::new();
    if let Some(ago) = degraded_since {
        reasons.push(format!(
            "a write was not applied within the bound {}s ago",
            ago.as_secs()
        ));
    }
    match &quarantined {
        Ok(0) => {}
        Ok(count) => reasons.push(format!(
            "{count} events are quarantined (`rollcall projector quarantine list`)"
        )),
        Err(_) => reasons.push("PostgreSQL is out of reach".to_owned()),
    }
    let ok = reasons.is_empty();
    (
        ok,
        json!({
            "status": if ok { "ok" } else { "degraded" },
            "reasons": reasons,
            "projector_checkpoint": state.checkpoint.checkpoint(),
            "quarantined": quarantined.ok(),
            "writes_not_applied_in_time": health.not_applied.load(Ordering::Relaxed),
            "writes_refused_quarantined": health.quarantined.load(Ordering::Relaxed),
        }),
    )
}

/// `GET /healthz`: `200` while the process serves, with `status` `ok` or `degraded`.
pub async fn healthz(State(state): State<AppState>) -> Response {
    Json(report(&state).await.1).into_response()
}

/// `GET /readyz`: `200` when not degraded, else `503` with the reasons.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (ok, body) = report(&state).await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: every metric of this process ([`rollcall_telemetry::metrics::render`]), the
/// installation's quarantine read from PostgreSQL first.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let quarantined = state.store.quarantine_open().await.unwrap_or(-1);
    metrics::gauge!(metrics::PROJECTOR_QUARANTINED_EVENTS).set(quarantined as f64);
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(),
    )
        .into_response()
}
