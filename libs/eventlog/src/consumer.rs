//! Durable consumers for projections: each keeps its checkpoint next to its effects (in
//! PostgreSQL); the JetStream consumer is positioned from that checkpoint at start, so a crash
//! or redelivery never applies an event twice or skips one.

use async_nats::jetstream::consumer::{self, pull, PullConsumer};
use tracing::{info, instrument};

use crate::envelope::Envelope;
use crate::log::{EventLog, LoadError};

fn nats<E: std::fmt::Display>(error: E) -> LoadError {
    LoadError::Nats(error.to_string())
}

/// One event read from a consumer.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Its stream sequence.
    pub sequence: u64,
    /// The envelope.
    pub envelope: Envelope,
}

impl EventLog {
    /// The durable pull consumer `name` over every event, delivering from `checkpoint + 1`.
    ///
    /// An existing consumer whose acknowledged position differs from `checkpoint` (the
    /// projection was rebuilt, or acks were lost in a crash) is recreated at the checkpoint.
    #[instrument(skip_all, fields(consumer = %name, checkpoint), err)]
    pub async fn durable_consumer(
        &self,
        name: &str,
        checkpoint: u64,
    ) -> Result<PullConsumer, LoadError> {
        let config = pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: self.namespace().all_events(),
            ack_policy: consumer::AckPolicy::All,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: checkpoint + 1,
            },
            max_ack_pending: 20_000,
            ..Default::default()
        };
        if let Ok(mut existing) = self.stream().get_consumer::<pull::Config>(name).await {
            let info = existing.info().await.map_err(nats)?;
            if info.ack_floor.stream_sequence == checkpoint && info.num_ack_pending == 0 {
                return Ok(existing);
            }
            info!(
                ack_floor = info.ack_floor.stream_sequence,
                "repositioning consumer at its checkpoint"
            );
            self.stream().delete_consumer(name).await.map_err(nats)?;
        }
        self.stream().create_consumer(config).await.map_err(nats)
    }

    /// Deletes a durable consumer if it exists.
    pub async fn delete_consumer(&self, name: &str) -> Result<(), LoadError> {
        match self.stream().delete_consumer(name).await {
            Ok(_) => Ok(()),
            Err(error) if error.to_string().contains("not found") => Ok(()),
            Err(error) => Err(nats(error)),
        }
    }
}

/// Reads a consumed message.
pub fn decode(message: &async_nats::jetstream::Message) -> Result<Delivered, LoadError> {
    let sequence = message.info().map_err(nats)?.stream_sequence;
    let envelope = Envelope::from_bytes(&message.payload).map_err(|error| LoadError::Corrupt {
        sequence,
        reason: error.to_string(),
    })?;
    Ok(Delivered { sequence, envelope })
}
