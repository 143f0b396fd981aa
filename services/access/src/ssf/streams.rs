//! SSF streams on the event stream: every access service folds the `ssf_stream` events into a
//! catalog (what its endpoints answer and its deliveries follow), and appends a receiver's
//! change as an event expecting the stream's last sequence (a concurrent change is refused and
//! answered `409`, never lost).

use std::collections::BTreeMap;

use rollcall_domain::ssf::{self, Stream, StreamCommand, StreamError, StreamEvent};
use rollcall_domain::EventKind;
use rollcall_eventlog::consumer::Delivered;
use rollcall_eventlog::{Actor, AppendError, Envelope, EventLog};
use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

use crate::folded::Folded;

/// One SSF stream as its events say.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// Its tenant.
    pub tenant: String,
    /// Its state.
    pub state: Stream,
    /// Its subject's last stream sequence (what its next append expects).
    pub sequence: u64,
    /// Its version (events so far).
    pub version: u64,
    /// The sequence of its creation: delivery starts after it.
    pub created: u64,
    /// When its receiver last asked for verification.
    pub verified_at: Option<OffsetDateTime>,
}

/// Every SSF stream of the namespace.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<Uuid, Entry>,
    version: u64,
}

impl Catalog {
    /// A stream, unless unknown.
    pub fn get(&self, id: Uuid) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// The live streams of a tenant, or of every tenant.
    pub fn live<'a>(&'a self, tenant: Option<&'a str>) -> impl Iterator<Item = (Uuid, &'a Entry)> {
        self.entries
            .iter()
            .filter(move |(_, entry)| {
                entry.state.live().is_some() && tenant.is_none_or(|t| t == entry.tenant)
            })
            .map(|(id, entry)| (*id, entry))
    }
}

impl Folded for Catalog {
    const AGGREGATE: &'static str = StreamEvent::AGGREGATE;
    const EVENT: &'static str = "an SSF stream event";

    fn version(&self) -> u64 {
        self.version
    }

    fn apply(&mut self, events: &[Delivered]) -> Result<(), String> {
        for delivered in events {
            let envelope = &delivered.envelope;
            if envelope.aggregate_type != StreamEvent::AGGREGATE {
                continue;
            }
            let event = StreamEvent::from_payload(
                &envelope.event_type,
                envelope.schema_version,
                &envelope.payload,
            )?;
            let entry = self.entries.entry(envelope.aggregate_id).or_default();
            if entry.tenant.is_empty() {
                entry.tenant = envelope.tenant.clone();
            } else if entry.tenant != envelope.tenant {
                return Err(format!(
                    "stream {} of tenant {:?} has an event of tenant {:?}",
                    envelope.aggregate_id, entry.tenant, envelope.tenant
                ));
            }
            if matches!(event, StreamEvent::Created { .. }) {
                entry.created = delivered.sequence;
            }
            if matches!(event, StreamEvent::VerificationRequested { .. }) {
                entry.verified_at = Some(envelope.occurred_at);
            }
            entry.state = ssf::evolve(std::mem::take(&mut entry.state), &event);
            entry.sequence = delivered.sequence;
            entry.version = envelope.version;
        }
        if let Some(last) = events.last() {
            self.version = self.version.max(last.sequence);
        }
        Ok(())
    }

    fn skip(&mut self, sequence: u64) {
        self.version = self.version.max(sequence);
    }
}

/// Why a change to a stream was not written.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Refused by the stream's rules.
    #[error("{0}")]
    Refused(#[from] StreamError),
    /// Another change came first.
    #[error("the stream was changed by another request at the same time; read it again and retry")]
    Conflict,
    /// The event stream did not take it.
    #[error("{0}")]
    Unavailable(String),
}

/// Decides `command` on stream `id` of `tenant` as `entry` has it, and appends the events.
/// Returns the events and the sequence they were written at (the entry's, if none).
#[instrument(skip_all, fields(stream = %id), err(Debug))]
pub async fn change(
    log: &EventLog,
    tenant: &str,
    id: Uuid,
    entry: Option<&Entry>,
    command: StreamCommand,
    actor: &Actor,
    request_id: &str,
) -> Result<(Vec<StreamEvent>, u64), ChangeError> {
    let (state, expected, version) = match entry {
        Some(entry) if entry.tenant == tenant => (&entry.state, entry.sequence, entry.version),
        // Another tenant's stream is not there for this receiver.
        Some(_) => return Err(ChangeError::Refused(StreamError::NotFound)),
        None => (&Stream::Absent, 0, 0),
    };
    let events = ssf::decide(state, command)?;
    if events.is_empty() {
        return Ok((events, expected));
    }
    let now = OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now);
    let traceparent = rollcall_telemetry::traceparent();
    let envelopes: Vec<Envelope> = events
        .iter()
        .enumerate()
        .map(|(index, event)| Envelope {
            event_id: Uuid::now_v7(),
            tenant: tenant.to_owned(),
            aggregate_type: StreamEvent::AGGREGATE.to_owned(),
            aggregate_id: id,
            version: version + 1 + index as u64,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            occurred_at: now,
            actor: actor.clone(),
            request_id: Some(request_id.to_owned()),
            traceparent: traceparent.clone(),
            payload: event.to_payload(),
        })
        .collect();
    let subject = log
        .namespace()
        .aggregate_subject(tenant, StreamEvent::AGGREGATE, &id);
    let sequence =
        log.append(&subject, expected, &envelopes)
            .await
            .map_err(|error| match error {
                AppendError::Conflict { .. } => ChangeError::Conflict,
                other => ChangeError::Unavailable(other.to_string()),
            })?;
    Ok((events, sequence))
}
