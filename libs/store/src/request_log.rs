//! The SCIM request log: every request the SCIM API answered, accepted or refused. Written by
//! the SCIM API only.

use serde_json::Value;
use sqlx::types::Json;
use time::OffsetDateTime;

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
    /// Appends requests to the log.
    pub async fn log_requests(&self, rows: &[RequestRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut builder = sqlx::QueryBuilder::new(
            "INSERT INTO scim_request (at, tenant, token_id, method, path, filter, status, scim_type, detail, duration_ms, request_id, body) ",
        );
        builder.push_values(rows, |mut row, r| {
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

    /// Deletes log entries older than `before`; returns how many.
    pub async fn prune_requests(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM scim_request WHERE at < $1")
            .bind(before)
            .execute(self.pool())
            .await?
            .rows_affected())
    }
}
