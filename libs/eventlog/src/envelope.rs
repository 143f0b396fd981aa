//! The envelope every event travels in: who, what, when, through which request and trace; and
//! the commit, one message holding every event of one write.
//!
//! A write of one event is one message whose payload is its envelope (the only format before
//! commits existed, so old streams read as they always did). A write of several events is one
//! message too, whose payload is the JSON array of their envelopes in order, with the header
//! [`COMMIT_HEADER`]: the stream takes all of it or none of it, on every NATS version.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A SCIM client, by the id of the token it presented.
    ScimToken {
        /// The token's id (never the secret).
        token_id: String,
    },
    /// An operator at the `rollcall` command line.
    Operator {
        /// Who, as given (for example `$USER`).
        name: String,
    },
    /// A Shared Signals receiver, by the id of the `ssf` token it presented.
    SsfReceiver {
        /// The token's id (never the secret).
        token_id: String,
    },
    /// Rollcall itself (for example pausing a stream whose backlog outgrew its bound).
    System {
        /// What acted.
        name: String,
    },
}

/// One event with its metadata, as stored on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The event's id (UUIDv7); also its `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// The tenant.
    pub tenant: String,
    /// `user` or `group`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
    /// The aggregate's version after this event (1 for its first event).
    pub version: u64,
    /// The event's wire name (`user.deactivated`).
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// Who caused it.
    pub actor: Actor,
    /// The request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C trace context of the work that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The event itself.
    pub payload: Value,
}

impl Envelope {
    /// The bytes written to the stream. Serializing plain data cannot fail.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads an envelope from the stream.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The header of a message holding several events (a commit): how many. A message without it
/// holds one event.
pub const COMMIT_HEADER: &str = "Rollcall-Commit";

/// The payload of one write's message: one event exactly as [`Envelope::to_bytes`] writes it;
/// several as the JSON array of their envelopes, in order.
pub fn encode_commit(envelopes: &[Envelope]) -> Vec<u8> {
    match envelopes {
        [one] => one.to_bytes(),
        several => serde_json::to_vec(several).unwrap_or_default(),
    }
}

/// Reads the events of one message, in order: a JSON array of envelopes (a commit) or one
/// envelope. A commit is one write to one aggregate: an empty one, or one whose events name
/// different aggregates, is refused.
pub fn decode_commit(bytes: &[u8]) -> Result<Vec<Envelope>, serde_json::Error> {
    use serde::de::Error;
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'[') {
        return Ok(vec![Envelope::from_bytes(bytes)?]);
    }
    let envelopes: Vec<Envelope> = serde_json::from_slice(bytes)?;
    let Some(first) = envelopes.first() else {
        return Err(serde_json::Error::custom("a commit without events"));
    };
    if envelopes.iter().any(|envelope| {
        (
            &envelope.tenant,
            &envelope.aggregate_type,
            envelope.aggregate_id,
        ) != (&first.tenant, &first.aggregate_type, first.aggregate_id)
    }) {
        return Err(serde_json::Error::custom(
            "a commit whose events name different aggregates",
        ));
    }
    Ok(envelopes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(version: u64, event_type: &str) -> Envelope {
        Envelope {
            event_id: Uuid::from_u128(version as u128),
            tenant: "t".into(),
            aggregate_type: "user".into(),
            aggregate_id: Uuid::from_u128(7),
            version,
            event_type: event_type.into(),
            schema_version: 1,
            occurred_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            actor: Actor::ScimToken {
                token_id: "tok".into(),
            },
            request_id: Some("r".into()),
            traceparent: None,
            payload: json!({"changes": [{"path": "title", "before": null, "after": "x"}]}),
        }
    }

    #[test]
    fn a_single_event_is_stored_exactly_as_before_commits_existed() {
        let one = envelope(1, "user.attributes_changed");
        assert_eq!(encode_commit(std::slice::from_ref(&one)), one.to_bytes());
        assert_eq!(encode_commit(std::slice::from_ref(&one))[0], b'{');
        assert_eq!(decode_commit(&one.to_bytes()).unwrap(), vec![one]);
    }

    #[test]
    fn several_events_are_one_array_read_back_in_order() {
        let events = vec![
            envelope(2, "user.attributes_changed"),
            envelope(3, "user.deactivated"),
        ];
        let bytes = encode_commit(&events);
        assert_eq!(bytes[0], b'[');
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value[1]["event_type"], "user.deactivated");
        assert_eq!(decode_commit(&bytes).unwrap(), events);
        // Leading white space does not change what a message is.
        let mut spaced = b" \n".to_vec();
        spaced.extend(&bytes);
        assert_eq!(decode_commit(&spaced).unwrap(), events);
    }

    #[test]
    fn an_empty_or_mixed_commit_and_a_stray_value_are_refused() {
        assert!(decode_commit(b"[]").is_err());
        assert!(decode_commit(b"[1]").is_err());
        assert!(decode_commit(b"not json").is_err());
        let mut other = envelope(3, "user.deactivated");
        other.aggregate_id = Uuid::from_u128(8);
        let mixed =
            serde_json::to_vec(&vec![envelope(2, "user.attributes_changed"), other]).unwrap();
        assert!(decode_commit(&mixed).is_err());
    }
}
