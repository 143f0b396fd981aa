//! The projector's metrics, per partition (label `partition`, its index): whether this process
//! is the partition's active projector, its lag behind the stream's head, its checkpoint, the
//! size and time of its batches, the events it applied, the resources it holds quarantined, and
//! the installation's open quarantine. The names and help texts are
//! [`rollcall_telemetry::metrics`]'s.
//!
//! A batch reports its own figures as it ends ([`Batch`]); between batches, and in a process
//! that stands by, a sampler ([`Projector::report_metrics`]) reads the head and the checkpoint,
//! so that the lag shows even while no batch is applied (a projector that is stuck, or none
//! active).

use std::time::{Duration, Instant};

use rollcall_eventlog::partition::Partition;
use rollcall_telemetry::metrics;

use crate::Projector;

/// How often the sampler sets the active flag.
const ACTIVE_EVERY: Duration = Duration::from_secs(1);

/// How many active-flag ticks between two samples of the lag and the quarantine (NATS and
/// PostgreSQL are asked then).
const SAMPLE_EVERY_TICKS: u32 = 5;

fn label(partition: Partition) -> [(&'static str, String); 1] {
    [("partition", partition.index().to_string())]
}

fn flag(set: bool) -> f64 {
    if set {
        1.0
    } else {
        0.0
    }
}

/// One batch being applied: started when its messages arrived.
#[derive(Debug)]
pub(crate) struct Batch {
    started: Instant,
    messages: usize,
}

impl Batch {
    /// A batch of `messages` (this partition's and others', as the consumer delivered them).
    pub(crate) fn start<T>(messages: &[T]) -> Self {
        Self {
            started: Instant::now(),
            messages: messages.len(),
        }
    }

    /// Records the batch, applied up to `checkpoint` with `applied` events of this partition;
    /// `last` is its last message, which tells how many messages the consumer has still to
    /// deliver (the lag).
    pub(crate) fn finish(
        self,
        partition: Partition,
        applied: usize,
        checkpoint: Option<u64>,
        last: Option<&async_nats::jetstream::Message>,
    ) {
        let labels = label(partition);
        metrics::histogram!(metrics::PROJECTOR_BATCH_DURATION, &labels)
            .record(self.started.elapsed().as_secs_f64());
        metrics::histogram!(metrics::PROJECTOR_BATCH_EVENTS, &labels).record(self.messages as f64);
        metrics::counter!(metrics::PROJECTOR_EVENTS_APPLIED, &labels).increment(applied as u64);
        if let Some(checkpoint) = checkpoint {
            metrics::gauge!(metrics::PROJECTOR_CHECKPOINT, &labels).set(checkpoint as f64);
        }
        if let Some(pending) = last
            .and_then(|message| message.info().ok())
            .map(|i| i.pending)
        {
            metrics::gauge!(metrics::PROJECTOR_LAG, &labels).set(pending as f64);
        }
    }
}

/// Stops the sampler, and marks the partition stood by, when dropped (the projector stopped).
#[derive(Debug)]
pub(crate) struct Reporting {
    sampler: tokio::task::JoinHandle<()>,
    partition: Partition,
}

impl Drop for Reporting {
    fn drop(&mut self) {
        self.sampler.abort();
        metrics::gauge!(metrics::PROJECTOR_ACTIVE, &label(self.partition)).set(0.0);
    }
}

impl Projector {
    /// Starts reporting this partition's metrics until the guard is dropped: the active flag
    /// every second; the lag (the stream's head less the checkpoint), the checkpoint, the
    /// resources held quarantined and (partition 0) the installation's open quarantine every
    /// few seconds, whether this process is active or standing by.
    pub(crate) fn report_metrics(&self) -> Reporting {
        metrics::install();
        let partition = self.partition;
        let labels = label(partition);
        metrics::gauge!(metrics::PROJECTOR_ACTIVE, &labels).set(flag(self.is_active()));
        let projector = self.clone();
        let sampler = tokio::spawn(async move {
            let mut interval = tokio::time::interval(ACTIVE_EVERY);
            let mut tick = 0u32;
            loop {
                interval.tick().await;
                metrics::gauge!(metrics::PROJECTOR_ACTIVE, &labels)
                    .set(flag(projector.is_active()));
                if tick % SAMPLE_EVERY_TICKS == 0 {
                    projector.sample(&labels).await;
                }
                tick = tick.wrapping_add(1);
            }
        });
        Reporting { sampler, partition }
    }

    async fn sample(&self, labels: &[(&'static str, String); 1]) {
        metrics::gauge!(metrics::PROJECTOR_QUARANTINED_AGGREGATES, labels)
            .set(self.quarantined() as f64);
        if let (Ok(head), Ok(checkpoint)) = (
            self.log.head().await,
            self.store.checkpoint(&self.name).await,
        ) {
            metrics::gauge!(metrics::PROJECTOR_LAG, labels)
                .set(head.saturating_sub(checkpoint) as f64);
            metrics::gauge!(metrics::PROJECTOR_CHECKPOINT, labels).set(checkpoint as f64);
        }
        if self.partition.index() == 0 {
            let open = self.store.quarantine_open().await.unwrap_or(-1);
            metrics::gauge!(metrics::PROJECTOR_QUARANTINED_EVENTS).set(open as f64);
        }
    }
}
