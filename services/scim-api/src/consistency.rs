//! Read-your-writes: a write answers only once the projector's checkpoint has reached the
//! write's stream sequence, so that Entra's create-then-lookup never misses. The checkpoint
//! arrives by the projector's NATS announcements, with a PostgreSQL poll as a fallback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rollcall_eventlog::namespace::QUARANTINE_CLEAR_HEADER;
use rollcall_eventlog::partition::{Partition, Partitioning};
use rollcall_eventlog::Namespace;
use rollcall_store::Store;
use tokio::sync::watch;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::error::ApiError;

/// How long a write waits for the read model (and the access service) before it answers
/// `503` with `Retry-After`.
pub const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// Subscribes to `consumer`'s checkpoint announcements, advancing `sender` with each and
/// noting in `clear` whether the newest says nothing is quarantined.
async fn listen(
    client: &async_nats::Client,
    namespace: &Namespace,
    consumer: &str,
    sender: Arc<watch::Sender<u64>>,
    clear: Arc<AtomicU64>,
) -> Result<(), async_nats::SubscribeError> {
    let mut announcements = client
        .subscribe(namespace.checkpoint_subject(consumer))
        .await?;
    tokio::spawn(async move {
        while let Some(message) = announcements.next().await {
            if let Some(sequence) = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                let vouched = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(QUARANTINE_CLEAR_HEADER))
                    .is_some_and(|v| v.as_str() == "1");
                heard_clear(&clear, *sender.borrow(), sequence, vouched);
                advance(&sender, sequence);
            }
        }
    });
    Ok(())
}

/// Records what an announcement of `sequence` says of the quarantine, `current` being the
/// checkpoint before it: `clear` holds the sequence of the newest announcement if it said
/// nothing is quarantined, else 0. An older announcement than the checkpoint says nothing.
fn heard_clear(clear: &AtomicU64, current: u64, sequence: u64, vouched: bool) {
    if sequence >= current {
        clear.store(if vouched { sequence } else { 0 }, Ordering::Relaxed);
    }
}

/// Whether the newest announcement said nothing is quarantined as of a checkpoint that holds
/// `sequence` and is still the newest seen (`clear` as [`heard_clear`] keeps it).
fn vouched_clear(clear: u64, current: u64, sequence: u64) -> bool {
    clear > 0 && clear >= sequence && clear >= current
}

/// The header naming the access service that announces (as the access service sets it).
const ACCESS_REPLICA_HEADER: &str = rollcall_eventlog::access::REPLICA_HEADER;

/// How long an access service may be silent before writes stop waiting for it.
pub const REPLICA_SILENCE: Duration = Duration::from_secs(3);

/// Records an announcement (if any) and sets the checkpoint to the lowest of the access
/// services heard from within [`REPLICA_SILENCE`] (unchanged while none is).
fn heard(
    sender: &watch::Sender<u64>,
    replicas: &std::sync::Mutex<HashMap<String, (u64, Instant)>>,
    announcement: Option<(String, u64)>,
) {
    let mut replicas = replicas
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    if let Some((replica, sequence)) = announcement {
        let entry = replicas.entry(replica).or_insert((0, now));
        *entry = (entry.0.max(sequence), now);
    }
    replicas.retain(|_, (_, at)| now.duration_since(*at) < REPLICA_SILENCE);
    if let Some(lowest) = replicas.values().map(|(sequence, _)| *sequence).min() {
        sender.send_if_modified(|current| {
            let changed = *current != lowest;
            *current = lowest;
            changed
        });
    }
}

/// Moves the checkpoint forward (never back: announcements and polls may arrive out of order).
fn advance(sender: &watch::Sender<u64>, sequence: u64) {
    sender.send_if_modified(|current| {
        let newer = sequence > *current;
        if newer {
            *current = sequence;
        }
        newer
    });
}

/// How often a SCIM API reads the projector's checkpoint in PostgreSQL.
const POLL: Duration = Duration::from_millis(250);

/// The projector's checkpoint as this process last saw it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    receiver: watch::Receiver<u64>,
    /// A projector's: the newest announcement's sequence if it said nothing is quarantined,
    /// else 0. `None` for the access services (they do not know).
    clear: Option<Arc<AtomicU64>>,
    /// What it follows, for the logs: `projector <name>` or `access services <name>`.
    follows: String,
}

impl Checkpoint {
    /// Follows the access services' announcements: each names itself (header
    /// `Rollcall-Access-Replica`) and announces its applied sequence every second and on
    /// change. The checkpoint is the lowest of those heard from within
    /// [`REPLICA_SILENCE`], so that a write waits until every live access service applied it;
    /// one that stops announcing (it stopped, or lost NATS) drops out after that time.
    pub async fn follow_access_services(
        client: async_nats::Client,
        namespace: &Namespace,
        consumer: &str,
    ) -> Self {
        let (sender, receiver) = watch::channel(0);
        let sender = Arc::new(sender);
        let replicas: Arc<std::sync::Mutex<HashMap<String, (u64, Instant)>>> = Arc::default();
        match client
            .subscribe(namespace.checkpoint_subject(consumer))
            .await
        {
            Ok(mut announcements) => {
                let (sender, replicas) = (sender.clone(), replicas.clone());
                tokio::spawn(async move {
                    while let Some(message) = announcements.next().await {
                        let Some(sequence) = std::str::from_utf8(&message.payload)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                        else {
                            continue;
                        };
                        let replica = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(ACCESS_REPLICA_HEADER))
                            .map(|v| v.as_str().to_owned())
                            .unwrap_or_default();
                        heard(&sender, &replicas, Some((replica, sequence)));
                    }
                });
            }
            Err(error) => warn!(error = %error, "cannot follow the access services' announcements"),
        }
        // Replicas that fell silent drop out even when no one else announces.
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(500));
            loop {
                interval.tick().await;
                if sender.is_closed() {
                    return;
                }
                heard(&sender, &replicas, None);
            }
        });
        Self {
            receiver,
            clear: None,
            follows: format!("access services {consumer}"),
        }
    }

    /// Follows the projector named `projector` of `partition` by its announcements, and by
    /// polling PostgreSQL every 250 ms for announcements that were lost: the poll counts only
    /// what is applied and whose access state is published (as an announcement does); stops
    /// when the client closes.
    pub async fn follow(
        client: async_nats::Client,
        namespace: &Namespace,
        store: Store,
        projector: &str,
        partition: Partition,
    ) -> Self {
        let published = move |store: Store, projector: String| async move {
            store
                .published_checkpoint(&projector, partition.index(), partition.count())
                .await
        };
        let initial = published(store.clone(), projector.to_owned())
            .await
            .unwrap_or(0);
        let (sender, receiver) = watch::channel(initial);
        let sender = Arc::new(sender);
        let clear = Arc::new(AtomicU64::new(0));
        if let Err(error) =
            listen(&client, namespace, projector, sender.clone(), clear.clone()).await
        {
            warn!(error = %error, "cannot follow checkpoint announcements; polling only");
        }
        let follows = format!("projector {projector}");
        let projector = projector.to_owned();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(POLL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if sender.is_closed() {
                    return;
                }
                if let Ok(sequence) = published(store.clone(), projector.clone()).await {
                    advance(&sender, sequence);
                }
            }
        });
        Self {
            receiver,
            clear: Some(clear),
            follows,
        }
    }

    /// Whether this projector said nothing is quarantined as of a checkpoint that holds
    /// `sequence` and is the newest this process saw.
    pub fn vouches_clear(&self, sequence: u64) -> bool {
        self.clear.as_ref().is_some_and(|clear| {
            vouched_clear(clear.load(Ordering::Relaxed), self.current(), sequence)
        })
    }

    /// Waits until the checkpoint reaches `sequence`, or the timeout; returns whether it did.
    pub async fn wait_for(&self, sequence: u64) -> bool {
        let mut receiver = self.receiver.clone();
        let reached = tokio::time::timeout(
            READ_YOUR_WRITES_TIMEOUT,
            receiver.wait_for(|&current| current >= sequence),
        )
        .await;
        let reached = matches!(reached, Ok(Ok(_)));
        if !reached {
            warn!(
                sequence,
                checkpoint = *self.receiver.borrow(),
                follows = %self.follows,
                "the write is not applied within the bound; answering 503 (the client retries)"
            );
        } else {
            debug!(sequence, "read model holds the write");
        }
        reached
    }

    /// The last checkpoint seen.
    pub fn current(&self) -> u64 {
        *self.receiver.borrow()
    }
}

/// Every checkpoint a write waits for: the projector's, and the access service's when it is
/// configured to (so that the next access decision after a SCIM response reflects it). A write
/// answers `2xx` only once every one has reached it and its resource is not quarantined.
///
/// In an installation with several partitions, a write waits on the checkpoints of its
/// tenant's partition only.
#[derive(Debug, Clone)]
pub struct Consistency {
    partitioning: Partitioning,
    /// Per partition, in partition order.
    checkpoints: Vec<Vec<Checkpoint>>,
    /// Set once the installation's partitioning is no longer the one these checkpoints follow.
    repartitioned: Arc<std::sync::atomic::AtomicBool>,
    store: Option<Store>,
    health: Arc<Health>,
}

/// What writes have seen of the pipeline behind them, for `/healthz` and `/metrics`.
#[derive(Debug, Default)]
pub struct Health {
    /// Writes answered `503` because their effect was not applied within the bound.
    pub not_applied: AtomicU64,
    /// Writes answered `503` because their resource is quarantined.
    pub quarantined: AtomicU64,
    last_not_applied: std::sync::Mutex<Option<Instant>>,
}

/// How long after a write was not applied in time the API still reports itself degraded.
pub const DEGRADED_FOR: Duration = Duration::from_secs(60);

impl Health {
    /// When a write last was not applied in time, if within [`DEGRADED_FOR`].
    pub fn degraded_since(&self) -> Option<Duration> {
        let last = *self
            .last_not_applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.map(|at| at.elapsed())
            .filter(|ago| *ago < DEGRADED_FOR)
    }

    fn record_not_applied(&self) {
        self.not_applied.fetch_add(1, Ordering::Relaxed);
        rollcall_telemetry::metrics::counter!(rollcall_telemetry::metrics::SCIM_WRITES_NOT_APPLIED)
            .increment(1);
        *self
            .last_not_applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }
}

impl Consistency {
    /// Waits on these checkpoints (an unpartitioned installation); checks quarantines in
    /// `store` (none without one).
    pub fn new(checkpoints: Vec<Checkpoint>, store: Option<Store>) -> Self {
        Self::partitioned(Partitioning::default(), vec![checkpoints], store)
    }

    /// Waits on the checkpoints of each write's partition (`checkpoints[k]`: partition k's).
    pub fn partitioned(
        partitioning: Partitioning,
        checkpoints: Vec<Vec<Checkpoint>>,
        store: Option<Store>,
    ) -> Self {
        Self {
            partitioning,
            checkpoints,
            store,
            health: Arc::default(),
            repartitioned: Arc::default(),
        }
    }

    /// Checks every few seconds that the installation's partitioning is still the one these
    /// checkpoints follow; once it is not, writes answer `503` (this process must be
    /// restarted) instead of waiting on checkpoints that no longer move.
    pub fn watch_partitioning(&self, store: Store) {
        let (repartitioned, expected) = (self.repartitioned.clone(), self.partitioning.count());
        let weak = Arc::downgrade(&self.health);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(5));
            loop {
                interval.tick().await;
                if weak.strong_count() == 0 {
                    return;
                }
                let changed = store
                    .partitions()
                    .await
                    .is_ok_and(|current| current != expected);
                if changed && !repartitioned.swap(true, Ordering::Relaxed) {
                    tracing::error!(expected, "the installation's partitioning changed since this SCIM API started: writes answer 503 until it is restarted");
                }
            }
        });
    }

    /// What writes have seen.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The projector's checkpoint as last seen (the lowest of the partitions').
    pub fn checkpoint(&self) -> u64 {
        self.checkpoints
            .iter()
            .map(|partition| partition.first().map_or(0, Checkpoint::current))
            .min()
            .unwrap_or(0)
    }

    /// Each partition's projector checkpoint as last seen.
    pub fn checkpoints(&self) -> Vec<u64> {
        self.checkpoints
            .iter()
            .map(|partition| partition.first().map_or(0, Checkpoint::current))
            .collect()
    }

    /// Waits until every checkpoint of `tenant`'s partition reaches `sequence` (each bounded by
    /// the timeout).
    pub async fn wait_for(&self, tenant: &str, sequence: u64) -> bool {
        let index = usize::from(self.partitioning.of(tenant).index());
        let mut reached = true;
        for checkpoint in self.checkpoints.get(index).into_iter().flatten() {
            reached &= checkpoint.wait_for(sequence).await;
        }
        reached
    }

    /// Refuses a write to a quarantined resource before anything is appended.
    pub async fn writable(
        &self,
        resource: &'static str,
        tenant: &str,
        id: Uuid,
    ) -> Result<(), ApiError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        match store.quarantine_of(tenant, id).await {
            Ok(None) => Ok(()),
            Ok(Some((sequence, event_type))) => {
                self.health.quarantined.fetch_add(1, Ordering::Relaxed);
                rollcall_telemetry::metrics::counter!(
                    rollcall_telemetry::metrics::SCIM_WRITES_REFUSED_QUARANTINED
                )
                .increment(1);
                Err(ApiError::Quarantined {
                    resource,
                    sequence: sequence as u64,
                    event_type,
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    /// A write's promise: answers `Ok` only once the write (or, for a write that changed
    /// nothing, every earlier write to the resource: `sequence` is the resource's last event)
    /// is applied in the read model and, when configured, the access service, and the resource
    /// is not quarantined; otherwise the error to answer (`503` with `Retry-After`).
    pub async fn settle(
        &self,
        resource: &'static str,
        tenant: &str,
        id: Uuid,
        sequence: u64,
    ) -> Result<(), ApiError> {
        if self.repartitioned.load(Ordering::Relaxed) || !self.wait_for(tenant, sequence).await {
            self.health.record_not_applied();
            return Err(ApiError::NotApplied {
                timeout: READ_YOUR_WRITES_TIMEOUT,
            });
        }
        // The announcement that brought the checkpoint to the write may have said already
        // that nothing is quarantined as of it (almost always): then PostgreSQL is not asked.
        // Before a write, the newest announcement may lag a quarantine just committed, so
        // `writable` always asks.
        let index = usize::from(self.partitioning.of(tenant).index());
        let vouched = self
            .checkpoints
            .get(index)
            .into_iter()
            .flatten()
            .any(|checkpoint| checkpoint.vouches_clear(sequence));
        if vouched {
            return Ok(());
        }
        self.writable(resource, tenant, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_wait_for_the_slowest_live_access_service() {
        let (sender, receiver) = watch::channel(0);
        let replicas = std::sync::Mutex::new(HashMap::new());
        heard(&sender, &replicas, Some(("a".into(), 10)));
        assert_eq!(*receiver.borrow(), 10);
        heard(&sender, &replicas, Some(("b".into(), 7)));
        assert_eq!(*receiver.borrow(), 7, "b has not applied 8..10 yet");
        heard(&sender, &replicas, Some(("b".into(), 12)));
        assert_eq!(*receiver.borrow(), 10, "now a is the slowest");
        heard(&sender, &replicas, Some(("a".into(), 9)));
        assert_eq!(*receiver.borrow(), 10, "an older announcement is ignored");
        // A replica silent for longer than the bound drops out.
        replicas.lock().unwrap().get_mut("a").unwrap().1 =
            Instant::now() - REPLICA_SILENCE - Duration::from_millis(1);
        heard(&sender, &replicas, None);
        assert_eq!(*receiver.borrow(), 12);
    }

    #[test]
    fn only_the_newest_announcement_says_whether_anything_is_quarantined() {
        let clear = AtomicU64::new(0);
        heard_clear(&clear, 0, 10, true);
        assert!(vouched_clear(clear.load(Ordering::Relaxed), 10, 10));
        assert!(
            vouched_clear(clear.load(Ordering::Relaxed), 10, 7),
            "an earlier write is covered"
        );
        assert!(
            !vouched_clear(clear.load(Ordering::Relaxed), 10, 11),
            "a later write is not"
        );
        assert!(
            !vouched_clear(clear.load(Ordering::Relaxed), 12, 10),
            "the checkpoint moved on (by a poll) without saying"
        );
        heard_clear(&clear, 10, 8, false);
        assert!(
            vouched_clear(clear.load(Ordering::Relaxed), 10, 10),
            "an older announcement says nothing"
        );
        heard_clear(&clear, 10, 12, false);
        assert!(!vouched_clear(clear.load(Ordering::Relaxed), 12, 10));
        heard_clear(&clear, 12, 13, true);
        assert!(vouched_clear(clear.load(Ordering::Relaxed), 13, 13));
    }

    #[test]
    fn the_checkpoint_only_moves_forward() {
        let (sender, mut receiver) = watch::channel(10);
        advance(&sender, 7);
        assert!(
            !receiver.has_changed().unwrap(),
            "an older sequence is ignored"
        );
        assert_eq!(*receiver.borrow(), 10);
        advance(&sender, 12);
        assert!(receiver.has_changed().unwrap());
        assert_eq!(*receiver.borrow_and_update(), 12);
        advance(&sender, 12);
        assert!(
            !receiver.has_changed().unwrap(),
            "the same sequence wakes no one"
        );
    }
}
