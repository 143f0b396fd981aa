//! `rollcall projector rebuild`: replay the stream from the start into a fresh read-model
//! schema, then swap it in. The live projector keeps running meanwhile; after the swap it reads
//! the new checkpoint and repositions if it is behind it or ahead of it.

use futures::StreamExt;
use rollcall_eventlog::consumer::{decode, Delivered};
use rollcall_eventlog::{EventLog, LoadError};
use rollcall_store::personal_key::{Freshness, KeyState};
use rollcall_store::rebuild::{DEFERRED_INDEXES, LOOKUP_INDEXES, REBUILD_SCHEMA};
use rollcall_store::Store;
use tracing::info;

use crate::{Projector, ProjectorError, DEFAULT_NAME};

/// Progress of a rebuild, reported as it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Events applied so far.
    pub applied: u64,
    /// Of those, events applied by folding their batch in memory and writing it in bulk (the
    /// others were applied one by one: their batch held something that cannot be folded).
    pub folded: u64,
    /// The stream's head when the rebuild last looked.
    pub head: u64,
}

/// A batch is cut short at about this many bytes of events (each is held a few times over:
/// decoded, prepared and drafted), so that large events do not make large batches.
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// How many events a rebuild applies per transaction by default: a batch is folded in memory
/// and written in bulk, so larger batches cost less per event.
pub const DEFAULT_BATCH: usize = 5_000;

/// Rebuilds the read models from sequence 1 and makes them live. Returns how many events were
/// applied, and how many of them in bulk. `report` is called after every batch.
pub async fn rebuild(
    client: async_nats::Client,
    log: &EventLog,
    store: &Store,
    batch: usize,
    mut report: impl FnMut(Progress),
) -> Result<Progress, ProjectorError> {
    store.create_rebuild_schema().await?;
    // A rebuild that stops starts again from nothing (its schema is made afresh), so its
    // batches need not wait for their WAL to reach the disk: the swap that makes them live
    // commits synchronously, which flushes everything committed before it.
    let fresh = store
        .with_schema_committing_asynchronously(REBUILD_SCHEMA, 4)
        .await?;
    let projector = Projector::new(client, log.clone(), fresh, DEFAULT_NAME, batch);
    // Loaded first, indexed once at the end: the secondary indexes are built again before the
    // last catch-up (with them in place) and the swap, or sooner, before the first batch that
    // is applied event by event (`Projector::apply_folded`).
    let mut deferred = store.defer_rebuild_indexes(DEFERRED_INDEXES).await?;
    deferred.extend(store.defer_rebuild_indexes(LOOKUP_INDEXES).await?);
    let mut deferred = Some(deferred);
    // The schema starts empty: the rebuild knows which users and groups have rows.
    let mut written = Some(std::collections::HashSet::new());
    let mut progress = Progress::default();
    let mut indexed = false;
    // Every user's data key in one scan, instead of a query per batch.
    let keys = std::sync::Arc::new(
        store
            .all_data_keys(PRELOADED_KEYS)
            .await?
            .unwrap_or_default(),
    );
    loop {
        let head = log.head().await?;
        let checkpoint = projector.store.checkpoint(DEFAULT_NAME).await?;
        if checkpoint >= head {
            if indexed {
                break;
            }
            if let Some(definitions) = deferred.take() {
                info!(
                    indexes = definitions.len(),
                    "building the read models' indexes"
                );
                store.restore_rebuild_indexes(&definitions).await?;
            }
            indexed = true;
            continue;
        }
        let mut carried = Carried {
            keys: keys.clone(),
            progress: &mut progress,
            deferred: &mut deferred,
            written: &mut written,
        };
        catch_up(
            &projector,
            log,
            checkpoint,
            head,
            batch,
            &mut carried,
            &mut report,
        )
        .await?;
    }
    // In a partitioned installation every partition's projector goes on from where the
    // rebuild stopped.
    let partitions = store.partitions().await?;
    if partitions > 1 {
        let at = projector.store.checkpoint(DEFAULT_NAME).await?;
        let mut connection = projector
            .store
            .pool()
            .acquire()
            .await
            .map_err(rollcall_store::StoreError::from)?;
        let partitioning = rollcall_eventlog::partition::Partitioning::new(partitions.into())
            .map_err(|error| ProjectorError::Config(error.to_string()))?;
        for partition in partitioning.all() {
            rollcall_store::checkpoint::set(&mut connection, &partition.name(DEFAULT_NAME), at)
                .await?;
        }
    }
    // The live access state is published (what is not yet moves over with the swap);
    // replaying the rebuild's own would only repeat it.
    projector.store.clear_outbox(i64::MAX).await?;
    store.swap_rebuild_schema().await?;
    info!(
        applied = progress.applied,
        folded = progress.folded,
        "rebuilt read models are live"
    );
    Ok(progress)
}

/// Applies the stream's messages from `checkpoint + 1` through `head` in batches of about
/// `batch` events. A task of its own reads and decodes the next batches while one is written.
async fn catch_up(
    projector: &Projector,
    log: &EventLog,
    checkpoint: u64,
    head: u64,
    batch: usize,
    carried: &mut Carried<'_>,
    report: &mut impl FnMut(Progress),
) -> Result<(), ProjectorError> {
    use async_nats::jetstream::consumer::{pull, DeliverPolicy};
    let consumer = log
        .stream()
        .create_consumer(pull::OrderedConfig {
            filter_subject: log.namespace().all_events(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: checkpoint + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|error| LoadError::Nats(error.to_string()))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|error| LoadError::Nats(error.to_string()))?;
    let (batches, mut received) = tokio::sync::mpsc::channel(2);
    let reader = tokio::spawn(read_batches(
        messages,
        projector.store.clone(),
        carried.keys.clone(),
        head,
        batch.max(1),
        batches,
    ));
    let result = async {
        while let Some(read) = received.recv().await {
            let Read {
                delivered,
                prepared,
                from,
                through,
            } = read?;
            let (folded, reached) = projector
                .apply_folded(
                    &delivered,
                    prepared,
                    from,
                    through,
                    carried.deferred,
                    carried.written,
                )
                .await?;
            let progress = &mut *carried.progress;
            progress.applied += delivered.len() as u64;
            if folded {
                progress.folded += delivered.len() as u64;
            }
            progress.head = head;
            report(*progress);
            if reached >= head {
                return Ok(true);
            }
        }
        Ok(false)
    }
    .await;
    if let Ok(false) = result {
        // The reader stopped before the head: its messages ended (the caller goes on from the
        // checkpoint), or it failed, which must not pass for the end of its messages.
        if let Err(error) = reader.await {
            return Err(ProjectorError::Config(format!(
                "the rebuild's reader failed: {error}"
            )));
        }
        return Ok(());
    }
    reader.abort();
    result.map(|_| ())
}

/// What catching up carries from batch to batch: the progress, the definitions of the indexes
/// while they are deferred, and which resources have rows while the rebuild knows it.
struct Carried<'a> {
    /// The users' data keys, read once at the start (empty when there were too many).
    keys: std::sync::Arc<Keys>,
    progress: &'a mut Progress,
    deferred: &'a mut Option<Vec<String>>,
    /// The ids of every user and group written so far, until a batch goes event by event.
    written: &'a mut Option<std::collections::HashSet<uuid::Uuid>>,
}

/// Data keys by (tenant, user).
type Keys = std::collections::HashMap<(String, uuid::Uuid), KeyState>;

/// Up to how many data keys a rebuild reads at its start (about 100 bytes of memory each);
/// beyond, each batch asks for its own.
const PRELOADED_KEYS: i64 = 2_000_000;

/// A batch read from the stream: its events, each also prepared for folding, and the stream
/// sequences of its first and last messages.
struct Read {
    delivered: Vec<Delivered>,
    prepared: Vec<crate::bulk::Prepared>,
    from: u64,
    through: u64,
}

/// Prepares a batch's events for folding: personal fields opened for the read models (the data
/// keys of the whole batch read in one query), audit records drafted from the sealed events.
async fn prepare_batch(
    store: &Store,
    preloaded: &Keys,
    read: &mut Read,
) -> Result<(), ProjectorError> {
    // Keys stored after the rebuild read them all (users created meanwhile): asked for now.
    let missing: Vec<(String, uuid::Uuid)> = read
        .delivered
        .iter_mut()
        .filter(|event| rollcall_personal::sealed(&event.envelope))
        .filter_map(rollcall_personal::key_owner)
        .filter(|owner| !preloaded.contains_key(owner))
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .collect();
    let fetched = if missing.is_empty() {
        Keys::new()
    } else {
        store.data_keys(&missing, Freshness::Cached).await?
    };
    let no_key = KeyState::Missing;
    read.prepared = read
        .delivered
        .iter()
        .map(|event| {
            if !rollcall_personal::sealed(&event.envelope) {
                return crate::bulk::prepare(event, Ok(None));
            }
            let mut opened = Opening {
                stored: &event.envelope,
                payload: event.envelope.payload.clone(),
                schema_version: event.envelope.schema_version,
            };
            let state = rollcall_personal::key_owner(&mut opened)
                .and_then(|owner| preloaded.get(&owner).or_else(|| fetched.get(&owner)))
                .unwrap_or(&no_key);
            match rollcall_personal::open(&mut opened, state) {
                Ok(()) => {
                    crate::bulk::prepare(event, Ok(Some((&opened.payload, opened.schema_version))))
                }
                Err(error) => crate::bulk::prepare(event, Err(error.to_string())),
            }
        })
        .collect();
    Ok(())
}

/// A stored event being opened: a copy of its payload, its other parts borrowed (a copy of the
/// whole envelope cost a dozen allocations more per sealed event).
struct Opening<'a> {
    stored: &'a rollcall_eventlog::Envelope,
    payload: serde_json::Value,
    schema_version: u32,
}

impl rollcall_personal::PersonalEvent for Opening<'_> {
    fn parts(&mut self) -> rollcall_personal::EventParts<'_> {
        rollcall_personal::EventParts {
            tenant: &self.stored.tenant,
            aggregate_type: &self.stored.aggregate_type,
            aggregate_id: self.stored.aggregate_id,
            event_id: self.stored.event_id,
            event_type: &self.stored.event_type,
            schema_version: self.schema_version,
            payload: &mut self.payload,
        }
    }
    fn set_schema_version(&mut self, version: u32) {
        self.schema_version = version;
    }
}

/// Reads messages into batches of at least `batch` events (fewer for the last one, which ends
/// at `head`), decoded and prepared for folding; stops at `head`, at an error, or when nobody receives any more.
async fn read_batches(
    messages: async_nats::jetstream::consumer::pull::Ordered,
    store: Store,
    preloaded: std::sync::Arc<Keys>,
    head: u64,
    batch: usize,
    batches: tokio::sync::mpsc::Sender<Result<Read, ProjectorError>>,
) {
    let mut chunks = messages.ready_chunks(batch);
    let mut bytes = 0;
    let mut read = Read {
        delivered: Vec::with_capacity(batch),
        prepared: Vec::with_capacity(batch),
        from: 0,
        through: 0,
    };
    while let Some(chunk) = chunks.next().await {
        // A message holds one event or the events of one commit (a write).
        for message in chunk {
            let decoded = message
                .map_err(|error| LoadError::Nats(error.to_string()))
                .and_then(|message| {
                    bytes += message.payload.len();
                    decode(&message)
                });
            let events = match decoded {
                Ok(events) => events,
                Err(error) => {
                    let _ = batches.send(Err(error.into())).await;
                    return;
                }
            };
            if let (Some(first), Some(last)) = (events.first(), events.last()) {
                read.through = last.sequence;
                if read.from == 0 {
                    read.from = first.sequence;
                }
            }
            read.delivered.extend(events);
        }
        let done = read.through >= head;
        let full = read.delivered.len() >= batch || bytes >= MAX_BATCH_BYTES;
        if (full || done) && read.from != 0 {
            bytes = 0;
            let mut full = std::mem::replace(
                &mut read,
                Read {
                    delivered: Vec::with_capacity(batch),
                    prepared: Vec::with_capacity(batch),
                    from: 0,
                    through: 0,
                },
            );
            if let Err(error) = prepare_batch(&store, &preloaded, &mut full).await {
                let _ = batches.send(Err(error)).await;
                return;
            }
            if batches.send(Ok(full)).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
    }
}
