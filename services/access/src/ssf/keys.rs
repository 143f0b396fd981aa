//! The transmitter's signing keys: RS256 (RSA 2048), one key set for the whole installation so
//! that every replica signs with the same keys and publishes the same JWKS.
//!
//! - Generated once, by the first process that needs it: created only if absent in the secrets
//!   bucket `<namespace>_secrets` (key `ssf-keys`), sealed under the installation's KEK like
//!   the session keys ([`crate::keys::seal`]).
//! - [`SigningKeys::rotate`] adds a key that is published at once and signs after a delay
//!   (by default [`DEFAULT_ACTIVATION`], longer than the JWKS may be cached and than replicas
//!   take to follow), so that no receiver meets a `kid` it cannot fetch yet; older keys stay in
//!   the JWKS for [`RETIRED_PUBLISHED`] after they stop signing (SETs are signed when
//!   delivered, so nothing signed by them is still on its way after that) and are dropped at a
//!   later rotation.
//! - Every replica follows the bucket and signs with a rotated set moments after it is stored.
//!
//! Private keys never appear in logs, errors or `Debug` output.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
use base64::Engine;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rollcall_eventlog::Namespace;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tracing::{error, info, instrument, warn};

use crate::keys::{open, seal, secrets_bucket, Kek, KeysError};

/// The key of the SSF key set in the secrets bucket.
pub const SSF_KEYS: &str = "ssf-keys";
/// The schema of the sealed key set.
const SCHEMA: &str = "rollcall.ssf-keys.v1";
/// RSA modulus size (the CAEP interoperability profile asks for at least 2048 bits).
const BITS: usize = 2048;
/// How long after a rotation the new key signs, unless told otherwise: the JWKS is cacheable
/// for 60 s.
pub const DEFAULT_ACTIVATION: Duration = Duration::from_secs(120);
/// How long a key that stopped signing stays in the JWKS.
pub const RETIRED_PUBLISHED: Duration = Duration::from_secs(24 * 3600);
const ATTEMPTS: usize = 8;

fn nats(error: impl std::fmt::Display) -> KeysError {
    KeysError::Nats(error.to_string())
}

/// One key as sealed. `Debug` leaves the private key out.
#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// Base64 of the PKCS#1 DER private key.
    private: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// From when it signs (until a later key does); published in the JWKS from its creation.
    #[serde(with = "time::serde::rfc3339")]
    signs_from: OffsetDateTime,
}

/// The key set as sealed.
#[derive(Clone, Serialize, Deserialize)]
struct KeySet {
    schema: String,
    keys: Vec<StoredKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.kid))
            .finish()
    }
}

fn generate(now: OffsetDateTime, signs_from: OffsetDateTime) -> Result<StoredKey, KeysError> {
    let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, BITS)
        .map_err(|e| KeysError::Kek(format!("generating an RSA key: {e}")))?;
    let der = key
        .to_pkcs1_der()
        .map_err(|e| KeysError::Corrupt(format!("encoding an RSA key: {e}")))?;
    let mut tag = [0u8; 6];
    getrandom::fill(&mut tag).map_err(|e| KeysError::Kek(format!("no randomness: {e}")))?;
    Ok(StoredKey {
        kid: format!(
            "ssf-{:04}{:02}{:02}-{}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            hex::encode(tag)
        ),
        private: BASE64.encode(der.as_bytes()),
        created_at: now,
        signs_from,
    })
}

impl KeySet {
    fn generate(now: OffsetDateTime) -> Result<Self, KeysError> {
        Ok(Self {
            schema: SCHEMA.into(),
            keys: vec![generate(now, now)?],
        })
    }

    fn seal(&self, kek: &Kek, namespace: &Namespace) -> Result<Vec<u8>, KeysError> {
        let plaintext = serde_json::to_vec(self).map_err(|e| KeysError::Corrupt(e.to_string()))?;
        seal(kek, namespace, SSF_KEYS, &plaintext)
    }

    fn open(kek: &Kek, namespace: &Namespace, sealed: &[u8]) -> Result<Self, KeysError> {
        let plaintext = open(kek, namespace, SSF_KEYS, sealed)?;
        let set: Self = serde_json::from_slice(&plaintext)
            .map_err(|_| KeysError::Corrupt(format!("{SSF_KEYS}: not a key set")))?;
        if set.schema != SCHEMA || set.keys.is_empty() {
            return Err(KeysError::Corrupt(format!(
                "{SSF_KEYS}: unknown schema {:?} or no key",
                set.schema
            )));
        }
        Ok(set)
    }

    /// A new key, published now, signs from `now + activate_in` (so that receivers' cached
    /// JWKS and every replica have it first); keys that stopped signing more than
    /// [`RETIRED_PUBLISHED`] ago are dropped.
    fn rotated(&self, now: OffsetDateTime, activate_in: Duration) -> Result<Self, KeysError> {
        let cutoff = now - RETIRED_PUBLISHED;
        let mut keys: Vec<StoredKey> = Vec::new();
        for (index, key) in self.keys.iter().enumerate() {
            // A key stopped signing when the next one started.
            let retired = self.keys.get(index + 1).map(|next| next.signs_from);
            if retired.is_none_or(|at| at > cutoff) {
                keys.push(key.clone());
            }
        }
        let signs_from = time::Duration::try_from(activate_in)
            .ok()
            .and_then(|delay| now.checked_add(delay))
            .ok_or_else(|| {
                KeysError::Kek(format!("an activation {activate_in:?} away is too far"))
            })?;
        keys.push(generate(now, signs_from)?);
        Ok(Self {
            schema: SCHEMA.into(),
            keys,
        })
    }

    fn signer(&self) -> Result<Signer, KeysError> {
        let mut jwks = Vec::new();
        let mut keys = Vec::new();
        for key in &self.keys {
            let der = BASE64.decode(&key.private).map_err(|_| {
                KeysError::Corrupt(format!("{SSF_KEYS}: key {} is not base64", key.kid))
            })?;
            let private = RsaPrivateKey::from_pkcs1_der(&der).map_err(|_| {
                KeysError::Corrupt(format!("{SSF_KEYS}: key {} is not RSA", key.kid))
            })?;
            jwks.push(json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": key.kid,
                "n": BASE64URL.encode(private.n().to_bytes_be()),
                "e": BASE64URL.encode(private.e().to_bytes_be()),
            }));
            keys.push((
                key.kid.clone(),
                key.signs_from,
                EncodingKey::from_rsa_der(&der),
            ));
        }
        if keys.is_empty() {
            return Err(KeysError::Corrupt(format!("{SSF_KEYS}: no key")));
        }
        Ok(Signer {
            keys,
            jwks: json!({ "keys": jwks }),
        })
    }
}

/// The keys that sign (each from its instant on) and the JWKS to publish.
pub struct Signer {
    /// Oldest first: (kid, signs from, key).
    keys: Vec<(String, OffsetDateTime, EncodingKey)>,
    jwks: Value,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid()).finish()
    }
}

impl Signer {
    /// The key that signs now: the newest whose instant has come (the oldest before any has).
    fn now(&self) -> Option<&(String, OffsetDateTime, EncodingKey)> {
        let now = OffsetDateTime::now_utc();
        self.keys
            .iter()
            .rev()
            .find(|(_, from, _)| *from <= now)
            .or(self.keys.first())
    }

    /// The id of the key that signs now.
    pub fn kid(&self) -> &str {
        self.now().map_or("", |(kid, ..)| kid)
    }

    /// The public keys, as a JWKS document.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// Signs `claims` as a SET: RS256, `typ` `secevent+jwt`, the signing key's `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let (kid, _, key) = self.now().ok_or("no signing key")?;
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("secevent+jwt".into());
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, claims, key).map_err(|e| e.to_string())
    }
}

/// The installation's SSF keys, as this process signs with them now.
#[derive(Clone)]
pub struct SigningKeys {
    bucket: kv::Store,
    namespace: Namespace,
    kek: Kek,
    current: Arc<RwLock<(u64, Arc<Signer>)>>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("bucket", &secrets_bucket(&self.namespace))
            .field("signing", &self.signer().kid())
            .finish()
    }
}

impl SigningKeys {
    /// Opens the secrets bucket and loads the key set, generating it if there is none.
    #[instrument(skip_all, err)]
    pub async fn load(
        client: &async_nats::Client,
        namespace: &Namespace,
        kek: Kek,
    ) -> Result<Self, KeysError> {
        let bucket = crate::keys::open_secrets(client, namespace).await?;
        for _ in 0..ATTEMPTS {
            if let Some((set, revision)) = read(&bucket, &kek, namespace).await? {
                let signer = set.signer()?;
                return Ok(Self {
                    bucket,
                    namespace: namespace.clone(),
                    kek,
                    current: Arc::new(RwLock::new((revision, Arc::new(signer)))),
                });
            }
            let set = KeySet::generate(OffsetDateTime::now_utc())?;
            match bucket
                .create(SSF_KEYS, set.seal(&kek, namespace)?.into())
                .await
            {
                Ok(_) => {
                    info!(bucket = %secrets_bucket(namespace), "generated the Shared Signals signing key")
                }
                Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {}
                Err(error) => return Err(nats(error)),
            }
        }
        Err(KeysError::Contended)
    }

    /// The key that signs now.
    pub fn signer(&self) -> Arc<Signer> {
        self.current
            .read()
            .map(|current| current.1.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().1.clone())
    }

    /// Adds a key, published at once, that signs after `activate_in`; returns its id.
    /// Compare-and-set on the bucket's revision, so a concurrent rotation is redone on top of
    /// the other.
    #[instrument(skip_all, err)]
    pub async fn rotate(&self, activate_in: Duration) -> Result<String, KeysError> {
        for _ in 0..ATTEMPTS {
            let (set, revision) = read(&self.bucket, &self.kek, &self.namespace)
                .await?
                .ok_or_else(|| KeysError::Absent(secrets_bucket(&self.namespace)))?;
            let rotated = set.rotated(OffsetDateTime::now_utc(), activate_in)?;
            let signer = rotated.signer()?;
            match self
                .bucket
                .update(
                    SSF_KEYS,
                    rotated.seal(&self.kek, &self.namespace)?.into(),
                    revision,
                )
                .await
            {
                Ok(revision) => {
                    let kid = rotated
                        .keys
                        .last()
                        .map(|k| k.kid.clone())
                        .unwrap_or_default();
                    self.replace(revision, signer);
                    info!(kid = %kid, keys = rotated.keys.len(), "Shared Signals signing key rotated");
                    return Ok(kid);
                }
                Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(nats(error)),
            }
        }
        Err(KeysError::Contended)
    }

    fn replace(&self, revision: u64, signer: Signer) {
        if let Ok(mut current) = self.current.write() {
            if revision > current.0 {
                *current = (revision, Arc::new(signer));
            }
        }
    }

    /// Follows rotations stored by any process until dropped.
    pub async fn follow(self) {
        loop {
            if let Err(error) = self.watch().await {
                warn!(error = %error, "following the Shared Signals keys failed; watching again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn watch(&self) -> Result<(), KeysError> {
        let mut entries = self
            .bucket
            .watch_with_history(SSF_KEYS)
            .await
            .map_err(nats)?;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(nats)?;
            if entry.operation != Operation::Put {
                continue;
            }
            match KeySet::open(&self.kek, &self.namespace, &entry.value)
                .and_then(|set| set.signer())
            {
                Ok(signer) => self.replace(entry.revision, signer),
                Err(error) => {
                    error!(revision = entry.revision, error = %error, "the Shared Signals keys changed but do not open; the keys in force stay");
                }
            }
        }
        Err(KeysError::Nats(
            "the Shared Signals keys watch ended".into(),
        ))
    }
}

async fn read(
    bucket: &kv::Store,
    kek: &Kek,
    namespace: &Namespace,
) -> Result<Option<(KeySet, u64)>, KeysError> {
    match bucket.entry(SSF_KEYS).await.map_err(nats)? {
        Some(entry) if entry.operation == Operation::Put => Ok(Some((
            KeySet::open(kek, namespace, &entry.value)?,
            entry.revision,
        ))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_publishes_the_new_key_first_then_signs_with_it_and_drops_the_old_one_later() {
        let start = OffsetDateTime::now_utc();
        let set = KeySet::generate(start).expect("generated");
        let first = set.signer().expect("signs").kid().to_owned();
        // Published now, signing in a minute: the old key still signs.
        let pending = set
            .rotated(start, Duration::from_secs(60))
            .expect("rotated");
        let signer = pending.signer().expect("signs");
        assert_eq!(signer.kid(), first);
        let published: Vec<&str> = signer.jwks()["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|key| key["kid"].as_str())
            .collect();
        let second = pending.keys[1].kid.clone();
        assert_eq!(published, [first.as_str(), second.as_str()]);
        // Signing at once.
        let rotated = set.rotated(start, Duration::ZERO).expect("rotated");
        assert_ne!(rotated.signer().expect("signs").kid(), first);
        // A day after it stopped signing, the next rotation drops the old key.
        let later = rotated
            .rotated(
                start + RETIRED_PUBLISHED + time::Duration::seconds(1),
                Duration::ZERO,
            )
            .expect("rotated");
        assert_eq!(later.keys.len(), 2);
        assert!(later.keys.iter().all(|key| key.kid != first));
        assert!(!format!("{later:?}").contains(&later.keys[0].private));
    }
}
