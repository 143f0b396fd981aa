//! The SCIM request log: every request, accepted or refused, with time, tenant, token id,
//! method, path, filter, status, `scimType`, detail, duration and request id; bodies only when
//! an operator opts in (`ROLLCALL_SCIM_LOG_BODIES`), and never secrets. Rows are written by a
//! background task in batches, off the request path; old rows are pruned hourly.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use rollcall_store::request_log::RequestRow;
use rollcall_store::Store;
use serde_json::Value;
use sqlx::types::Json;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tracing::warn;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::http::RequestId;
use crate::AppState;

/// The caller of a request, filled in once its token is verified.
#[derive(Debug, Clone, Default)]
pub struct Caller(Arc<Mutex<Option<Principal>>>);

impl Caller {
    /// Records who called.
    pub fn set(&self, principal: &Principal) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(principal.clone());
        }
    }

    fn get(&self) -> Option<Principal> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

/// The sending side of the log.
#[derive(Debug, Clone)]
pub struct RequestLog {
    sender: mpsc::Sender<RequestRow>,
    log_bodies: bool,
}

impl RequestLog {
    /// Starts the writer and the pruner.
    pub fn start(store: Store, retention_days: u32, log_bodies: bool) -> Self {
        let (sender, mut receiver) = mpsc::channel::<RequestRow>(10_000);
        let writer = store.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(500);
            while receiver.recv_many(&mut batch, 500).await > 0 {
                if let Err(error) = writer.log_requests(&batch).await {
                    warn!(error = %error, rows = batch.len(), "writing the SCIM request log failed");
                }
                batch.clear();
            }
        });
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(3600));
            loop {
                interval.tick().await;
                let before =
                    OffsetDateTime::now_utc() - time::Duration::days(i64::from(retention_days));
                if let Err(error) = store.prune_requests(before).await {
                    warn!(error = %error, "pruning the SCIM request log failed");
                }
            }
        });
        Self { sender, log_bodies }
    }
}

/// Replaces every secret in a body with `[redacted]`: `password` values anywhere, and the
/// value of PATCH operations whose path names the password.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let names_password = map
                .get("path")
                .and_then(Value::as_str)
                .is_some_and(|p| p.to_ascii_lowercase().contains("password"));
            for (key, value) in map.iter_mut() {
                if key.eq_ignore_ascii_case("password")
                    || (names_password && key.eq_ignore_ascii_case("value"))
                {
                    *value = Value::String("[redacted]".into());
                } else {
                    redact(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Records the request.
pub async fn record(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let at = OffsetDateTime::now_utc();
    let method = request.method().to_string();
    // The full path as the client sent it, not the one inside the nested router.
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |uri| uri.path().to_owned(),
        );
    let filter = request.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k.eq_ignore_ascii_case("filter"))
            .map(|(_, v)| v.into_owned())
    });
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let caller = Caller::default();
    request.extensions_mut().insert(caller.clone());
    let mut body = None;
    if state.request_log.log_bodies {
        let (parts, raw) = request.into_parts();
        let bytes = axum::body::to_bytes(raw, state.config.max_body_bytes)
            .await
            .unwrap_or_default();
        if let Ok(mut json) = serde_json::from_slice::<Value>(&bytes) {
            redact(&mut json);
            body = Some(Json(json));
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    let response = next.run(request).await;
    let (scim_type, detail) = match response.extensions().get::<Arc<ApiError>>() {
        Some(error) => {
            let scim = error.to_scim();
            (
                scim.scim_type.map(|t| t.as_str().to_owned()),
                Some(scim.detail),
            )
        }
        None => (None, None),
    };
    let principal = caller.get();
    let row = RequestRow {
        id: 0,
        at,
        tenant: principal.as_ref().map(|p| p.tenant.clone()),
        token_id: principal.map(|p| p.token_id),
        method,
        path,
        filter,
        status: i32::from(response.status().as_u16()),
        scim_type,
        detail,
        duration_ms: started.elapsed().as_secs_f64() * 1_000.0,
        request_id,
        body,
    };
    if state.request_log.sender.try_send(row).is_err() {
        warn!("the SCIM request log is behind; a request was not logged");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn passwords_never_reach_the_log() {
        let mut body = json!({"userName": "ada", "password": "hunter2", "Operations": [
            {"op": "replace", "path": "password", "value": "s3cret"},
            {"op": "replace", "value": {"Password": "again", "title": "Dr"}}
        ]});
        redact(&mut body);
        assert!(
            !body.to_string().contains("hunter2")
                && !body.to_string().contains("s3cret")
                && !body.to_string().contains("again")
        );
        assert_eq!(body["Operations"][1]["value"]["title"], "Dr");
    }
}
