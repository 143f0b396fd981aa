//! The access contract on NATS, for Rollcall's access service and for any other access
//! component (API gateways, session stores). Versioned; documented in `docs/access-contract.md`.
//!
//! - Key-value bucket `<namespace>_access`: the complete current access state.
//!   - `<tenant>.user.<user id>` → [`UserAccess`] (deleted users: the key is deleted);
//!   - `<tenant>.group.<group id>` → [`GroupAccess`] (deleted groups: the key is deleted);
//!   - `checkpoint` → [`AccessCheckpoint`], written after every batch: a watcher that has seen
//!     it has seen every change up to that event sequence. An installation with several
//!     partitions (`crate::partition`) writes one per partition instead, `checkpoint.p<k>`,
//!     each covering the changes of that partition's tenants.
//! - Subject `<namespace>.revocations.<tenant>.<user id>` → [`Revocation`], live, as each
//!   revocation happens (the same facts are also in the user's key).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::namespace::Namespace;

/// Opens the access bucket of `namespace`, creating it where it is missing, kept by the
/// namespace's replica count.
pub async fn open_bucket(
    jetstream: &async_nats::jetstream::Context,
    namespace: &Namespace,
) -> Result<async_nats::jetstream::kv::Store, crate::LoadError> {
    crate::kv::open_bucket(
        jetstream,
        &namespace.access_bucket(),
        "Rollcall access state (contract rollcall.access.*.v1)",
        namespace.replicas(),
    )
    .await
}

/// Records the revocation of one session (a sign-out) as an event on the user's stream, so
/// that it reaches every access component over this contract. The access service signs people
/// out through it; the SCIM API implements it (services do not depend on each other).
pub trait SessionRevoker: std::fmt::Debug + Send + Sync {
    /// Revokes session `session` of `user` in `tenant`.
    fn revoke<'a>(
        &'a self,
        tenant: &'a str,
        user: Uuid,
        session: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

/// Schema name of [`UserAccess`] values.
pub const USER_SCHEMA: &str = "rollcall.access.user.v1";
/// Schema name of [`GroupAccess`] values.
pub const GROUP_SCHEMA: &str = "rollcall.access.group.v1";
/// Schema name of [`Revocation`] messages.
pub const REVOCATION_SCHEMA: &str = "rollcall.revocation.v1";
/// The header naming the access service replica that announces its applied sequence (each
/// replica under its own id, so that a write can wait for every live one).
pub const REPLICA_HEADER: &str = "Rollcall-Access-Replica";
/// The key of the [`AccessCheckpoint`].
pub const CHECKPOINT_KEY: &str = "checkpoint";

/// A revoked session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedSession {
    /// The session id.
    pub id: String,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What access decisions need to know about a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccess {
    /// Always [`USER_SCHEMA`].
    pub schema: String,
    /// The tenant.
    pub tenant: String,
    /// The user's id.
    pub id: Uuid,
    /// The userName.
    pub user_name: String,
    /// The externalId (Entra's object id by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Email addresses, primary first.
    #[serde(default)]
    pub emails: Vec<String>,
    /// Whether the user is active.
    pub active: bool,
    /// Sessions issued before this instant are void (deactivation, deletion, revoke-all).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub not_before: Option<OffsetDateTime>,
    /// Individually revoked sessions.
    #[serde(default)]
    pub revoked_sessions: Vec<RevokedSession>,
    /// Ids of the groups the user is a direct member of.
    #[serde(default)]
    pub groups: Vec<Uuid>,
    /// The event sequence this state reflects (at least).
    pub sequence: u64,
    /// Set when the user's real state is withheld (it cannot be published, or the projector
    /// quarantined an event that concerns them): the state then denies (`active` false, no
    /// groups) until the cause is resolved. Says why, without personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
}

/// The longest a session may live. A session revoked longer ago than this has expired anyway,
/// so its revocation is no longer published (which keeps a user's access state bounded).
pub const MAX_SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// What access decisions need to know about a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAccess {
    /// Always [`GROUP_SCHEMA`].
    pub schema: String,
    /// The tenant.
    pub tenant: String,
    /// The group's id.
    pub id: Uuid,
    /// The displayName.
    pub display_name: String,
    /// The externalId (Entra's object id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The event sequence this state reflects (at least).
    pub sequence: u64,
}

/// One revocation, as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Always [`REVOCATION_SCHEMA`].
    pub schema: String,
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user_id: Uuid,
    /// One session, or absent for every session issued before `not_before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Sessions issued before this instant are void (absent for a one-session revocation).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub not_before: Option<OffsetDateTime>,
    /// `deactivated`, `deleted`, or `operator: <reason>`.
    pub reason: String,
    /// The event that caused it.
    pub event_id: Uuid,
    /// Its stream sequence.
    pub sequence: u64,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The last event sequence whose access effects are in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessCheckpoint {
    /// The sequence.
    pub sequence: u64,
}

impl Namespace {
    /// The access key-value bucket.
    pub fn access_bucket(&self) -> String {
        format!("{}_access", self.as_str().replace('-', "_"))
    }

    /// Where revocations are published.
    pub fn revocation_subject(&self, tenant: &str, user: &Uuid) -> String {
        format!("{}.revocations.{tenant}.{user}", self.as_str())
    }

    /// Every revocation of the installation.
    pub fn all_revocations(&self) -> String {
        format!("{}.revocations.>", self.as_str())
    }
}

/// The key of a user's access state.
pub fn user_key(tenant: &str, id: &Uuid) -> String {
    format!("{tenant}.user.{id}")
}

/// The key of a group's access state.
pub fn group_key(tenant: &str, id: &Uuid) -> String {
    format!("{tenant}.group.{id}")
}

/// What a key of the access bucket names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessKey {
    /// A user's state.
    User(String, Uuid),
    /// A group's state.
    Group(String, Uuid),
    /// A checkpoint: the installation's (`checkpoint`, `None`) or one partition's
    /// (`checkpoint.p<k>`, `Some(k)`).
    Checkpoint(Option<u16>),
}

/// Reads a key of the access bucket.
pub fn parse_key(key: &str) -> Option<AccessKey> {
    if key == CHECKPOINT_KEY {
        return Some(AccessKey::Checkpoint(None));
    }
    if let Some(partition) = key
        .strip_prefix(CHECKPOINT_KEY)
        .and_then(|rest| rest.strip_prefix(".p"))
    {
        return partition
            .parse()
            .ok()
            .map(|k| AccessKey::Checkpoint(Some(k)));
    }
    let mut parts = key.split('.');
    let (tenant, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let id = Uuid::parse_str(id).ok()?;
    match kind {
        "user" => Some(AccessKey::User(tenant.to_owned(), id)),
        "group" => Some(AccessKey::Group(tenant.to_owned(), id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse_key(&user_key("acme", &id)),
            Some(AccessKey::User("acme".into(), id))
        );
        assert_eq!(
            parse_key(&group_key("acme", &id)),
            Some(AccessKey::Group("acme".into(), id))
        );
        assert_eq!(parse_key("checkpoint"), Some(AccessKey::Checkpoint(None)));
        assert_eq!(
            parse_key("checkpoint.p3"),
            Some(AccessKey::Checkpoint(Some(3)))
        );
        assert_eq!(parse_key("checkpoint.px"), None);
        assert_eq!(parse_key("acme.user.not-a-uuid"), None);
    }
}
