//! Tamper evidence: every event's canonical bytes, chained per tenant. Each audit record holds
//! `hash = SHA-256(previous hash ‖ canonical bytes)`, the first of a tenant chaining from 32
//! zero bytes. Recomputing the chain from the stream and from the audit table shows where they
//! part.
//!
//! Canonical bytes: the envelope as JSON with object keys sorted at every level, no
//! insignificant white space, strings and numbers as serde_json writes them, and `occurred_at`
//! as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds), so that the same event gives the same
//! bytes whether read from the stream or rebuilt from a PostgreSQL row.

use std::sync::LazyLock;

use serde_json::Value;
use sha2::{Digest, Sha256};
use time::format_description::FormatItem;
use time::{OffsetDateTime, UtcOffset};

use crate::envelope::Envelope;

/// The hash a tenant's chain starts from.
pub const GENESIS: [u8; 32] = [0; 32];

/// The format of `occurred_at` in canonical bytes (parsed once).
static TIMESTAMP: LazyLock<Vec<FormatItem<'static>>> = LazyLock::new(|| {
    time::format_description::parse_borrowed::<2>(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z",
    )
    .unwrap_or_default()
});

/// An instant as canonical bytes write it.
pub fn canonical_time(at: OffsetDateTime) -> String {
    at.to_offset(UtcOffset::UTC)
        .format(&*TIMESTAMP)
        .unwrap_or_default()
}

/// Writes `value` with object keys sorted at every level, straight into `out` (the chain
/// step runs for every event the projector and a rebuild apply: no value is copied).
fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Keys of one object are distinct: an unstable sort orders them as a stable one.
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                scalar(key, out);
                out.push(b':');
                write(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        other => scalar(other, out),
    }
}

/// A string, number, boolean or null as serde_json writes it. Writing into a `Vec` cannot
/// fail, nor can serializing these.
fn scalar(value: &(impl serde::Serialize + ?Sized), out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(out, value);
}

impl Envelope {
    /// The event's canonical bytes: its fields in key order, written directly.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        self.canonical_bytes_with_actor(&serde_json::to_value(&self.actor).unwrap_or(Value::Null))
    }

    /// [`Envelope::canonical_bytes`], given its actor as a JSON value already (the projector
    /// has it for the audit record).
    pub fn canonical_bytes_with_actor(&self, actor: &Value) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let mut uuid = uuid::Uuid::encode_buffer();
        out.extend_from_slice(b"{\"actor\":");
        write(actor, &mut out);
        out.extend_from_slice(b",\"aggregate_id\":");
        scalar(
            self.aggregate_id.hyphenated().encode_lower(&mut uuid),
            &mut out,
        );
        out.extend_from_slice(b",\"aggregate_type\":");
        scalar(&self.aggregate_type, &mut out);
        out.extend_from_slice(b",\"event_id\":");
        scalar(self.event_id.hyphenated().encode_lower(&mut uuid), &mut out);
        out.extend_from_slice(b",\"event_type\":");
        scalar(&self.event_type, &mut out);
        out.extend_from_slice(b",\"occurred_at\":");
        scalar(&canonical_time(self.occurred_at), &mut out);
        out.extend_from_slice(b",\"payload\":");
        write(&self.payload, &mut out);
        out.extend_from_slice(b",\"request_id\":");
        scalar(&self.request_id, &mut out);
        out.extend_from_slice(b",\"schema_version\":");
        scalar(&self.schema_version, &mut out);
        out.extend_from_slice(b",\"tenant\":");
        scalar(&self.tenant, &mut out);
        out.extend_from_slice(b",\"traceparent\":");
        scalar(&self.traceparent, &mut out);
        out.extend_from_slice(b",\"version\":");
        scalar(&self.version, &mut out);
        out.push(b'}');
        out
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

    /// The canonical bytes as first written (a map of the fields, every key and scalar
    /// serialized on its own): what every chain in the field was computed with.
    fn reference(envelope: &Envelope) -> Vec<u8> {
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
                        out.push_str(&serde_json::to_string(key).unwrap());
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
        let value = json!({
            "event_id": envelope.event_id.to_string(),
            "tenant": envelope.tenant,
            "aggregate_type": envelope.aggregate_type,
            "aggregate_id": envelope.aggregate_id.to_string(),
            "version": envelope.version,
            "event_type": envelope.event_type,
            "schema_version": envelope.schema_version,
            "occurred_at": canonical_time(envelope.occurred_at),
            "actor": serde_json::to_value(&envelope.actor).unwrap(),
            "request_id": envelope.request_id,
            "traceparent": envelope.traceparent,
            "payload": envelope.payload,
        });
        let mut out = String::new();
        write(&value, &mut out);
        out.into_bytes()
    }

    #[test]
    fn canonical_bytes_are_those_every_existing_chain_was_computed_with() {
        let payloads = [
            json!({}),
            json!({"attributes": {"userName": "ada@example.com", "name": {"givenName": "Ada", "familyName": "Lovelace"},
                   "emails": [{"value": "a@x", "type": "work", "primary": true}], "zeta": null, "Alpha": 1}}),
            json!({"members": [{"value": "u1"}, {"value": "u2", "display": "Zoë \"quoted\" \\ back\nline\u{1}"}]}),
            json!({"numbers": [0, -1, 1.5, 1e300, u64::MAX, i64::MIN], "empty": {}, "none": [], "b": false}),
            json!({"ключ": "значение", "emoji": "🙂", "é": "e\u{301}", "": "empty key", "a\"b": "quote in key"}),
            json!({"changes": [{"path": "name.givenName", "before": null, "after": "Grace"}], "nested": [[[{"z": 1, "a": 2}]]]}),
        ];
        let actors = [
            Actor::Operator { name: "ops".into() },
            Actor::ScimToken {
                token_id: "0190f3a2-1111-7000-8000-00000000000\u{e9}".into(),
            },
        ];
        for (index, payload) in payloads.into_iter().enumerate() {
            for actor in &actors {
                let mut event = envelope(payload.clone());
                event.actor = actor.clone();
                event.event_id = uuid::Uuid::from_u128(0xABCD_EF01_2345_6789_ABCD_EF01_2345_6789);
                event.aggregate_id = uuid::Uuid::from_u128(index as u128 + 7);
                event.version = u64::MAX - index as u64;
                if index % 2 == 0 {
                    event.request_id = Some("req-\"1\"".into());
                    event.traceparent =
                        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
                }
                assert_eq!(
                    String::from_utf8(event.canonical_bytes()).unwrap(),
                    String::from_utf8(reference(&event)).unwrap(),
                    "payload {index}"
                );
            }
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
