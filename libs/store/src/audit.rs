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
    /// The full W3C trace context.
    pub traceparent: Option<String>,
    /// When it happened.
    pub occurred_at: OffsetDateTime,
    /// The event.
    pub payload: Json<Value>,
    /// The previous link of the tenant's chain.
    pub prev_hash: Vec<u8>,
    /// SHA-256(prev_hash ‖ canonical bytes of the event).
    pub hash: Vec<u8>,
}

/// The columns of an audit row, in `AuditRow` order.
pub const COLUMNS: &str = "sequence, event_id, tenant, aggregate_type, aggregate_id, version, event_type, schema_version, actor, request_id, trace_id, traceparent, occurred_at, payload, prev_hash, hash";

/// Records an event.
pub async fn insert(connection: &mut PgConnection, row: &AuditRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_event (sequence, event_id, tenant, aggregate_type, aggregate_id, version, event_type,
                                  schema_version, actor, request_id, trace_id, traceparent, occurred_at, payload, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
    .bind(&row.traceparent)
    .bind(row.occurred_at)
    .bind(&row.payload)
    .bind(&row.prev_hash)
    .bind(&row.hash)
    .execute(connection)
    .await?;
    Ok(())
}

/// The head of a tenant's chain (sequence and hash), locked until the transaction ends.
pub async fn lock_chain_head(
    connection: &mut PgConnection,
    tenant: &str,
) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT sequence, hash FROM audit_chain WHERE tenant = $1 FOR UPDATE")
            .bind(tenant)
            .fetch_optional(connection)
            .await?,
    )
}

/// Moves a tenant's chain head.
pub async fn set_chain_head(
    connection: &mut PgConnection,
    tenant: &str,
    sequence: i64,
    hash: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_chain (tenant, sequence, hash) VALUES ($1, $2, $3)
         ON CONFLICT (tenant) DO UPDATE SET sequence = EXCLUDED.sequence, hash = EXCLUDED.hash",
    )
    .bind(tenant)
    .bind(sequence)
    .bind(hash)
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
        Ok(sqlx::query_as::<_, AuditRow>(&format!("SELECT {COLUMNS} FROM audit_event WHERE tenant = $1 AND aggregate_id = $2 ORDER BY sequence"))
        .bind(tenant)
        .bind(aggregate_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// The head of a tenant's chain (sequence and hash), if it has events.
    pub async fn chain_head(&self, tenant: &str) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT sequence, hash FROM audit_chain WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// How many events are audited in all.
    pub async fn audit_count(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
            .fetch_one(self.pool())
            .await?;
        Ok(count as u64)
    }
}
