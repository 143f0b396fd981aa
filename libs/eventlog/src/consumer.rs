//! Durable consumers for projections: each keeps its checkpoint next to its effects (in
//! PostgreSQL); the JetStream consumer is positioned from that checkpoint at start, so a crash
//! or redelivery never applies an event twice or skips one. A message holds one event or the
//! events of one commit; checkpoints stay stream sequences (of messages).

use async_nats::jetstream::consumer::{self, pull, PullConsumer};
use tracing::{info, instrument};

use crate::envelope::{decode_commit, Envelope};
use crate::log::{EventLog, LoadError};

/// How long asking for an existing durable consumer may take.
const CONSUMER_INFO_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn nats<E: std::fmt::Display>(error: E) -> LoadError {
    LoadError::Nats(error.to_string())
}

/// One event read from a consumer.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The stream sequence of its message (the events of one commit share it).
    pub sequence: u64,
    /// Its place in its message: 0 for the first (and for a message of one event).
    pub position: u32,
    /// The envelope.
    pub envelope: Envelope,
}

impl EventLog {
    /// Hands every message on subjects matching `filter` after stream sequence `after`, up to
    /// the stream's head as it is when asked, to `each` with its stream sequence; gives up after
    /// `wait` (`what` names the reading in that error).
    pub async fn read_to_head(
        &self,
        filter: String,
        after: u64,
        wait: std::time::Duration,
        what: &str,
        mut each: impl FnMut(&async_nats::jetstream::Message, u64),
    ) -> Result<(), LoadError> {
        let read = async {
            let (mut messages, pending) = self.follow(filter, after).await?;
            if pending == 0 {
                return Ok(());
            }
            while let Some(message) = futures::StreamExt::next(&mut messages).await {
                let message = message.map_err(nats)?;
                let info = message.info().map_err(nats)?;
                let (sequence, pending) = (info.stream_sequence, info.pending);
                each(&message, sequence);
                if pending == 0 {
                    return Ok(());
                }
            }
            Err(LoadError::Nats("the stream's messages ended".into()))
        };
        tokio::time::timeout(wait, read)
            .await
            .map_err(|_| LoadError::Nats(format!("{what} timed out")))?
    }

    /// The events on subjects matching `filter` after stream sequence `after`, as they are
    /// appended (an ordered consumer: NATS removes it once it is left), and how many there are
    /// now.
    pub async fn follow(
        &self,
        filter: String,
        after: u64,
    ) -> Result<(async_nats::jetstream::consumer::pull::Ordered, u64), LoadError> {
        let consumer = self
            .stream()
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(nats)?;
        Ok((messages, pending))
    }

    /// The durable pull consumer `name` over every event, delivering from `checkpoint + 1`.
    ///
    /// An existing consumer whose acknowledged position differs from `checkpoint` (the
    /// projection was rebuilt, or acks were lost in a crash) is recreated at the checkpoint.
    #[instrument(skip_all, fields(consumer = %name, checkpoint), err)]
    ///
    /// `recreate`: delete an existing consumer and create it afresh even where it is at the
    /// checkpoint (one that stalled). Asking for an existing consumer is bounded in time: a NATS
    /// 2.9 consumer may leave its info request unanswered.
    pub async fn durable_consumer(
        &self,
        name: &str,
        checkpoint: u64,
        recreate: bool,
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
        let existing = async {
            let mut existing = self
                .stream()
                .get_consumer::<pull::Config>(name)
                .await
                .ok()?;
            let info = existing.info().await.ok()?.clone();
            Some((existing, info))
        };
        let existing = tokio::time::timeout(CONSUMER_INFO_WAIT, existing)
            .await
            .map_err(|_| LoadError::Nats(format!("consumer {name} did not answer")))?;
        if let Some((existing, info)) = existing {
            if !recreate
                && info.ack_floor.stream_sequence == checkpoint
                && info.num_ack_pending == 0
            {
                return Ok(existing);
            }
            info!(
                ack_floor = info.ack_floor.stream_sequence,
                recreate, "repositioning consumer at its checkpoint"
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

/// Reads a consumed message: its events in order (one, or the events of a commit).
///
/// An event whose tenant is not the one its subject names is not a Rollcall event (Rollcall
/// always appends to its tenant's subject): it is refused as unreadable, so that it can never
/// reach another tenant's rows, or a partition that does not hold that tenant.
pub fn decode(message: &async_nats::jetstream::Message) -> Result<Vec<Delivered>, LoadError> {
    let sequence = message.info().map_err(nats)?.stream_sequence;
    let events = expand(sequence, &message.payload)?;
    let tenant = crate::partition::subject_tenant(&message.subject).unwrap_or_default();
    if let Some(stray) = events.iter().find(|event| event.envelope.tenant != tenant) {
        return Err(LoadError::Corrupt {
            sequence,
            reason: format!(
                "the event names tenant {:?}, its subject tenant {tenant:?}",
                stray.envelope.tenant
            ),
        });
    }
    Ok(events)
}

/// The events of the message at stream sequence `sequence`, with their positions.
pub fn expand(sequence: u64, payload: &[u8]) -> Result<Vec<Delivered>, LoadError> {
    let envelopes = decode_commit(payload).map_err(|error| LoadError::Corrupt {
        sequence,
        reason: error.to_string(),
    })?;
    Ok(envelopes
        .into_iter()
        .enumerate()
        .map(|(position, envelope)| Delivered {
            sequence,
            position: position as u32,
            envelope,
        })
        .collect())
}

/// Delivered events grouped by message (commit), in order: a commit is applied, and
/// quarantined, as a whole.
pub fn commits(delivered: &[Delivered]) -> impl Iterator<Item = &[Delivered]> {
    delivered.chunk_by(|a, b| a.sequence == b.sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{encode_commit, Actor};

    fn envelope(version: u64) -> Envelope {
        Envelope {
            event_id: uuid::Uuid::from_u128(version as u128),
            tenant: "t".into(),
            aggregate_type: "group".into(),
            aggregate_id: uuid::Uuid::from_u128(3),
            version,
            event_type: "group.members_added".into(),
            schema_version: 1,
            occurred_at: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            actor: Actor::Operator { name: "ops".into() },
            request_id: None,
            traceparent: None,
            payload: serde_json::json!({"members": []}),
        }
    }

    #[test]
    fn a_commit_expands_into_its_events_with_positions_and_groups_back() {
        let mut delivered = expand(5, &envelope(1).to_bytes()).unwrap();
        delivered
            .extend(expand(6, &encode_commit(&[envelope(2), envelope(3), envelope(4)])).unwrap());
        let keys: Vec<(u64, u32, u64)> = delivered
            .iter()
            .map(|d| (d.sequence, d.position, d.envelope.version))
            .collect();
        assert_eq!(keys, vec![(5, 0, 1), (6, 0, 2), (6, 1, 3), (6, 2, 4)]);
        let sizes: Vec<usize> = commits(&delivered).map(<[Delivered]>::len).collect();
        assert_eq!(sizes, vec![1, 3]);
    }

    #[test]
    fn an_unreadable_message_is_corrupt_at_its_sequence() {
        assert!(matches!(
            expand(9, b"[]"),
            Err(LoadError::Corrupt { sequence: 9, .. })
        ));
    }
}
