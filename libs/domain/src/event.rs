//! What every event says about itself: its stable wire name and schema version, and how an
//! old version is read (upcast) into the current shape.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// An aggregate's event type.
pub trait EventKind: Serialize + DeserializeOwned + Sized {
    /// The aggregate's wire name (`user`, `group`), also its subject token.
    const AGGREGATE: &'static str;

    /// The stable wire name (`user.deactivated`).
    fn event_type(&self) -> &'static str;

    /// The schema version this code writes.
    fn schema_version(&self) -> u32 {
        1
    }

    /// Reads an event of any released schema version. Version 1 is the only one so far; a
    /// later version adds an arm here that upcasts the old payload.
    /// The payload is read where it is, not copied.
    fn from_payload(
        event_type: &str,
        schema_version: u32,
        payload: &Value,
    ) -> Result<Self, String> {
        match schema_version {
            1 => Self::deserialize(payload).map_err(|error| format!("{event_type} v1: {error}")),
            other => Err(format!("{event_type}: unknown schema version {other}")),
        }
    }

    /// The payload as written.
    fn to_payload(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
