//! The projector: a durable consumer of the event stream that applies events in batches to the
//! PostgreSQL read models (`scim_user`, `scim_group`, `group_member`, `audit_event`) and writes
//! its checkpoint in the same transaction. A crash at any point loses and duplicates nothing:
//! on restart the consumer is positioned at the checkpoint, events at or below it are skipped,
//! and a gap makes it reposition rather than skip.
//!
//! After each commit it announces its checkpoint on `<namespace>.checkpoints.<name>`, which the
//! SCIM API waits on for read-your-writes.
#![warn(missing_docs)]

mod apply;
pub mod publish;
pub mod quarantine;
pub mod rebuild;

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use rollcall_eventlog::consumer::{decode, Delivered};
use rollcall_eventlog::{EventLog, LoadError};
use rollcall_store::quarantine::Status;
use rollcall_store::{checkpoint, Store, StoreError};
use sqlx::Connection;
use tracing::{error, info, info_span, instrument, warn, Instrument};

use crate::quarantine::{classify, Changes, Failure, Quarantined};

pub use apply::{apply, Pending};

/// The projector's default name: its durable consumer and checkpoint.
pub const DEFAULT_NAME: &str = "projector";

/// How many events one transaction applies at most.
pub const DEFAULT_BATCH: usize = 500;

/// Everything the projector reads from the environment (besides the shared connections).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "projector")]
pub struct Config {
    /// Events applied per PostgreSQL transaction at most.
    #[arg(long = "projector-batch", env = "ROLLCALL_PROJECTOR_BATCH", default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batch: DEFAULT_BATCH,
        }
    }
}

/// Why the projector stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// NATS failed.
    #[error(transparent)]
    Log(#[from] LoadError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An event could not be applied.
    #[error("event at sequence {sequence}: {reason}")]
    Event {
        /// Its stream sequence.
        sequence: u64,
        /// Why.
        reason: String,
    },
    /// Events were delivered past the checkpoint with a hole in between.
    #[error("gap: checkpoint {checkpoint}, next delivered {delivered}")]
    Gap {
        /// The checkpoint.
        checkpoint: u64,
        /// What arrived.
        delivered: u64,
    },
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
}

/// A projector over one stream into one read-model schema.
#[derive(Debug, Clone)]
pub struct Projector {
    log: EventLog,
    store: Store,
    client: async_nats::Client,
    name: String,
    batch: usize,
    publisher: Option<publish::Publisher>,
    quarantined: Quarantined,
    strikes: std::sync::Arc<std::sync::Mutex<(u64, u32)>>,
    active: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How often a passing failure (a deadlock, a timeout) at one event is tried before the event
/// is quarantined.
const STRIKES: u32 = 5;

/// The longest pause between attempts while PostgreSQL or NATS is out of reach.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Projector {
    /// A projector named `name` (its durable consumer and checkpoint).
    pub fn new(
        client: async_nats::Client,
        log: EventLog,
        store: Store,
        name: &str,
        batch: usize,
    ) -> Self {
        Self {
            log,
            store,
            client,
            name: name.to_owned(),
            batch: batch.max(1),
            publisher: None,
            quarantined: Quarantined::default(),
            strikes: Default::default(),
            active: Default::default(),
        }
    }

    /// Also publishes access state to NATS after every batch (the live projector does; a
    /// rebuild does not).
    pub fn with_publisher(mut self, publisher: publish::Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Runs until `shutdown` resolves: stands by until this process holds the projector's
    /// lease, then projects (recovering from failures by repositioning at the checkpoint after
    /// a pause), and stands by again should the lease be lost.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let mut lease = tokio::select! {
                _ = &mut shutdown => return,
                lease = self.lead() => lease,
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = lease.lost() => {
                    error!(projector = %self.name, "lost the projector lease (PostgreSQL connection); standing by");
                    self.active.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                () = self.project() => return,
            }
        }
    }

    /// Whether this process is the active projector (holds the lease).
    pub fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until this process holds the lease: a PostgreSQL advisory lock on the projector's
    /// schema and name, held by a connection of its own for as long as it projects. A process
    /// that dies (`kill -9` included) loses its connection, and so the lock, at once; a standby
    /// asks every second.
    async fn lead(&self) -> Lease {
        let key = format!("rollcall projector {}.{}", self.store.schema(), self.name);
        let mut said = false;
        loop {
            match Lease::try_take(&self.store, &key).await {
                Ok(Some(lease)) => {
                    info!(projector = %self.name, "holding the projector lease; projecting");
                    self.active
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    return lease;
                }
                Ok(None) if !said => {
                    info!(projector = %self.name, "another process projects; standing by");
                    said = true;
                }
                Ok(None) => {}
                Err(error) => warn!(error = %error, "cannot ask for the projector lease; retrying"),
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// Projects until the stream ends (it does not), recovering from failures.
    async fn project(&self) {
        // Whatever a crash or a NATS outage left in the outbox is published on a timer too.
        let republisher = self.publisher.clone().map(|publisher| {
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_secs(1));
                loop {
                    interval.tick().await;
                    publisher.drain_logged().await;
                }
            })
        });
        let _stop_republisher = AbortOnDrop(republisher);
        let mut pause = Duration::from_millis(250);
        loop {
            let started = std::time::Instant::now();
            let result = self.consume().await;
            // A failure after a while of projecting is a new one: its backoff starts again.
            if started.elapsed() >= MAX_BACKOFF {
                pause = Duration::from_millis(250);
            }
            match result {
                Ok(()) => return,
                Err(ProjectorError::Gap {
                    checkpoint,
                    delivered,
                }) => {
                    warn!(
                        checkpoint,
                        delivered, "gap after the checkpoint; repositioning"
                    );
                    pause = Duration::from_millis(250);
                }
                Err(error) => {
                    error!(error = %error, pause_ms = pause.as_millis() as u64, "projector failed; retrying from its checkpoint");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Consumes from the checkpoint on; returns only on error (or if the stream ends).
    async fn consume(&self) -> Result<(), ProjectorError> {
        let checkpoint = self.store.checkpoint(&self.name).await?;
        {
            let mut connection = self
                .store
                .pool()
                .acquire()
                .await
                .map_err(StoreError::from)?;
            let open = rollcall_store::quarantine::open_aggregates(&mut connection).await?;
            if !open.is_empty() {
                error!(
                    aggregates = open.len(),
                    "aggregates are quarantined; resolve them with `rollcall projector quarantine`"
                );
            }
            self.quarantined.replace(open);
        }
        let consumer = self.log.durable_consumer(&self.name, checkpoint).await?;
        info!(projector = %self.name, checkpoint, "projecting");
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .messages()
            .await
            .map_err(|error| LoadError::Nats(error.to_string()))?;
        let mut batches = messages.ready_chunks(self.batch);
        while let Some(batch) = batches.next().await {
            let mut delivered = Vec::with_capacity(batch.len());
            let mut last = None;
            let mut checkpoint = None;
            for message in batch {
                let message = message.map_err(|error| LoadError::Nats(error.to_string()))?;
                match decode(&message) {
                    Ok(event) => delivered.push(event),
                    Err(LoadError::Corrupt { sequence, reason }) => {
                        // Nothing Rollcall wrote: quarantined on its own, after what came before.
                        if !delivered.is_empty() {
                            self.apply_isolating(&delivered).await?;
                            delivered.clear();
                        }
                        checkpoint = Some(
                            self.quarantine_unreadable(
                                sequence,
                                &message.subject,
                                &message.payload,
                                &reason,
                            )
                            .await?,
                        );
                    }
                    Err(error) => return Err(error.into()),
                }
                last = Some(message);
            }
            if !delivered.is_empty() {
                checkpoint = Some(self.apply_isolating(&delivered).await?);
            }
            if let Some(publisher) = &self.publisher {
                publisher.drain_logged().await;
            }
            if let Some(last) = last {
                // AckPolicy::All: acknowledging the last acknowledges the batch. A lost ack is
                // harmless: the checkpoint decides what is applied.
                if let Err(error) = last.ack().await {
                    warn!(error = %error, "ack failed");
                }
            }
            if let Some(checkpoint) = checkpoint {
                self.announce(checkpoint).await;
            }
        }
        Ok(())
    }

    /// Applies a batch; when an event in it cannot be applied, applies the batch event by event
    /// and quarantines the ones that fail, so that one poison event never stops the others.
    pub(crate) async fn apply_isolating(
        &self,
        delivered: &[Delivered],
    ) -> Result<u64, ProjectorError> {
        let error = match self.apply_batch(delivered).await {
            Ok(checkpoint) => return Ok(checkpoint),
            Err(error) => error,
        };
        if !self.isolates(&error, delivered) {
            return Err(error);
        }
        warn!(error = %error, events = delivered.len(), "a batch failed; applying its events one by one");
        let mut checkpoint = 0;
        for event in delivered {
            checkpoint = match self.apply_batch(std::slice::from_ref(event)).await {
                Ok(checkpoint) => checkpoint,
                Err(error) if self.isolates(&error, std::slice::from_ref(event)) => {
                    self.quarantine_event(event, &error).await?
                }
                Err(error) => return Err(error),
            };
        }
        Ok(checkpoint)
    }

    /// Whether a failure of these events is the events' own (quarantine the one that fails)
    /// rather than the servers' (try again later): poison at once; a passing failure once it
    /// has struck the same first event [`STRIKES`] times.
    fn isolates(&self, error: &ProjectorError, delivered: &[Delivered]) -> bool {
        let first = delivered.first().map_or(0, |event| event.sequence);
        match classify(error) {
            Failure::Poison => true,
            Failure::Unreachable => false,
            Failure::Passing => {
                let mut strikes = self
                    .strikes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if strikes.0 == first {
                    strikes.1 += 1;
                } else {
                    *strikes = (first, 1);
                }
                strikes.1 >= STRIKES
            }
        }
    }

    /// Applies delivered events in one transaction with the checkpoint; returns the checkpoint.
    /// Events of a quarantined aggregate are held in the quarantine instead, and operators'
    /// resolutions are applied.
    #[instrument(skip_all, fields(projector = %self.name, events = delivered.len()), err)]
    pub async fn apply_batch(&self, delivered: &[Delivered]) -> Result<u64, ProjectorError> {
        let mut transaction = self.store.pool().begin().await.map_err(StoreError::from)?;
        let mut checkpoint = checkpoint::lock(&mut transaction, &self.name).await?;
        let mut pending = apply::Pending::default();
        let mut changes = Changes::default();
        for event in delivered {
            if event.sequence <= checkpoint {
                continue;
            }
            if event.sequence != checkpoint + 1 {
                return Err(ProjectorError::Gap {
                    checkpoint,
                    delivered: event.sequence,
                });
            }
            let span = info_span!(
                "message.process",
                otel.name = format!("{} process", self.log.namespace().stream()),
                otel.kind = "consumer",
                messaging.system = "nats",
                messaging.destination.name = %self.log.namespace().stream(),
                messaging.message.id = %event.envelope.event_id,
                event.sequence = event.sequence,
                event.r#type = %event.envelope.event_type,
            );
            rollcall_telemetry::set_parent(&span, event.envelope.traceparent.as_deref());
            self.apply_one(&mut transaction, &mut pending, &mut changes, event)
                .instrument(span)
                .await?;
            checkpoint = event.sequence;
        }
        pending.flush(&mut transaction).await?;
        checkpoint::set(&mut transaction, &self.name, checkpoint).await?;
        transaction.commit().await.map_err(StoreError::from)?;
        self.quarantined.commit(&changes);
        Ok(checkpoint)
    }

    /// Applies one event: a resolution of the quarantine, an event held behind a quarantined
    /// one of its aggregate, or an ordinary event.
    async fn apply_one(
        &self,
        connection: &mut sqlx::PgConnection,
        pending: &mut apply::Pending,
        changes: &mut Changes,
        event: &Delivered,
    ) -> Result<(), ProjectorError> {
        let envelope = &event.envelope;
        if envelope.aggregate_type == rollcall_eventlog::quarantine::AGGREGATE {
            quarantine::resolve(connection, pending, changes, event).await?;
            return apply::audit(connection, pending, envelope, event.sequence).await;
        }
        let key = (envelope.tenant.clone(), envelope.aggregate_id);
        if self.quarantined.contains(&key.0, key.1) || changes.quarantines(&key) {
            quarantine::record(
                connection,
                pending,
                event,
                Status::Held,
                "held behind an earlier quarantined event of the same resource",
                true,
                0,
            )
            .await?;
            changes.quarantine(key);
            warn!(
                sequence = event.sequence,
                "event held behind its quarantined resource"
            );
            return apply::audit(connection, pending, envelope, event.sequence).await;
        }
        apply(connection, pending, event).await
    }

    /// Quarantines one event that cannot be applied, in a transaction of its own with the
    /// checkpoint: its audit record is written if PostgreSQL takes it, and chained either way.
    async fn quarantine_event(
        &self,
        event: &Delivered,
        failure: &ProjectorError,
    ) -> Result<u64, ProjectorError> {
        let mut transaction = self.store.pool().begin().await.map_err(StoreError::from)?;
        let checkpoint = checkpoint::lock(&mut transaction, &self.name).await?;
        if event.sequence <= checkpoint {
            return Ok(checkpoint);
        }
        if event.sequence != checkpoint + 1 {
            return Err(ProjectorError::Gap {
                checkpoint,
                delivered: event.sequence,
            });
        }
        let envelope = &event.envelope;
        let key = (envelope.tenant.clone(), envelope.aggregate_id);
        let mut pending = apply::Pending::default();
        apply::audit(&mut transaction, &mut pending, envelope, event.sequence).await?;
        let audited = {
            let mut savepoint = transaction.begin().await.map_err(StoreError::from)?;
            match pending.write_audit(&mut savepoint).await {
                Ok(()) => {
                    savepoint.commit().await.map_err(StoreError::from)?;
                    true
                }
                Err(_) => {
                    savepoint.rollback().await.map_err(StoreError::from)?;
                    pending.drop_audit();
                    false
                }
            }
        };
        let status = if self.quarantined.contains(&key.0, key.1) {
            Status::Held
        } else {
            Status::Failed
        };
        let reason = failure.to_string();
        quarantine::record(
            &mut transaction,
            &mut pending,
            event,
            status,
            &reason,
            audited,
            1,
        )
        .await?;
        pending.flush(&mut transaction).await?;
        checkpoint::set(&mut transaction, &self.name, event.sequence).await?;
        transaction.commit().await.map_err(StoreError::from)?;
        let mut changes = Changes::default();
        changes.quarantine(key);
        self.quarantined.commit(&changes);
        error!(
            sequence = event.sequence,
            tenant = %envelope.tenant,
            aggregate.r#type = %envelope.aggregate_type,
            aggregate.id = %envelope.aggregate_id,
            event.r#type = %envelope.event_type,
            audited,
            error = %reason,
            "event quarantined: its resource is frozen until an operator resolves it (`rollcall projector quarantine list`)"
        );
        Ok(event.sequence)
    }

    /// Quarantines a message that is not a Rollcall event at all (nothing to hold behind it).
    async fn quarantine_unreadable(
        &self,
        sequence: u64,
        subject: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<u64, ProjectorError> {
        let mut transaction = self.store.pool().begin().await.map_err(StoreError::from)?;
        let checkpoint = checkpoint::lock(&mut transaction, &self.name).await?;
        if sequence <= checkpoint {
            return Ok(checkpoint);
        }
        if sequence != checkpoint + 1 {
            return Err(ProjectorError::Gap {
                checkpoint,
                delivered: sequence,
            });
        }
        // `<namespace>.events.<tenant>.<aggregate>.<id>`
        let tokens: Vec<&str> = subject.split('.').collect();
        let tenant = tokens.get(2).copied().unwrap_or_default();
        let aggregate = tokens.get(3).copied().unwrap_or_default();
        let id = tokens
            .get(4)
            .and_then(|id| uuid::Uuid::parse_str(id).ok())
            .unwrap_or_default();
        rollcall_store::quarantine::record(
            &mut transaction,
            &rollcall_store::quarantine::NewQuarantine {
                sequence,
                event_id: uuid::Uuid::nil(),
                tenant,
                aggregate_type: aggregate,
                aggregate_id: id,
                event_type: "unreadable",
                status: Status::Skipped,
                error: reason,
                envelope: payload,
                affected_users: &[],
                audited: false,
                attempts: 1,
            },
        )
        .await?;
        rollcall_store::quarantine::resolve(
            &mut transaction,
            sequence as i64,
            Status::Skipped,
            sequence,
            "not a Rollcall event",
        )
        .await?;
        checkpoint::set(&mut transaction, &self.name, sequence).await?;
        transaction.commit().await.map_err(StoreError::from)?;
        error!(sequence, "a message on the stream is not a Rollcall event; passed over and kept in the quarantine");
        Ok(sequence)
    }

    /// How many aggregates are quarantined, as this projector last committed.
    pub fn quarantined(&self) -> usize {
        self.quarantined.len()
    }

    async fn announce(&self, checkpoint: u64) {
        let subject = self.log.namespace().checkpoint_subject(&self.name);
        if let Err(error) = self
            .client
            .publish(subject, checkpoint.to_string().into())
            .await
        {
            warn!(error = %error, "announcing the checkpoint failed");
        }
    }
}

/// How often a standby asks for the projector's lease.
const LEASE_POLL: Duration = Duration::from_secs(1);

/// The projector's lease: a session-level advisory lock held by a connection of its own.
struct Lease(sqlx::PgConnection);

impl Lease {
    async fn try_take(store: &Store, key: &str) -> Result<Option<Self>, StoreError> {
        let mut connection = store.admin_connection().await?;
        let taken: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(key)
                .fetch_one(&mut connection)
                .await?;
        Ok(taken.then_some(Self(connection)))
    }

    /// Resolves when the lease's connection fails (the lock is then gone).
    async fn lost(&mut self) {
        loop {
            tokio::time::sleep(LEASE_POLL).await;
            // A half-open connection may never answer: no answer within a poll is a loss too.
            let probe = sqlx::query("SELECT 1").execute(&mut self.0);
            if !matches!(tokio::time::timeout(LEASE_POLL, probe).await, Ok(Ok(_))) {
                return;
            }
        }
    }
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Runs the projector, publishing access state, over shared connections until `shutdown`
/// resolves.
pub async fn run(
    config: Config,
    client: async_nats::Client,
    log: EventLog,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProjectorError> {
    // Rows keyed before lookup keys were case-folded by Rollcall (migration 0003) are keyed
    // again before any event is applied: the projector is the read models' one writer.
    store.rekey_lookup_keys().await?;
    let publisher =
        publish::Publisher::open(client.clone(), log.namespace().clone(), store.clone()).await?;
    Projector::new(client, log, store, DEFAULT_NAME, config.batch)
        .with_publisher(publisher)
        .run(shutdown)
        .await;
    Ok(())
}
