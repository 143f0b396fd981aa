//! Set-wide rules enforced atomically through NATS: a claim on a value (a userName, a group
//! displayName) is a key-value entry created only if absent, holding the id of the aggregate
//! that owns the value. Values are compared without case (Unicode full case folding,
//! [`rollcall_scim::case::fold`], the same as every lookup) and stored hashed (keys must be
//! subject tokens, and no personal data belongs in key names).
//!
//! Claims taken before the folding existed are keyed by `str::to_lowercase` ([`legacy_key`]);
//! for most names the two keys are one. The SCIM API claims the folded key of every existing
//! resource whose keys differ when it starts, and [`Claims::release`] gives back both.

use async_nats::jetstream::kv::{self, Store};

use async_nats::jetstream::Context;
use sha2::{Digest, Sha256};
use tracing::instrument;
use uuid::Uuid;

use crate::log::LoadError;
use crate::namespace::Namespace;

/// The state of a claim after trying to take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The value was free and is now held by the caller.
    Acquired,
    /// The caller held it already.
    AlreadyHeld,
    /// Another aggregate holds it (with the entry's revision, to take over a stale claim).
    HeldBy {
        /// The holder's id.
        holder: Uuid,
        /// The entry's revision.
        revision: u64,
        /// When the holder claimed it.
        claimed_at: time::OffsetDateTime,
        /// The process that claimed it (claims taken before processes were named have none).
        writer: Option<Uuid>,
    },
}

/// How long a process that stopped saying it is alive counts as alive.
pub const WRITER_LEASE: std::time::Duration = std::time::Duration::from_secs(3);

/// The claims bucket of a namespace, and this process's name in it: each claim records the
/// process that took it, and each process says it is alive every second in the writers
/// bucket (its entry expires [`WRITER_LEASE`] after the last), so that a claim whose process
/// died is known at once.
#[derive(Debug, Clone)]
pub struct Claims {
    store: Store,
    writers: Store,
    writer: Uuid,
    writing: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Uuid, usize>>>,
    _heartbeat: std::sync::Arc<HeartbeatTask>,
}

/// A write of this process in flight for a holder (see [`Claims::writing`]); ends when dropped.
#[derive(Debug)]
pub struct Writing {
    claims: Claims,
    holder: Uuid,
}

impl Drop for Writing {
    fn drop(&mut self) {
        let mut writing = self.claims.writing_set();
        if let Some(count) = writing.get_mut(&self.holder) {
            *count -= 1;
            if *count == 0 {
                writing.remove(&self.holder);
            }
        }
    }
}

#[derive(Debug)]
struct HeartbeatTask(tokio::task::JoinHandle<()>);

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A claim's value: `<holder>` (before processes were named) or `<holder> <writer>`.
fn parse_value(value: &[u8]) -> (Option<Uuid>, Option<Uuid>) {
    let text = std::str::from_utf8(value).unwrap_or_default();
    let mut parts = text.split(' ');
    let holder = parts.next().and_then(|v| Uuid::parse_str(v).ok());
    let writer = parts.next().and_then(|v| Uuid::parse_str(v).ok());
    (holder, writer)
}

fn nats<E: std::fmt::Display>(error: E) -> LoadError {
    LoadError::Nats(error.to_string())
}

/// The key of a claim: tenant, kind and a hash of the case-folded value.
pub fn key(tenant: &str, kind: &str, value: &str) -> String {
    hashed(tenant, kind, &rollcall_scim::case::fold(value))
}

/// The key a claim of `value` had before claims were case-folded (`str::to_lowercase`).
pub fn legacy_key(tenant: &str, kind: &str, value: &str) -> String {
    hashed(tenant, kind, &value.to_lowercase())
}

fn hashed(tenant: &str, kind: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("{tenant}.{kind}.{}", hex::encode(digest))
}

impl Claims {
    /// Opens the namespace's claims bucket and writers bucket, creating them if missing, kept
    /// by the namespace's replica count.
    pub async fn open(jetstream: &Context, namespace: &Namespace) -> Result<Self, LoadError> {
        let bucket = namespace.claims_bucket();
        let store = crate::kv::open_bucket(
            jetstream,
            &bucket,
            "Rollcall uniqueness claims (userName, group displayName)",
            namespace.replicas(),
        )
        .await?;
        let writers = crate::kv::open_expiring_bucket(
            jetstream,
            &namespace.writers_bucket(),
            "Rollcall processes that write claims, alive while their entry is",
            WRITER_LEASE,
            namespace.replicas(),
        )
        .await?;
        let writer = Uuid::new_v4();
        // On a cluster, a bucket just created or given more replicas may refuse writes for a
        // moment (no server yet answers for its subjects): try for a few seconds.
        let started = std::time::Instant::now();
        while let Err(error) = writers.put(writer.to_string(), Default::default()).await {
            if started.elapsed() > std::time::Duration::from_secs(5) {
                return Err(nats(error));
            }
            tracing::debug!(error = %error, "the writers bucket does not take writes yet; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let beating = writers.clone();
        let heartbeat = tokio::spawn(async move {
            let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                interval.tick().await;
                if let Err(error) = beating.put(writer.to_string(), Default::default()).await {
                    tracing::warn!(error = %error, "saying this claim writer is alive failed");
                }
            }
        });
        Ok(Self {
            store,
            writers,
            writer,
            writing: Default::default(),
            _heartbeat: std::sync::Arc::new(HeartbeatTask(heartbeat)),
        })
    }

    fn writing_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Uuid, usize>> {
        self.writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks a write of this process for `holder` as in flight, from before it claims until
    /// the returned guard is dropped (after its append, or its failure).
    pub fn writing(&self, holder: Uuid) -> Writing {
        *self.writing_set().entry(holder).or_default() += 1;
        Writing {
            claims: self.clone(),
            holder,
        }
    }

    /// Whether a write of this process for `holder` is in flight.
    pub fn is_writing(&self, holder: Uuid) -> bool {
        self.writing_set().contains_key(&holder)
    }

    /// This process's name in claims.
    pub fn writer(&self) -> Uuid {
        self.writer
    }

    /// Whether the process named `writer` said it is alive within [`WRITER_LEASE`].
    pub async fn writer_alive(&self, writer: Uuid) -> Result<bool, LoadError> {
        Ok(self
            .writers
            .entry(writer.to_string())
            .await
            .map_err(nats)?
            // The bucket's max_age removes an entry WRITER_LEASE after its last put; no clock
            // of this host is compared with the server's.
            .is_some_and(|entry| entry.operation == kv::Operation::Put))
    }

    fn value(&self, holder: Uuid) -> bytes::Bytes {
        format!("{holder} {}", self.writer).into()
    }

    /// Tries to claim `value` of `kind` in `tenant` for `holder`.
    #[instrument(skip_all, fields(tenant, kind, holder = %holder), err)]
    pub async fn claim(
        &self,
        tenant: &str,
        kind: &str,
        value: &str,
        holder: Uuid,
    ) -> Result<Claim, LoadError> {
        let key = key(tenant, kind, value);
        match self.store.create(&key, self.value(holder)).await {
            Ok(_) => return Ok(Claim::Acquired),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(error) => return Err(nats(error)),
        }
        match self.store.entry(&key).await.map_err(nats)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let (current, writer) = parse_value(&entry.value);
                match current {
                    Some(current) if current == holder => Ok(Claim::AlreadyHeld),
                    current => Ok(Claim::HeldBy {
                        holder: current.unwrap_or_default(),
                        revision: entry.revision,
                        claimed_at: entry.created,
                        writer,
                    }),
                }
            }
            // Released between our create and our read: try once more.
            _ => match self.store.create(&key, self.value(holder)).await {
                Ok(_) => Ok(Claim::Acquired),
                Err(error) => Err(nats(error)),
            },
        }
    }

    /// Takes over a claim whose holder no longer exists, if nobody changed it since `revision`.
    pub async fn take_over(
        &self,
        tenant: &str,
        kind: &str,
        value: &str,
        holder: Uuid,
        revision: u64,
    ) -> Result<bool, LoadError> {
        let key = key(tenant, kind, value);
        match self.store.update(&key, self.value(holder), revision).await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(error) => Err(nats(error)),
        }
    }

    /// Releases a claim, if `holder` holds it (under its key and under its legacy key).
    #[instrument(skip_all, fields(tenant, kind, holder = %holder), err)]
    pub async fn release(
        &self,
        tenant: &str,
        kind: &str,
        value: &str,
        holder: Uuid,
    ) -> Result<(), LoadError> {
        let (current, legacy) = (key(tenant, kind, value), legacy_key(tenant, kind, value));
        self.release_key(&current, holder).await?;
        if legacy != current {
            self.release_key(&legacy, holder).await?;
        }
        Ok(())
    }

    async fn release_key(&self, key: &str, holder: Uuid) -> Result<(), LoadError> {
        if let Some(entry) = self.store.entry(key).await.map_err(nats)? {
            let held = entry.operation == kv::Operation::Put
                && parse_value(&entry.value).0 == Some(holder);
            if held {
                // A concurrent claimer between entry() and this delete makes the revision wrong:
                // then the claim is theirs, and not ours to release.
                let _ = self
                    .store
                    .delete_expect_revision(key, Some(entry.revision))
                    .await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_names_its_holder_and_its_process_and_older_claims_only_their_holder() {
        let (holder, writer) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(
            parse_value(format!("{holder} {writer}").as_bytes()),
            (Some(holder), Some(writer))
        );
        assert_eq!(
            parse_value(holder.to_string().as_bytes()),
            (Some(holder), None)
        );
        assert_eq!(parse_value(b"not an id"), (None, None));
    }

    #[test]
    fn keys_fold_case_fully_as_lookups_do() {
        assert_eq!(
            key("t", "userName", "straße@x.test"),
            key("t", "userName", "STRASSE@x.test")
        );
        assert_eq!(
            key("t", "userName", "İlker@x.test"),
            key("t", "userName", "İLKER@X.TEST")
        );
        assert_eq!(
            key("t", "displayName", "ΟΔΟΣ"),
            key("t", "displayName", "οδοσ")
        );
        // The keys of before told these apart; for plain names both keys are one.
        assert_ne!(
            legacy_key("t", "userName", "straße@x.test"),
            legacy_key("t", "userName", "STRASSE@x.test")
        );
        assert_eq!(
            legacy_key("t", "userName", "Ada@x.test"),
            key("t", "userName", "Ada@x.test")
        );
    }

    #[test]
    fn keys_ignore_case_and_hide_the_value() {
        assert_eq!(
            key("t", "user", "Ada@Example.com"),
            key("t", "user", "ada@example.com")
        );
        assert!(!key("t", "user", "ada@example.com").contains("ada"));
    }
}
