//! `GET /audit/v1/export`: every event of a range, streamed as NDJSON or CSV in constant memory.
//!
//! An export reads page by page (keyset on the stream sequence, [`PAGE`] events a query), each
//! page a short query on the audit pool under its statement timeout: a client that reads slowly,
//! or not at all, holds no database connection, only its export slot. A tenant runs at most
//! `ROLLCALL_AUDIT_MAX_EXPORTS` exports at once; one more answers `503` with `Retry-After` at
//! once. A slot is given back when the export ends: read to the end, or its connection closed
//! (the HTTP idle timeout closes a connection whose client stopped reading).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rollcall_store::audit::{AuditRow, COLUMNS};
use rollcall_store::personal_key::Freshness;
use rollcall_store::{Store, StoreError};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{error, Instrument, Span};

use crate::auth::Auditor;
use crate::error::{ApiError, Params};
use crate::history::{self, AuditedEvent};
use crate::http::instant;
use crate::AuditState;

/// Events read per query.
pub const PAGE: i64 = 250;

/// Export slots per tenant.
#[derive(Debug, Clone)]
pub struct ExportSlots {
    per_tenant: usize,
    tenants: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl ExportSlots {
    /// `per_tenant` exports at once for each tenant.
    pub fn new(per_tenant: usize) -> Self {
        Self {
            per_tenant: per_tenant.max(1),
            tenants: Arc::default(),
        }
    }

    /// A slot of `tenant`, if one is free (only verified tenants ask, so the map holds at most
    /// one entry per tenant).
    pub(crate) fn take(&self, tenant: &str) -> Result<OwnedSemaphorePermit, ApiError> {
        let busy = ApiError::ExportsBusy {
            limit: self.per_tenant,
        };
        let semaphore = {
            let Ok(mut tenants) = self.tenants.lock() else {
                return Err(busy);
            };
            Arc::clone(
                tenants
                    .entry(tenant.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant))),
            )
        };
        semaphore.try_acquire_owned().map_err(|_| busy)
    }
}

/// Export parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct Export {
    /// `ndjson` (default) or `csv`.
    pub format: Option<String>,
    /// From this instant.
    pub from: Option<String>,
    /// Until this instant.
    pub to: Option<String>,
}

fn csv_cell(text: &str) -> String {
    // RFC 4180: quote every cell, double the quotes inside.
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn csv_line(row: &AuditRow) -> String {
    let cells = [
        row.sequence.to_string(),
        row.event_id.to_string(),
        row.tenant.clone(),
        row.aggregate_type.clone(),
        row.aggregate_id.to_string(),
        row.version.to_string(),
        row.event_type.clone(),
        history::timestamp(row.occurred_at),
        row.actor.0.to_string(),
        row.request_id.clone().unwrap_or_default(),
        row.trace_id.clone().unwrap_or_default(),
        row.payload.0.to_string(),
        hex::encode(&row.hash),
    ];
    let mut line = cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

const CSV_HEADER: &str = "sequence,event_id,tenant,aggregate_type,aggregate_id,version,event_type,occurred_at,actor,request_id,trace_id,payload,hash\r\n";

/// The page of `tenant`'s events after `after` (stream sequence and position: the events of a
/// commit share a sequence), within the range, read along the primary key. Sorting is switched off for the query: with statistics that lag behind a
/// bulk of new events the planner would otherwise sort everything after `after` for each page,
/// which makes an export quadratic.
async fn page(
    store: &Store,
    tenant: &str,
    after: (i64, i32),
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
) -> Result<Vec<AuditRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_event WHERE tenant = $1 AND (sequence, position) > ($2, $6)
           AND ($3::timestamptz IS NULL OR occurred_at >= $3) AND ($4::timestamptz IS NULL OR occurred_at < $4)
         ORDER BY sequence, position LIMIT $5"
    );
    let mut transaction = store.begin().await?;
    sqlx::query("SET LOCAL enable_sort = off")
        .execute(&mut *transaction)
        .await?;
    let rows = sqlx::query_as::<_, AuditRow>(&sql)
        .bind(tenant)
        .bind(after.0)
        .bind(from)
        .bind(to)
        .bind(PAGE)
        .bind(after.1)
        .fetch_all(&mut *transaction)
        .await?;
    transaction.commit().await?;
    let mut rows = rows;
    // Fresh keys: an export never shows an erased person from a cache.
    rollcall_personal::open_all(store, &mut rows, Freshness::Fresh).await?;
    Ok(rows)
}

/// One page as one chunk of the body.
fn chunk(rows: &[AuditRow], csv: bool) -> Bytes {
    let mut out = Vec::new();
    for row in rows {
        if csv {
            out.extend_from_slice(csv_line(row).as_bytes());
        } else {
            out.extend(serde_json::to_vec(&AuditedEvent::from(row)).unwrap_or_default());
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

/// Streams every event of a range as NDJSON or CSV, in constant memory.
#[utoipa::path(get, path = "/audit/v1/export", params(Export), responses((status = 200, description = "the events, streamed"), (status = 503, description = "the tenant runs as many exports as it may at once; retry after Retry-After")), security(("bearer" = [])))]
pub async fn export(
    State(state): State<AuditState>,
    auditor: Auditor,
    Params(export): Params<Export>,
) -> Result<Response, ApiError> {
    let csv = match export.format.as_deref().unwrap_or("ndjson") {
        "ndjson" => false,
        "csv" => true,
        other => {
            return Err(ApiError::BadRequest(format!(
                "format must be ndjson or csv, not {other:?}"
            )))
        }
    };
    let from = instant("from", export.from.as_deref())?;
    let to = instant("to", export.to.as_deref())?;
    let slot = state.exports.take(&auditor.tenant)?;
    // One page waits for the client at most: memory stays flat however slow it reads.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let store = state.store.clone();
    let tenant = auditor.tenant;
    tokio::spawn(
        async move {
            let _slot = slot;
            if csv && sender.send(Ok(Bytes::from(CSV_HEADER))).await.is_err() {
                return;
            }
            let mut after = (i64::MIN, 0);
            loop {
                let rows = match page(&store, &tenant, after, from, to).await {
                    Ok(rows) => rows,
                    Err(cause) => {
                        // The client sees the body end abruptly (chunked encoding unfinished).
                        error!(error = %cause, "an audit export failed midway");
                        let _ = sender
                            .send(Err(std::io::Error::other("the export failed")))
                            .await;
                        return;
                    }
                };
                let Some(last) = rows.last() else {
                    return;
                };
                after = (last.sequence, last.position);
                if sender.send(Ok(chunk(&rows, csv))).await.is_err() {
                    return;
                }
                if (rows.len() as i64) < PAGE {
                    return;
                }
            }
        }
        .instrument(Span::current()),
    );
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| receiver.poll_recv(cx)));
    let (content_type, extension) = if csv {
        ("text/csv; charset=utf-8", "csv")
    } else {
        ("application/x-ndjson", "ndjson")
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"rollcall-audit.{extension}\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_slots_and_no_more_and_others_keep_theirs() {
        let slots = ExportSlots::new(2);
        let first = slots.take("evil").unwrap();
        let _second = slots.take("evil").unwrap();
        assert!(matches!(
            slots.take("evil"),
            Err(ApiError::ExportsBusy { limit: 2 })
        ));
        assert!(slots.take("test").is_ok());
        drop(first);
        assert!(
            slots.take("evil").is_ok(),
            "an ended export gives its slot back"
        );
    }
}
