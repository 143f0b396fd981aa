//! rollcall-personal: the personal fields of events, sealed under their person's data key
//! (crypto-shredding). Erasing a person destroys the key (`rollcall_store::personal_key`); the
//! stored events keep their bytes, so the audit chain over them still verifies, but their
//! personal fields never open again and read as [`ERASED`].
//!
//! What is sealed, each field on its own (XChaCha20-Poly1305 under the user's data key, with
//! the event id and the field's path as associated data, so that a sealed value moved to
//! another event or field does not open):
//! - `user.provisioned`: every attribute's value except `active` and `schemas` (userName, name,
//!   emails, phone numbers, addresses, title, department, manager, externalId, displayName, and
//!   any extension), under `attributes/<name>`;
//! - `user.attributes_changed`: the `before` and `after` of every change except of `active` and
//!   `schemas`, under `changes/<index>/before|after`; the changed path stays in clear;
//! - `identity.linked`: the provider's `subject`, under the linked user's key.
//!
//! Everything else stays in clear: ids, tenant, event types, times, actors, request ids,
//! attribute names and paths, `active`, group ids and membership, so that order, structure and
//! the audit chain stay visible. A sealed event has schema version [`SEALED_VERSION`]; opening
//! gives back the version-1 payload, with [`ERASED`] in the fields of an erased person.
#![warn(missing_docs)]

use std::collections::{HashMap, HashSet};

use base64::engine::general_purpose::STANDARD_NO_PAD as BASE64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rollcall_eventlog::Envelope;
use rollcall_store::personal_key::{DataKey, Freshness, KeyState};
use rollcall_store::{Store, StoreError};
use serde_json::Value;
use uuid::Uuid;

/// The schema version of an event whose personal fields are sealed.
pub const SEALED_VERSION: u32 = 2;
/// What an erased person's fields read as.
pub const ERASED: &str = "[erased]";
/// The prefix of a sealed field's value.
const PREFIX: &str = "rollcall:sealed:v1:";
/// User attributes that are not personal and stay in clear.
const CLEAR_ATTRIBUTES: [&str; 2] = ["active", "schemas"];

/// Why personal fields could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum PersonalError {
    /// The data keys could not be read or stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed field does not open, or a field that must be sealed is not.
    #[error("event {event_id}: {reason}")]
    Corrupt {
        /// The event.
        event_id: Uuid,
        /// What is wrong (never a value).
        reason: String,
    },
    /// The person's data key was never stored.
    #[error("event {event_id}: no data key was ever stored for user {user} of tenant {tenant}")]
    NoKey {
        /// The event.
        event_id: Uuid,
        /// The tenant.
        tenant: String,
        /// The user.
        user: Uuid,
    },
}

impl From<PersonalError> for StoreError {
    fn from(error: PersonalError) -> Self {
        match error {
            PersonalError::Store(error) => error,
            other => StoreError::Corrupt(other.to_string()),
        }
    }
}

/// An event as sealing and opening see it: an [`Envelope`], or a stored row of one.
#[derive(Debug)]
pub struct EventParts<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The aggregate type.
    pub aggregate_type: &'a str,
    /// The aggregate id.
    pub aggregate_id: Uuid,
    /// The event id.
    pub event_id: Uuid,
    /// The event type.
    pub event_type: &'a str,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The payload.
    pub payload: &'a mut Value,
}

/// Anything holding an event.
pub trait PersonalEvent {
    /// The event's parts.
    fn parts(&mut self) -> EventParts<'_>;
    /// Sets the payload's schema version.
    fn set_schema_version(&mut self, version: u32);
}

impl PersonalEvent for Envelope {
    fn parts(&mut self) -> EventParts<'_> {
        EventParts {
            tenant: &self.tenant,
            aggregate_type: &self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_id: self.event_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            payload: &mut self.payload,
        }
    }
    fn set_schema_version(&mut self, version: u32) {
        self.schema_version = version;
    }
}

impl PersonalEvent for rollcall_store::audit::AuditRow {
    fn parts(&mut self) -> EventParts<'_> {
        EventParts {
            tenant: &self.tenant,
            aggregate_type: &self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_id: self.event_id,
            event_type: &self.event_type,
            schema_version: u32::try_from(self.schema_version).unwrap_or(0),
            payload: &mut self.payload.0,
        }
    }
    fn set_schema_version(&mut self, version: u32) {
        self.schema_version = i32::try_from(version).unwrap_or(i32::MAX);
    }
}

impl PersonalEvent for rollcall_eventlog::consumer::Delivered {
    fn parts(&mut self) -> EventParts<'_> {
        self.envelope.parts()
    }
    fn set_schema_version(&mut self, version: u32) {
        self.envelope.schema_version = version;
    }
}

/// Drops from this process's cache the keys of users that `events` erase (their key is gone
/// from PostgreSQL already, or goes with the projection of the erasure).
pub fn forget_erased<'a>(store: &Store, events: impl IntoIterator<Item = &'a Envelope>) {
    for envelope in events {
        if envelope.event_type == ERASED_EVENT {
            store.forget_data_key(&envelope.tenant, envelope.aggregate_id);
        }
    }
}

/// The erasure's event type.
pub const ERASED_EVENT: &str = "user.erased";

/// Whose data key seals the event's personal fields: `None` when it has none.
fn owner(parts: &EventParts<'_>) -> Option<Uuid> {
    match parts.event_type {
        "user.provisioned" | "user.attributes_changed" => Some(parts.aggregate_id),
        "identity.linked" => parts
            .payload
            .get("user_id")
            .and_then(Value::as_str)
            .and_then(|id| id.parse().ok()),
        _ => None,
    }
}

/// Whose data key an event needs, if it has personal fields: (tenant, user).
pub fn key_owner(event: &mut impl PersonalEvent) -> Option<(String, Uuid)> {
    let parts = event.parts();
    owner(&parts).map(|user| (parts.tenant.to_owned(), user))
}

/// Whether events of this type have personal fields (sealed, or in clear in events written
/// before sealing existed).
pub fn has_personal_fields(event_type: &str) -> bool {
    matches!(
        event_type,
        "user.provisioned" | "user.attributes_changed" | "identity.linked"
    )
}

/// Whether an envelope's personal fields are sealed (it must be opened before it is read).
pub fn sealed(envelope: &Envelope) -> bool {
    envelope.schema_version == SEALED_VERSION && has_personal_fields(&envelope.event_type)
}

/// Whether the event's personal fields are sealed (it must be opened before it is read).
pub fn is_sealed(event: &mut impl PersonalEvent) -> bool {
    let parts = event.parts();
    parts.schema_version == SEALED_VERSION && owner(&parts).is_some()
}

/// Calls `visit` with the path and a mutable reference of every personal field of `payload`
/// (an event of `event_type`).
fn personal_fields(
    event_type: &str,
    payload: &mut Value,
    mut visit: impl FnMut(String, &mut Value) -> Result<(), String>,
) -> Result<(), String> {
    match event_type {
        "user.provisioned" => {
            let Some(attributes) = payload.get_mut("attributes").and_then(Value::as_object_mut)
            else {
                return Err("user.provisioned without attributes".into());
            };
            for (name, value) in attributes.iter_mut() {
                if !CLEAR_ATTRIBUTES.contains(&name.as_str()) {
                    visit(format!("attributes/{name}"), value)?;
                }
            }
        }
        "user.attributes_changed" => {
            let Some(changes) = payload.get_mut("changes").and_then(Value::as_array_mut) else {
                return Err("user.attributes_changed without changes".into());
            };
            for (index, change) in changes.iter_mut().enumerate() {
                let Some(change) = change.as_object_mut() else {
                    return Err(format!("change {index} is not an object"));
                };
                let path = change
                    .get("path")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if CLEAR_ATTRIBUTES.contains(&path.as_str()) {
                    continue;
                }
                // The changed path (in clear) is part of the field's name: a value does not
                // open under another change's path.
                for side in ["before", "after"] {
                    if let Some(value) = change.get_mut(side) {
                        visit(format!("changes/{index}/{side}/{path}"), value)?;
                    }
                }
            }
        }
        "identity.linked" => {
            let Some(subject) = payload.get_mut("subject") else {
                return Err("identity.linked without subject".into());
            };
            visit("subject".into(), subject)?;
        }
        _ => {}
    }
    Ok(())
}

fn associated_data(event_id: Uuid, path: &str) -> Vec<u8> {
    format!("rollcall.personal.v1\0{event_id}\0{path}").into_bytes()
}

/// Seals the event's personal fields under `key` (a no-op for an event without any, or one
/// sealed already).
pub fn seal(event: &mut impl PersonalEvent, key: &DataKey) -> Result<(), PersonalError> {
    let parts = event.parts();
    if owner(&parts).is_none() || parts.schema_version == SEALED_VERSION {
        return Ok(());
    }
    let event_id = parts.event_id;
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    personal_fields(parts.event_type, parts.payload, |path, value| {
        let plain = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &associated_data(event_id, &path),
                },
            )
            .map_err(|_| "sealing failed".to_owned())?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        *value = Value::String(format!("{PREFIX}{}", BASE64.encode(bytes)));
        Ok(())
    })
    .map_err(|reason| PersonalError::Corrupt { event_id, reason })?;
    event.set_schema_version(SEALED_VERSION);
    Ok(())
}

/// Opens the event's sealed fields with its owner's key state: the key gives the values back,
/// an erased person's fields read [`ERASED`]. The event then has schema version 1.
pub fn open(event: &mut impl PersonalEvent, key: &KeyState) -> Result<(), PersonalError> {
    let parts = event.parts();
    let Some(user) = owner(&parts) else {
        return Ok(());
    };
    if parts.schema_version != SEALED_VERSION {
        return Ok(());
    }
    let event_id = parts.event_id;
    let cipher = match key {
        KeyState::Key(key) => Some(XChaCha20Poly1305::new(key.expose().into())),
        KeyState::Erased => None,
        KeyState::Missing => {
            return Err(PersonalError::NoKey {
                event_id,
                tenant: parts.tenant.to_owned(),
                user,
            })
        }
    };
    personal_fields(parts.event_type, parts.payload, |path, value| {
        let sealed = value
            .as_str()
            .and_then(|text| text.strip_prefix(PREFIX))
            .ok_or_else(|| format!("{path} is not sealed"))?;
        let Some(cipher) = &cipher else {
            *value = Value::String(ERASED.into());
            return Ok(());
        };
        let bytes = BASE64
            .decode(sealed)
            .map_err(|_| format!("{path} is not a sealed value"))?;
        if bytes.len() < 24 {
            return Err(format!("{path} is not a sealed value"));
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        let nonce = <[u8; 24]>::try_from(nonce).map_err(|_| format!("{path}: bad nonce"))?;
        let plain = cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &associated_data(event_id, &path),
                },
            )
            .map_err(|_| {
                format!("{path} does not open under its user's key: it was changed or moved")
            })?;
        *value = serde_json::from_slice(&plain).map_err(|_| format!("{path}: not JSON"))?;
        Ok(())
    })
    .map_err(|reason| PersonalError::Corrupt { event_id, reason })?;
    event.set_schema_version(1);
    Ok(())
}

/// Replaces every personal field of a clear event with [`ERASED`] (what a sealed one opens to
/// once erased): the event as far as it is not personal.
pub fn mask(event: &mut impl PersonalEvent) {
    let parts = event.parts();
    if parts.schema_version == SEALED_VERSION {
        return;
    }
    let _ = personal_fields(parts.event_type, parts.payload, |_, value| {
        *value = Value::String(ERASED.into());
        Ok(())
    });
}

/// Seals the personal fields of events about to be written, each under its owner's data key
/// (created and stored first for a new user). Leaves them in clear only in the benchmark's
/// runs without sealing ([`Store::seals_personal_data`]).
pub async fn seal_all<E: PersonalEvent>(
    store: &Store,
    events: &mut [E],
) -> Result<(), PersonalError> {
    if !store.seals_personal_data() {
        return Ok(());
    }
    let mut keys: HashMap<(String, Uuid), DataKey> = HashMap::new();
    for event in events.iter_mut() {
        let Some(owner) = key_owner(event) else {
            continue;
        };
        let key = match keys.get(&owner) {
            Some(key) => key.clone(),
            None => {
                let key = store.data_key_for_writing(&owner.0, owner.1).await?;
                keys.insert(owner, key.clone());
                key
            }
        };
        seal(event, &key)?;
    }
    Ok(())
}

/// The owners of the sealed events of `events`, each once: whose data keys opening them takes.
pub fn sealed_owners<'a, E: PersonalEvent + 'a>(
    events: impl IntoIterator<Item = &'a mut E>,
) -> Vec<(String, Uuid)> {
    events
        .into_iter()
        .filter_map(|event| {
            if is_sealed(event) {
                key_owner(event)
            } else {
                None
            }
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect()
}

/// The key states of the owners of every sealed event of `events`, read in one query (fewer
/// with [`Freshness::Cached`]).
pub async fn keys_for<E: PersonalEvent>(
    store: &Store,
    events: &mut [E],
    freshness: Freshness,
) -> Result<HashMap<(String, Uuid), KeyState>, StoreError> {
    let wanted = sealed_owners(events.iter_mut());
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    store.data_keys(&wanted, freshness).await
}

/// The key states of the owners of every event of `events` with personal fields, sealed or not,
/// read fresh.
pub async fn owners_key_states<E: PersonalEvent>(
    store: &Store,
    events: &mut [E],
) -> Result<HashMap<(String, Uuid), KeyState>, StoreError> {
    let wanted: Vec<(String, Uuid)> = events
        .iter_mut()
        .filter_map(key_owner)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    store.data_keys(&wanted, Freshness::Fresh).await
}

/// Opens every sealed event of `events` (see [`keys_for`]).
pub async fn open_all<E: PersonalEvent>(
    store: &Store,
    events: &mut [E],
    freshness: Freshness,
) -> Result<(), PersonalError> {
    let keys = keys_for(store, events, freshness).await?;
    if keys.is_empty() {
        return Ok(());
    }
    for event in events.iter_mut() {
        let Some(owner) = key_owner(event) else {
            continue;
        };
        let state = keys.get(&owner).unwrap_or(&KeyState::Missing);
        open(event, state)?;
    }
    Ok(())
}

/// The texts of a person's opened events that identify them: what to look for where their data
/// may have been copied (the SCIM request log). Only identifying attributes (userName,
/// displayName, nickName, name, externalId, employeeNumber, the values of emails, phone
/// numbers and ims, street addresses): a department, an organization or a locale names many
/// people, and a manager is someone else.
pub fn personal_texts(event: &mut impl PersonalEvent) -> Vec<String> {
    let parts = event.parts();
    let mut texts = Vec::new();
    let _ = personal_fields(parts.event_type, parts.payload, |path, value| {
        identifying(&path, value, &mut texts);
        Ok(())
    });
    texts
}

/// The identifying texts of the field at `path` (`attributes/<name>`,
/// `changes/<i>/<side>/<path>`, `subject`).
fn identifying(path: &str, value: &Value, out: &mut Vec<String>) {
    let attribute = path.rsplit('/').next().unwrap_or(path);
    let (urn, name) = match attribute.rsplit_once(':') {
        Some((urn, name)) => (Some(urn), name),
        None => (None, attribute),
    };
    let (name, sub) = match name.split_once('.') {
        Some((name, sub)) => (name, Some(sub)),
        None => (name, None),
    };
    let values = |key: &str, out: &mut Vec<String>| {
        for item in value.as_array().into_iter().flatten() {
            strings(item.get(key).unwrap_or(&Value::Null), out);
        }
    };
    match (urn, name, sub) {
        // The enterprise extension as one object (a provisioning).
        (Some(_), "User", None) => {
            strings(value.get("employeeNumber").unwrap_or(&Value::Null), out)
        }
        (_, "userName" | "displayName" | "nickName" | "externalId" | "employeeNumber", _)
        | (None, "name", _)
        | (None, "emails" | "phoneNumbers" | "ims", Some("value"))
        | (None, "addresses", Some("streetAddress" | "formatted")) => strings(value, out),
        (None, "emails" | "phoneNumbers" | "ims", None) => values("value", out),
        (None, "addresses", None) => {
            values("streetAddress", out);
            values("formatted", out);
        }
        (None, "subject", None) if path == "subject" => strings(value, out),
        _ => {}
    }
}

/// The strings of a value, without SCIM's labels (`type`, which says "work" or "home") and
/// without texts too short to find anything by.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) if text != ERASED && text.chars().count() >= 3 => {
            out.push(text.clone())
        }
        Value::Array(items) => items.iter().for_each(|item| strings(item, out)),
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| key.as_str() != "type")
            .for_each(|(_, item)| strings(item, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_eventlog::Actor;
    use serde_json::json;

    #[test]
    fn fields_are_opened_with_poly1305s_portable_backend() {
        // .cargo/config.toml selects it: on the short values sealed here, poly1305's AVX2
        // backend made opening a field three times slower. Cargo reads that file only when run
        // from the workspace, and RUSTFLAGS, CARGO_ENCODED_RUSTFLAGS or a
        // `target.<triple>.rustflags` elsewhere replace its list.
        let portable = cfg!(poly1305_backend = "soft");
        assert!(
            std::hint::black_box(portable),
            "built without .cargo/config.toml's rustflags: run cargo from the workspace, and keep \
             --cfg poly1305_backend=\"soft\" in any RUSTFLAGS you set"
        );
    }

    fn envelope(event_type: &str, payload: Value) -> Envelope {
        Envelope {
            event_id: Uuid::from_u128(42),
            tenant: "acme".into(),
            aggregate_type: event_type.split('.').next().unwrap_or("").into(),
            aggregate_id: Uuid::from_u128(7),
            version: 1,
            event_type: event_type.into(),
            schema_version: 1,
            occurred_at: time::OffsetDateTime::UNIX_EPOCH,
            actor: Actor::Operator { name: "op".into() },
            request_id: None,
            traceparent: None,
            payload,
        }
    }

    fn key() -> KeyState {
        KeyState::Key(DataKey::from_bytes([5; 32]))
    }

    fn sealed_with(event: &mut Envelope) {
        let KeyState::Key(key) = key() else {
            unreachable!()
        };
        seal(event, &key).unwrap();
    }

    #[test]
    fn a_provisioning_seals_every_personal_attribute_and_opens_back_to_what_it_was() {
        let payload = json!({"type": "user.provisioned", "active": true, "attributes": {
            "userName": "alice@example.com", "active": true,
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "name": {"givenName": "Alice"}, "emails": [{"value": "alice@example.com"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Sales"}}});
        let mut event = envelope("user.provisioned", payload.clone());
        sealed_with(&mut event);
        assert_eq!(event.schema_version, SEALED_VERSION);
        let stored = event.payload.to_string();
        for secret in ["alice", "Alice", "Sales"] {
            assert!(!stored.contains(secret), "{secret} in {stored}");
        }
        assert_eq!(event.payload["attributes"]["active"], json!(true));
        assert_eq!(event.payload["active"], json!(true));
        open(&mut event, &key()).unwrap();
        assert_eq!(event.payload, payload);
        assert_eq!(event.schema_version, 1);
    }

    #[test]
    fn an_erased_persons_fields_read_erased_and_the_rest_stays() {
        let payload = json!({"type": "user.attributes_changed", "changes": [
            {"path": "displayName", "before": "Al", "after": "Alice"},
            {"path": "active", "before": true, "after": true},
            {"path": "title", "after": "CFO"}]});
        let mut event = envelope("user.attributes_changed", payload);
        sealed_with(&mut event);
        open(&mut event, &KeyState::Erased).unwrap();
        assert_eq!(
            event.payload["changes"],
            json!([{"path": "displayName", "before": ERASED, "after": ERASED},
                   {"path": "active", "before": true, "after": true},
                   {"path": "title", "after": ERASED}])
        );
    }

    #[test]
    fn a_sealed_field_moved_changed_or_left_clear_does_not_open() {
        let payload = json!({"type": "user.attributes_changed", "changes": [
            {"path": "displayName", "before": "Al", "after": "Alice"}]});
        let mut event = envelope("user.attributes_changed", payload);
        sealed_with(&mut event);
        let sealed = event.clone();

        let mut swapped = sealed.clone();
        let before = swapped.payload["changes"][0]["before"].clone();
        swapped.payload["changes"][0]["before"] = swapped.payload["changes"][0]["after"].clone();
        swapped.payload["changes"][0]["after"] = before;
        assert!(open(&mut swapped, &key()).is_err());

        let mut relabelled = sealed.clone();
        relabelled.payload["changes"][0]["path"] = json!("nickName");
        assert!(open(&mut relabelled, &key()).is_err());

        let mut other_event = sealed.clone();
        other_event.event_id = Uuid::from_u128(43);
        assert!(open(&mut other_event, &key()).is_err());

        let mut clear = sealed.clone();
        clear.payload["changes"][0]["after"] = json!("Mallory");
        assert!(open(&mut clear, &key()).is_err());

        let mut wrong_key = sealed.clone();
        let other = KeyState::Key(DataKey::from_bytes([6; 32]));
        assert!(open(&mut wrong_key, &other).is_err());

        let mut missing = sealed;
        assert!(matches!(
            open(&mut missing, &KeyState::Missing),
            Err(PersonalError::NoKey { .. })
        ));
    }

    #[test]
    fn events_without_personal_fields_and_clear_old_events_pass_unchanged() {
        let mut deactivated = envelope("user.deactivated", json!({"type": "user.deactivated"}));
        sealed_with(&mut deactivated);
        assert_eq!(deactivated.schema_version, 1);
        let old =
            json!({"type": "user.provisioned", "active": true, "attributes": {"userName": "bob"}});
        let mut event = envelope("user.provisioned", old.clone());
        open(&mut event, &KeyState::Erased).unwrap();
        assert_eq!(event.payload, old);
    }

    #[test]
    fn an_identity_link_seals_the_subject_under_the_linked_users_key() {
        let user = Uuid::from_u128(99);
        let mut event = envelope(
            "identity.linked",
            json!({"type": "identity.linked", "user_id": user, "issuer": "https://idp", "subject": "sub-123"}),
        );
        assert_eq!(key_owner(&mut event), Some(("acme".into(), user)));
        sealed_with(&mut event);
        assert!(!event.payload.to_string().contains("sub-123"));
        assert_eq!(event.payload["issuer"], json!("https://idp"));
        open(&mut event, &key()).unwrap();
        assert_eq!(event.payload["subject"], json!("sub-123"));
    }

    #[test]
    fn personal_texts_are_the_identifying_values_and_never_shared_ones() {
        let mut event = envelope(
            "user.provisioned",
            json!({"type": "user.provisioned", "active": true,
            "attributes": {"userName": "alice", "emails": [{"value": "a@x.org", "type": "work"}], "active": true,
                "name": {"givenName": "Alice", "familyName": "Liddell"}, "title": "Engineer",
                "addresses": [{"streetAddress": "1 Rabbit Hole", "country": "GB"}],
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                    "department": "Sales", "employeeNumber": "E-100",
                    "manager": {"value": "0190aaaa-0000-7000-8000-000000000000"}}}}),
        );
        let mut texts = personal_texts(&mut event);
        texts.sort();
        assert_eq!(
            texts,
            [
                "1 Rabbit Hole",
                "Alice",
                "E-100",
                "Liddell",
                "a@x.org",
                "alice"
            ]
        );
        let mut changed = envelope(
            "user.attributes_changed",
            json!({"type": "user.attributes_changed", "changes": [
            {"path": "emails", "after": [{"value": "b@x.org"}]},
            {"path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "after": "Ops"},
            {"path": "displayName", "before": "Al", "after": "Alice L"}]}),
        );
        let mut texts = personal_texts(&mut changed);
        texts.sort();
        assert_eq!(texts, ["Alice L", "b@x.org"]);
    }
}
