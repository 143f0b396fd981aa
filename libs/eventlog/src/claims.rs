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
    },
}

/// The claims bucket of a namespace.
#[derive(Debug, Clone)]
pub struct Claims {
    store: Store,
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
    /// Opens the namespace's claims bucket, creating it if missing.
    ///
    pub async fn open(jetstream: &Context, namespace: &Namespace) -> Result<Self, LoadError> {
        let bucket = namespace.claims_bucket();
        let store = crate::kv::open_bucket(
            jetstream,
            &bucket,
            "Rollcall uniqueness claims (userName, group displayName)",
        )
        .await?;
        Ok(Self { store })
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
        match self.store.create(&key, holder.to_string().into()).await {
            Ok(_) => return Ok(Claim::Acquired),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(error) => return Err(nats(error)),
        }
        match self.store.entry(&key).await.map_err(nats)? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let current = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|v| Uuid::parse_str(v).ok());
                match current {
                    Some(current) if current == holder => Ok(Claim::AlreadyHeld),
                    Some(current) => Ok(Claim::HeldBy {
                        holder: current,
                        revision: entry.revision,
                        claimed_at: entry.created,
                    }),
                    None => Ok(Claim::HeldBy {
                        holder: Uuid::nil(),
                        revision: entry.revision,
                        claimed_at: entry.created,
                    }),
                }
            }
            // Released between our create and our read: try once more.
            _ => match self.store.create(&key, holder.to_string().into()).await {
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
        match self
            .store
            .update(&key, holder.to_string().into(), revision)
            .await
        {
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
                && entry.value.as_ref() == holder.to_string().as_bytes();
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
