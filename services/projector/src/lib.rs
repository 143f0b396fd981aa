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
pub mod rebuild;

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use rollcall_eventlog::consumer::{decode, Delivered};
use rollcall_eventlog::{EventLog, LoadError};
use rollcall_store::{checkpoint, Store, StoreError};
use tracing::{error, info, info_span, instrument, warn, Instrument};

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
}

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
        }
    }

    /// Also publishes access state to NATS after every batch (the live projector does; a
    /// rebuild does not).
    pub fn with_publisher(mut self, publisher: publish::Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Runs until `shutdown` resolves, recovering from failures by repositioning at the
    /// checkpoint after a short pause.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
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
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                result = self.consume() => match result {
                    Ok(()) => return,
                    Err(ProjectorError::Gap { checkpoint, delivered }) => {
                        warn!(checkpoint, delivered, "gap after the checkpoint; repositioning");
                    }
                    Err(error) => {
                        error!(error = %error, "projector failed; retrying from its checkpoint");
                        tokio::select! {
                            _ = &mut shutdown => return,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                },
            }
        }
    }

    /// Consumes from the checkpoint on; returns only on error (or if the stream ends).
    async fn consume(&self) -> Result<(), ProjectorError> {
        let checkpoint = self.store.checkpoint(&self.name).await?;
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
            for message in batch {
                let message = message.map_err(|error| LoadError::Nats(error.to_string()))?;
                delivered.push(decode(&message)?);
                last = Some(message);
            }
            let checkpoint = self.apply_batch(&delivered).await?;
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
            self.announce(checkpoint).await;
        }
        Ok(())
    }

    /// Applies delivered events in one transaction with the checkpoint; returns the checkpoint.
    #[instrument(skip_all, fields(projector = %self.name, events = delivered.len()), err)]
    pub async fn apply_batch(&self, delivered: &[Delivered]) -> Result<u64, ProjectorError> {
        let mut transaction = self.store.pool().begin().await.map_err(StoreError::from)?;
        let mut checkpoint = checkpoint::lock(&mut transaction, &self.name).await?;
        let mut pending = apply::Pending::default();
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
            apply(&mut transaction, &mut pending, event)
                .instrument(span)
                .await?;
            checkpoint = event.sequence;
        }
        pending.flush(&mut transaction).await?;
        checkpoint::set(&mut transaction, &self.name, checkpoint).await?;
        transaction.commit().await.map_err(StoreError::from)?;
        Ok(checkpoint)
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
    let publisher =
        publish::Publisher::open(client.clone(), log.namespace().clone(), store.clone()).await?;
    Projector::new(client, log, store, DEFAULT_NAME, config.batch)
        .with_publisher(publisher)
        .run(shutdown)
        .await;
    Ok(())
}
