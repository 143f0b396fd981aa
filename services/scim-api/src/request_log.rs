//! The SCIM request log: every request, accepted or refused, with time, tenant, token id,
//! method, path, filter, status, `scimType`, detail, duration and request id; bodies only when
//! an operator opts in (`ROLLCALL_SCIM_LOG_BODIES`), and never secrets. Rows are written by a
//! background task in batches, off the request path; old rows are pruned hourly.
//!
//! Before authentication nothing is buffered and little is kept: a body is copied only as the
//! handler reads it (which it does after the token is verified), and a request whose token was
//! not verified is logged without its filter and body. Every field is cut to its bound and
//! made safe for PostgreSQL by the store (`RequestRow::storable`); should a batch still be
//! refused, its rows are written one by one, so one bad row never loses its neighbours.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use rollcall_store::request_log::RequestRow;
use rollcall_store::{Store, StoreError};
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

/// The most rows written in one statement.
const BATCH: usize = 500;

/// How long the writer gathers rows before it writes a batch that is not full.
const GATHER: Duration = Duration::from_millis(50);

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
            let mut batch = Vec::with_capacity(BATCH);
            while receiver.recv_many(&mut batch, BATCH).await > 0 {
                // Rows come one per request: gathered for a moment, a busy API writes a few
                // large batches instead of a commit every few requests.
                let until = tokio::time::Instant::now() + GATHER;
                while batch.len() < BATCH {
                    let room = BATCH - batch.len();
                    let more = receiver.recv_many(&mut batch, room);
                    if !matches!(tokio::time::timeout_at(until, more).await, Ok(1..)) {
                        break;
                    }
                }
                write(&writer, &batch).await;
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

/// Writes a batch; if PostgreSQL refuses it (a row it cannot take), writes its rows one by one
/// so that only the refused row is lost. When PostgreSQL is out of reach the batch is lost
/// whole, with one warning.
async fn write(store: &Store, batch: &[RequestRow]) {
    let error = match store.log_requests(batch).await {
        Ok(()) => return,
        Err(error) => error,
    };
    let refused_by_postgres = matches!(&error, StoreError::Database(sqlx::Error::Database(_)));
    if !refused_by_postgres || batch.len() == 1 {
        warn!(error = %error, rows = batch.len(), "writing the SCIM request log failed");
        return;
    }
    let mut lost = 0;
    for row in batch {
        if let Err(error) = store.log_requests(std::slice::from_ref(row)).await {
            lost += 1;
            warn!(error = %error, request.id = %row.request_id, "a SCIM request could not be logged");
        }
    }
    warn!(
        rows = batch.len(),
        lost, "a SCIM request log batch was refused; its rows were written one by one"
    );
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

/// The `filter` parameter of a request.
fn filter(uri: &axum::http::Uri) -> Option<String> {
    uri.query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k.eq_ignore_ascii_case("filter"))
            .map(|(_, v)| v.into_owned())
    })
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
    let uri = request.uri().clone();
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let caller = Caller::default();
    request.extensions_mut().insert(caller.clone());
    // The body is copied as the handler reads it, up to the body limit: never buffered ahead
    // of authentication.
    let copied = Arc::new(Mutex::new(Vec::new()));
    if state.request_log.log_bodies {
        let (sink, limit) = (Arc::clone(&copied), state.config.max_body_bytes);
        request = request.map(|body| {
            Body::from_stream(body.into_data_stream().map(move |chunk| {
                if let (Ok(bytes), Ok(mut copy)) = (&chunk, sink.lock()) {
                    if copy.len() + bytes.len() <= limit {
                        copy.extend_from_slice(bytes);
                    }
                }
                chunk
            }))
        });
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
    let authenticated = principal.is_some();
    let body = authenticated
        .then(|| {
            copied
                .lock()
                .ok()
                .map(|mut copy| std::mem::take(&mut *copy))
        })
        .flatten()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .map(|mut json| {
            redact(&mut json);
            Json(json)
        });
    let row = RequestRow {
        id: 0,
        at,
        tenant: principal.as_ref().map(|p| p.tenant.clone()),
        token_id: principal.map(|p| p.token_id),
        method,
        path,
        // Before authentication a filter is anyone's text: not kept.
        filter: authenticated.then(|| filter(&uri)).flatten(),
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
