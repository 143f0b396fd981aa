//! The stream itself: created if missing, appended to with optimistic concurrency per
//! aggregate, and read back per aggregate.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, Context};
use async_nats::HeaderMap;
use futures::StreamExt;
use tracing::instrument;

use crate::envelope::Envelope;
use crate::namespace::Namespace;

/// How long the stream remembers message ids to drop duplicate publishes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the aggregate first: reload, re-decide, retry.
    #[error("the aggregate changed since it was loaded (expected sequence {expected})")]
    Conflict {
        /// The sequence this writer expected to follow.
        expected: u64,
    },
    /// NATS did not take the event.
    #[error("publishing to the event stream: {0}")]
    Publish(String),
    /// An event is larger than the stream takes; nothing was appended.
    #[error("an event of {size} bytes is larger than the {limit} bytes the event stream takes")]
    TooLarge {
        /// The encoded event's size.
        size: usize,
        /// The largest event the stream takes ([`EventLog::max_event_bytes`]).
        limit: usize,
    },
}

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// NATS failed.
    #[error("reading the event stream: {0}")]
    Nats(String),
    /// A stored event could not be read.
    #[error("event at sequence {sequence} is unreadable: {reason}")]
    Corrupt {
        /// Its stream sequence.
        sequence: u64,
        /// Why.
        reason: String,
    },
}

/// The events of one aggregate after a given sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// The envelopes, in order.
    pub events: Vec<Envelope>,
    /// The stream sequence of the aggregate's last event (0 if it has none).
    pub last_sequence: u64,
}

/// The installation's event stream.
#[derive(Debug, Clone)]
pub struct EventLog {
    jetstream: Context,
    namespace: Namespace,
    stream: stream::Stream,
    max_payload: usize,
    max_event_bytes: usize,
}

fn nats<E: std::fmt::Display>(error: E) -> LoadError {
    LoadError::Nats(error.to_string())
}

impl EventLog {
    /// Opens the namespace's stream, creating it if missing. Reads the server's
    /// `max_payload`: events larger than it allows (less room for headers) are refused.
    #[instrument(skip_all, fields(namespace = %namespace), err)]
    pub async fn open(client: async_nats::Client, namespace: Namespace) -> Result<Self, LoadError> {
        let max_payload = client.server_info().max_payload;
        let jetstream = jetstream::new(client);
        let config = stream::Config {
            name: namespace.stream(),
            subjects: vec![namespace.all_events()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            duplicate_window: DUPLICATE_WINDOW,
            description: Some("Rollcall identity lifecycle events (immutable)".into()),
            ..Default::default()
        };
        let stream = jetstream.get_or_create_stream(config).await.map_err(nats)?;
        Ok(Self {
            jetstream,
            namespace,
            stream,
            max_payload,
            max_event_bytes: rollcall_scim::limits::max_event_bytes(max_payload),
        })
    }

    /// The largest message the NATS server takes (its `max_payload`, read at open).
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The largest encoded event this log appends: the server's `max_payload` less
    /// [`rollcall_scim::limits::EVENT_HEADER_ROOM_BYTES`], or less when lowered.
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// The same log appending events of at most `limit` bytes (never more than the server
    /// takes): for an operator who wants smaller events, and for tests.
    pub fn with_max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit.min(rollcall_scim::limits::max_event_bytes(self.max_payload));
        self
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &Context {
        &self.jetstream
    }

    /// The stream.
    pub fn stream(&self) -> &stream::Stream {
        &self.stream
    }

    /// The stream's last sequence (0 when empty).
    pub async fn head(&self) -> Result<u64, LoadError> {
        let mut stream = self.stream.clone();
        Ok(stream.info().await.map_err(nats)?.state.last_sequence)
    }

    /// Appends events to one aggregate's subject, the first expecting the subject's last
    /// sequence to be `expected` (0: no event yet). Returns the sequence of the last one.
    ///
    /// Every event is encoded and measured first: if one is larger than
    /// [`EventLog::max_event_bytes`], none is appended ([`AppendError::TooLarge`]).
    #[instrument(skip_all, fields(subject = %subject, expected, events = envelopes.len()), err)]
    pub async fn append(
        &self,
        subject: &str,
        expected: u64,
        envelopes: &[Envelope],
    ) -> Result<u64, AppendError> {
        let encoded: Vec<Vec<u8>> = envelopes.iter().map(Envelope::to_bytes).collect();
        if let Some(size) = encoded
            .iter()
            .map(Vec::len)
            .find(|size| *size > self.max_event_bytes)
        {
            return Err(AppendError::TooLarge {
                size,
                limit: self.max_event_bytes,
            });
        }
        let mut expected = expected;
        for (envelope, bytes) in envelopes.iter().zip(encoded) {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", envelope.event_id.to_string().as_str());
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                expected.to_string().as_str(),
            );
            headers.insert("Rollcall-Event-Type", envelope.event_type.as_str());
            if let Some(traceparent) = &envelope.traceparent {
                headers.insert("traceparent", traceparent.as_str());
            }
            let ack = self
                .jetstream
                .publish_with_headers(subject.to_owned(), headers, bytes.into())
                .await
                .map_err(|error| AppendError::Publish(error.to_string()))?
                .await
                .map_err(|error| match error.kind() {
                    jetstream::context::PublishErrorKind::WrongLastSequence => {
                        AppendError::Conflict { expected }
                    }
                    _ => AppendError::Publish(error.to_string()),
                })?;
            expected = ack.sequence;
        }
        Ok(expected)
    }

    /// The stream sequence of a subject's last event (0 if it has none).
    pub async fn last_sequence(&self, subject: &str) -> Result<u64, LoadError> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(message.sequence),
            Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(error) => Err(nats(error)),
        }
    }

    /// Loads one aggregate's events after stream sequence `after` (0: all of them).
    #[instrument(skip_all, fields(subject = %subject, after), err)]
    pub async fn load(&self, subject: &str, after: u64) -> Result<Loaded, LoadError> {
        let last_sequence = self.last_sequence(subject).await?;
        if last_sequence <= after {
            return Ok(Loaded {
                events: Vec::new(),
                last_sequence: last_sequence.max(after),
            });
        }
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let mut messages = consumer.messages().await.map_err(nats)?;
        let mut events = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(nats)?;
            let sequence = message.info().map_err(nats)?.stream_sequence;
            let envelope =
                Envelope::from_bytes(&message.payload).map_err(|error| LoadError::Corrupt {
                    sequence,
                    reason: error.to_string(),
                })?;
            events.push(envelope);
            if sequence >= last_sequence {
                break;
            }
        }
        Ok(Loaded {
            events,
            last_sequence,
        })
    }
}
