//! Publishes the access outbox to NATS: each affected user's and group's current access state
//! to the access bucket, each revocation to its subject, then the checkpoint key. Puts are of
//! whole current states, so publishing an entry twice is harmless; entries are removed only
//! once published.

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream::kv::Store as Bucket;
use bytes::Bytes;
use futures::StreamExt;
use rollcall_eventlog::access::{self, AccessCheckpoint, GroupAccess, RevokedSession, UserAccess};
use rollcall_eventlog::partition::Partition;
use rollcall_eventlog::{LoadError, Namespace};
use rollcall_store::access::{OutboxRow, UserAccessRow};
use rollcall_store::Store;
use time::OffsetDateTime;
use tracing::{error, instrument, warn};
use uuid::Uuid;

use crate::ProjectorError;

/// How many outbox entries one round publishes.
const ROUND: usize = 1_000;

/// How many keys of a round are published at once: enough to overlap the key-value puts'
/// round trips, few enough to leave the connection pool (shared with the SCIM API and the
/// projector's transactions) to the others.
const IN_FLIGHT: usize = 4;

/// How many users' states are put at once: their facts are read before, so each is a put
/// alone, and holds no connection of the pool.
const PUTS_IN_FLIGHT: usize = 16;

/// The access publisher of one namespace.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: async_nats::Client,
    bucket: Bucket,
    namespace: Namespace,
    store: Store,
    max_payload: usize,
    partition: Partition,
    /// One drain at a time (the batch loop and the timer both drain): two drains reading the
    /// same user's state at different moments could otherwise put the older one last.
    draining: std::sync::Arc<tokio::sync::Mutex<()>>,
}

fn nats<E: std::fmt::Display>(error: E) -> ProjectorError {
    ProjectorError::Log(LoadError::Nats(error.to_string()))
}

/// The user's access state as published: revocations that can no longer matter left out (a
/// session revoked at or before `not_before` is void by it; one revoked longer ago than the
/// longest session lifetime has expired), so that the state stays bounded.
fn user_state(
    row: rollcall_store::access::UserAccessRow,
    sequence: u64,
    now: OffsetDateTime,
) -> UserAccess {
    let emails = rollcall_domain::user::emails(&row.user.attributes.0)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let expired_before = now - access::MAX_SESSION_LIFETIME;
    let not_before = row.not_before;
    UserAccess {
        schema: access::USER_SCHEMA.into(),
        tenant: row.user.tenant.clone(),
        id: row.user.id,
        user_name: row.user.user_name.clone(),
        external_id: row.user.external_id.clone(),
        emails,
        active: row.user.active,
        not_before,
        revoked_sessions: row
            .revoked_sessions
            .into_iter()
            .filter(|(_, at)| *at > expired_before && not_before.is_none_or(|nb| *at > nb))
            .map(|(id, at)| RevokedSession { id, at })
            .collect(),
        groups: row.groups,
        sequence,
        withheld: None,
    }
}

/// The state published in place of one that is withheld: it denies, and says why.
fn withheld(state: UserAccess, reason: &str) -> UserAccess {
    UserAccess {
        emails: Vec::new(),
        active: false,
        revoked_sessions: Vec::new(),
        groups: Vec::new(),
        withheld: Some(reason.to_owned()),
        ..state
    }
}

/// Room kept for headers and the subject when checking a state against `max_payload`.
const HEADER_ROOM: usize = 4_096;

impl Publisher {
    /// Opens the namespace's access bucket, creating it if missing.
    pub async fn open(
        client: async_nats::Client,
        namespace: Namespace,
        store: Store,
    ) -> Result<Self, ProjectorError> {
        let jetstream = async_nats::jetstream::new(client.clone());
        let bucket = rollcall_eventlog::access::open_bucket(&jetstream, &namespace).await?;
        let max_payload = client.server_info().max_payload;
        Ok(Self {
            client,
            bucket,
            namespace,
            store,
            max_payload,
            partition: Partition::ONLY,
            draining: Default::default(),
        })
    }

    /// Publishes only partition `partition`'s outbox, with its own checkpoint key.
    pub fn for_partition(mut self, partition: Partition) -> Self {
        self.partition = partition;
        self
    }

    /// Publishes everything in the outbox, key by key: a key that fails does not hold back the
    /// others; its entries stay for the next round, and the access checkpoint stops below its
    /// sequence (so that writes waiting for the access service wait for it). Returns the last
    /// event sequence published, if any.
    #[instrument(skip_all, err(level = "warn"))]
    pub async fn drain(&self) -> Result<Option<u64>, ProjectorError> {
        let _draining = self.draining.lock().await;
        let mut published = None;
        loop {
            // Almost always nothing is quarantined: then no user needs asking about it. Both
            // read in one statement, as of the same commits (the next batch commits meanwhile).
            let (rows, quarantined) = self
                .store
                .outbox_and_quarantine(self.partition.index(), self.partition.count(), ROUND)
                .await?;
            if rows.is_empty() {
                return Ok(published);
            }
            let mut keys: BTreeMap<(&str, &str, Uuid), Vec<&OutboxRow>> = BTreeMap::new();
            for row in &rows {
                keys.entry((row.kind.as_str(), row.tenant.as_str(), row.subject_id))
                    .or_default()
                    .push(row);
            }
            let quarantine = quarantined > 0;
            let mut done = Vec::with_capacity(rows.len());
            let mut failed: Option<(u64, ProjectorError)> = None;
            // Groups, then revocations, then users (a user's state may name a group that is
            // new): within each kind the keys are independent (each appears once per round),
            // so their reads and puts are pipelined rather than awaited one at a time.
            let mut results = Vec::with_capacity(keys.len());
            for phase in ["group", "revocation", "user"] {
                let of_phase: Vec<_> = keys
                    .iter()
                    .filter(|((kind, _, _), _)| *kind == phase)
                    .collect();
                // A round's users are read at once (three statements), then only their puts
                // are pipelined. A failed read holds the round back; its entries stay.
                let mut facts = if phase == "user" {
                    let users: Vec<(&str, Uuid)> = of_phase
                        .iter()
                        .map(|((_, tenant, id), _)| (*tenant, *id))
                        .collect();
                    self.store.users_access(&users).await?
                } else {
                    HashMap::new()
                };
                let mut publishing = Vec::with_capacity(of_phase.len());
                for ((kind, tenant, id), entries) in &of_phase {
                    let user = facts.remove(&((*tenant).to_owned(), *id));
                    publishing.push(self.publish_key(kind, tenant, *id, entries, quarantine, user));
                }
                let in_flight = if phase == "user" {
                    PUTS_IN_FLIGHT
                } else {
                    IN_FLIGHT
                };
                let published: Vec<_> = futures::stream::iter(publishing)
                    .buffered(in_flight)
                    .collect()
                    .await;
                for (((kind, tenant, id), entries), result) in of_phase.into_iter().zip(published) {
                    results.push(((*kind, *tenant, *id), entries, result));
                }
            }
            for ((kind, tenant, id), entries, result) in results {
                match result {
                    Ok(()) => done.extend(entries.iter().map(|row| row.id)),
                    Err(error) => {
                        let first = entries
                            .iter()
                            .map(|row| row.sequence as u64)
                            .min()
                            .unwrap_or(0);
                        warn!(kind, tenant, id = %id, error = %error, "publishing access state failed for this key; the others go on");
                        if failed
                            .as_ref()
                            .is_none_or(|(sequence, _)| first < *sequence)
                        {
                            failed = Some((first, error));
                        }
                    }
                }
            }
            let highest = rows
                .iter()
                .map(|row| row.sequence as u64)
                .max()
                .unwrap_or(0);
            let reached = match &failed {
                Some((sequence, _)) => sequence.saturating_sub(1),
                None => highest,
            };
            if reached > 0 && published.is_none_or(|p| reached > p) {
                let checkpoint =
                    serde_json::to_vec(&AccessCheckpoint { sequence: reached }).unwrap_or_default();
                self.bucket
                    .put(self.partition.checkpoint_key(), checkpoint.into())
                    .await
                    .map_err(nats)?;
                published = Some(reached);
            }
            self.store.clear_outbox_entries(&done).await?;
            if let Some((_, error)) = failed {
                return Err(error);
            }
            // A short round took every entry there was; entries committed since belong to a
            // batch whose projector drains after it.
            if rows.len() < ROUND {
                return Ok(published);
            }
        }
    }

    /// Publishes one key's state.
    async fn publish_key(
        &self,
        kind: &str,
        tenant: &str,
        id: Uuid,
        entries: &[&OutboxRow],
        quarantine: bool,
        user: Option<UserAccessRow>,
    ) -> Result<(), ProjectorError> {
        match kind {
            "user" => {
                self.publish_user(tenant, id, entries, quarantine, user)
                    .await
            }
            "group" => self.publish_group(tenant, id, entries).await,
            _ => self.publish_revocations(tenant, id, entries).await,
        }
    }

    async fn publish_revocations(
        &self,
        tenant: &str,
        id: Uuid,
        entries: &[&OutboxRow],
    ) -> Result<(), ProjectorError> {
        let subject = self.namespace.revocation_subject(tenant, &id);
        for row in entries {
            let payload = row
                .payload
                .as_ref()
                .map(|p| p.0.to_string())
                .unwrap_or_default();
            self.client
                .publish(subject.clone(), Bytes::from(payload))
                .await
                .map_err(nats)?;
        }
        Ok(())
    }

    /// Publishes a user's state from `user`, its access facts as read for this round (`None`:
    /// the user is gone).
    async fn publish_user(
        &self,
        tenant: &str,
        id: Uuid,
        entries: &[&OutboxRow],
        quarantine: bool,
        user: Option<UserAccessRow>,
    ) -> Result<(), ProjectorError> {
        let sequence = entries
            .iter()
            .map(|row| row.sequence as u64)
            .max()
            .unwrap_or(0);
        let key = access::user_key(tenant, &id);
        let Some(row) = user else {
            self.bucket.delete(&key).await.map_err(nats)?;
            return Ok(());
        };
        let mut state = user_state(row, sequence, OffsetDateTime::now_utc());
        if quarantine && self.store.quarantine_concerns_user(tenant, id).await? {
            error!(tenant, user.id = %id, "access state withheld: a quarantined event concerns this user; denied until resolved");
            state = withheld(state, "quarantined");
        }
        let mut bytes = serde_json::to_vec(&state).unwrap_or_default();
        if bytes.len() + HEADER_ROOM > self.max_payload {
            // Never a stall: the user is denied, loudly, and every other key goes on.
            error!(tenant, user.id = %id, bytes = bytes.len(), max_payload = self.max_payload,
                "access state larger than NATS's max_payload; withheld (the user is denied)");
            bytes = serde_json::to_vec(&withheld(state, "oversize")).unwrap_or_default();
        }
        self.bucket.put(&key, bytes.into()).await.map_err(nats)?;
        Ok(())
    }

    async fn publish_group(
        &self,
        tenant: &str,
        id: Uuid,
        entries: &[&OutboxRow],
    ) -> Result<(), ProjectorError> {
        let sequence = entries
            .iter()
            .map(|row| row.sequence as u64)
            .max()
            .unwrap_or(0);
        let key = access::group_key(tenant, &id);
        match self.store.group(tenant, id).await? {
            Some(row) => {
                let state = GroupAccess {
                    schema: access::GROUP_SCHEMA.into(),
                    tenant: row.tenant,
                    id: row.id,
                    display_name: row.display_name,
                    external_id: row.external_id,
                    sequence,
                };
                self.bucket
                    .put(&key, serde_json::to_vec(&state).unwrap_or_default().into())
                    .await
                    .map_err(nats)?;
            }
            None => self.bucket.delete(&key).await.map_err(nats)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_store::access::UserAccessRow;
    use rollcall_store::user::UserRow;
    use sqlx::types::Json;
    use time::Duration;

    fn row(
        not_before: Option<OffsetDateTime>,
        revoked: Vec<(String, OffsetDateTime)>,
    ) -> UserAccessRow {
        let now = OffsetDateTime::now_utc();
        UserAccessRow {
            user: UserRow {
                tenant: "t".into(),
                id: Uuid::nil(),
                user_name: "ada".into(),
                external_id: None,
                active: true,
                attributes: Json(serde_json::Map::new()),
                version: 1,
                created_at: now,
                updated_at: now,
            },
            not_before,
            revoked_sessions: revoked,
            groups: vec![Uuid::nil()],
        }
    }

    #[test]
    fn revocations_that_can_no_longer_matter_are_not_published() {
        let now = OffsetDateTime::now_utc();
        let not_before = now - Duration::hours(1);
        let state = user_state(
            row(
                Some(not_before),
                vec![
                    ("expired".into(), now - Duration::days(8)),
                    ("covered".into(), not_before - Duration::minutes(1)),
                    ("live".into(), now - Duration::minutes(5)),
                ],
            ),
            7,
            now,
        );
        let kept: Vec<&str> = state
            .revoked_sessions
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(kept, ["live"]);
        assert_eq!(state.not_before, Some(not_before));
    }

    #[test]
    fn a_withheld_state_denies_and_says_why() {
        let now = OffsetDateTime::now_utc();
        let state = withheld(user_state(row(None, vec![]), 7, now), "oversize");
        assert!(!state.active);
        assert!(state.groups.is_empty());
        assert_eq!(state.withheld.as_deref(), Some("oversize"));
        assert_eq!(state.sequence, 7);
    }
}
