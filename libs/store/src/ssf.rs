//! Where each Shared Signals stream's delivery stands (migration 0007): the position on the
//! event stream up to which its receiver has everything, SETs acknowledged beyond it (poll),
//! and the lock that lets one process at a time deliver a stream.

use std::collections::HashSet;

use sqlx::PgConnection;
use tracing::instrument;
use uuid::Uuid;

use crate::{Store, StoreError};

/// A stream's delivery lock: held while its connection lives (a process that dies loses it
/// with its connection). The connection is taken out of the pool (a lock never starves the
/// pool); dropping the lock closes it, which releases the lock.
#[derive(Debug)]
pub struct DeliveryLock {
    connection: Option<PgConnection>,
}

impl DeliveryLock {
    /// Whether the lock's connection still answers (a lock on a dead connection is lost).
    pub async fn alive(&mut self) -> bool {
        match self.connection.as_mut() {
            Some(connection) => sqlx::query("SELECT 1").execute(connection).await.is_ok(),
            None => false,
        }
    }
}

impl Drop for DeliveryLock {
    fn drop(&mut self) {
        // Dropped, the connection's socket closes and its session's advisory lock goes with it.
        drop(self.connection.take());
    }
}

/// The advisory lock key of a stream: the first eight bytes of its id.
fn lock_key(stream: Uuid) -> i64 {
    let bytes = stream.as_bytes();
    i64::from_be_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

impl Store {
    /// Takes the delivery lock of `stream` if no other process holds it (a session-level
    /// advisory lock on a connection of its own).
    #[instrument(skip_all, fields(stream = %stream), err)]
    pub async fn try_lock_delivery(
        &self,
        stream: Uuid,
    ) -> Result<Option<DeliveryLock>, StoreError> {
        let mut connection = self.pool().acquire().await?;
        let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(stream))
            .fetch_one(&mut *connection)
            .await?;
        // Not locked: the connection goes back to the pool holding nothing.
        Ok(locked.then(|| DeliveryLock {
            connection: Some(connection.detach()),
        }))
    }

    /// The position of `stream`: the last event sequence its receiver has everything of.
    pub async fn ssf_position(&self, stream: Uuid) -> Result<Option<u64>, StoreError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT position FROM public.ssf_delivery WHERE stream_id = $1")
                .bind(stream)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|(position,)| position.max(0) as u64))
    }

    /// Moves the position of `stream` forward to `position` (never back), and forgets the
    /// acknowledgements it covers (`covered`).
    #[instrument(skip_all, fields(stream = %stream, position), err)]
    pub async fn advance_ssf_position(
        &self,
        stream: Uuid,
        tenant: &str,
        position: u64,
        covered: &[String],
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO public.ssf_delivery (stream_id, tenant, position) VALUES ($1, $2, $3)
             ON CONFLICT (stream_id) DO UPDATE
             SET position = GREATEST(ssf_delivery.position, EXCLUDED.position), updated_at = now()",
        )
        .bind(stream)
        .bind(tenant)
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .execute(&mut *transaction)
        .await?;
        if !covered.is_empty() {
            sqlx::query("DELETE FROM public.ssf_ack WHERE stream_id = $1 AND jti = ANY($2)")
                .bind(stream)
                .bind(covered)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Records SETs of `stream` its receiver acknowledged.
    #[instrument(skip_all, fields(stream = %stream, acks = jtis.len()), err)]
    pub async fn record_ssf_acks(&self, stream: Uuid, jtis: &[String]) -> Result<(), StoreError> {
        if jtis.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO public.ssf_ack (stream_id, jti) SELECT $1, unnest($2::text[])
             ON CONFLICT DO NOTHING",
        )
        .bind(stream)
        .bind(jtis)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The SETs of `stream` acknowledged beyond its position.
    pub async fn ssf_acks(&self, stream: Uuid) -> Result<HashSet<String>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT jti FROM public.ssf_ack WHERE stream_id = $1")
                .bind(stream)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().map(|(jti,)| jti).collect())
    }

    /// Forgets a deleted stream's delivery state.
    #[instrument(skip_all, fields(stream = %stream), err)]
    pub async fn forget_ssf_stream(&self, stream: Uuid) -> Result<(), StoreError> {
        let mut transaction = self.pool().begin().await?;
        for statement in [
            "DELETE FROM public.ssf_ack WHERE stream_id = $1",
            "DELETE FROM public.ssf_delivery WHERE stream_id = $1",
        ] {
            sqlx::query(statement)
                .bind(stream)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }
}
