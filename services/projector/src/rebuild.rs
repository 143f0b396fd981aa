//! `rollcall projector rebuild`: replay the stream from the start into a fresh read-model
//! schema, then swap it in. The live projector keeps running meanwhile; after the swap it reads
//! the new checkpoint and repositions if it is behind it or ahead of it.

use futures::StreamExt;
use rollcall_eventlog::consumer::decode;
use rollcall_eventlog::{EventLog, LoadError};
use rollcall_store::rebuild::REBUILD_SCHEMA;
use rollcall_store::Store;
use tracing::info;

use crate::{Projector, ProjectorError, DEFAULT_NAME};

/// Progress of a rebuild, reported as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Events applied so far.
    pub applied: u64,
    /// The stream's head when the rebuild last looked.
    pub head: u64,
}

/// Rebuilds the read models from sequence 1 and makes them live. Returns how many events were
/// applied. `report` is called after every batch.
pub async fn rebuild(
    client: async_nats::Client,
    log: &EventLog,
    store: &Store,
    batch: usize,
    mut report: impl FnMut(Progress),
) -> Result<u64, ProjectorError> {
    store.create_rebuild_schema().await?;
    let fresh = store.with_schema(REBUILD_SCHEMA, 4).await?;
    let projector = Projector::new(client, log.clone(), fresh, DEFAULT_NAME, batch);
    let mut applied = 0;
    loop {
        let head = log.head().await?;
        let checkpoint = projector.store.checkpoint(DEFAULT_NAME).await?;
        if checkpoint >= head {
            break;
        }
        applied += catch_up(&projector, log, checkpoint, head, batch, &mut report).await?;
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
    // The live access state is already published; replaying it would only repeat it.
    projector.store.clear_outbox(i64::MAX).await?;
    store.swap_rebuild_schema().await?;
    info!(applied, "rebuilt read models are live");
    Ok(applied)
}

async fn catch_up(
    projector: &Projector,
    log: &EventLog,
    checkpoint: u64,
    head: u64,
    batch: usize,
    report: &mut impl FnMut(Progress),
) -> Result<u64, ProjectorError> {
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
    let mut chunks = messages.ready_chunks(batch);
    let mut applied = 0;
    while let Some(chunk) = chunks.next().await {
        let mut delivered = Vec::with_capacity(chunk.len());
        let (mut from, mut through) = (None, 0);
        for message in chunk {
            let message = message.map_err(|error| LoadError::Nats(error.to_string()))?;
            // A message holds one event or the events of one commit (a write).
            let events = decode(&message)?;
            through = events.first().map_or(through, |event| event.sequence);
            from.get_or_insert(through);
            delivered.extend(events);
        }
        let Some(from) = from else {
            continue;
        };
        let reached = projector.apply_isolating(&delivered, from, through).await?;
        applied += delivered.len() as u64;
        report(Progress { applied, head });
        if reached >= head {
            break;
        }
    }
    Ok(applied)
}
