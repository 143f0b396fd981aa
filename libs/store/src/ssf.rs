//! Where each Shared Signals stream's delivery stands (migration 0007): the position on the
//! event stream up to which its receiver has everything, SETs acknowledged beyond it (poll),
//! and the lock that lets one process at a time deliver a stream.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tracing::instrument;
use uuid::Uuid;

use crate::{Store, StoreError};

/// This process's delivery locks: session-level advisory locks, all on one connection of their
/// own (outside the pool, so locks never starve it). A process that dies loses its locks with
/// that connection; dropping the last clone closes it.
///
/// A lock is a [`Lease`] of one session (a generation): once the session is lost (a failed
/// query, a ping that fails, a query cancelled half-way) every lease of it is void, and
/// [`DeliveryLocks::advance`] refuses to move a position for a void lease, so a delivery that
/// lost its lock cannot write over the one that took it over.
#[derive(Debug, Clone)]
pub struct DeliveryLocks {
    session: Arc<tokio::sync::Mutex<LockSession>>,
    options: PgConnectOptions,
}

#[derive(Debug, Default)]
struct LockSession {
    connection: Option<PgConnection>,
    generation: u64,
    held: HashSet<Uuid>,
    pinged: Option<Instant>,
    /// A query was started and not finished (its future was dropped): the connection's state
    /// is unknown, so it is replaced.
    in_flight: bool,
}

/// A stream's delivery lock, held by one session of [`DeliveryLocks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The stream.
    pub stream: Uuid,
    generation: u64,
}

/// How long a query of the lock session may take before the session is given up.
const QUERY_WAIT: Duration = Duration::from_secs(5);

/// `query`, given up (as an IO error) after [`QUERY_WAIT`].
async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(QUERY_WAIT, query)
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::Io(std::io::ErrorKind::TimedOut.into())))
}

/// How often a lease's session is pinged at most.
const PING_EVERY: Duration = Duration::from_secs(1);

impl LockSession {
    /// Forgets the session: every lease of it is void (the server releases its locks when it
    /// sees the connection close).
    fn lose(&mut self) {
        self.connection = None;
        self.generation += 1;
        self.held.clear();
        self.in_flight = false;
    }

    async fn connection(
        &mut self,
        options: &PgConnectOptions,
    ) -> Result<&mut PgConnection, StoreError> {
        if self.in_flight {
            self.lose();
        }
        if self.connection.is_none() {
            self.lose();
            let mut connection = bounded(PgConnection::connect_with(options)).await?;
            // The server notices a client gone without closing (a network partition) within
            // about 25 s and releases its locks, instead of after the system's TCP timeout.
            bounded(
                sqlx::query(
                    "SELECT set_config('tcp_keepalives_idle', '10', false),
                            set_config('tcp_keepalives_interval', '5', false),
                            set_config('tcp_keepalives_count', '3', false)",
                )
                .execute(&mut connection),
            )
            .await?;
            self.connection = Some(connection);
            self.pinged = Some(Instant::now());
        }
        self.in_flight = true;
        self.connection
            .as_mut()
            .ok_or_else(|| StoreError::Corrupt("no lock connection".into()))
    }

    fn done<T>(&mut self, result: Result<T, sqlx::Error>) -> Result<T, StoreError> {
        self.in_flight = false;
        if result.is_err() {
            self.lose();
        }
        Ok(result?)
    }

    fn valid(&self, lease: &Lease) -> bool {
        !self.in_flight && lease.generation == self.generation && self.held.contains(&lease.stream)
    }
}

/// The advisory lock key of a stream: the first eight bytes of its id.
fn lock_key(stream: Uuid) -> i64 {
    let bytes = stream.as_bytes();
    i64::from_be_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

impl DeliveryLocks {
    /// Takes the lock of every stream of `streams` that no process holds, in one query: the
    /// leases taken.
    #[instrument(skip_all, fields(streams = streams.len()), err)]
    pub async fn try_lock_all(&self, streams: &[Uuid]) -> Result<Vec<Lease>, StoreError> {
        let mut session = self.session.lock().await;
        let by_key: HashMap<i64, Uuid> = streams
            .iter()
            .filter(|stream| !session.held.contains(stream))
            .map(|stream| (lock_key(*stream), *stream))
            .collect();
        if by_key.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<i64> = by_key.keys().copied().collect();
        let connection = session.connection(&self.options).await?;
        let result: Result<Vec<(i64,)>, _> = bounded(
            sqlx::query_as(
                "SELECT key FROM unnest($1::bigint[]) AS key WHERE pg_try_advisory_lock(key)",
            )
            .bind(keys)
            .fetch_all(connection),
        )
        .await;
        let locked = session.done(result)?;
        let generation = session.generation;
        Ok(locked
            .into_iter()
            .filter_map(|(key,)| by_key.get(&key).copied())
            .map(|stream| {
                session.held.insert(stream);
                Lease { stream, generation }
            })
            .collect())
    }

    /// Whether `lease` still holds: not released, and its session alive (pinged at most once a
    /// second).
    pub async fn holds(&self, lease: &Lease) -> bool {
        let mut session = self.session.lock().await;
        if !session.valid(lease) {
            return false;
        }
        if session.pinged.is_some_and(|at| at.elapsed() < PING_EVERY) {
            return true;
        }
        let Ok(connection) = session.connection(&self.options).await else {
            return false;
        };
        let result = bounded(sqlx::query("SELECT 1").execute(connection)).await;
        if session.done(result).is_err() {
            return false;
        }
        session.pinged = Some(Instant::now());
        session.valid(lease)
    }

    /// Moves the position of the lease's stream forward to `position` (never back), on the
    /// lease's own session: `false` (nothing written) if the lease no longer holds.
    #[instrument(skip_all, fields(stream = %lease.stream, position), err)]
    pub async fn advance(
        &self,
        lease: &Lease,
        tenant: &str,
        position: u64,
    ) -> Result<bool, StoreError> {
        let mut session = self.session.lock().await;
        if !session.valid(lease) {
            return Ok(false);
        }
        session.connection(&self.options).await?;
        if session.generation != lease.generation {
            // The session was replaced on the way: the lock is gone.
            session.in_flight = false;
            return Ok(false);
        }
        let connection = match session.connection.as_mut() {
            Some(connection) => connection,
            None => return Ok(false),
        };
        let result = bounded(
            sqlx::query(ADVANCE)
                .bind(lease.stream)
                .bind(tenant)
                .bind(i64::try_from(position).unwrap_or(i64::MAX))
                .execute(connection),
        )
        .await;
        session.done(result)?;
        session.pinged = Some(Instant::now());
        Ok(session.valid(lease))
    }

    /// Gives the lock back.
    pub async fn release(&self, lease: Lease) {
        let mut session = self.session.lock().await;
        if !session.valid(&lease) {
            return;
        }
        session.held.remove(&lease.stream);
        if let Ok(connection) = session.connection(&self.options).await {
            let result = bounded(
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(lock_key(lease.stream))
                    .execute(connection),
            )
            .await;
            let _ = session.done(result);
        }
    }
}

/// Moves a position forward (never back).
const ADVANCE: &str =
    "INSERT INTO public.ssf_delivery (stream_id, tenant, position) VALUES ($1, $2, $3)
     ON CONFLICT (stream_id) DO UPDATE
     SET position = GREATEST(ssf_delivery.position, EXCLUDED.position), updated_at = now()";

impl Store {
    /// This process's delivery locks (call once per process: each call opens a session of
    /// its own).
    pub fn delivery_locks(&self) -> DeliveryLocks {
        DeliveryLocks {
            session: Arc::default(),
            options: self.options.clone(),
        }
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
        let mut transaction = self.begin().await?;
        sqlx::query(ADVANCE)
            .bind(stream)
            .bind(tenant)
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .execute(&mut *transaction)
            .await?;
        // The acknowledgements the position now covers, and any older than a week (of SETs
        // another process's cursor had already passed).
        sqlx::query(
            "DELETE FROM public.ssf_ack WHERE stream_id = $1
             AND (jti = ANY($2) OR acked_at < now() - interval '7 days')",
        )
        .bind(stream)
        .bind(covered)
        .execute(&mut *transaction)
        .await?;
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

    /// Forgets a deleted stream's acknowledgements and leaves its position at the end of
    /// time (a tombstone: a process that has not yet read the deletion delivers nothing).
    #[instrument(skip_all, fields(stream = %stream), err)]
    pub async fn forget_ssf_stream(&self, stream: Uuid) -> Result<(), StoreError> {
        let mut transaction = self.begin().await?;
        for statement in [
            "DELETE FROM public.ssf_ack WHERE stream_id = $1",
            "UPDATE public.ssf_delivery SET position = 9223372036854775807, updated_at = now() WHERE stream_id = $1",
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
