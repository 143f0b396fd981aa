//! `GET /healthz`, `GET /readyz` and `GET /metrics` of the SCIM API: whether the pipeline
//! behind a write keeps its promise. Degraded when a write was not applied within the bound in
//! the last minute, or when the projector holds quarantined events; `/readyz` then answers
//! `503`. (`/metrics` is Prometheus text, rendered here until the services share a metrics
//! registry.)

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

/// `GET /metrics`: the promise's counters and the quarantine, in Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let health = state.checkpoint.health();
    let quarantined = state.store.quarantine_open().await.unwrap_or(-1);
    let text = format!(
        "# HELP rollcall_scim_writes_not_applied_total Writes answered 503 because their effect was not applied everywhere within the bound.\n\
         # TYPE rollcall_scim_writes_not_applied_total counter\n\
         rollcall_scim_writes_not_applied_total {}\n\
         # HELP rollcall_scim_writes_refused_quarantined_total Writes answered 503 because their resource is quarantined.\n\
         # TYPE rollcall_scim_writes_refused_quarantined_total counter\n\
         rollcall_scim_writes_refused_quarantined_total {}\n\
         # HELP rollcall_scim_unavailable_total Requests answered 503 because NATS or PostgreSQL was out of reach.\n\
         # TYPE rollcall_scim_unavailable_total counter\n\
         rollcall_scim_unavailable_total {}\n\
         # HELP rollcall_projector_quarantined_events Events the projector holds in its quarantine, unresolved (-1: PostgreSQL out of reach).\n\
         # TYPE rollcall_projector_quarantined_events gauge\n\
         rollcall_projector_quarantined_events {quarantined}\n\
         # HELP rollcall_projector_checkpoint The projector's checkpoint as this process last saw it.\n\
         # TYPE rollcall_projector_checkpoint gauge\n\
         rollcall_projector_checkpoint {}\n",
        health.not_applied.load(Ordering::Relaxed),
        health.quarantined.load(Ordering::Relaxed),
        crate::error::UNAVAILABLE_ANSWERS.load(Ordering::Relaxed),
        state.checkpoint.checkpoint(),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}
