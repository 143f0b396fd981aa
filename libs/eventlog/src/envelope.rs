//! The envelope every event travels in: who, what, when, through which request and trace.

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
