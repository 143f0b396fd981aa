//! Tamper evidence: every event's canonical bytes, chained per tenant. Each audit record holds
//! `hash = SHA-256(previous hash ‖ canonical bytes)`, the first of a tenant chaining from 32
//! zero bytes. Recomputing the chain from the stream and from the audit table shows where they
//! part.
//!
//! Canonical bytes: the envelope as JSON with object keys sorted at every level, no
//! insignificant white space, strings and numbers as serde_json writes them, and `occurred_at`
//! as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds), so that the same event gives the same
//! bytes whether read from the stream or rebuilt from a PostgreSQL row.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::format_description::FormatItem;
use time::{OffsetDateTime, UtcOffset};

use crate::envelope::Envelope;

/// The hash a tenant's chain starts from.
pub const GENESIS: [u8; 32] = [0; 32];

fn timestamp_format() -> Vec<FormatItem<'static>> {
    time::format_description::parse_borrowed::<2>(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z",
    )
    .unwrap_or_default()
}

/// An instant as canonical bytes write it.
pub fn canonical_time(at: OffsetDateTime) -> String {
    at.to_offset(UtcOffset::UTC)
        .format(&timestamp_format())
        .unwrap_or_default()
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).unwrap_or_default());
                out.push(':');
                write(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Canonical JSON of any value.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

impl Envelope {
    /// The event's canonical bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut map = Map::new();
        map.insert("event_id".into(), Value::String(self.event_id.to_string()));
        map.insert("tenant".into(), Value::String(self.tenant.clone()));
        map.insert(
            "aggregate_type".into(),
            Value::String(self.aggregate_type.clone()),
        );
        map.insert(
            "aggregate_id".into(),
            Value::String(self.aggregate_id.to_string()),
        );
        map.insert("version".into(), Value::from(self.version));
        map.insert("event_type".into(), Value::String(self.event_type.clone()));
        map.insert("schema_version".into(), Value::from(self.schema_version));
        map.insert(
            "occurred_at".into(),
            Value::String(canonical_time(self.occurred_at)),
        );
        map.insert(
            "actor".into(),
            serde_json::to_value(&self.actor).unwrap_or(Value::Null),
        );
        map.insert(
            "request_id".into(),
            self.request_id.clone().map_or(Value::Null, Value::String),
        );
        map.insert(
            "traceparent".into(),
            self.traceparent.clone().map_or(Value::Null, Value::String),
        );
        map.insert("payload".into(), self.payload.clone());
        canonical_json(&Value::Object(map)).into_bytes()
    }
}

/// The next link of a chain.
pub fn link(previous: &[u8], canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Actor;
    use serde_json::json;

    fn envelope(payload: Value) -> Envelope {
        Envelope {
            event_id: uuid::Uuid::nil(),
            tenant: "t".into(),
            aggregate_type: "user".into(),
            aggregate_id: uuid::Uuid::nil(),
            version: 1,
            event_type: "user.provisioned".into(),
            schema_version: 1,
            occurred_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
                .unwrap(),
            actor: Actor::Operator { name: "ops".into() },
            request_id: None,
            traceparent: None,
            payload,
        }
    }

    #[test]
    fn key_order_and_sub_microsecond_time_do_not_change_the_bytes() {
        let a = envelope(
            json!({"type": "user.provisioned", "attributes": {"b": 1, "a": [{"y": 2, "x": 1}]}}),
        );
        let mut b = envelope(
            json!({"attributes": {"a": [{"x": 1, "y": 2}], "b": 1}, "type": "user.provisioned"}),
        );
        b.occurred_at = b.occurred_at.replace_nanosecond(123_456_000).unwrap();
        assert_eq!(a.canonical_bytes(), b.canonical_bytes());
        assert!(String::from_utf8(a.canonical_bytes())
            .unwrap()
            .contains("\"occurred_at\":\"2023-11-14T22:13:20.123456Z\""));
    }

    #[test]
    fn any_change_of_content_changes_the_link() {
        let a = envelope(json!({"type": "user.deactivated"}));
        let b = envelope(json!({"type": "user.reactivated"}));
        assert_ne!(
            link(&GENESIS, &a.canonical_bytes()),
            link(&GENESIS, &b.canonical_bytes())
        );
        assert_ne!(
            link(&GENESIS, &a.canonical_bytes()),
            link(&[1; 32], &a.canonical_bytes())
        );
    }
}
