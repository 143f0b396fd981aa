//! The `audit_event` table: every event with its stream sequence, tenant, aggregate, type,
//! actor, time, request, trace and payload.

use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Store, StoreError};

/// One audited event.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AuditRow {
    /// Its stream sequence.
    pub sequence: i64,
    /// The event's id.
    pub event_id: Uuid,
    /// The tenant.
    pub tenant: String,
    /// `user` or `group`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
    /// The aggregate's version after the event.
    pub version: i64,
    /// The event's wire name.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: i32,
    /// Who caused it.
    pub actor: Json<Value>,
    /// The request that caused it.
    pub request_id: Option<String>,
    /// The trace it belongs to.
    pub trace_id: Option<String>,
    /// When it happened.
    pub occurred_at: OffsetDateTime,
    /// The event.
    pub payload: Json<Value>,
}

/// Records an event.
pub async fn insert(connection: &mut PgConnection, row: &AuditRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_event (sequence, event_id, tenant, aggregate_type, aggregate_id, version, event_type,
                                  schema_version, actor, request_id, trace_id, occurred_at, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(row.sequence)
    .bind(row.event_id)
    .bind(&row.tenant)
    .bind(&row.aggregate_type)
    .bind(row.aggregate_id)
    .bind(row.version)
    .bind(&row.event_type)
    .bind(row.schema_version)
    .bind(&row.actor)
    .bind(&row.request_id)
    .bind(&row.trace_id)
    .bind(row.occurred_at)
    .bind(&row.payload)
    .execute(connection)
    .await?;
    Ok(())
}

impl Store {
    /// Every audited event of one aggregate, in stream order.
    pub async fn audit_events(
        &self,
        tenant: &str,
        aggregate_id: Uuid,
    ) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as::<_, AuditRow>(
            "SELECT sequence, event_id, tenant, aggregate_type, aggregate_id, version, event_type, schema_version,
                    actor, request_id, trace_id, occurred_at, payload
             FROM audit_event WHERE tenant = $1 AND aggregate_id = $2 ORDER BY sequence",
        )
        .bind(tenant)
        .bind(aggregate_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// How many events are audited in all.
    pub async fn audit_count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
            .fetch_one(self.pool())
            .await?;
        Ok(count as u64)
    }
}
