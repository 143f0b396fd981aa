//! Who projects which partition: PostgreSQL advisory locks decide, never Rollcall.
//!
//! - A partition's lease is a session-level advisory lock on the projector's schema and name,
//!   held by a connection of its own for as long as it projects. A process that dies (`kill -9`
//!   included) loses its connection, and so the lock, at once; standbys ask every second.
//! - Each projector process also holds a shared advisory lock (its membership) for as long as
//!   it runs, so that the number of projector processes can be counted from `pg_locks`. A
//!   process takes partitions up to its fair share (`ceil(P / processes)`) and gives back what
//!   it holds beyond it, so that several processes share the partitions between them.
//!
//! Every lock connection names its process (`application_name`), so that `rollcall status`
//! shows which process on which host holds each partition.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollcall_store::{Store, StoreError};
use sqlx::PgConnection;
use tracing::warn;

/// How often a standby asks for a lease, and a holder checks its connection and its share.
pub const LEASE_POLL: Duration = Duration::from_secs(1);

/// The advisory-lock key (hashed by PostgreSQL) of projector `name` over `schema`.
pub fn lease_key(schema: &str, name: &str) -> String {
    format!("rollcall projector {schema}.{name}")
}

/// The advisory-lock key every projector process of `schema` with `partitions` partitions
/// holds shared (a process started before the partitioning changed counts for no one).
pub fn membership_key(schema: &str, partitions: u16) -> String {
    format!("rollcall projectors {schema} of {partitions}")
}

/// What this process says it is, on every lock connection.
pub fn application_name() -> String {
    let host = hostname();
    let name = format!("rollcall projector pid={} host={host}", std::process::id());
    // PostgreSQL keeps 63 bytes of it.
    name.chars().take(63).collect()
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

async fn lock_connection(store: &Store) -> Result<PgConnection, StoreError> {
    let mut connection = store.admin_connection().await?;
    sqlx::query("SELECT set_config('application_name', $1, false)")
        .bind(application_name())
        .execute(&mut connection)
        .await?;
    Ok(connection)
}

/// A partition's lease: a session-level advisory lock held by a connection of its own.
#[derive(Debug)]
pub struct Lease(PgConnection);

impl Lease {
    /// Takes the lease `key` if no one holds it.
    pub async fn try_take(store: &Store, key: &str) -> Result<Option<Self>, StoreError> {
        match tokio::time::timeout(LEASE_POLL * 3, Self::take(store, key)).await {
            Ok(taken) => taken,
            Err(_) => Err(StoreError::Invalid(
                "PostgreSQL did not answer in time".into(),
            )),
        }
    }

    async fn take(store: &Store, key: &str) -> Result<Option<Self>, StoreError> {
        let mut connection = lock_connection(store).await?;
        let taken: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(key)
                .fetch_one(&mut connection)
                .await?;
        Ok(taken.then_some(Self(connection)))
    }

    /// Resolves when the lease's connection fails (the lock is then gone).
    pub async fn lost(&mut self) {
        loop {
            tokio::time::sleep(LEASE_POLL).await;
            // A half-open connection may never answer: no answer within a poll is a loss too.
            let probe = sqlx::query("SELECT 1").execute(&mut self.0);
            if !matches!(tokio::time::timeout(LEASE_POLL, probe).await, Ok(Ok(_))) {
                return;
            }
        }
    }

    /// Gives the lease back at once (closing its connection releases the lock).
    pub async fn release(self) {
        use sqlx::Connection;
        let _ = tokio::time::timeout(LEASE_POLL, self.0.close()).await;
    }
}

/// This process's part among the projector processes of one read-model schema: its
/// membership, and the partitions it holds.
#[derive(Debug, Clone)]
pub struct Share {
    inner: Arc<ShareInner>,
}

#[derive(Debug)]
struct ShareInner {
    store: Store,
    partitions: u16,
    key: String,
    membership: tokio::sync::Mutex<Option<PgConnection>>,
    held: Mutex<BTreeSet<u16>>,
}

impl Share {
    /// This process's share of `partitions` partitions over `store`'s schema.
    pub fn new(store: Store, partitions: u16) -> Self {
        let key = membership_key(store.schema(), partitions.max(1));
        Self {
            inner: Arc::new(ShareInner {
                store,
                partitions: partitions.max(1),
                key,
                membership: tokio::sync::Mutex::new(None),
                held: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeSet<u16>> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that this process holds partition `index`.
    pub fn hold(&self, index: u16) {
        self.held().insert(index);
    }

    /// Records that this process no longer holds partition `index`.
    pub fn drop_partition(&self, index: u16) {
        self.held().remove(&index);
    }

    /// How many projector processes run on this schema (this one included), keeping this
    /// process's membership lock (taking it again after a lost connection). Bounded in time:
    /// a PostgreSQL that does not answer is an error, not a wait.
    pub async fn processes(&self) -> Result<u16, StoreError> {
        match tokio::time::timeout(LEASE_POLL * 3, self.count_processes()).await {
            Ok(result) => result,
            Err(_) => {
                // The connection may be stuck: take the membership again next time.
                *self.inner.membership.lock().await = None;
                Err(StoreError::Invalid(
                    "PostgreSQL did not answer in time".into(),
                ))
            }
        }
    }

    async fn count_processes(&self) -> Result<u16, StoreError> {
        let mut membership = self.inner.membership.lock().await;
        let alive = match membership.as_mut() {
            Some(connection) => {
                let probe = sqlx::query("SELECT 1").execute(&mut *connection);
                matches!(tokio::time::timeout(LEASE_POLL, probe).await, Ok(Ok(_)))
            }
            None => false,
        };
        if !alive {
            let mut connection = lock_connection(&self.inner.store).await?;
            sqlx::query("SELECT pg_advisory_lock_shared(hashtextextended($1, 0))")
                .bind(&self.inner.key)
                .execute(&mut connection)
                .await?;
            *membership = Some(connection);
        }
        let connection = membership
            .as_mut()
            .ok_or_else(|| StoreError::Invalid("no membership connection".into()))?;
        let count: i64 = sqlx::query_scalar(COUNT_HOLDERS)
            .bind(&self.inner.key)
            .fetch_one(&mut *connection)
            .await?;
        Ok(count.clamp(1, i64::from(u16::MAX)) as u16)
    }

    /// The most partitions this process should hold now: `ceil(P / processes)`.
    pub async fn fair_share(&self) -> u16 {
        match self.processes().await {
            Ok(processes) => self.inner.partitions.div_ceil(processes),
            Err(error) => {
                warn!(error = %error, "cannot count the projector processes; keeping what this process holds");
                self.held().len() as u16
            }
        }
    }

    /// Whether this process may take one more partition.
    pub async fn may_take(&self) -> bool {
        let share = self.fair_share().await;
        (self.held().len() as u16) < share
    }

    /// Whether this process holds more than its share and partition `index` is one it should
    /// give back (the highest it holds go first).
    pub async fn should_give_back(&self, index: u16) -> bool {
        let share = self.fair_share().await;
        let held = self.held();
        let excess = (held.len() as u16).saturating_sub(share);
        excess > 0
            && held
                .iter()
                .rev()
                .take(usize::from(excess))
                .any(|&i| i == index)
    }
}

/// Counts the sessions holding an advisory lock on key `$1` (hashed as the locks hash it) in
/// this database.
pub const COUNT_HOLDERS: &str = "
    WITH k AS (SELECT hashtextextended($1, 0) AS key)
    SELECT count(*) FROM pg_locks, k
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = ((k.key >> 32) & 4294967295)::oid
      AND objid = (k.key & 4294967295)::oid";

/// The process (its `application_name`) holding the exclusive advisory lock on key `$1`, if any.
pub const HOLDER: &str = "
    WITH k AS (SELECT hashtextextended($1, 0) AS key)
    SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid, k
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.mode = 'ExclusiveLock'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((k.key >> 32) & 4294967295)::oid
      AND l.objid = (k.key & 4294967295)::oid
    LIMIT 1";

/// Every process (`application_name`) holding the shared advisory lock on key `$1`.
pub const MEMBERS: &str = "
    WITH k AS (SELECT hashtextextended($1, 0) AS key)
    SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid, k
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.mode = 'ShareLock'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((k.key >> 32) & 4294967295)::oid
      AND l.objid = (k.key & 4294967295)::oid
    ORDER BY a.application_name";

/// The holder of each partition's lease and the projector processes, for `rollcall status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    /// Per partition name: the process holding its lease, if any.
    pub active: Vec<(String, Option<String>)>,
    /// Every projector process running on the schema.
    pub processes: Vec<String>,
}

/// Reads who holds what, for projector names `names` (the installation's partitions) over
/// `store`'s schema.
pub async fn holders(store: &Store, names: &[String]) -> Result<Holders, StoreError> {
    let partitions = u16::try_from(names.len()).unwrap_or(u16::MAX);
    let mut connection = store.pool().acquire().await?;
    let mut active = Vec::with_capacity(names.len());
    for name in names {
        let holder: Option<String> = sqlx::query_scalar(HOLDER)
            .bind(lease_key(store.schema(), name))
            .fetch_optional(&mut *connection)
            .await?;
        active.push((name.clone(), holder));
    }
    let processes: Vec<String> = sqlx::query_scalar(MEMBERS)
        .bind(membership_key(store.schema(), partitions))
        .fetch_all(&mut *connection)
        .await?;
    Ok(Holders { active, processes })
}
