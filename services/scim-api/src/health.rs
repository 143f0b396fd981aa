//! `GET /healthz` and `GET /readyz` of the SCIM API: whether the pipeline behind a write keeps
//! its promise. Degraded when a write was not applied within the bound in the last minute, or
//! when the projector holds quarantined events; `/readyz` then answers `503`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
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
