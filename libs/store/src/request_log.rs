//! The SCIM request log: every request the SCIM API answered, accepted or refused. Written by
//! the SCIM API only.
//!
//! Every stored field is made safe for PostgreSQL on the way in ([`RequestRow::storable`]): NUL,
//! which no `text` or `jsonb` value can hold, becomes U+FFFD, and each field is cut to a bound
//! (the `MAX_*` constants), so that no request can make its batch fail or fill the table.

use serde_json::Value;
use sqlx::types::Json;
use time::OffsetDateTime;

use tracing::instrument;

use crate::{Store, StoreError};

/// One logged request.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RequestRow {
    /// Its position in the log.
    pub id: i64,
    /// When it arrived.
    pub at: OffsetDateTime,
    /// The tenant, when the token was valid.
    pub tenant: Option<String>,
    /// The token's id, when valid.
    pub token_id: Option<String>,
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The `filter` parameter, if any.
    pub filter: Option<String>,
    /// The response status.
    pub status: i32,
    /// The SCIM error keyword, if any.
    pub scim_type: Option<String>,
    /// The error detail, if any.
    pub detail: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// The request id (also on the events it produced).
    pub request_id: String,
    /// The body, when bodies are logged (secrets removed).
    pub body: Option<Json<Value>>,
}

/// Longest stored path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest stored `filter`, in bytes.
pub const MAX_FILTER_BYTES: usize = 2048;
/// Longest stored error detail, in bytes.
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Longest stored method, in bytes.
pub const MAX_METHOD_BYTES: usize = 16;
/// Longest stored tenant, token id, request id or `scimType`, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Largest stored body (as JSON text), in bytes; a larger one is stored as a note of its size.
pub const MAX_BODY_BYTES: usize = 65_536;

/// `text` as PostgreSQL can store it: NUL replaced with U+FFFD, cut to at most `max` bytes at a
/// character boundary (ending in `…` when cut).
pub fn storable(text: &str, max: usize) -> String {
    let mut text = text.replace('\0', "\u{FFFD}");
    if text.len() > max {
        let ellipsis = '…';
        let mut end = max.saturating_sub(ellipsis.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        if max >= ellipsis.len_utf8() {
            text.push(ellipsis);
        }
    }
    text
}

/// A JSON value `jsonb` can store: NUL in strings and keys replaced with U+FFFD.
fn storable_json(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(text.replace('\0', "\u{FFFD}")),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key.replace('\0', "\u{FFFD}"), storable_json(value)))
                .collect(),
        ),
        other => other,
    }
}

impl RequestRow {
    /// This row as it is stored: every text field [`storable`] within its bound, the body's
    /// strings without NUL and the body itself at most [`MAX_BODY_BYTES`].
    pub fn storable(&self) -> RequestRow {
        let name = |text: &Option<String>| text.as_deref().map(|t| storable(t, MAX_NAME_BYTES));
        let body = self.body.as_ref().map(|Json(body)| {
            let body = storable_json(body.clone());
            let size = body.to_string().len();
            if size > MAX_BODY_BYTES {
                Json(serde_json::json!({
                    "omitted": format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                    "bytes": size,
                }))
            } else {
                Json(body)
            }
        });
        RequestRow {
            id: self.id,
            at: self.at,
            tenant: name(&self.tenant),
            token_id: name(&self.token_id),
            method: storable(&self.method, MAX_METHOD_BYTES),
            path: storable(&self.path, MAX_PATH_BYTES),
            filter: self
                .filter
                .as_deref()
                .map(|f| storable(f, MAX_FILTER_BYTES)),
            status: self.status,
            scim_type: name(&self.scim_type),
            detail: self
                .detail
                .as_deref()
                .map(|d| storable(d, MAX_DETAIL_BYTES)),
            duration_ms: self.duration_ms,
            request_id: storable(&self.request_id, MAX_NAME_BYTES),
            body,
        }
    }
}

/// A query over the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestQuery {
    /// Only this status.
    pub status: Option<i32>,
    /// At or after this instant.
    pub from: Option<OffsetDateTime>,
    /// Before this instant.
    pub to: Option<OffsetDateTime>,
    /// After this log position (keyset pagination).
    pub after: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

impl Store {
    /// Appends requests to the log, each made [`RequestRow::storable`] first.
    pub async fn log_requests(&self, rows: &[RequestRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<RequestRow> = rows.iter().map(RequestRow::storable).collect();
        let mut builder = sqlx::QueryBuilder::new(
            "INSERT INTO scim_request (at, tenant, token_id, method, path, filter, status, scim_type, detail, duration_ms, request_id, body) ",
        );
        builder.push_values(&rows, |mut row, r| {
            row.push_bind(r.at)
                .push_bind(&r.tenant)
                .push_bind(&r.token_id)
                .push_bind(&r.method)
                .push_bind(&r.path)
                .push_bind(&r.filter)
                .push_bind(r.status)
                .push_bind(&r.scim_type)
                .push_bind(&r.detail)
                .push_bind(r.duration_ms)
                .push_bind(&r.request_id)
                .push_bind(&r.body);
        });
        builder.build().execute(self.pool()).await?;
        Ok(())
    }

    /// A tenant's logged requests matching a query, oldest first.
    pub async fn requests(
        &self,
        tenant: &str,
        query: &RequestQuery,
    ) -> Result<Vec<RequestRow>, StoreError> {
        Ok(sqlx::query_as::<_, RequestRow>(
            "SELECT id, at, tenant, token_id, method, path, filter, status, scim_type, detail, duration_ms, request_id, body
             FROM scim_request
             WHERE tenant = $1 AND ($2::int IS NULL OR status = $2) AND ($3::timestamptz IS NULL OR at >= $3)
               AND ($4::timestamptz IS NULL OR at < $4) AND ($5::bigint IS NULL OR id > $5)
             ORDER BY id LIMIT $6",
        )
        .bind(tenant)
        .bind(query.status)
        .bind(query.from)
        .bind(query.to)
        .bind(query.after)
        .bind(query.limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// A tenant's logged requests whose path names a user (a subject access request), oldest
    /// first.
    pub async fn requests_about(
        &self,
        tenant: &str,
        user: uuid::Uuid,
    ) -> Result<Vec<RequestRow>, StoreError> {
        Ok(sqlx::query_as::<_, RequestRow>(
            "SELECT id, at, tenant, token_id, method, path, filter, status, scim_type, detail, duration_ms, request_id, body
             FROM scim_request WHERE tenant = $1 AND strpos(path, $2) > 0 ORDER BY id",
        )
        .bind(tenant)
        .bind(user.to_string())
        .fetch_all(self.pool())
        .await?)
    }

    /// Deletes log entries older than `before`; returns how many.
    pub async fn prune_requests(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM scim_request WHERE at < $1")
            .bind(before)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    /// Clears what the log holds of an erased user's personal data: in the tenant's entries
    /// about the user (its id in the path) or that name any of `texts` (its values, without
    /// case), the filter and detail become `[erased]` and the body goes. Method, path, status,
    /// time and request id stay: that a request was made is not personal data. How many
    /// entries were cleared.
    #[instrument(skip_all, fields(tenant, user.id = %user, texts = texts.len()), err)]
    pub async fn scrub_request_log(
        &self,
        tenant: &str,
        user: uuid::Uuid,
        texts: &[String],
    ) -> Result<u64, StoreError> {
        let lowered: Vec<String> = texts.iter().map(|text| text.to_lowercase()).collect();
        Ok(sqlx::query(
            "UPDATE scim_request
                SET filter = CASE WHEN filter IS NULL THEN NULL ELSE '[erased]' END,
                    detail = CASE WHEN detail IS NULL THEN NULL ELSE '[erased]' END,
                    body = NULL
              WHERE tenant = $1
                AND (filter IS NOT NULL AND filter <> '[erased]'
                     OR detail IS NOT NULL AND detail <> '[erased]' OR body IS NOT NULL)
                AND (strpos(path, $2) > 0
                     OR EXISTS (SELECT 1 FROM unnest($3::text[]) AS t (text)
                                 WHERE strpos(lower(coalesce(filter, '') || ' ' || coalesce(detail, '')
                                                    || ' ' || coalesce(body::text, '')), t.text) > 0))",
        )
        .bind(tenant)
        .bind(user.to_string())
        .bind(&lowered)
        .execute(self.pool())
        .await?
        .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> RequestRow {
        RequestRow {
            id: 0,
            at: OffsetDateTime::UNIX_EPOCH,
            tenant: Some("t".into()),
            token_id: None,
            method: "GET".into(),
            path: "/scim/v2/Users".into(),
            filter: None,
            status: 200,
            scim_type: None,
            detail: None,
            duration_ms: 1.0,
            request_id: "r".into(),
            body: None,
        }
    }

    #[test]
    fn nul_never_reaches_postgresql_in_any_field() {
        let stored = RequestRow {
            path: "/scim/v2/Users/a\0b".into(),
            filter: Some("userName eq \"a\0b\"".into()),
            detail: Some("\0".into()),
            method: "G\0T".into(),
            body: Some(Json(serde_json::json!({"a\0": ["x\0y", {"k": "\0"}]}))),
            ..row()
        }
        .storable();
        let text = format!("{stored:?}");
        assert!(!text.contains("\\0") && !text.contains('\0'), "{text}");
        assert!(!stored.body.unwrap().0.to_string().contains("\\u0000"));
        assert_eq!(stored.path, "/scim/v2/Users/a\u{FFFD}b");
    }

    #[test]
    fn every_text_field_is_cut_to_its_bound_at_a_character_boundary() {
        let long = "é".repeat(100_000);
        let stored = RequestRow {
            path: long.clone(),
            filter: Some(long.clone()),
            detail: Some(long.clone()),
            method: long.clone(),
            tenant: Some(long.clone()),
            request_id: long.clone(),
            body: Some(Json(Value::String(long))),
            ..row()
        }
        .storable();
        assert!(stored.path.len() <= MAX_PATH_BYTES && stored.path.ends_with('…'));
        assert!(stored.filter.unwrap().len() <= MAX_FILTER_BYTES);
        assert!(stored.detail.unwrap().len() <= MAX_DETAIL_BYTES);
        assert!(stored.method.len() <= MAX_METHOD_BYTES);
        assert!(stored.tenant.unwrap().len() <= MAX_NAME_BYTES);
        assert!(stored.request_id.len() <= MAX_NAME_BYTES);
        assert!(stored.body.unwrap().0.to_string().len() <= MAX_BODY_BYTES);
        assert_eq!(storable("short", 16), "short");
    }
}
