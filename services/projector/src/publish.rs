//! Publishes the access outbox to NATS: each affected user's and group's current access state
//! to the access bucket, each revocation to its subject, then the checkpoint key. Puts are of
//! whole current states, so publishing an entry twice is harmless; entries are removed only
//! once published.

use std::collections::BTreeSet;

use async_nats::jetstream::kv::Store as Bucket;
use bytes::Bytes;
use rollcall_eventlog::access::{self, AccessCheckpoint, GroupAccess, RevokedSession, UserAccess};
use rollcall_eventlog::{LoadError, Namespace};
use rollcall_store::Store;
use serde_json::Value;
use tracing::{instrument, warn};
use uuid::Uuid;

use crate::ProjectorError;

/// How many outbox entries one round publishes.
const ROUND: usize = 1_000;

/// The access publisher of one namespace.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: async_nats::Client,
    bucket: Bucket,
    namespace: Namespace,
    store: Store,
}

fn nats<E: std::fmt::Display>(error: E) -> ProjectorError {
    ProjectorError::Log(LoadError::Nats(error.to_string()))
}

fn user_state(row: rollcall_store::access::UserAccessRow, sequence: u64) -> UserAccess {
    let attributes = &row.user.attributes.0;
    let mut emails: Vec<(bool, String)> = attributes
        .get("emails")
        .and_then(Value::as_array)
        .map(|emails| {
            emails
                .iter()
                .filter_map(|e| {
                    Some((
                        e.get("primary") == Some(&Value::Bool(true)),
                        e.get("value")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    emails.sort_by_key(|(primary, _)| !primary);
    UserAccess {
        schema: access::USER_SCHEMA.into(),
        tenant: row.user.tenant.clone(),
        id: row.user.id,
        user_name: row.user.user_name.clone(),
        external_id: row.user.external_id.clone(),
        emails: emails.into_iter().map(|(_, email)| email).collect(),
        active: row.user.active,
        not_before: row.not_before,
        revoked_sessions: row
            .revoked_sessions
            .into_iter()
            .map(|(id, at)| RevokedSession { id, at })
            .collect(),
        groups: row.groups,
        sequence,
    }
}

impl Publisher {
    /// Opens the namespace's access bucket, creating it if missing.
    pub async fn open(
        client: async_nats::Client,
        namespace: Namespace,
        store: Store,
    ) -> Result<Self, ProjectorError> {
        let jetstream = async_nats::jetstream::new(client.clone());
        let bucket = rollcall_eventlog::access::open_bucket(&jetstream, &namespace).await?;
        Ok(Self {
            client,
            bucket,
            namespace,
            store,
        })
    }

    /// Publishes everything in the outbox; returns the last event sequence published, if any.
    #[instrument(skip_all, err(level = "warn"))]
    pub async fn drain(&self) -> Result<Option<u64>, ProjectorError> {
        let mut published = None;
        loop {
            let rows = self.store.outbox(ROUND).await?;
            let Some(last) = rows.last() else {
                return Ok(published);
            };
            let (last_id, sequence) = (last.id, last.sequence as u64);
            let mut users = BTreeSet::new();
            let mut groups = BTreeSet::new();
            for row in &rows {
                match row.kind.as_str() {
                    "user" => {
                        users.insert((row.tenant.clone(), row.subject_id));
                    }
                    "group" => {
                        groups.insert((row.tenant.clone(), row.subject_id));
                    }
                    _ => {
                        let payload = row
                            .payload
                            .as_ref()
                            .map(|p| p.0.to_string())
                            .unwrap_or_default();
                        let subject = self
                            .namespace
                            .revocation_subject(&row.tenant, &row.subject_id);
                        self.client
                            .publish(subject, Bytes::from(payload))
                            .await
                            .map_err(nats)?;
                    }
                }
            }
            for (tenant, id) in users {
                self.publish_user(&tenant, id, sequence).await?;
            }
            for (tenant, id) in groups {
                self.publish_group(&tenant, id, sequence).await?;
            }
            let checkpoint = serde_json::to_vec(&AccessCheckpoint { sequence }).unwrap_or_default();
            self.bucket
                .put(access::CHECKPOINT_KEY, checkpoint.into())
                .await
                .map_err(nats)?;
            self.store.clear_outbox(last_id).await?;
            published = Some(sequence);
        }
    }

    async fn publish_user(
        &self,
        tenant: &str,
        id: Uuid,
        sequence: u64,
    ) -> Result<(), ProjectorError> {
        let key = access::user_key(tenant, &id);
        match self.store.user_access(tenant, id).await? {
            Some(row) => {
                let state = serde_json::to_vec(&user_state(row, sequence)).unwrap_or_default();
                self.bucket.put(&key, state.into()).await.map_err(nats)?;
            }
            None => self.bucket.delete(&key).await.map_err(nats)?,
        }
        Ok(())
    }

    async fn publish_group(
        &self,
        tenant: &str,
        id: Uuid,
        sequence: u64,
    ) -> Result<(), ProjectorError> {
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

    /// Drains, logging a failure (the entries stay for the next round).
    pub async fn drain_logged(&self) {
        if let Err(error) = self.drain().await {
            warn!(error = %error, "publishing access state failed; will retry");
        }
    }
}
