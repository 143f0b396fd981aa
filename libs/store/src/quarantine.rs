//! The projector's quarantine: events it could not apply, and the later events of the same
//! aggregate held behind them, until an operator resolves them. Written by the projector only
//! (in its projection transaction); read by the SCIM API (writes to a quarantined resource
//! answer `503`), the access publisher (users a quarantine concerns are denied), `rollcall
//! status` and `rollcall projector quarantine list`.
//!
//! An event is identified by its stream sequence and its position in its message. A commit (one
//! write of several events, one message) is quarantined and resolved as a whole: a row per
//! event, all with the commit's sequence, and [`resolve`] and [`failed_again`] act on all of
//! them.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Store, StoreError};

/// Where a quarantined event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It could not be applied.
    Failed,
    /// An earlier event of its aggregate could not be applied; it waits behind it.
    Held,
    /// Applied on an operator's retry.
    Applied,
    /// Passed over on an operator's instruction.
    Skipped,
}

impl Status {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Failed => "failed",
            Status::Held => "held",
            Status::Applied => "applied",
            Status::Skipped => "skipped",
        }
    }
}

/// One quarantined event.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct QuarantineRow {
    /// Its stream sequence.
    pub sequence: i64,
    /// Its place in its message (0 unless the message is a commit of several events).
    pub position: i32,
    /// Its event id.
    pub event_id: Uuid,
    /// The tenant.
    pub tenant: String,
    /// `user`, `group` (or what the event named).
    pub aggregate_type: String,
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// The event's wire name.
    pub event_type: String,
    /// `failed`, `held`, `applied` or `skipped`.
    pub status: String,
    /// Why it could not be applied (for `held`: behind which sequence).
    pub error: String,
    /// The envelope's JSON bytes.
    pub envelope: Vec<u8>,
    /// Users whose access the event would change.
    pub affected_users: Vec<Uuid>,
    /// Whether its audit record was written.
    pub audited: bool,
    /// How often applying it was tried.
    pub attempts: i32,
    /// When it was quarantined.
    pub quarantined_at: OffsetDateTime,
    /// When it was resolved.
    pub resolved_at: Option<OffsetDateTime>,
    /// The sequence of the operator's event that resolved it.
    pub resolved_by: Option<i64>,
    /// The operator's reason.
    pub resolution: Option<String>,
}

const COLUMNS: &str = "sequence, position, event_id, tenant, aggregate_type, aggregate_id, event_type, status, error, envelope, affected_users, audited, attempts, quarantined_at, resolved_at, resolved_by, resolution";

/// One event to quarantine.
#[derive(Debug, Clone, PartialEq)]
pub struct NewQuarantine<'a> {
    /// Its stream sequence.
    pub sequence: u64,
    /// Its place in its message.
    pub position: u32,
    /// Its event id.
    pub event_id: Uuid,
    /// The tenant.
    pub tenant: &'a str,
    /// The aggregate type.
    pub aggregate_type: &'a str,
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// The event's wire name.
    pub event_type: &'a str,
    /// `Failed` or `Held`.
    pub status: Status,
    /// Why.
    pub error: &'a str,
    /// The envelope's JSON bytes.
    pub envelope: &'a [u8],
    /// Users whose access the event would change.
    pub affected_users: &'a [Uuid],
    /// Whether its audit record was written.
    pub audited: bool,
    /// How often applying it was tried.
    pub attempts: i32,
}

/// PostgreSQL refuses NUL in text; an error message may quote one.
fn storable(text: &str) -> String {
    text.replace('\0', "\\0")
}

/// Records a quarantined event.
pub async fn record(
    connection: &mut PgConnection,
    entry: &NewQuarantine<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO projection_quarantine (sequence, position, event_id, tenant, aggregate_type, aggregate_id, event_type, status, error, envelope, affected_users, audited, attempts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(entry.sequence as i64)
    .bind(entry.position as i32)
    .bind(entry.event_id)
    .bind(storable(entry.tenant))
    .bind(storable(entry.aggregate_type))
    .bind(entry.aggregate_id)
    .bind(storable(entry.event_type))
    .bind(entry.status.as_str())
    .bind(storable(entry.error))
    .bind(entry.envelope)
    .bind(entry.affected_users)
    .bind(entry.audited)
    .bind(entry.attempts)
    .execute(connection)
    .await?;
    Ok(())
}

/// Every aggregate with an unresolved quarantine: `(tenant, aggregate id)`.
pub async fn open_aggregates(
    connection: &mut PgConnection,
) -> Result<Vec<(String, Uuid)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT tenant, aggregate_id FROM projection_quarantine WHERE resolved_at IS NULL",
    )
    .fetch_all(connection)
    .await?)
}

/// An aggregate's unresolved quarantined events, oldest first, locked.
pub async fn unresolved(
    connection: &mut PgConnection,
    tenant: &str,
    aggregate_id: Uuid,
) -> Result<Vec<QuarantineRow>, StoreError> {
    Ok(sqlx::query_as::<_, QuarantineRow>(&format!(
        "SELECT {COLUMNS} FROM projection_quarantine
         WHERE tenant = $1 AND aggregate_id = $2 AND resolved_at IS NULL ORDER BY sequence, position FOR UPDATE"
    ))
    .bind(tenant)
    .bind(aggregate_id)
    .fetch_all(connection)
    .await?)
}

/// Resolves the quarantined message at `sequence`: its event, or every event of its commit.
pub async fn resolve(
    connection: &mut PgConnection,
    sequence: i64,
    status: Status,
    by: u64,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE projection_quarantine SET status = $2, resolved_at = now(), resolved_by = $3, resolution = $4
         WHERE sequence = $1",
    )
    .bind(sequence)
    .bind(status.as_str())
    .bind(by as i64)
    .bind(storable(reason))
    .execute(connection)
    .await?;
    Ok(())
}

/// Records another failed attempt at an unresolved message, every event of a commit (it becomes
/// the one that failed).
pub async fn failed_again(
    connection: &mut PgConnection,
    sequence: i64,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE projection_quarantine SET status = 'failed', error = $2, attempts = attempts + 1 WHERE sequence = $1",
    )
    .bind(sequence)
    .bind(storable(error))
    .execute(connection)
    .await?;
    Ok(())
}

/// Whether a user's access is uncertain because of an unresolved quarantine (of the user, or
/// of a group event naming them).
pub async fn concerns_user(
    connection: &mut PgConnection,
    tenant: &str,
    user: Uuid,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM projection_quarantine
                        WHERE tenant = $1 AND resolved_at IS NULL AND (aggregate_id = $2 OR $2 = ANY (affected_users)))",
    )
    .bind(tenant)
    .bind(user)
    .fetch_one(connection)
    .await?)
}

impl Store {
    /// The quarantined events (unresolved only, unless `all`), oldest first.
    pub async fn quarantine(&self, all: bool) -> Result<Vec<QuarantineRow>, StoreError> {
        Ok(sqlx::query_as::<_, QuarantineRow>(&format!(
            "SELECT {COLUMNS} FROM projection_quarantine WHERE $1 OR resolved_at IS NULL ORDER BY sequence, position"
        ))
        .bind(all)
        .fetch_all(self.pool())
        .await?)
    }

    /// The quarantined message at `sequence`: its event, or the first event of its commit.
    pub async fn quarantined(&self, sequence: u64) -> Result<Option<QuarantineRow>, StoreError> {
        Ok(sqlx::query_as::<_, QuarantineRow>(&format!(
            "SELECT {COLUMNS} FROM projection_quarantine WHERE sequence = $1 ORDER BY position LIMIT 1"
        ))
        .bind(sequence as i64)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The unresolved quarantine of one aggregate: the event that failed (its sequence and
    /// type), if any.
    pub async fn quarantine_of(
        &self,
        tenant: &str,
        aggregate_id: Uuid,
    ) -> Result<Option<(i64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT sequence, event_type FROM projection_quarantine
             WHERE tenant = $1 AND aggregate_id = $2 AND resolved_at IS NULL ORDER BY sequence, position LIMIT 1",
        )
        .bind(tenant)
        .bind(aggregate_id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Whether an unresolved quarantine concerns a user's access.
    pub async fn quarantine_concerns_user(
        &self,
        tenant: &str,
        user: Uuid,
    ) -> Result<bool, StoreError> {
        let mut connection = self.pool().acquire().await?;
        concerns_user(&mut connection, tenant, user).await
    }

    /// The tenants whose read model does not hold every event of theirs in the stream: an
    /// event of theirs is quarantined, held behind one, or was skipped.
    pub async fn tenants_behind_stream(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT tenant FROM projection_quarantine WHERE status <> 'applied'",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// How many events are quarantined and unresolved.
    pub async fn quarantine_open(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM projection_quarantine WHERE resolved_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?)
    }
}

/// The users that are direct members of a group now (ids that are not UUIDs are not users).
pub async fn member_users(
    connection: &mut PgConnection,
    tenant: &str,
    group: Uuid,
) -> Result<Vec<Uuid>, StoreError> {
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT member_key FROM group_member WHERE tenant = $1 AND group_id = $2",
    )
    .bind(tenant)
    .bind(group)
    .fetch_all(connection)
    .await?;
    Ok(keys
        .iter()
        .filter_map(|key| Uuid::parse_str(key).ok())
        .collect())
}
