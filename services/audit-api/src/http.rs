//! The audit API's routes under `/audit/v1`, authenticated with auditor tokens
//! (`rollcall tokens create --tenant T --scope audit`): read-only, one tenant each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use rollcall_store::audit::{AuditQuery, AuditRow, COLUMNS};
use rollcall_store::request_log::RequestQuery;
use rollcall_store::tenant::Scope;
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::history::{self, AsOf, AuditedEvent};
use crate::{AuditError, AuditState};

/// A refusal, as JSON.
#[derive(Debug)]
pub struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"status": self.0.as_u16(), "error": self.1})),
        )
            .into_response()
    }
}

impl From<AuditError> for HttpError {
    fn from(error: AuditError) -> Self {
        tracing::error!(error = %error, "audit request failed");
        HttpError(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
    }
}

impl From<rollcall_store::StoreError> for HttpError {
    fn from(error: rollcall_store::StoreError) -> Self {
        AuditError::from(error).into()
    }
}

fn bad(message: impl Into<String>) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, message.into())
}

fn not_found(message: impl Into<String>) -> HttpError {
    HttpError(StatusCode::NOT_FOUND, message.into())
}

/// An auditor: a tenant, through one of its audit tokens.
#[derive(Debug, Clone)]
pub struct Auditor {
    /// The tenant.
    pub tenant: String,
}

/// Verified audit tokens, for a few seconds.
#[derive(Debug, Clone, Default)]
pub struct AuditorCache(Arc<RwLock<HashMap<String, Verified>>>);

/// A verification outcome (the tenant, or `None` if refused) and when it was made.
type Verified = (Option<String>, Instant);

impl FromRequestParts<AuditState> for Auditor {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AuditState,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = || {
            HttpError(StatusCode::UNAUTHORIZED, "an audit token is required: Authorization: Bearer <token from `rollcall tokens create --scope audit`>".into())
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(unauthorized)?;
        use sha2::Digest;
        let key = hex::encode(sha2::Sha256::digest(token.as_bytes()));
        if let Some((tenant, at)) = state.auditors.0.read().await.get(&key) {
            if at.elapsed() < Duration::from_secs(5) {
                return tenant
                    .clone()
                    .map(|tenant| Auditor { tenant })
                    .ok_or_else(unauthorized);
            }
        }
        let tenant = state
            .store
            .verify_token(token, Scope::Audit)
            .await?
            .map(|info| info.tenant);
        state
            .auditors
            .0
            .write()
            .await
            .insert(key, (tenant.clone(), Instant::now()));
        tenant
            .map(|tenant| Auditor { tenant })
            .ok_or_else(unauthorized)
    }
}

fn instant(name: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, HttpError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                bad(format!(
                    "{name} must be an RFC 3339 instant such as 2026-03-03T00:00:00Z, not {v:?}"
                ))
            })
        })
        .transpose()
}

fn events(rows: &[AuditRow]) -> Vec<AuditedEvent> {
    rows.iter().map(AuditedEvent::from).collect()
}

async fn aggregate_rows(
    state: &AuditState,
    tenant: &str,
    id: Uuid,
) -> Result<Vec<AuditRow>, HttpError> {
    let query = AuditQuery {
        aggregate: Some(id),
        limit: i64::MAX,
        ..Default::default()
    };
    Ok(state.store.audit_search(tenant, &query).await?)
}

/// `?at=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct At {
    /// The instant (RFC 3339); default now.
    pub at: Option<String>,
}

/// Lookup by name.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct UserLookup {
    /// A userName the user had, compared without case.
    pub user_name: Option<String>,
    /// An externalId the user had, compared without case.
    pub external_id: Option<String>,
}

/// Lookup by name.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct GroupLookup {
    /// A displayName the group had, compared without case.
    pub display_name: Option<String>,
}

/// Users that ever had a userName or externalId.
#[utoipa::path(get, path = "/audit/v1/users", params(UserLookup), responses((status = 200, description = "matching user ids, deleted users included")), security(("bearer" = [])))]
pub async fn find_users(
    State(state): State<AuditState>,
    auditor: Auditor,
    Query(lookup): Query<UserLookup>,
) -> Result<Json<Value>, HttpError> {
    if lookup.user_name.is_none() && lookup.external_id.is_none() {
        return Err(bad("give userName or externalId"));
    }
    let ids = state
        .store
        .audit_find_users(
            &auditor.tenant,
            lookup.user_name.as_deref(),
            lookup.external_id.as_deref(),
        )
        .await?;
    Ok(Json(json!({"users": ids})))
}

/// Groups that ever had a displayName.
#[utoipa::path(get, path = "/audit/v1/groups", params(GroupLookup), responses((status = 200, description = "matching group ids, deleted groups included")), security(("bearer" = [])))]
pub async fn find_groups(
    State(state): State<AuditState>,
    auditor: Auditor,
    Query(lookup): Query<GroupLookup>,
) -> Result<Json<Value>, HttpError> {
    let name = lookup.display_name.ok_or_else(|| bad("give displayName"))?;
    let ids = state
        .store
        .audit_find_groups(&auditor.tenant, &name)
        .await?;
    Ok(Json(json!({"groups": ids})))
}

/// Every event of a user, in order, with the group events that added or removed the user.
#[utoipa::path(get, path = "/audit/v1/users/{id}/history", params(("id" = Uuid, Path, description = "the user's id")), responses((status = 200, description = "the user's events, and the group events that added or removed the user, in order"), (status = 404, description = "no such user")), security(("bearer" = [])))]
pub async fn user_history(
    State(state): State<AuditState>,
    auditor: Auditor,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, HttpError> {
    let mut rows = aggregate_rows(&state, &auditor.tenant, id).await?;
    if rows.is_empty() || rows[0].aggregate_type != "user" {
        return Err(not_found(format!("no history for user {id}")));
    }
    let memberships = state.store.audit_memberships(&auditor.tenant, id).await?;
    let mut names: HashMap<Uuid, Option<String>> = HashMap::new();
    for row in &memberships {
        if let std::collections::hash_map::Entry::Vacant(entry) = names.entry(row.aggregate_id) {
            entry.insert(
                state
                    .store
                    .group(&auditor.tenant, row.aggregate_id)
                    .await?
                    .map(|g| g.display_name),
            );
        }
    }
    rows.extend(memberships);
    rows.sort_by_key(|r| r.sequence);
    let events: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut event = serde_json::to_value(AuditedEvent::from(row)).unwrap_or_default();
            if row.aggregate_type == "group" {
                let name = names.get(&row.aggregate_id).cloned().flatten();
                event["group"] = json!({"id": row.aggregate_id, "display_name": name});
            }
            event
        })
        .collect();
    Ok(Json(json!({"type": "user", "id": id, "events": events})))
}

/// Every event of a group, in order.
#[utoipa::path(get, path = "/audit/v1/groups/{id}/history", params(("id" = Uuid, Path, description = "the group's id")), responses((status = 200, description = "the group's events in order"), (status = 404, description = "no such group")), security(("bearer" = [])))]
pub async fn group_history(
    State(state): State<AuditState>,
    auditor: Auditor,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, HttpError> {
    let rows = aggregate_rows(&state, &auditor.tenant, id).await?;
    if rows.is_empty() || rows[0].aggregate_type != "group" {
        return Err(not_found(format!("no history for group {id}")));
    }
    Ok(Json(
        json!({"type": "group", "id": id, "events": events(&rows)}),
    ))
}

fn as_of_response(
    kind: &str,
    id: Uuid,
    at: OffsetDateTime,
    result: Result<AsOf, String>,
) -> Result<Json<Value>, HttpError> {
    match result.map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, e))? {
        AsOf::Resource(resource) => Ok(Json(resource)),
        AsOf::NotYet => Err(not_found(format!(
            "{kind} {id} did not exist at {}",
            history::timestamp(at)
        ))),
        AsOf::Deleted(when) => Err(not_found(format!(
            "{kind} {id} was deleted at {}",
            history::timestamp(when)
        ))),
    }
}

/// A user's SCIM representation as of an instant.
#[utoipa::path(get, path = "/audit/v1/users/{id}", params(("id" = Uuid, Path, description = "the user's id"), At), responses((status = 200, description = "the SCIM User as it was"), (status = 404, description = "not existing then")), security(("bearer" = [])))]
pub async fn user_as_of(
    State(state): State<AuditState>,
    auditor: Auditor,
    Path(id): Path<Uuid>,
    Query(at): Query<At>,
) -> Result<Json<Value>, HttpError> {
    let at = instant("at", at.at.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    let rows = aggregate_rows(&state, &auditor.tenant, id).await?;
    as_of_response("user", id, at, history::user_as_of(id, &rows, at))
}

/// A group's SCIM representation, members included, as of an instant.
#[utoipa::path(get, path = "/audit/v1/groups/{id}", params(("id" = Uuid, Path, description = "the group's id"), At), responses((status = 200, description = "the SCIM Group as it was"), (status = 404, description = "not existing then")), security(("bearer" = [])))]
pub async fn group_as_of(
    State(state): State<AuditState>,
    auditor: Auditor,
    Path(id): Path<Uuid>,
    Query(at): Query<At>,
) -> Result<Json<Value>, HttpError> {
    let at = instant("at", at.at.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    let rows = aggregate_rows(&state, &auditor.tenant, id).await?;
    as_of_response("group", id, at, history::group_as_of(id, &rows, at))
}

/// A group's members as of an instant.
#[utoipa::path(get, path = "/audit/v1/groups/{id}/members", params(("id" = Uuid, Path, description = "the group's id"), At), responses((status = 200, description = "the members then"), (status = 404, description = "not existing then")), security(("bearer" = [])))]
pub async fn members_as_of(
    State(state): State<AuditState>,
    auditor: Auditor,
    Path(id): Path<Uuid>,
    Query(at): Query<At>,
) -> Result<Json<Value>, HttpError> {
    let Json(group) = group_as_of(State(state), auditor, Path(id), Query(at)).await?;
    Ok(Json(
        json!({"group": id, "members": group.get("members").cloned().unwrap_or(json!([]))}),
    ))
}

/// `?from=&to=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct Range {
    /// From this instant (RFC 3339).
    pub from: Option<String>,
    /// Until this instant (RFC 3339).
    pub to: Option<String>,
}

/// Each member's membership intervals over a time range, with the events that opened and
/// closed them.
#[utoipa::path(get, path = "/audit/v1/groups/{id}/intervals", params(("id" = Uuid, Path, description = "the group's id"), Range), responses((status = 200, description = "intervals per member")), security(("bearer" = [])))]
pub async fn intervals(
    State(state): State<AuditState>,
    auditor: Auditor,
    Path(id): Path<Uuid>,
    Query(range): Query<Range>,
) -> Result<Json<Value>, HttpError> {
    let from = instant("from", range.from.as_deref())?.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let to = instant("to", range.to.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    let rows = aggregate_rows(&state, &auditor.tenant, id).await?;
    if rows.is_empty() {
        return Err(not_found(format!("no history for group {id}")));
    }
    let members = history::intervals(&rows, from, to)
        .map_err(|e| HttpError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(
        json!({"group": id, "from": history::timestamp(from), "to": history::timestamp(to), "members": members}),
    ))
}

/// Event search parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventSearch {
    /// Event type (`user.deactivated`, …).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Actor: a token id or an operator name.
    pub actor: Option<String>,
    /// A user's or group's id.
    pub aggregate: Option<Uuid>,
    /// From this instant.
    pub from: Option<String>,
    /// Until this instant.
    pub to: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// Searches events, with keyset pagination on the stream sequence.
#[utoipa::path(get, path = "/audit/v1/events", params(EventSearch), responses((status = 200, description = "a page of events and the next cursor")), security(("bearer" = [])))]
pub async fn search(
    State(state): State<AuditState>,
    auditor: Auditor,
    Query(search): Query<EventSearch>,
) -> Result<Json<Value>, HttpError> {
    let limit = page_size(search.limit);
    let query = AuditQuery {
        event_type: search.event_type,
        actor: search.actor,
        aggregate: search.aggregate,
        from: instant("from", search.from.as_deref())?,
        to: instant("to", search.to.as_deref())?,
        after: search.cursor,
        limit,
    };
    let rows = state.store.audit_search(&auditor.tenant, &query).await?;
    let next = next_cursor(&rows, limit, |r| r.sequence);
    Ok(Json(json!({"events": events(&rows), "next_cursor": next})))
}

/// A page's size: 100 unless asked, at most 1000.
fn page_size(limit: Option<i64>) -> i64 {
    limit.unwrap_or(100).clamp(1, 1000)
}

/// The cursor of the page after `rows`: the last row's key when the page is full.
fn next_cursor<T>(rows: &[T], limit: i64, key: impl Fn(&T) -> i64) -> Option<i64> {
    (rows.len() as i64 == limit)
        .then(|| rows.last().map(key))
        .flatten()
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

/// Streams every event of a range as NDJSON or CSV, in constant memory.
#[utoipa::path(get, path = "/audit/v1/export", params(Export), responses((status = 200, description = "the events, streamed")), security(("bearer" = [])))]
pub async fn export(
    State(state): State<AuditState>,
    auditor: Auditor,
    Query(export): Query<Export>,
) -> Result<Response, HttpError> {
    let csv = match export.format.as_deref().unwrap_or("ndjson") {
        "ndjson" => false,
        "csv" => true,
        other => return Err(bad(format!("format must be ndjson or csv, not {other:?}"))),
    };
    let from = instant("from", export.from.as_deref())?;
    let to = instant("to", export.to.as_deref())?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(64);
    let pool = state.store.pool().clone();
    let tenant = auditor.tenant;
    tokio::spawn(async move {
        if csv {
            let header = "sequence,event_id,tenant,aggregate_type,aggregate_id,version,event_type,occurred_at,actor,request_id,trace_id,payload,hash\r\n";
            if sender.send(Ok(bytes::Bytes::from(header))).await.is_err() {
                return;
            }
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_event WHERE tenant = $1 AND ($2::timestamptz IS NULL OR occurred_at >= $2)
             AND ($3::timestamptz IS NULL OR occurred_at < $3) ORDER BY sequence"
        );
        let mut rows = sqlx::query_as::<_, AuditRow>(&sql)
            .bind(&tenant)
            .bind(from)
            .bind(to)
            .fetch(&pool);
        while let Some(row) = rows.next().await {
            let chunk = match row {
                Ok(row) if csv => Ok(bytes::Bytes::from(csv_line(&row))),
                Ok(row) => {
                    let mut line =
                        serde_json::to_vec(&AuditedEvent::from(&row)).unwrap_or_default();
                    line.push(b'\n');
                    Ok(bytes::Bytes::from(line))
                }
                Err(error) => Err(std::io::Error::other(error.to_string())),
            };
            if sender.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    ));
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

/// SCIM request log parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RequestSearch {
    /// Only this HTTP status.
    pub status: Option<i32>,
    /// From this instant.
    pub from: Option<String>,
    /// Until this instant.
    pub to: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// What the SCIM client sent, accepted or refused.
#[utoipa::path(get, path = "/audit/v1/scim-requests", params(RequestSearch), responses((status = 200, description = "a page of logged SCIM requests")), security(("bearer" = [])))]
pub async fn scim_requests(
    State(state): State<AuditState>,
    auditor: Auditor,
    Query(search): Query<RequestSearch>,
) -> Result<Json<Value>, HttpError> {
    let limit = page_size(search.limit);
    let query = RequestQuery {
        status: search.status,
        from: instant("from", search.from.as_deref())?,
        to: instant("to", search.to.as_deref())?,
        after: search.cursor,
        limit,
    };
    let rows = state.store.requests(&auditor.tenant, &query).await?;
    let next = next_cursor(&rows, limit, |r| r.id);
    let requests: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"id": r.id, "at": history::timestamp(r.at), "token_id": r.token_id, "method": r.method, "path": r.path,
                   "filter": r.filter, "status": r.status, "scim_type": r.scim_type, "detail": r.detail,
                   "duration_ms": r.duration_ms, "request_id": r.request_id, "body": r.body.as_ref().map(|b| b.0.clone())})
        })
        .collect();
    Ok(Json(json!({"requests": requests, "next_cursor": next})))
}

/// The tenant's chain head, signed (when a signing key is configured).
#[utoipa::path(get, path = "/audit/v1/checkpoint", responses((status = 200, description = "a signed checkpoint"), (status = 404, description = "no signing key or no events")), security(("bearer" = [])))]
pub async fn checkpoint(
    State(state): State<AuditState>,
    auditor: Auditor,
) -> Result<Json<Value>, HttpError> {
    let key = state
        .signing_key
        .as_ref()
        .ok_or_else(|| not_found("no signing key is configured (ROLLCALL_AUDIT_SIGNING_KEY)"))?;
    let (sequence, hash) = state
        .store
        .chain_head(&auditor.tenant)
        .await?
        .ok_or_else(|| not_found("no events yet"))?;
    let signed = crate::checkpoint::sign(key, &auditor.tenant, sequence as u64, &hash);
    Ok(Json(serde_json::to_value(signed).unwrap_or_default()))
}

/// This document.
#[utoipa::path(get, path = "/audit/v1/openapi.json", responses((status = 200, description = "the OpenAPI document of the audit API")))]
pub async fn openapi() -> Json<Value> {
    Json(crate::openapi_document())
}

/// The auditors' page.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// `/audit` → `/audit/`
pub async fn page_redirect() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, "/audit/")],
    )
        .into_response()
}
