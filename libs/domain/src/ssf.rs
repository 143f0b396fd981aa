//! The SSF stream aggregate: one Shared Signals receiver's subscription to a tenant's
//! lifecycle signals (OpenID Shared Signals Framework 1.0, §8). A stream and every change to
//! it (configuration, status, subjects, verification requests) is an event, so that the audit
//! shows who subscribed to what, when, and when delivery was paused.
//!
//! The receiver's `authorization_header` is a secret: events carry it sealed by the access
//! service (an opaque string here), never in clear.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::EventKind;

/// RFC 8935 push delivery.
pub const PUSH: &str = "urn:ietf:rfc:8935";
/// RFC 8936 poll delivery.
pub const POLL: &str = "urn:ietf:rfc:8936";

/// How a stream's SETs reach its receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method")]
pub enum Delivery {
    /// Rollcall posts each SET to the receiver's endpoint.
    #[serde(rename = "urn:ietf:rfc:8935")]
    Push {
        /// The receiver's endpoint.
        endpoint_url: String,
        /// The `Authorization` header to send, sealed (never in clear on the stream).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        authorization_sealed: Option<String>,
    },
    /// The receiver polls Rollcall's endpoint.
    #[serde(rename = "urn:ietf:rfc:8936")]
    Poll,
}

impl Delivery {
    /// The method's URN.
    pub fn method(&self) -> &'static str {
        match self {
            Delivery::Push { .. } => PUSH,
            Delivery::Poll => POLL,
        }
    }
}

/// What a stream is configured to deliver, as the receiver and Rollcall agreed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSpec {
    /// The audience of its SETs.
    pub aud: Vec<String>,
    /// The event types the receiver asked for.
    #[serde(default)]
    pub events_requested: Vec<String>,
    /// How SETs are delivered.
    pub delivery: Delivery,
    /// The receiver's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Whether a stream delivers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Deliver.
    #[default]
    Enabled,
    /// Hold events, in order, until enabled again.
    Paused,
    /// Drop events until enabled again.
    Disabled,
}

impl Status {
    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Enabled => "enabled",
            Status::Paused => "paused",
            Status::Disabled => "disabled",
        }
    }

    /// Reads a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "enabled" => Some(Status::Enabled),
            "paused" => Some(Status::Paused),
            "disabled" => Some(Status::Disabled),
            _ => None,
        }
    }
}

/// Who changed a stream's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Initiator {
    /// The receiver, through the status endpoint.
    Receiver,
    /// An operator (`rollcall ssf streams pause|resume`).
    Operator,
    /// Rollcall itself (a backlog beyond its bound).
    Transmitter,
}

/// A stream's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stream {
    /// Never created.
    #[default]
    Absent,
    /// Created and not deleted.
    Live(Box<Live>),
    /// Deleted for good.
    Deleted,
}

/// A live stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// Its configuration.
    pub spec: StreamSpec,
    /// Its status.
    pub status: Status,
    /// Why it has that status.
    pub reason: Option<String>,
    /// Subjects the receiver removed (every other subject is included: `default_subjects`
    /// is `ALL`).
    pub removed: Vec<Value>,
}

impl Stream {
    /// The live stream, unless absent or deleted.
    pub fn live(&self) -> Option<&Live> {
        match self {
            Stream::Live(live) => Some(live),
            Stream::Absent | Stream::Deleted => None,
        }
    }
}

/// What may be asked of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamCommand {
    /// Create it.
    Create(StreamSpec),
    /// Make its configuration this (update and replace).
    Configure(StreamSpec),
    /// Change its status.
    SetStatus {
        /// The new status.
        status: Status,
        /// Why.
        reason: Option<String>,
        /// Who asks.
        by: Initiator,
    },
    /// Include a subject again (every subject is included unless removed).
    AddSubject(Value),
    /// Leave a subject out.
    RemoveSubject(Value),
    /// Send a verification SET echoing `state`.
    Verify(Option<String>),
    /// Delete it.
    Delete,
}

/// What happened to a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum StreamEvent {
    /// A receiver created the stream.
    #[serde(rename = "ssf_stream.created")]
    Created {
        /// Its configuration.
        stream: StreamSpec,
    },
    /// Its configuration changed.
    #[serde(rename = "ssf_stream.configured")]
    Configured {
        /// Before.
        before: StreamSpec,
        /// After.
        after: StreamSpec,
    },
    /// Its status changed.
    #[serde(rename = "ssf_stream.status_changed")]
    StatusChanged {
        /// Before.
        before: Status,
        /// After.
        after: Status,
        /// Why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Who changed it.
        by: Initiator,
    },
    /// A removed subject was included again.
    #[serde(rename = "ssf_stream.subject_added")]
    SubjectAdded {
        /// The subject (RFC 9493).
        subject: Value,
    },
    /// A subject was left out.
    #[serde(rename = "ssf_stream.subject_removed")]
    SubjectRemoved {
        /// The subject (RFC 9493).
        subject: Value,
    },
    /// The receiver asked for a verification SET.
    #[serde(rename = "ssf_stream.verification_requested")]
    VerificationRequested {
        /// The state to echo.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
    },
    /// The stream was deleted: nothing more is delivered.
    #[serde(rename = "ssf_stream.deleted")]
    Deleted,
}

impl EventKind for StreamEvent {
    const AGGREGATE: &'static str = "ssf_stream";

    fn event_type(&self) -> &'static str {
        match self {
            StreamEvent::Created { .. } => "ssf_stream.created",
            StreamEvent::Configured { .. } => "ssf_stream.configured",
            StreamEvent::StatusChanged { .. } => "ssf_stream.status_changed",
            StreamEvent::SubjectAdded { .. } => "ssf_stream.subject_added",
            StreamEvent::SubjectRemoved { .. } => "ssf_stream.subject_removed",
            StreamEvent::VerificationRequested { .. } => "ssf_stream.verification_requested",
            StreamEvent::Deleted => "ssf_stream.deleted",
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such stream.
    #[error("no such stream")]
    NotFound,
    /// It exists already.
    #[error("the stream exists already")]
    Exists,
}

/// Decides what a command means for a stream. A command that changes nothing yields no
/// event.
pub fn decide(state: &Stream, command: StreamCommand) -> Result<Vec<StreamEvent>, StreamError> {
    let live = match (state, &command) {
        (Stream::Absent, StreamCommand::Create(_)) => None,
        (Stream::Live(_) | Stream::Deleted, StreamCommand::Create(_)) => {
            return Err(StreamError::Exists)
        }
        (Stream::Absent | Stream::Deleted, _) => return Err(StreamError::NotFound),
        (Stream::Live(live), _) => Some(live),
    };
    Ok(match (live, command) {
        (_, StreamCommand::Create(stream)) => vec![StreamEvent::Created { stream }],
        (None, _) => Vec::new(),
        (Some(live), command) => decide_live(live, command),
    })
}

fn decide_live(live: &Live, command: StreamCommand) -> Vec<StreamEvent> {
    match command {
        StreamCommand::Create(_) => Vec::new(),
        StreamCommand::Configure(after) if after == live.spec => Vec::new(),
        StreamCommand::Configure(after) => vec![StreamEvent::Configured {
            before: live.spec.clone(),
            after,
        }],
        StreamCommand::SetStatus { status, reason, .. }
            if status == live.status && reason == live.reason =>
        {
            Vec::new()
        }
        StreamCommand::SetStatus { status, reason, by } => vec![StreamEvent::StatusChanged {
            before: live.status,
            after: status,
            reason,
            by,
        }],
        StreamCommand::AddSubject(subject) if !live.removed.contains(&subject) => Vec::new(),
        StreamCommand::AddSubject(subject) => vec![StreamEvent::SubjectAdded { subject }],
        StreamCommand::RemoveSubject(subject) if live.removed.contains(&subject) => Vec::new(),
        StreamCommand::RemoveSubject(subject) => vec![StreamEvent::SubjectRemoved { subject }],
        StreamCommand::Verify(state) => vec![StreamEvent::VerificationRequested { state }],
        StreamCommand::Delete => vec![StreamEvent::Deleted],
    }
}

/// A stream after an event.
pub fn evolve(state: Stream, event: &StreamEvent) -> Stream {
    match (state, event) {
        (_, StreamEvent::Created { stream }) => Stream::Live(Box::new(Live {
            spec: stream.clone(),
            status: Status::Enabled,
            reason: None,
            removed: Vec::new(),
        })),
        (_, StreamEvent::Deleted) => Stream::Deleted,
        (Stream::Live(mut live), event) => {
            match event {
                StreamEvent::Configured { after, .. } => live.spec = after.clone(),
                StreamEvent::StatusChanged { after, reason, .. } => {
                    live.status = *after;
                    live.reason = reason.clone();
                }
                StreamEvent::SubjectAdded { subject } => live.removed.retain(|s| s != subject),
                StreamEvent::SubjectRemoved { subject } => live.removed.push(subject.clone()),
                StreamEvent::VerificationRequested { .. }
                | StreamEvent::Created { .. }
                | StreamEvent::Deleted => {}
            }
            Stream::Live(live)
        }
        (state, _) => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> StreamSpec {
        StreamSpec {
            aud: vec!["https://receiver.example".into()],
            events_requested: vec![],
            delivery: Delivery::Poll,
            description: None,
        }
    }

    fn run(commands: Vec<StreamCommand>) -> (Stream, Vec<StreamEvent>) {
        let mut state = Stream::Absent;
        let mut all = Vec::new();
        for command in commands {
            let events = decide(&state, command).expect("accepted");
            for event in &events {
                state = evolve(state, event);
            }
            all.extend(events);
        }
        (state, all)
    }

    #[test]
    fn a_stream_is_created_paused_resumed_and_deleted_with_an_event_each() {
        let (state, events) = run(vec![
            StreamCommand::Create(spec()),
            StreamCommand::SetStatus {
                status: Status::Paused,
                reason: Some("maintenance".into()),
                by: Initiator::Receiver,
            },
            StreamCommand::SetStatus {
                status: Status::Enabled,
                reason: None,
                by: Initiator::Operator,
            },
            StreamCommand::Delete,
        ]);
        assert_eq!(state, Stream::Deleted);
        let types: Vec<_> = events.iter().map(EventKind::event_type).collect();
        assert_eq!(
            types,
            [
                "ssf_stream.created",
                "ssf_stream.status_changed",
                "ssf_stream.status_changed",
                "ssf_stream.deleted"
            ]
        );
        assert_eq!(
            decide(&state, StreamCommand::Verify(None)),
            Err(StreamError::NotFound)
        );
    }

    #[test]
    fn subjects_are_removed_and_added_back_and_repeats_change_nothing() {
        let subject = json!({"format": "email", "email": "ada@example.com"});
        let (state, events) = run(vec![
            StreamCommand::Create(spec()),
            StreamCommand::AddSubject(subject.clone()),
            StreamCommand::RemoveSubject(subject.clone()),
            StreamCommand::RemoveSubject(subject.clone()),
        ]);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(
            state.live().map(|l| l.removed.clone()),
            Some(vec![subject.clone()])
        );
        let (state, _) = run(vec![
            StreamCommand::Create(spec()),
            StreamCommand::RemoveSubject(subject.clone()),
            StreamCommand::AddSubject(subject),
        ]);
        assert_eq!(state.live().map(|l| l.removed.len()), Some(0));
    }

    #[test]
    fn the_sealed_authorization_round_trips_and_the_method_is_the_urn() {
        let delivery = Delivery::Push {
            endpoint_url: "https://r.example/events".into(),
            authorization_sealed: Some("c2VhbGVk".into()),
        };
        let value = serde_json::to_value(&delivery).expect("serializes");
        assert_eq!(value["method"], PUSH);
        let back: Delivery = serde_json::from_value(value).expect("reads");
        assert_eq!(back, delivery);
        assert_eq!(
            serde_json::to_value(Delivery::Poll).expect("serializes"),
            json!({"method": POLL})
        );
    }
}
