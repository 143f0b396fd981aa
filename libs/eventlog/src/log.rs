//! The stream itself: created if missing, appended to with optimistic concurrency per
//! aggregate, and read back per aggregate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, Context};
use async_nats::HeaderMap;
use futures::StreamExt;
use tracing::instrument;

use crate::envelope::{decode_commit, encode_commit, Envelope, COMMIT_HEADER};
use crate::fault;
use crate::namespace::Namespace;

/// How long the stream remembers message ids to drop duplicate publishes.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How many times an append that reached no stream is sent again, [`UNHEARD_PAUSE`] apart,
/// before it fails: for 2 s.
const UNHEARD_RETRIES: u32 = 40;

/// The pause before an append that reached no stream is sent again.
const UNHEARD_PAUSE: Duration = Duration::from_millis(50);

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
    /// A write's message is larger than the stream takes; nothing was appended.
    #[error("a write of {size} bytes is larger than the {limit} bytes the event stream takes")]
    TooLarge {
        /// The encoded message's size (all events of the write).
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
    /// The envelopes, in order (the events of a commit in the commit's order).
    pub events: Vec<Envelope>,
    /// The stream sequence of the aggregate's last message (0 if it has none): what the next
    /// append expects. The events of one commit share it.
    pub last_sequence: u64,
    /// Whether `last_sequence` came from a replica because the stream leader did not answer
    /// (see [`EventLog::last_sequence`]): the events may then end before the aggregate's last
    /// one. Only an append that expects `last_sequence` and succeeds proves them complete; no
    /// answer may rest on them otherwise (a "not found", a "nothing to change", a name that
    /// looks free).
    pub from_replica: bool,
}

/// The installation's event stream.
#[derive(Debug, Clone)]
pub struct EventLog {
    jetstream: Context,
    namespace: Namespace,
    stream: stream::Stream,
    max_payload: usize,
    max_event_bytes: usize,
    /// Debug builds: reads pass the stream leader over as if it did not answer (tests).
    leader_silenced: Arc<AtomicBool>,
    /// How many appends reached no stream and were sent again.
    sent_again: Arc<std::sync::atomic::AtomicU64>,
}

fn nats<E: std::fmt::Display>(error: E) -> LoadError {
    LoadError::Nats(error.to_string())
}

impl EventLog {
    /// Opens the namespace's stream, creating it if missing, kept by the namespace's replica
    /// count (an existing stream with another count is changed to it; more than 1 on a server
    /// that is not part of a cluster is refused). Reads the server's `max_payload`: events
    /// larger than it allows (less room for headers) are refused.
    #[instrument(skip_all, fields(namespace = %namespace, replicas = namespace.replicas()), err)]
    pub async fn open(client: async_nats::Client, namespace: Namespace) -> Result<Self, LoadError> {
        let jetstream = jetstream::new(client.clone());
        let name = active_stream(&jetstream, &namespace).await?;
        Self::open_stream(client, namespace, &name).await
    }

    /// [`EventLog::open`] on the stream `name` (a migration's new stream, before the switch).
    /// A stream whose subjects were retired by a migration that stopped midway is refused.
    #[instrument(skip_all, fields(namespace = %namespace, stream = name), err)]
    pub async fn open_stream(
        client: async_nats::Client,
        namespace: Namespace,
        name: &str,
    ) -> Result<Self, LoadError> {
        let server = client.server_info();
        let max_payload = server.max_payload;
        let replicas = namespace.replicas();
        crate::replicas::check_server(&server, replicas)?;
        let jetstream = jetstream::new(client);
        let config = stream::Config {
            name: name.to_owned(),
            subjects: vec![namespace.all_events()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            duplicate_window: DUPLICATE_WINDOW,
            description: Some("Rollcall identity lifecycle events (immutable)".into()),
            num_replicas: replicas,
            ..Default::default()
        };
        let name = config.name.clone();
        let mut stream = jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|error| {
                crate::replicas::error(&format!("opening stream {name}"), replicas, error)
            })?;
        if stream.cached_info().config.subjects != [namespace.all_events()] {
            return Err(LoadError::Nats(format!(
                "the event stream {name} takes {:?}, not {}: a migration of the stream (`rollcall migrate encrypt-pii`) stopped midway; run it again",
                stream.cached_info().config.subjects,
                namespace.all_events()
            )));
        }
        crate::replicas::reconcile(&jetstream, &mut stream, replicas).await?;
        Ok(Self {
            jetstream,
            namespace,
            stream,
            max_payload,
            max_event_bytes: rollcall_scim::limits::max_event_bytes(max_payload),
            leader_silenced: Arc::default(),
            sent_again: Arc::default(),
        })
    }

    /// The name of the event stream this log reads and appends to.
    pub fn stream_name(&self) -> &str {
        &self.stream.cached_info().config.name
    }

    /// Fault injection for tests, debug builds only (in a release build it does nothing): while
    /// `silent`, reads of this log and of its clones treat the stream leader as not answering
    /// and ask a replica ([`Self::last_sequence`]).
    pub fn silence_leader(&self, silent: bool) {
        self.leader_silenced.store(silent, Ordering::Relaxed);
    }

    fn leader_silenced(&self) -> bool {
        cfg!(debug_assertions) && self.leader_silenced.load(Ordering::Relaxed)
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
        Ok(self.head_and_creation().await?.0)
    }

    /// The stream's last sequence and when the stream was created (a stream restored or
    /// created again has another creation time).
    pub async fn head_and_creation(&self) -> Result<(u64, time::OffsetDateTime), LoadError> {
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(nats)?;
        Ok((info.state.last_sequence, info.created))
    }

    /// Appends one write to an aggregate's subject as one message, expecting the subject's last
    /// sequence to be `expected` (0: no event yet): the stream takes every event of the write or
    /// none. Returns the message's stream sequence, which all of its events share.
    ///
    /// One event is one message as it always was; several are one commit
    /// ([`encode_commit`]). The whole message is measured first: if it is larger than
    /// [`EventLog::max_event_bytes`], nothing is appended ([`AppendError::TooLarge`]). A message
    /// that reached no stream (NATS: no responders) stored nothing and is sent again, for up to
    /// [`UNHEARD_RETRIES`] times.
    #[instrument(skip_all, fields(subject = %subject, expected, events = envelopes.len()), err)]
    pub async fn append(
        &self,
        subject: &str,
        expected: u64,
        envelopes: &[Envelope],
    ) -> Result<u64, AppendError> {
        if envelopes.is_empty() {
            return Ok(expected);
        }
        let payload = encode_commit(envelopes);
        if payload.len() > self.max_event_bytes {
            return Err(AppendError::TooLarge {
                size: payload.len(),
                limit: self.max_event_bytes,
            });
        }
        let headers = commit_headers(envelopes, expected);
        let payload = bytes::Bytes::from(payload);
        fault::point(fault::APPEND_ENCODED);
        let mut unheard = 0;
        loop {
            let sent = self
                .jetstream
                .publish_with_headers(subject.to_owned(), headers.clone(), payload.clone())
                .await
                .map_err(|error| AppendError::Publish(error.to_string()))?;
            if fault::armed(fault::APPEND_SENT) {
                // The message must have left this process before it dies at this point.
                let _ = self.jetstream.client().flush().await;
                fault::point(fault::APPEND_SENT);
            }
            match sent.await {
                Ok(ack) => return Ok(ack.sequence),
                Err(error) => match error.kind() {
                    jetstream::context::PublishErrorKind::WrongLastSequence => {
                        return Err(AppendError::Conflict { expected })
                    }
                    // No server took the message (NATS answered "no responders"): nothing was
                    // stored. A stream just created on a cluster, or one electing a leader, is
                    // briefly so; it is sent again for a while.
                    jetstream::context::PublishErrorKind::StreamNotFound
                        if unheard < UNHEARD_RETRIES =>
                    {
                        unheard += 1;
                        self.sent_again
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(
                            attempt = unheard,
                            "the append reached no stream; sending it again"
                        );
                        tokio::time::sleep(UNHEARD_PAUSE).await;
                    }
                    _ => return Err(AppendError::Publish(error.to_string())),
                },
            }
        }
    }

    /// How many appends reached no stream and were sent again (see [`EventLog::append`]), by
    /// this log and its clones.
    pub fn appends_sent_again(&self) -> u64 {
        self.sent_again.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The stream sequence of a subject's last event (0 if it has none).
    ///
    /// Asks the stream leader first. A leader that does not answer within [`LEADER_WAIT`] (a
    /// NATS 2.9 cluster whose leader was killed can leave `STREAM.MSG.GET` unanswered long after
    /// the election) is passed over for a direct get, which any replica answers. A replica may
    /// be behind the leader: a write based on its answer carries a stale expected sequence,
    /// which the leader refuses as a conflict, so nothing is overwritten; other answers must
    /// not rest on it ([`Loaded::from_replica`]). Returns the sequence and whether a replica
    /// gave it.
    pub async fn last_sequence(&self, subject: &str) -> Result<(u64, bool), LoadError> {
        let leader = self.stream.get_last_raw_message_by_subject(subject);
        let answer = if self.leader_silenced() {
            None
        } else {
            tokio::time::timeout(LEADER_WAIT, leader).await.ok()
        };
        match answer {
            Some(Ok(message)) => return Ok((message.sequence, false)),
            Some(Err(error)) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok((0, false))
            }
            Some(Err(error)) => return Err(nats(error)),
            None => tracing::warn!(
                wait_ms = LEADER_WAIT.as_millis() as u64,
                "the event stream's leader did not answer; reading the last sequence from a replica"
            ),
        }
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok((message.sequence, true)),
            Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => Ok((0, true)),
            Err(error) => Err(nats(error)),
        }
    }

    /// Loads one aggregate's events after stream sequence `after` (0: all of them).
    #[instrument(skip_all, fields(subject = %subject, after), err)]
    pub async fn load(&self, subject: &str, after: u64) -> Result<Loaded, LoadError> {
        let (last_sequence, from_replica) = self.last_sequence(subject).await?;
        if last_sequence <= after {
            return Ok(Loaded {
                events: Vec::new(),
                last_sequence: last_sequence.max(after),
                from_replica,
            });
        }
        // An ephemeral ordered consumer reads a long history fast. NATS 2.9 may place it on a
        // cluster node that was killed (a node that dies without a word is not known to be
        // offline), and its creation then never answers: after a short wait the aggregate is
        // read message by message from the stream leader instead (`STREAM.MSG.GET` with
        // `next_by_subj`), which needs no consumer. A leader that did not answer just now is not
        // asked for a consumer either.
        if from_replica {
            let events = self
                .load_by_message(subject, after, last_sequence, false)
                .await?;
            return Ok(Loaded {
                events,
                last_sequence,
                from_replica,
            });
        }
        let create = self.stream.create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        });
        let consumer = match tokio::time::timeout(ORDERED_CONSUMER_WAIT, create).await {
            Ok(consumer) => consumer.map_err(nats)?,
            Err(_) => {
                // A replica that lacks one of the messages answers "not found": an error (the
                // client retries), never the end of the history.
                let events = self
                    .load_by_message(subject, after, last_sequence, true)
                    .await?;
                return Ok(Loaded {
                    events,
                    last_sequence,
                    from_replica,
                });
            }
        };
        let mut messages = consumer.messages().await.map_err(nats)?;
        let mut events = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(nats)?;
            let sequence = message.info().map_err(nats)?.stream_sequence;
            let envelopes =
                decode_commit(&message.payload).map_err(|error| LoadError::Corrupt {
                    sequence,
                    reason: error.to_string(),
                })?;
            events.extend(envelopes);
            if sequence >= last_sequence {
                break;
            }
        }
        Ok(Loaded {
            events,
            last_sequence,
            from_replica,
        })
    }

    /// Reads one aggregate's events in `after + 1..=last_sequence` message by message from the
    /// stream leader (or, when it does not answer, from any replica): no consumer, one request
    /// per message.
    async fn load_by_message(
        &self,
        subject: &str,
        after: u64,
        last_sequence: u64,
        mut leader_answers: bool,
    ) -> Result<Vec<Envelope>, LoadError> {
        let mut events = Vec::new();
        let mut next = after + 1;
        // Once the leader has not answered, the rest is read from replicas (see `last_sequence`).
        while next <= last_sequence {
            let mut message = None;
            if leader_answers {
                let leader = self
                    .stream
                    .raw_message_builder()
                    .sequence(next)
                    .next_by_subject(subject.to_owned())
                    .send();
                match tokio::time::timeout(LEADER_WAIT, leader).await {
                    Ok(answer) => message = Some(answer.map_err(nats)?),
                    Err(_) => leader_answers = false,
                }
            }
            let message = match message {
                Some(message) => message,
                None => self
                    .stream
                    .direct_get_next_for_subject(subject, Some(next))
                    .await
                    .map_err(nats)?,
            };
            let sequence = message.sequence;
            if sequence > last_sequence {
                break;
            }
            let envelopes =
                decode_commit(&message.payload).map_err(|error| LoadError::Corrupt {
                    sequence,
                    reason: error.to_string(),
                })?;
            events.extend(envelopes);
            next = sequence + 1;
        }
        Ok(events)
    }
}

/// How long [`EventLog::load`] waits for its ordered consumer before it reads message by
/// message instead.
const ORDERED_CONSUMER_WAIT: Duration = Duration::from_secs(2);

/// How long a read waits for the stream leader before it asks any replica instead.
const LEADER_WAIT: Duration = Duration::from_secs(2);

/// The headers of one write's message. One event has the headers every message had before
/// commits existed; a commit adds [`COMMIT_HEADER`] and names every event type, in order.
/// The key of the active event stream's name in [`Namespace::config_bucket`].
pub const ACTIVE_STREAM_KEY: &str = "event-stream";

/// The name of the namespace's event stream: the one a migration switched to
/// ([`switch_stream`]), or [`Namespace::stream`] (the settings bucket is not created here).
pub async fn active_stream(
    jetstream: &jetstream::Context,
    namespace: &Namespace,
) -> Result<String, LoadError> {
    let bucket = namespace.config_bucket();
    match jetstream.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {}
        Err(error) => {
            return match error.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(inner)
                    if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(namespace.stream())
                }
                _ => Err(LoadError::Nats(error.to_string())),
            }
        }
    }
    let store = jetstream
        .get_key_value(&bucket)
        .await
        .map_err(|e| LoadError::Nats(e.to_string()))?;
    match store
        .get(ACTIVE_STREAM_KEY)
        .await
        .map_err(|e| LoadError::Nats(e.to_string()))?
    {
        Some(name) => String::from_utf8(name.to_vec())
            .map_err(|_| LoadError::Nats(format!("{bucket}: {ACTIVE_STREAM_KEY} is not text"))),
        None => Ok(namespace.stream()),
    }
}

/// Makes `stream` the namespace's event stream for every process that opens the log from now
/// on (one key-value put: atomic).
pub async fn switch_stream(
    jetstream: &jetstream::Context,
    namespace: &Namespace,
    stream: &str,
) -> Result<(), LoadError> {
    let store = crate::kv::open_bucket(
        jetstream,
        &namespace.config_bucket(),
        "Rollcall installation settings",
        namespace.replicas(),
    )
    .await?;
    store
        .put(ACTIVE_STREAM_KEY, stream.to_owned().into_bytes().into())
        .await
        .map_err(|e| LoadError::Nats(e.to_string()))?;
    Ok(())
}

fn commit_headers(envelopes: &[Envelope], expected: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(first) = envelopes.first() {
        // The first event's id names the write: a retried publish of it is dropped.
        headers.insert("Nats-Msg-Id", first.event_id.to_string().as_str());
    }
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected.to_string().as_str(),
    );
    let types: Vec<&str> = envelopes.iter().map(|e| e.event_type.as_str()).collect();
    headers.insert("Rollcall-Event-Type", types.join(",").as_str());
    if envelopes.len() > 1 {
        headers.insert(COMMIT_HEADER, envelopes.len().to_string().as_str());
    }
    if let Some(traceparent) = envelopes.first().and_then(|e| e.traceparent.as_ref()) {
        headers.insert("traceparent", traceparent.as_str());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Actor;

    fn envelope(version: u64, event_type: &str) -> Envelope {
        Envelope {
            event_id: uuid::Uuid::from_u128(version as u128),
            tenant: "t".into(),
            aggregate_type: "user".into(),
            aggregate_id: uuid::Uuid::from_u128(7),
            version,
            event_type: event_type.into(),
            schema_version: 1,
            occurred_at: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            actor: Actor::Operator { name: "ops".into() },
            request_id: None,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            payload: serde_json::json!({}),
        }
    }

    #[test]
    fn a_single_event_has_the_headers_it_always_had() {
        let one = envelope(4, "user.deactivated");
        let mut before = HeaderMap::new();
        before.insert("Nats-Msg-Id", one.event_id.to_string().as_str());
        before.insert("Nats-Expected-Last-Subject-Sequence", "41");
        before.insert("Rollcall-Event-Type", "user.deactivated");
        before.insert("traceparent", one.traceparent.as_deref().unwrap());
        assert_eq!(commit_headers(std::slice::from_ref(&one), 41), before);
    }

    #[test]
    fn a_commit_is_named_by_its_first_event_and_counts_its_events() {
        let events = [
            envelope(2, "user.attributes_changed"),
            envelope(3, "user.deactivated"),
        ];
        let headers = commit_headers(&events, 9);
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(get("Nats-Msg-Id"), Some(events[0].event_id.to_string()));
        assert_eq!(
            get("Nats-Expected-Last-Subject-Sequence").as_deref(),
            Some("9")
        );
        assert_eq!(get(COMMIT_HEADER).as_deref(), Some("2"));
        assert_eq!(
            get("Rollcall-Event-Type").as_deref(),
            Some("user.attributes_changed,user.deactivated")
        );
    }
}
