//! Projection checkpoints: the last stream sequence a projection applied, written in the same
//! transaction as its effects.

use sqlx::PgConnection;

use crate::{Store, StoreError};

/// The checkpoint of projection `name` (0 if it never ran).
pub async fn get(connection: &mut PgConnection, name: &str) -> Result<u64, StoreError> {
    let sequence: Option<i64> =
        sqlx::query_scalar("SELECT sequence FROM projection_checkpoint WHERE name = $1")
            .bind(name)
            .fetch_optional(connection)
            .await?;
    Ok(sequence.unwrap_or(0).max(0) as u64)
}

/// A checkpoint as a transaction locked or wrote it: its sequence, and the transaction that
/// wrote it last (PostgreSQL's `xmin`), by which a projector tells whether anything but itself
/// wrote it since it did (a rebuild's swap brings a checkpoint row of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// The last stream sequence applied.
    pub sequence: u64,
    /// The transaction that wrote the row last.
    pub written_by: u64,
}

impl Locked {
    fn from_row((sequence, written_by): (i64, i64)) -> Self {
        Self {
            sequence: sequence.max(0) as u64,
            written_by: written_by as u64,
        }
    }
}

/// The checkpoint, locked until the transaction ends (one projector instance at a time).
pub async fn lock(connection: &mut PgConnection, name: &str) -> Result<Locked, StoreError> {
    const LOCK: &str =
        "SELECT sequence, xmin::text::bigint FROM projection_checkpoint WHERE name = $1 FOR UPDATE";
    // One statement once the row exists (every batch but a projector's first).
    let found: Option<(i64, i64)> = sqlx::query_as(LOCK)
        .bind(name)
        .fetch_optional(&mut *connection)
        .await?;
    let row = match found {
        Some(row) => row,
        None => {
            sqlx::query("INSERT INTO projection_checkpoint (name, sequence) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .execute(&mut *connection)
                .await?;
            sqlx::query_as(LOCK)
                .bind(name)
                .fetch_one(connection)
                .await?
        }
    };
    Ok(Locked::from_row(row))
}

/// The checkpoint, locked as [`lock`] locks it, and the installation's partition count, held
/// as [`crate::partition::hold`] holds it: one statement once the row exists (a live
/// projector's every batch).
pub async fn lock_holding_partitions(
    connection: &mut PgConnection,
    name: &str,
) -> Result<(Locked, u16), StoreError> {
    let found: Option<(i64, i64, Option<i32>)> = sqlx::query_as(
        "SELECT c.sequence, c.xmin::text::bigint,
                (SELECT partitions FROM rollcall_partitioning FOR SHARE)
         FROM projection_checkpoint c WHERE c.name = $1 FOR UPDATE OF c",
    )
    .bind(name)
    .fetch_optional(&mut *connection)
    .await?;
    match found {
        Some((sequence, written_by, partitions)) => Ok((
            Locked::from_row((sequence, written_by)),
            crate::partition::count(partitions),
        )),
        None => {
            let locked = lock(&mut *connection, name).await?;
            Ok((locked, crate::partition::hold(connection).await?))
        }
    }
}

/// Sets the checkpoint.
pub async fn set(
    connection: &mut PgConnection,
    name: &str,
    sequence: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO projection_checkpoint (name, sequence, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (name) DO UPDATE SET sequence = EXCLUDED.sequence, updated_at = now()",
    )
    .bind(name)
    .bind(sequence as i64)
    .execute(connection)
    .await?;
    Ok(())
}

/// A checkpoint as [`set_saying_quarantined`] wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Whether any event is quarantined and unresolved as of it.
    pub quarantined: bool,
    /// The transaction that wrote it (this one): what [`Locked::written_by`] says until anything
    /// else writes the row.
    pub written_by: u64,
}

/// Sets the checkpoint as [`set`] does, and says whether any event is quarantined and
/// unresolved as of it: this transaction's own quarantines and resolutions included, and every
/// other projector's (each commits before this one holds the checkpoint's lock).
pub async fn set_saying_quarantined(
    connection: &mut PgConnection,
    name: &str,
    sequence: u64,
) -> Result<Saved, StoreError> {
    let (quarantined, written_by): (bool, i64) = sqlx::query_as(
        "INSERT INTO projection_checkpoint (name, sequence, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (name) DO UPDATE SET sequence = EXCLUDED.sequence, updated_at = now()
         RETURNING EXISTS (SELECT 1 FROM projection_quarantine WHERE resolved_at IS NULL),
                   xmin::text::bigint",
    )
    .bind(name)
    .bind(sequence as i64)
    .fetch_one(connection)
    .await?;
    Ok(Saved {
        quarantined,
        written_by: written_by as u64,
    })
}

impl Store {
    /// The checkpoint of projection `name` (0 if it never ran).
    pub async fn checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        let mut connection = self.pool().acquire().await?;
        get(&mut connection, name).await
    }

    /// How far projection `name` of partition `index` of `partitions` is applied **and** its
    /// access state published: its checkpoint, or just below the oldest outbox entry of the
    /// partition still waiting for publication (entries leave the outbox once published), read
    /// in one statement, as of the same commits. The oldest entry is found by the outbox's
    /// index on the sequence: a read of one entry, or of about as many as there are
    /// partitions, unless other partitions alone have a backlog.
    pub async fn published_checkpoint(
        &self,
        name: &str,
        index: u16,
        partitions: u16,
    ) -> Result<u64, StoreError> {
        let sequence: Option<i64> = sqlx::query_scalar(
            "SELECT LEAST(
                 COALESCE((SELECT sequence FROM projection_checkpoint WHERE name = $1), 0),
                 (SELECT sequence - 1 FROM access_outbox
                   WHERE $2 <= 1 OR rollcall_partition(tenant, $2) = $3
                   ORDER BY sequence LIMIT 1))",
        )
        .bind(name)
        .bind(i32::from(partitions))
        .bind(i32::from(index))
        .fetch_one(self.pool())
        .await?;
        Ok(sequence.unwrap_or(0).max(0) as u64)
    }
}
