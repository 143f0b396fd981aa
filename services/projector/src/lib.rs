//! The projector: a durable consumer of the event stream that applies events in batches to the
//! PostgreSQL read models (`scim_user`, `scim_group`, `group_member`, `audit_event`) and writes
//! its checkpoint in the same transaction. A crash at any point loses and duplicates nothing:
//! on restart the consumer is positioned at the checkpoint, events at or below it are skipped,
//! and a gap makes it reposition rather than skip.
//!
//! After each commit it announces its checkpoint on `<namespace>.checkpoints.<name>`, which the
//! SCIM API waits on for read-your-writes: at once, or, when it publishes access state, once
//! that state is published (its publisher does so beside the next batch). The announcement
//! says when PostgreSQL held no open quarantine as of the checkpoint.
#![warn(missing_docs)]

mod apply;
mod bulk;
pub mod lease;
mod metrics;
pub mod publish;
pub mod quarantine;
pub mod rebuild;

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use rollcall_eventlog::consumer::{commits, decode, Delivered};
use rollcall_eventlog::partition::{subject_tenant, Partition, Partitioning};
use rollcall_eventlog::{fault, EventLog, LoadError};
use rollcall_store::quarantine::Status;
use rollcall_store::{checkpoint, Store, StoreError};
use sqlx::Connection;
use tracing::{error, info, info_span, instrument, warn, Instrument};

use crate::lease::{Lease, Share, LEASE_POLL};
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
    /// Partitions of the installation's tenants (1 to 64), each projected by one process at a
    /// time: chosen once (unset: what the installation has, 1 at first). Going from 1 to more
    /// happens in place; any other change is refused (it needs a fresh installation).
    #[arg(long = "partitions", env = "ROLLCALL_PARTITIONS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub partitions: Option<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batch: DEFAULT_BATCH,
            partitions: None,
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
    /// A rebuild batch's audit records were committed and its other rows could not be: the
    /// rebuild stops (it starts again from nothing when run again).
    #[error("a rebuild batch was committed in part ({0}); run the rebuild again")]
    Torn(String),
    /// The installation's partitioning changed since this process started.
    #[error("the installation now has {current} partition(s), this process was started with {started}: restart it")]
    Repartitioned {
        /// What the installation has now.
        current: u16,
        /// What this process started with.
        started: u16,
    },
}

/// A projector over one stream into one read-model schema.
#[derive(Debug, Clone)]
pub struct Projector {
    log: EventLog,
    store: Store,
    client: async_nats::Client,
    name: String,
    partition: Partition,
    share: Option<Share>,
    batch: usize,
    publisher: Option<publish::Publisher>,
    /// The newest checkpoint committed, for the publisher: it publishes beside the next batch
    /// instead of before it, then announces the checkpoint.
    committed: std::sync::Arc<Committed>,
    /// The checkpoint this projector last committed if nothing was quarantined as of it
    /// (PostgreSQL said so in the commit), else 0.
    clear_at: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The transaction that last wrote this projector's checkpoint as it committed it (0: none
    /// yet). A checkpoint written by anything else (a rebuild's swap, another process) makes it
    /// read what is quarantined again, even at the sequence it left.
    written_by: std::sync::Arc<std::sync::atomic::AtomicU64>,
    quarantined: Quarantined,
    strikes: std::sync::Arc<std::sync::Mutex<(u64, u32)>>,
    active: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Whether messages `from..=through` are still to apply over `checkpoint`: not if the
/// checkpoint has passed them; a gap (a checkpoint below `from - 1`) is an error.
fn due(checkpoint: u64, from: u64, through: u64) -> Result<bool, ProjectorError> {
    if checkpoint >= through {
        return Ok(false);
    }
    if checkpoint + 1 < from {
        return Err(ProjectorError::Gap {
            checkpoint,
            delivered: from,
        });
    }
    Ok(true)
}

/// How often a passing failure (a deadlock, a timeout) at one event is tried before the event
/// is quarantined.
const STRIKES: u32 = 5;

/// The pause between attempts to open the access bucket while NATS does not answer.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The longest pause between attempts while PostgreSQL or NATS is out of reach.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why [`Projector::consume`] returned without an error.
enum Ended {
    /// The consumer's messages ended.
    Ended,
    /// The consumer delivered nothing for [`STALLED_AFTER`] while the stream was ahead.
    Stalled,
}

/// A consumer that has delivered nothing for this long while the stream is ahead of the
/// checkpoint is opened again. NATS 2.9 can leave a durable consumer silent (heartbeats and
/// all) after the stream's leader was killed, with no error to react to.
const STALLED_AFTER: Duration = Duration::from_secs(10);

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
            partition: Partition::ONLY,
            share: None,
            batch: batch.max(1),
            publisher: None,
            committed: Default::default(),
            clear_at: Default::default(),
            written_by: Default::default(),
            quarantined: Quarantined::default(),
            strikes: Default::default(),
            active: Default::default(),
        }
    }

    /// Projects only partition `partition`'s tenants, as `name` with the partition's suffix,
    /// taking the partition only within this process's fair `share` of them.
    pub fn in_partition(mut self, partition: Partition, share: Share) -> Self {
        self.name = partition.name(&self.name);
        self.partition = partition;
        self.share = Some(share);
        self
    }

    /// The partition it projects.
    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// Its name: its durable consumer and checkpoint.
    pub fn name(&self) -> &str {
        &self.name
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
    ///
    /// Returns an error only when this process must not project any more (the installation's
    /// partitioning changed since it started: it must be restarted).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectorError> {
        let _metrics = self.report_metrics();
        tokio::pin!(shutdown);
        loop {
            let mut lease = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                lease = self.lead() => lease,
            };
            let outcome = tokio::select! {
                _ = &mut shutdown => Outcome::Stop,
                _ = lease.lost() => {
                    error!(projector = %self.name, "lost the projector lease (PostgreSQL connection); standing by");
                    Outcome::Lost
                }
                _ = self.beyond_share() => {
                    info!(projector = %self.name, "giving this partition to a process with fewer; standing by");
                    Outcome::GiveBack
                }
                error = self.project() => Outcome::Fatal(error),
            };
            self.active
                .store(false, std::sync::atomic::Ordering::Relaxed);
            if let Some(share) = &self.share {
                share.drop_partition(self.partition.index());
            }
            match outcome {
                Outcome::Stop => {
                    self.publish_last().await;
                    lease.release().await;
                    return Ok(());
                }
                Outcome::Fatal(error) => {
                    lease.release().await;
                    error!(projector = %self.name, error = %error, "this process stops projecting");
                    return Err(error);
                }
                Outcome::GiveBack => {
                    self.publish_last().await;
                    lease.release().await;
                }
                Outcome::Lost => {}
            }
        }
    }

    /// Publishes what the batches committed so far left in the outbox and announces their
    /// checkpoint, while the lease is still held: a process that stops or hands its partition
    /// over leaves no write waiting for the next projector's publication. Bounded by
    /// [`LAST_PUBLICATION`], so that a NATS outage does not hold the stop up (the next projector
    /// publishes what is left).
    async fn publish_last(&self) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        let subject = self.announcement_subject();
        let publishing = publish_committed(publisher, &self.committed, &self.client, &subject, 0);
        match tokio::time::timeout(LAST_PUBLICATION, publishing).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                warn!(projector = %self.name, error = %error, "publishing the last access state failed; the next projector publishes it");
            }
            Err(_) => {
                warn!(projector = %self.name, "publishing the last access state takes too long; the next projector publishes it");
            }
        }
    }

    /// Resolves when this process holds more partitions than its fair share and this is one
    /// it should give back; never without partitions to share.
    async fn beyond_share(&self) {
        let Some(share) = &self.share else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(LEASE_POLL).await;
            if share.should_give_back(self.partition.index()).await {
                return;
            }
        }
    }

    /// Holds the background publisher (it publishes nothing until released), so that committed
    /// batches stay in the outbox. Debug builds only: for the tests of what a stopping
    /// projector publishes.
    #[cfg(debug_assertions)]
    pub fn hold_publication(&self, held: bool) {
        self.committed
            .held
            .store(held, std::sync::atomic::Ordering::Release);
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
        let key = lease::lease_key(self.store.schema(), &self.name);
        let mut said = false;
        loop {
            let may = match &self.share {
                Some(share) => share.may_take().await,
                None => true,
            };
            let taken = if may {
                Lease::try_take(&self.store, &key).await
            } else {
                Ok(None)
            };
            match taken {
                Ok(Some(lease)) => {
                    info!(projector = %self.name, "holding the projector lease; projecting");
                    if let Some(share) = &self.share {
                        share.hold(self.partition.index());
                    }
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
    async fn project(&self) -> ProjectorError {
        // The outbox is published when a batch has been committed (a wake-up while a drain runs
        // is kept: one more drain follows it), and on a timer too, for whatever a crash or a
        // NATS outage left in it. A checkpoint is announced once the access state of every
        // batch up to it is published, so that a write answered on the announcement alone
        // (a SCIM API that does not wait for the access services) finds its state in the bucket.
        let republisher = self.publisher.clone().map(|publisher| {
            let committed = self.committed.clone();
            let (client, subject) = (self.client.clone(), self.announcement_subject());
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_secs(1));
                let mut announced = 0;
                loop {
                    tokio::select! {
                        () = committed.wanted.notified() => {}
                        _ = interval.tick() => {}
                    }
                    if committed.held() {
                        continue;
                    }
                    match publish_committed(&publisher, &committed, &client, &subject, announced)
                        .await
                    {
                        Ok(Some(checkpoint)) => announced = checkpoint,
                        Ok(None) => {}
                        Err(error) => {
                            warn!(error = %error, "publishing access state failed; will retry");
                        }
                    }
                }
            })
        });
        let _stop_republisher = AbortOnDrop(republisher);
        let mut pause = Duration::from_millis(250);
        let mut recreate = false;
        loop {
            let started = std::time::Instant::now();
            let result = self.consume(std::mem::take(&mut recreate)).await;
            // A failure after a while of projecting is a new one: its backoff starts again.
            if started.elapsed() >= MAX_BACKOFF {
                pause = Duration::from_millis(250);
            }
            match result {
                Ok(Ended::Stalled) => recreate = true,
                Ok(Ended::Ended) => {
                    warn!(projector = %self.name, "the consumer's messages ended; opening it again");
                    tokio::time::sleep(pause).await;
                }
                Err(error @ ProjectorError::Repartitioned { .. }) => return error,
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

    /// Consumes from the checkpoint on; returns only on error, if the stream ends or if the
    /// consumer stalls. `recreate`: a fresh consumer at the checkpoint (after a stall: the same
    /// consumer may stay silent).
    async fn consume(&self, recreate: bool) -> Result<Ended, ProjectorError> {
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
        let consumer = self
            .log
            .durable_consumer(&self.name, checkpoint, recreate)
            .await?;
        info!(projector = %self.name, checkpoint, "projecting");
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .messages()
            .await
            .map_err(|error| LoadError::Nats(error.to_string()))?;
        let mut batches = messages.ready_chunks(self.batch);
        let mut at = checkpoint;
        loop {
            let batch = match tokio::time::timeout(STALLED_AFTER, batches.next()).await {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(_) => {
                    // Asked with a bound of its own: on 2.9 the leader may not answer either.
                    match tokio::time::timeout(STALLED_AFTER, self.log.head()).await {
                        Ok(Ok(head)) if head > at => {
                            warn!(projector = %self.name, checkpoint = at, head,
                                  stalled_s = STALLED_AFTER.as_secs(),
                                  "the consumer delivers nothing while the stream is ahead; opening it again");
                            return Ok(Ended::Stalled);
                        }
                        Ok(Ok(_)) => continue,
                        Ok(Err(error)) => {
                            warn!(projector = %self.name, error = %error,
                                  "the consumer delivers nothing and the stream's head cannot be read");
                            continue;
                        }
                        Err(_) => {
                            warn!(projector = %self.name,
                                  "the consumer delivers nothing and the stream's head does not answer");
                            continue;
                        }
                    }
                }
            };
            let measured = metrics::Batch::start(&batch);
            let mut delivered = Vec::with_capacity(batch.len());
            let mut last = None;
            let mut checkpoint = None;
            // The batch's messages from `from` to `through` (other partitions' included, which
            // are passed over: the checkpoint moves past them all the same).
            let mut from: Option<u64> = None;
            let mut through = 0;
            for message in batch {
                let message = message.map_err(|error| LoadError::Nats(error.to_string()))?;
                let sequence = message
                    .info()
                    .map_err(|error| LoadError::Nats(error.to_string()))?
                    .stream_sequence;
                let start = *from.get_or_insert(sequence);
                let ours = self
                    .partition
                    .holds(subject_tenant(&message.subject).unwrap_or_default());
                if !ours {
                    through = sequence;
                    last = Some(message);
                    continue;
                }
                match decode(&message) {
                    // One event, or the events of one commit (a write): applied together.
                    Ok(events) => delivered.extend(events),
                    Err(LoadError::Corrupt { sequence, reason }) => {
                        // Nothing Rollcall wrote: quarantined on its own, after what came before.
                        if sequence > start {
                            self.apply_isolating(&delivered, start, sequence - 1)
                                .await?;
                            delivered.clear();
                        }
                        from = Some(sequence + 1);
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
                through = sequence;
                last = Some(message);
            }
            if let Some(from) = from.filter(|&from| through >= from) {
                checkpoint = Some(self.apply_isolating(&delivered, from, through).await?);
            }
            let announcement = checkpoint.map(|checkpoint| Announcement {
                checkpoint,
                clear: self.clear_at.load(std::sync::atomic::Ordering::Relaxed) == checkpoint,
            });
            // The next batch is applied while this one's access state is published: a write
            // waits for its batch and its publication, not for the batch before it to be
            // published too.
            if let (Some(announcement), Some(_)) = (announcement, &self.publisher) {
                self.committed.offer(announcement);
            }
            measured.finish(self.partition, delivered.len(), checkpoint, last.as_ref());
            if let Some(last) = last {
                // AckPolicy::All: acknowledging the last acknowledges the batch. A lost ack is
                // harmless: the checkpoint decides what is applied.
                if let Err(error) = last.ack().await {
                    warn!(error = %error, "ack failed");
                }
            }
            if let Some(announcement) = announcement {
                at = announcement.checkpoint;
                if self.publisher.is_none() {
                    announce(&self.client, &self.announcement_subject(), announcement).await;
                }
            }
        }
        Ok(Ended::Ended)
    }

    /// Applies a batch; when an event in it cannot be applied, applies the batch event by event
    /// and quarantines the ones that fail, so that one poison event never stops the others.
    ///
    /// `delivered` are this partition's events among the stream's messages `from..=through`;
    /// the checkpoint moves to `through`.
    pub(crate) async fn apply_isolating(
        &self,
        delivered: &[Delivered],
        from: u64,
        through: u64,
    ) -> Result<u64, ProjectorError> {
        let error = match self.apply_batch(delivered, from, through).await {
            Ok(checkpoint) => return Ok(checkpoint),
            Err(error) => error,
        };
        if !self.isolates(&error, delivered) {
            return Err(error);
        }
        warn!(error = %error, events = delivered.len(), "a batch failed; applying its events one by one");
        let mut checkpoint = 0;
        let mut start = from;
        // One message at a time: the events of a commit are applied, or quarantined, together.
        for commit in commits(delivered) {
            let Some(sequence) = commit.first().map(|event| event.sequence) else {
                continue;
            };
            checkpoint = match self.apply_batch(commit, start, sequence).await {
                Ok(checkpoint) => checkpoint,
                Err(error) if self.isolates(&error, commit) => {
                    self.quarantine_event(commit, start, &error).await?
                }
                Err(error) => return Err(error),
            };
            start = sequence + 1;
        }
        if through >= start {
            checkpoint = self.apply_batch(&[], start, through).await?;
        }
        Ok(checkpoint)
    }

    /// Applies a batch as [`Projector::apply_isolating`] does, folded per resource in memory
    /// and written in bulk ([`bulk`]); a batch that cannot be folded (an event that does not
    /// apply, a resolution of the quarantine, a resource in quarantine) or that PostgreSQL
    /// refuses is applied by `apply_isolating` instead. For a rebuild only: the bulk path
    /// writes no access outbox (the one-by-one path does; a rebuild clears it before its swap).
    /// Whether the bulk path applied it, and the checkpoint.
    ///
    /// `prepared` are the events' [`bulk::prepare`]d forms, in the same order. `deferred` holds
    /// the definitions of the rebuild schema's indexes not built yet: they are built before any
    /// batch is applied event by event, so that PostgreSQL refuses what it refused to the live
    /// projector (the bulk path refuses, at every event, a key too long to be certain to fit an
    /// index entry). `written` holds, while the rebuild knows them, the ids of every user and
    /// group that has a row (only those are looked up); a batch applied event by event ends it.
    pub(crate) async fn apply_folded(
        &self,
        delivered: &[Delivered],
        prepared: Vec<bulk::Prepared>,
        from: u64,
        through: u64,
        deferred: &mut Option<Vec<String>>,
        written: &mut Option<std::collections::HashSet<uuid::Uuid>>,
    ) -> Result<(bool, u64), ProjectorError> {
        // Resolutions of the quarantine and events held behind a quarantined one of their
        // resource take the one-by-one path.
        let any_quarantined = !self.quarantined.is_empty();
        let foldable = delivered.iter().all(|event| {
            let envelope = &event.envelope;
            envelope.aggregate_type != rollcall_eventlog::quarantine::AGGREGATE
                && !(any_quarantined
                    && self
                        .quarantined
                        .contains(&envelope.tenant, envelope.aggregate_id))
        });
        if foldable {
            match self
                .apply_bulk(delivered, prepared, from, through, written.as_ref())
                .await
            {
                Ok(checkpoint) => {
                    if let Some(written) = written {
                        written.extend(delivered.iter().map(|event| event.envelope.aggregate_id));
                    }
                    return Ok((true, checkpoint));
                }
                Err(error @ (ProjectorError::Gap { .. } | ProjectorError::Torn(_))) => {
                    return Err(error)
                }
                Err(error) => {
                    info!(error = %error, events = delivered.len(), "a batch could not be folded; applying it event by event");
                }
            }
        }
        // The one-by-one path may write rows of resources outside the batch (a resolution of
        // the quarantine applies the events held for one): from here on every row is looked up.
        *written = None;
        if let Some(definitions) = deferred.take() {
            info!("building the read models' indexes before applying events one by one");
            self.store.restore_rebuild_indexes(&definitions).await?;
        }
        Ok((false, self.apply_isolating(delivered, from, through).await?))
    }

    #[instrument(skip_all, fields(projector = %self.name, events = delivered.len(), from, through), err)]
    async fn apply_bulk(
        &self,
        delivered: &[Delivered],
        prepared: Vec<bulk::Prepared>,
        from: u64,
        through: u64,
        written: Option<&std::collections::HashSet<uuid::Uuid>>,
    ) -> Result<u64, ProjectorError> {
        // Two transactions, so that PostgreSQL writes the batch on two cores: the audit
        // records and chain heads in `journal`, every other row and the checkpoint in
        // `transaction`. A statement that fails rolls both back (the batch is then applied event
        // by event); a commit that fails stops the rebuild ([`ProjectorError::Torn`]), which
        // starts again from nothing when run again.
        let mut transaction = self.store.begin().await?;
        let mut journal = self.store.begin().await?;
        let checkpoint = checkpoint::lock(&mut transaction, &self.name)
            .await?
            .sequence;
        if !due(checkpoint, from, through)? {
            return Ok(checkpoint);
        }
        let start = delivered.partition_point(|event| event.sequence <= checkpoint);
        let events = &delivered[start..];
        let mut fold = bulk::Fold::load(&mut transaction, events, written).await?;
        let mut pending = apply::Pending::copied();
        for (event, prepared) in events.iter().zip(prepared.into_iter().skip(start)) {
            let draft = fold.apply(event, prepared)?;
            apply::chain(&mut journal, &mut pending, draft).await?;
        }
        fold.write(&mut transaction, &mut journal, pending).await?;
        checkpoint::set(&mut transaction, &self.name, through).await?;
        // A commit that fails may have been committed all the same (the connection lost before
        // the answer): applying the batch again would insert its audit records twice.
        let torn = |error: sqlx::Error| ProjectorError::Torn(error.to_string());
        journal.commit().await.map_err(torn)?;
        fault::point(fault::REBUILD_JOURNAL_COMMITTED);
        let committed = if fault::armed(fault::REBUILD_ROWS_COMMIT_FAILS) {
            Err(sqlx::Error::Protocol(
                fault::REBUILD_ROWS_COMMIT_FAILS.into(),
            ))
        } else {
            transaction.commit().await
        };
        committed.map_err(torn)?;
        Ok(through)
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
    ///
    /// `delivered` are this projector's events among the stream's messages `from..=through`
    /// (the others belong to other partitions); the checkpoint moves to `through`. Messages at
    /// or below the checkpoint were applied already and are passed over; a checkpoint below
    /// `from - 1` is a gap.
    #[instrument(skip_all, fields(projector = %self.name, events = delivered.len(), from, through), err)]
    pub async fn apply_batch(
        &self,
        delivered: &[Delivered],
        from: u64,
        through: u64,
    ) -> Result<u64, ProjectorError> {
        let mut transaction = self.store.begin().await?;
        let locked = if self.share.is_some() {
            // Live projectors only (a rebuild projects every tenant into a fresh schema).
            let (locked, partitions) =
                checkpoint::lock_holding_partitions(&mut transaction, &self.name).await?;
            if partitions != self.partition.count() {
                return Err(ProjectorError::Repartitioned {
                    current: partitions,
                    started: self.partition.count(),
                });
            }
            locked
        } else {
            checkpoint::lock(&mut transaction, &self.name).await?
        };
        let checkpoint = locked.sequence;
        if checkpoint + 1 != from || !self.left_as(locked) {
            // Not where this projector left it (a redelivery, another process applied events,
            // a rebuild was swapped in): what is quarantined is read again, as of this
            // checkpoint.
            self.reread_quarantined(&mut transaction).await?;
        }
        if !due(checkpoint, from, through)? {
            return Ok(checkpoint);
        }
        let mut pending = apply::Pending::default();
        let mut changes = Changes::default();
        let start = delivered.partition_point(|event| event.sequence <= checkpoint);
        pending
            .read_resources(&mut transaction, &delivered[start..])
            .await?;
        for event in delivered {
            if event.sequence <= checkpoint {
                continue;
            }
            let span = info_span!(
                "message.process",
                otel.name = format!("{} process", self.log.stream_name()),
                otel.kind = "consumer",
                messaging.system = "nats",
                messaging.destination.name = %self.log.stream_name(),
                messaging.message.id = %event.envelope.event_id,
                event.sequence = event.sequence,
                event.position = event.position,
                event.r#type = %event.envelope.event_type,
            );
            rollcall_telemetry::set_parent(&span, event.envelope.traceparent.as_deref());
            self.apply_one(&mut transaction, &mut pending, &mut changes, event)
                .instrument(span)
                .await?;
        }
        pending.flush(&mut transaction).await?;
        let saved =
            checkpoint::set_saying_quarantined(&mut transaction, &self.name, through).await?;
        transaction.commit().await.map_err(StoreError::from)?;
        self.quarantined.commit(&changes);
        self.committed_at(through, saved);
        Ok(through)
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
            pending.forget_resources(connection).await?;
            quarantine::resolve(connection, &self.store, pending, changes, event).await?;
            return apply::audit(
                connection,
                pending,
                envelope,
                event.sequence,
                event.position,
            )
            .await;
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
            return apply::audit(
                connection,
                pending,
                envelope,
                event.sequence,
                event.position,
            )
            .await;
        }
        apply(connection, &self.store, pending, event).await
    }

    /// Quarantines one message that cannot be applied (its event, or every event of its commit:
    /// a write is applied whole or not at all), in a transaction of its own with the checkpoint:
    /// its audit records are written if PostgreSQL takes them, and chained either way.
    async fn quarantine_event(
        &self,
        commit: &[Delivered],
        from: u64,
        failure: &ProjectorError,
    ) -> Result<u64, ProjectorError> {
        let Some(event) = commit.first() else {
            return Ok(from.saturating_sub(1));
        };
        let mut transaction = self.store.begin().await?;
        let locked = checkpoint::lock(&mut transaction, &self.name).await?;
        let checkpoint = locked.sequence;
        if event.sequence <= checkpoint || !self.left_as(locked) {
            self.reread_quarantined(&mut transaction).await?;
        }
        if event.sequence <= checkpoint {
            return Ok(checkpoint);
        }
        if checkpoint + 1 < from {
            return Err(ProjectorError::Gap {
                checkpoint,
                delivered: event.sequence,
            });
        }
        let envelope = &event.envelope;
        let key = (envelope.tenant.clone(), envelope.aggregate_id);
        let mut pending = apply::Pending::default();
        for each in commit {
            let (sequence, position) = (each.sequence, each.position);
            apply::audit(
                &mut transaction,
                &mut pending,
                &each.envelope,
                sequence,
                position,
            )
            .await?;
        }
        let audited = {
            // A savepoint in the batch's transaction (dropped mid-way, that one rolls back).
            #[allow(clippy::disallowed_methods)]
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
        for each in commit {
            quarantine::record(
                &mut transaction,
                &mut pending,
                each,
                status,
                &reason,
                audited,
                1,
            )
            .await?;
        }
        pending.flush(&mut transaction).await?;
        let saved =
            checkpoint::set_saying_quarantined(&mut transaction, &self.name, event.sequence)
                .await?;
        transaction.commit().await.map_err(StoreError::from)?;
        self.committed_at(event.sequence, saved);
        let mut changes = Changes::default();
        changes.quarantine(key);
        self.quarantined.commit(&changes);
        error!(
            sequence = event.sequence,
            events = commit.len(),
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
        let mut transaction = self.store.begin().await?;
        let locked = checkpoint::lock(&mut transaction, &self.name).await?;
        let checkpoint = locked.sequence;
        if sequence <= checkpoint || !self.left_as(locked) {
            self.reread_quarantined(&mut transaction).await?;
        }
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
                position: 0,
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
        let saved =
            checkpoint::set_saying_quarantined(&mut transaction, &self.name, sequence).await?;
        transaction.commit().await.map_err(StoreError::from)?;
        self.committed_at(sequence, saved);
        error!(sequence, "a message on the stream is not a Rollcall event; passed over and kept in the quarantine");
        Ok(sequence)
    }

    /// How many aggregates are quarantined, as this projector last committed.
    pub fn quarantined(&self) -> usize {
        self.quarantined.len()
    }

    /// Notes that this projector committed `checkpoint` as `saved` says (whether anything was
    /// quarantined as of it, and by which transaction).
    fn committed_at(&self, checkpoint: u64, saved: checkpoint::Saved) {
        let clear = if saved.quarantined { 0 } else { checkpoint };
        self.clear_at
            .store(clear, std::sync::atomic::Ordering::Relaxed);
        self.written_by
            .store(saved.written_by, std::sync::atomic::Ordering::Release);
    }

    /// Whether this projector wrote the checkpoint `locked` last (nothing else wrote it since).
    fn left_as(&self, locked: checkpoint::Locked) -> bool {
        locked.written_by == self.written_by.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Where this projector announces its checkpoint.
    fn announcement_subject(&self) -> String {
        self.log.namespace().checkpoint_subject(&self.name)
    }

    /// Reads what is quarantined again, within `transaction` (which holds the checkpoint's
    /// lock): for when the checkpoint is not where this projector left it (events of a
    /// resource another process quarantined are then held too).
    async fn reread_quarantined(
        &self,
        transaction: &mut sqlx::PgConnection,
    ) -> Result<(), ProjectorError> {
        let open = rollcall_store::quarantine::open_aggregates(transaction).await?;
        self.quarantined.replace(open);
        Ok(())
    }
}

/// How long a projector that stops or gives its partition back spends publishing what its
/// last batches left.
const LAST_PUBLICATION: Duration = Duration::from_secs(5);

/// A checkpoint to announce.
#[derive(Debug, Clone, Copy)]
struct Announcement {
    checkpoint: u64,
    /// PostgreSQL said, in the commit of `checkpoint`, that nothing is quarantined.
    clear: bool,
}

/// The newest checkpoint a projector committed, handed to its publisher.
#[derive(Debug, Default)]
struct Committed {
    latest: std::sync::Mutex<Option<Announcement>>,
    wanted: tokio::sync::Notify,
    /// Debug builds: the background publisher publishes nothing while set (tests leave
    /// committed batches unpublished).
    #[cfg(debug_assertions)]
    held: std::sync::atomic::AtomicBool,
}

impl Committed {
    /// Hands over a committed checkpoint and wakes the publisher.
    fn offer(&self, announcement: Announcement) {
        *self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(announcement);
        self.wanted.notify_one();
    }

    fn latest(&self) -> Option<Announcement> {
        *self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the background publisher is held (never in release builds).
    fn held(&self) -> bool {
        #[cfg(debug_assertions)]
        return self.held.load(std::sync::atomic::Ordering::Acquire);
        #[cfg(not(debug_assertions))]
        false
    }
}

/// Publishes the outbox, then announces the newest committed checkpoint if it is beyond
/// `announced`; returns the checkpoint it announced. The checkpoint is taken before the drain
/// reads the outbox, so its batch's entries are among those published.
async fn publish_committed(
    publisher: &publish::Publisher,
    committed: &Committed,
    client: &async_nats::Client,
    subject: &str,
    announced: u64,
) -> Result<Option<u64>, ProjectorError> {
    let latest = committed.latest();
    publisher.drain().await?;
    let Some(latest) = latest.filter(|latest| latest.checkpoint > announced) else {
        return Ok(None);
    };
    announce(client, subject, latest).await;
    Ok(Some(latest.checkpoint))
}

/// Announces a checkpoint on `subject`, saying (header [`QUARANTINE_CLEAR_HEADER`]) when
/// nothing is quarantined as of it.
///
/// [`QUARANTINE_CLEAR_HEADER`]: rollcall_eventlog::namespace::QUARANTINE_CLEAR_HEADER
async fn announce(client: &async_nats::Client, subject: &str, announcement: Announcement) {
    let mut headers = async_nats::HeaderMap::new();
    if announcement.clear {
        headers.insert(rollcall_eventlog::namespace::QUARANTINE_CLEAR_HEADER, "1");
    }
    let payload = announcement.checkpoint.to_string().into();
    if let Err(error) = client
        .publish_with_headers(subject.to_owned(), headers, payload)
        .await
    {
        warn!(error = %error, "announcing the checkpoint failed");
    }
}

/// How a partition's projecting ended.
enum Outcome {
    /// The process stops.
    Stop,
    /// The lease's connection failed.
    Lost,
    /// The partition goes to a process with fewer.
    GiveBack,
    /// This process must not project any more.
    Fatal(ProjectorError),
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Settles the installation's partitioning before anything projects: `requested` partitions
/// (`None`: what the installation has, 1 if it never chose). Moving an installation with one
/// partition to more happens in place, once the single projector's lease is held (no process
/// projects the old way meanwhile); other changes are refused with what to do.
pub async fn choose_partitions(
    store: &Store,
    requested: Option<u16>,
) -> Result<Partitioning, ProjectorError> {
    let requested = requested
        .map(|count| Partitioning::new(count.into()))
        .transpose()
        .map_err(|error| ProjectorError::Config(error.to_string()))?;
    let current = store.partitions().await?;
    let Some(requested) = requested.filter(|p| p.count() != current) else {
        let count = match store.choose_partitions(None, DEFAULT_NAME, &[]).await? {
            rollcall_store::partition::Choice::Partitions(count) => count,
            rollcall_store::partition::Choice::Refused { current, .. } => current,
        };
        return Partitioning::new(count.into()).map_err(|e| ProjectorError::Config(e.to_string()));
    };
    if current != 1 {
        return Err(ProjectorError::Config(format!(
            "the installation has {current} partitions; changing to {} is not done in place (rebuild the read models into a new installation with the new count)",
            requested.count()
        )));
    }
    // No process may project with one partition while the checkpoints are shared out.
    let key = lease::lease_key(store.schema(), DEFAULT_NAME);
    let single = loop {
        if let Some(lease) = Lease::try_take(store, &key).await? {
            break lease;
        }
        warn!("waiting for the single projector to stop before partitioning (stop the processes still running with one partition)");
        tokio::time::sleep(LEASE_POLL).await;
    };
    let names: Vec<String> = requested
        .all()
        .map(|partition| partition.name(DEFAULT_NAME))
        .collect();
    let choice = store
        .choose_partitions(Some(requested.count()), DEFAULT_NAME, &names)
        .await;
    single.release().await;
    match choice? {
        rollcall_store::partition::Choice::Partitions(count) => {
            info!(partitions = count, "the installation is partitioned");
            Partitioning::new(count.into()).map_err(|e| ProjectorError::Config(e.to_string()))
        }
        rollcall_store::partition::Choice::Refused { current, requested } => {
            Err(ProjectorError::Config(format!(
                "the installation has {current} partitions; changing to {requested} is not done in place"
            )))
        }
    }
}

/// The projectors of every partition, running in this process (each active only while this
/// process holds its partition's lease).
#[derive(Debug)]
pub struct Running {
    partitioning: Partitioning,
    projectors: Vec<Projector>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    fatal: tokio::sync::mpsc::Receiver<ProjectorError>,
}

impl Running {
    /// The installation's partitioning.
    pub fn partitioning(&self) -> Partitioning {
        self.partitioning
    }

    /// The partitions this process projects now.
    pub fn active(&self) -> Vec<u16> {
        self.projectors
            .iter()
            .filter(|projector| projector.is_active())
            .map(|projector| projector.partition().index())
            .collect()
    }

    /// Every partition's projector (active or standing by).
    pub fn projectors(&self) -> &[Projector] {
        &self.projectors
    }

    /// Resolves when a partition's projector stopped for good (this process must be
    /// restarted); never while all go on.
    pub async fn failed(&mut self) -> ProjectorError {
        match self.fatal.recv().await {
            Some(error) => error,
            None => std::future::pending().await,
        }
    }

    /// Stops every partition's projector (their leases are given back at once).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    /// Dropped without [`Running::stop`]: the projectors end where they are, as in a crash
    /// (an open transaction rolls back; the leases go with their connections).
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the projector of every partition (each active here only while this process holds
/// its lease and it is within this process's fair share), publishing access state, over
/// shared connections.
pub async fn start(
    config: Config,
    client: async_nats::Client,
    log: EventLog,
    store: Store,
) -> Result<Running, ProjectorError> {
    // Rows keyed before lookup keys were case-folded by Rollcall (migration 0003) are keyed
    // again before any event is applied: the projector is the read models' one writer.
    store.rekey_lookup_keys().await?;
    let partitioning = choose_partitions(&store, config.partitions).await?;
    let share = Share::new(store.clone(), partitioning.count());
    let (fatal_sender, fatal) = tokio::sync::mpsc::channel(usize::from(partitioning.count()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Every publisher is opened before any partition starts, so that a failure leaves nothing
    // running behind.
    let mut publishers = Vec::new();
    for partition in partitioning.all() {
        publishers.push(
            open_publisher(&client, &log, &store)
                .await?
                .for_partition(partition),
        );
    }
    let mut projectors = Vec::new();
    let mut tasks = Vec::new();
    for (partition, publisher) in partitioning.all().zip(publishers) {
        let projector = Projector::new(
            client.clone(),
            log.clone(),
            store.clone(),
            DEFAULT_NAME,
            config.batch,
        )
        .in_partition(partition, share.clone())
        .with_publisher(publisher);
        let mut stopped = stopped.clone();
        projectors.push(projector.clone());
        let fatal = fatal_sender.clone();
        tasks.push(tokio::spawn(async move {
            let ran = projector
                .run(async move {
                    let _ = stopped.wait_for(|&s| s).await;
                })
                .await;
            if let Err(error) = ran {
                let _ = fatal.try_send(error);
            }
        }));
    }
    Ok(Running {
        partitioning,
        projectors,
        stop,
        tasks,
        fatal,
    })
}

/// Opens the access bucket for a publisher, waiting for NATS while it does not answer (a
/// projector started while its server restarts stands by instead of stopping for good).
async fn open_publisher(
    client: &async_nats::Client,
    log: &EventLog,
    store: &Store,
) -> Result<publish::Publisher, ProjectorError> {
    loop {
        match publish::Publisher::open(client.clone(), log.namespace().clone(), store.clone()).await
        {
            Err(ProjectorError::Log(LoadError::Nats(error))) => {
                warn!(error = %error, "opening the access bucket failed; trying again");
                tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
            }
            opened => return opened,
        }
    }
}

/// Runs the projector of every partition ([`start`]) until `shutdown` resolves.
pub async fn run(
    config: Config,
    client: async_nats::Client,
    log: EventLog,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProjectorError> {
    tokio::pin!(shutdown);
    let mut running = tokio::select! {
        () = &mut shutdown => return Ok(()),
        running = start(config, client, log, store) => running?,
    };
    let failed = tokio::select! {
        () = shutdown => None,
        error = running.failed() => Some(error),
    };
    running.stop().await;
    failed.map_or(Ok(()), Err)
}
