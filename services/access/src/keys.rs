//! The installation's session keys: one key set that every access replica of a namespace
//! reads, so that a session issued by one replica is valid at every other.
//!
//! - Configured keys (`ROLLCALL_SESSION_KEYS`) win; this module is for installations without
//!   them.
//! - The key set is generated once, by whichever process starts first: it is created only if
//!   absent in the key-value bucket `<namespace>_secrets` (key `session-keys`), and every
//!   process uses the one that was stored.
//! - It is stored sealed (XChaCha20-Poly1305; associated data naming the format, namespace and
//!   key name) under a key-encryption key (KEK): `ROLLCALL_KEK` / `ROLLCALL_KEK_FILE`, or,
//!   when neither is set, one generated once and kept in PostgreSQL (`installation_secret`).
//!   Neither NATS nor PostgreSQL alone reveals the session keys. A set that does not open
//!   under the KEK is an error; it is never overwritten.
//! - Rotation ([`InstallationKeys::rotate`]) adds a key that signs from a later instant (so
//!   that it reaches every replica first), keeps older keys verifying for as long as a session
//!   they signed can live ([`MAX_SESSION_LIFETIME`]) and drops them at a later rotation. It
//!   updates the set with compare-and-set on the bucket revision. Every replica follows the
//!   bucket ([`InstallationKeys::follow`]) and swaps its keys without a restart.
//!
//! Key material never appears in logs, errors or `Debug` output.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::StreamExt;
use rollcall_eventlog::access::MAX_SESSION_LIFETIME;
use rollcall_eventlog::Namespace;
use rollcall_store::Store;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{error, info, instrument, warn};

use crate::session::{KeyMaterial, SessionClaims, SessionError, SessionKeys};

/// The key of the session key set in the secrets bucket.
pub const SESSION_KEYS: &str = "session-keys";
/// The name of the KEK in PostgreSQL's `installation_secret`.
pub const KEK_SECRET: &str = "kek";
/// The format of a sealed value.
pub const SEALED_FORMAT: &str = "rollcall.sealed.v1";
/// The schema of the session key set (the sealed plaintext).
pub const KEY_SET_SCHEMA: &str = "rollcall.session-keys.v1";
/// How long after a rotation the new key starts signing, unless told otherwise: long enough
/// for every replica to hold it before any replica signs with it.
pub const DEFAULT_ACTIVATION_DELAY: Duration = Duration::from_secs(60);
/// Kept beyond [`MAX_SESSION_LIFETIME`] before a retired key is dropped (clock differences,
/// verification leeway).
const RETENTION_MARGIN: Duration = Duration::from_secs(3600);
/// Compare-and-set attempts of one rotation.
const ROTATION_ATTEMPTS: usize = 8;
const AEAD: &str = "XChaCha20-Poly1305";

/// The installation's secrets bucket: `<namespace>_secrets`.
pub fn secrets_bucket(namespace: &Namespace) -> String {
    format!("{}_secrets", namespace.as_str().replace('-', "_"))
}

/// The installation's secrets bucket, created where it is missing: history 1, file storage,
/// replicas as the installation's other buckets.
pub async fn open_secrets(
    client: &async_nats::Client,
    namespace: &Namespace,
) -> Result<kv::Store, KeysError> {
    let jetstream = async_nats::jetstream::new(client.clone());
    rollcall_eventlog::kv::open_bucket(
        &jetstream,
        &secrets_bucket(namespace),
        "Rollcall installation secrets, sealed (rollcall.sealed.v1)",
        namespace.replicas(),
    )
    .await
    .map_err(nats)
}

/// Why session keys could not be loaded, rotated or listed. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The KEK configuration is unusable.
    #[error("{0}")]
    Kek(String),
    /// The stored set was sealed under another KEK.
    #[error("the session key set in NATS bucket {bucket} was sealed under KEK {sealed_under}, but the KEK in use ({origin}) is {in_use}: give the KEK it was sealed with (ROLLCALL_KEK or ROLLCALL_KEK_FILE, or unset both to use the one kept in PostgreSQL); nothing was changed")]
    WrongKek {
        /// The bucket.
        bucket: String,
        /// Fingerprint of the KEK the set was sealed under.
        sealed_under: String,
        /// Fingerprint of the KEK in use.
        in_use: String,
        /// Where the KEK in use came from.
        origin: String,
    },
    /// The sealed value does not open: changed, or moved from another namespace or key.
    #[error("the sealed {name} in NATS bucket {bucket} does not open under this KEK: it was changed, or it belongs to another namespace; nothing was changed")]
    Unsealable {
        /// The bucket.
        bucket: String,
        /// The key.
        name: String,
    },
    /// A stored value is not what Rollcall writes.
    #[error("unreadable {0}")]
    Corrupt(String),
    /// There is no key set yet.
    #[error("no session key set in NATS bucket {0} yet: the access service generates it when it first starts")]
    Absent(String),
    /// A rotation kept losing the compare-and-set to other writers.
    #[error("the session key set kept changing under this rotation; try again")]
    Contended,
    /// NATS failed.
    #[error("NATS: {0}")]
    Nats(String),
    /// PostgreSQL failed.
    #[error("PostgreSQL: {0}")]
    Store(String),
}

fn nats(error: impl std::fmt::Display) -> KeysError {
    KeysError::Nats(error.to_string())
}

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

/// Where the key-encryption key comes from.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(id = "kek_source")]
pub struct KekConfig {
    /// Key-encryption key of the installation's session keys: base64 of 32 random bytes
    /// (`openssl rand -base64 32`). Kept nowhere by Rollcall. Without it (and without
    /// ROLLCALL_KEK_FILE), a KEK generated once is kept in PostgreSQL.
    #[arg(id = "kek", long = "kek", value_name = "BASE64", env = "ROLLCALL_KEK", hide_env_values = true, value_parser = secret)]
    pub kek: Option<SecretString>,
    /// A file holding the key-encryption key (base64 of 32 bytes), instead of ROLLCALL_KEK.
    #[arg(
        id = "kek_file",
        long = "kek-file",
        value_name = "PATH",
        env = "ROLLCALL_KEK_FILE",
        conflicts_with = "kek"
    )]
    pub kek_file: Option<PathBuf>,
    /// The KEK before a rotation (base64 of 32 bytes): users' data keys still wrapped under it
    /// open until `rollcall users rewrap-keys` has wrapped them under the current one.
    #[arg(id = "kek_previous", long = "kek-previous", value_name = "BASE64", env = "ROLLCALL_KEK_PREVIOUS", hide_env_values = true, value_parser = secret)]
    pub kek_previous: Option<SecretString>,
}

impl KekConfig {
    /// Whether a KEK is configured (then PostgreSQL is not needed for it).
    pub fn is_configured(&self) -> bool {
        self.kek.is_some() || self.kek_file.is_some()
    }

    /// The previous KEK, if one is given.
    pub fn previous(&self) -> Result<Option<Kek>, KeysError> {
        self.kek_previous
            .as_ref()
            .map(|text| Kek::from_base64(text.expose_secret(), "ROLLCALL_KEK_PREVIOUS".into()))
            .transpose()
    }

    fn configured(&self) -> Result<Option<Kek>, KeysError> {
        match (&self.kek, &self.kek_file) {
            (Some(_), Some(_)) => Err(KeysError::Kek(
                "set ROLLCALL_KEK or ROLLCALL_KEK_FILE, not both".into(),
            )),
            (Some(text), None) => {
                Kek::from_base64(text.expose_secret(), "ROLLCALL_KEK".into()).map(Some)
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    KeysError::Kek(format!("ROLLCALL_KEK_FILE {}: {e}", path.display()))
                })?;
                Kek::from_base64(text.trim(), format!("ROLLCALL_KEK_FILE {}", path.display()))
                    .map(Some)
            }
            (None, None) => Ok(None),
        }
    }
}

/// A key-encryption key. `Debug` shows its fingerprint and origin only.
#[derive(Clone)]
pub struct Kek {
    key: [u8; 32],
    origin: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("fingerprint", &self.fingerprint())
            .field("origin", &self.origin)
            .finish()
    }
}

impl Kek {
    /// A KEK from base64 of exactly 32 bytes; `origin` names where it came from in errors.
    pub fn from_base64(text: &str, origin: String) -> Result<Self, KeysError> {
        let bytes = BASE64.decode(text.trim()).map_err(|_| {
            KeysError::Kek(format!(
                "{origin} is not base64 (expected 32 random bytes, `openssl rand -base64 32`)"
            ))
        })?;
        Self::from_bytes(&bytes, origin)
    }

    fn from_bytes(bytes: &[u8], origin: String) -> Result<Self, KeysError> {
        let key = <[u8; 32]>::try_from(bytes).map_err(|_| {
            KeysError::Kek(format!(
                "{origin} must be 32 bytes, not {} (`openssl rand -base64 32`)",
                bytes.len()
            ))
        })?;
        Ok(Self { key, origin })
    }

    /// A fresh random KEK (tests, tooling).
    pub fn generate(origin: String) -> Result<Self, KeysError> {
        Ok(Self {
            key: random()?,
            origin,
        })
    }

    /// The configured KEK, or else the one kept in PostgreSQL, generated there now if there is
    /// none yet (concurrent first starts agree on one). For the services.
    #[instrument(skip_all, err)]
    pub async fn resolve(config: &KekConfig, store: Option<&Store>) -> Result<Self, KeysError> {
        if let Some(kek) = config.configured()? {
            return Ok(kek);
        }
        let store = store.ok_or_else(no_database)?;
        let candidate: [u8; 32] = random()?;
        let stored = store
            .installation_secret(KEK_SECRET, &candidate)
            .await
            .map_err(|e| KeysError::Store(e.to_string()))?;
        Self::from_bytes(&stored, "the KEK kept in PostgreSQL".into())
    }

    /// The configured KEK, or else the one kept in PostgreSQL; never creates one. For operator
    /// commands, which must not leave a KEK behind where the services use a configured one.
    #[instrument(skip_all, err)]
    pub async fn existing(config: &KekConfig, store: Option<&Store>) -> Result<Self, KeysError> {
        if let Some(kek) = config.configured()? {
            return Ok(kek);
        }
        let store = store.ok_or_else(no_database)?;
        let stored = store
            .stored_installation_secret(KEK_SECRET)
            .await
            .map_err(|e| KeysError::Store(e.to_string()))?
            .ok_or_else(|| {
                KeysError::Kek("no KEK is kept in PostgreSQL: set ROLLCALL_KEK (or ROLLCALL_KEK_FILE) as the access services have it".into())
            })?;
        Self::from_bytes(&stored, "the KEK kept in PostgreSQL".into())
    }

    /// A fingerprint naming this KEK in errors and sealed values (not the key: a hash of it).
    pub fn fingerprint(&self) -> String {
        rollcall_store::personal_key::kek_fingerprint(&self.key)
    }

    /// The key itself, for the users' data keys (`rollcall_store::personal_key`), which are
    /// wrapped under it.
    pub fn expose(&self) -> &[u8; 32] {
        &self.key
    }

    /// Where it came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

fn no_database() -> KeysError {
    KeysError::Kek(
        "no KEK: set ROLLCALL_KEK (or ROLLCALL_KEK_FILE), or give a database to keep one in".into(),
    )
}

fn random<const N: usize>() -> Result<[u8; N], KeysError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| KeysError::Kek(format!("no randomness: {e}")))?;
    Ok(bytes)
}

/// A sealed value as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Sealed {
    format: String,
    algorithm: String,
    /// Fingerprint of the KEK.
    kek: String,
    nonce: String,
    ciphertext: String,
}

/// The associated data: binds a sealed value to its format, namespace and key name.
fn associated_data(namespace: &Namespace, name: &str) -> Vec<u8> {
    format!("{SEALED_FORMAT}\0{AEAD}\0{}\0{name}", namespace.as_str()).into_bytes()
}

/// Seals `plaintext` as the value of `name` in `namespace` under `kek`.
pub fn seal(
    kek: &Kek,
    namespace: &Namespace,
    name: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, KeysError> {
    let cipher = XChaCha20Poly1305::new(&kek.key.into());
    let nonce: [u8; 24] = random()?;
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &associated_data(namespace, name),
            },
        )
        .map_err(|_| KeysError::Corrupt("sealing failed".into()))?;
    serde_json::to_vec(&Sealed {
        format: SEALED_FORMAT.into(),
        algorithm: AEAD.into(),
        kek: kek.fingerprint(),
        nonce: BASE64.encode(nonce),
        ciphertext: BASE64.encode(ciphertext),
    })
    .map_err(|e| KeysError::Corrupt(e.to_string()))
}

/// Opens a value sealed by [`seal`] for `name` in `namespace`.
pub fn open(
    kek: &Kek,
    namespace: &Namespace,
    name: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, KeysError> {
    let bucket = secrets_bucket(namespace);
    let corrupt =
        |what: &str| KeysError::Corrupt(format!("{name} in NATS bucket {bucket}: {what}"));
    let sealed: Sealed =
        serde_json::from_slice(sealed).map_err(|_| corrupt("not a sealed value"))?;
    if sealed.format != SEALED_FORMAT || sealed.algorithm != AEAD {
        return Err(corrupt(&format!(
            "unknown format {:?} / {:?}",
            sealed.format, sealed.algorithm
        )));
    }
    if sealed.kek != kek.fingerprint() {
        return Err(KeysError::WrongKek {
            bucket,
            sealed_under: sealed.kek,
            in_use: kek.fingerprint(),
            origin: kek.origin.clone(),
        });
    }
    let nonce = BASE64
        .decode(&sealed.nonce)
        .ok()
        .and_then(|n| <[u8; 24]>::try_from(n.as_slice()).ok())
        .ok_or_else(|| corrupt("bad nonce"))?;
    let ciphertext = BASE64
        .decode(&sealed.ciphertext)
        .map_err(|_| corrupt("bad ciphertext"))?;
    XChaCha20Poly1305::new(&kek.key.into())
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &ciphertext,
                aad: &associated_data(namespace, name),
            },
        )
        .map_err(|_| KeysError::Unsealable {
            bucket,
            name: name.to_owned(),
        })
}

/// One session key as stored (sealed). `Debug` leaves the secret out.
#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    id: String,
    /// Base64 of the HMAC secret.
    secret: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    signs_from: OffsetDateTime,
}

/// The installation's session key set (what is sealed). `Debug` shows key ids only.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeySet {
    schema: String,
    keys: Vec<StoredKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("ids", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

/// What a key does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Verifies; signs from its `signs_from` on.
    Pending,
    /// Signs new sessions (and verifies).
    Signing,
    /// Verifies sessions it signed; dropped at the first rotation after `until`.
    Verifying {
        /// When the last session it may have signed expires.
        until: OffsetDateTime,
    },
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyState::Pending => f.write_str("pending"),
            KeyState::Signing => f.write_str("signing"),
            KeyState::Verifying { until } => write!(
                f,
                "verifying until {}",
                until
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            ),
        }
    }
}

/// A key as listed: never its material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id (the sessions' JWS `kid`).
    pub id: String,
    /// When it was generated.
    pub created_at: OffsetDateTime,
    /// From when it signs.
    pub signs_from: OffsetDateTime,
    /// What it does now.
    pub state: KeyState,
}

/// How to rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// After how long the new key starts signing ([`DEFAULT_ACTIVATION_DELAY`]): replicas
    /// that have not seen it yet would refuse sessions it signed.
    pub activate_in: Duration,
    /// Drop every other key now (after a leak): every session ends, and sessions signed by the
    /// new key are refused by replicas that have not seen it yet (milliseconds).
    pub drop_previous: bool,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            activate_in: DEFAULT_ACTIVATION_DELAY,
            drop_previous: false,
        }
    }
}

fn new_key(now: OffsetDateTime, signs_from: OffsetDateTime) -> Result<StoredKey, KeysError> {
    let tag: [u8; 6] = random()?;
    Ok(StoredKey {
        id: format!(
            "{:04}{:02}{:02}-{}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            hex::encode(tag)
        ),
        secret: BASE64.encode(random::<32>()?),
        created_at: now,
        signs_from,
    })
}

fn after(instant: OffsetDateTime, duration: Duration) -> OffsetDateTime {
    instant.saturating_add(time::Duration::try_from(duration).unwrap_or(time::Duration::MAX))
}

impl KeySet {
    /// A set of one key that signs from `now`.
    pub fn generate(now: OffsetDateTime) -> Result<Self, KeysError> {
        Ok(Self {
            schema: KEY_SET_SCHEMA.into(),
            keys: vec![new_key(now, now)?],
        })
    }

    /// Keys ordered by the instant they sign from, newest first; of equal instants, the one
    /// added last first (as [`SessionKeys::from_keys`] chooses).
    fn by_signing(&self) -> Vec<&StoredKey> {
        let mut keys: Vec<&StoredKey> = self.keys.iter().rev().collect();
        keys.sort_by_key(|key| std::cmp::Reverse(key.signs_from));
        keys
    }

    /// Each key with what it does at `now`.
    pub fn info(&self, now: OffsetDateTime) -> Vec<KeyInfo> {
        let keys = self.by_signing();
        let signing = keys
            .iter()
            .position(|k| k.signs_from <= now)
            .unwrap_or(keys.len().saturating_sub(1));
        keys.iter()
            .enumerate()
            .map(|(index, key)| KeyInfo {
                id: key.id.clone(),
                created_at: key.created_at,
                signs_from: key.signs_from,
                state: if index == signing {
                    KeyState::Signing
                } else if index < signing {
                    KeyState::Pending
                } else {
                    // It stopped signing when the next newer key started.
                    KeyState::Verifying {
                        until: after(keys[index - 1].signs_from, MAX_SESSION_LIFETIME),
                    }
                },
            })
            .collect()
    }

    /// The set after a rotation at `now`: a new key signing from `now + activate_in`, the keys
    /// whose sessions may still live, without those that can verify nothing anymore.
    pub fn rotated(&self, now: OffsetDateTime, rotation: Rotation) -> Result<Self, KeysError> {
        if rotation.drop_previous {
            return Self::generate(now);
        }
        let info = self.info(now);
        let mut keys: Vec<StoredKey> = self
            .keys
            .iter()
            .filter(|key| {
                info.iter().any(|i| {
                    i.id == key.id
                        && match i.state {
                            KeyState::Verifying { until } => after(until, RETENTION_MARGIN) > now,
                            KeyState::Pending | KeyState::Signing => true,
                        }
                })
            })
            .cloned()
            .collect();
        keys.push(new_key(now, after(now, rotation.activate_in))?);
        Ok(Self {
            schema: KEY_SET_SCHEMA.into(),
            keys,
        })
    }

    /// The keys for signing and verifying sessions that last `ttl`.
    pub fn session_keys(&self, ttl: Duration) -> Result<SessionKeys, KeysError> {
        let secrets = self
            .keys
            .iter()
            .map(|key| {
                BASE64
                    .decode(&key.secret)
                    .map_err(|_| KeysError::Corrupt(format!("session key {}", key.id)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        SessionKeys::from_keys(
            self.keys
                .iter()
                .zip(&secrets)
                .map(|(key, secret)| KeyMaterial {
                    kid: &key.id,
                    secret,
                    signs_from: Some(key.signs_from),
                }),
            ttl,
        )
        .map_err(|e| KeysError::Corrupt(e.to_string()))
    }

    fn seal(&self, kek: &Kek, namespace: &Namespace) -> Result<Vec<u8>, KeysError> {
        let plaintext = serde_json::to_vec(self).map_err(|e| KeysError::Corrupt(e.to_string()))?;
        seal(kek, namespace, SESSION_KEYS, &plaintext)
    }

    fn open(kek: &Kek, namespace: &Namespace, sealed: &[u8]) -> Result<Self, KeysError> {
        let plaintext = open(kek, namespace, SESSION_KEYS, sealed)?;
        let set: Self = parse(&plaintext, "session key set")?;
        if set.schema != KEY_SET_SCHEMA || set.keys.is_empty() {
            return Err(KeysError::Corrupt(format!(
                "session key set (schema {:?}, {} keys)",
                set.schema,
                set.keys.len()
            )));
        }
        Ok(set)
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, KeysError> {
    // The serde error could quote the plaintext: say only what failed.
    serde_json::from_slice(bytes).map_err(|_| KeysError::Corrupt(what.into()))
}

/// The session keys a process holds now; replaced as the installation's set changes. Cloning
/// shares it.
#[derive(Debug, Clone)]
pub struct Keyring {
    held: Arc<RwLock<Held>>,
}

#[derive(Debug)]
struct Held {
    keys: Arc<SessionKeys>,
    /// The bucket revision they came from (0: not from the bucket).
    revision: u64,
}

impl Keyring {
    /// Holds `keys`.
    pub fn new(keys: SessionKeys) -> Self {
        Self::at_revision(keys, 0)
    }

    fn at_revision(keys: SessionKeys, revision: u64) -> Self {
        Self {
            held: Arc::new(RwLock::new(Held {
                keys: Arc::new(keys),
                revision,
            })),
        }
    }

    /// The keys in force.
    pub fn current(&self) -> Arc<SessionKeys> {
        match self.held.read() {
            Ok(held) => Arc::clone(&held.keys),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().keys),
        }
    }

    /// The bucket revision of the keys in force (0 when they did not come from the bucket).
    pub fn revision(&self) -> u64 {
        self.held.read().map(|held| held.revision).unwrap_or(0)
    }

    /// Replaces the keys if `revision` is newer than the held one.
    fn replace(&self, keys: SessionKeys, revision: u64) -> bool {
        let Ok(mut held) = self.held.write() else {
            return false;
        };
        if revision <= held.revision {
            return false;
        }
        *held = Held {
            keys: Arc::new(keys),
            revision,
        };
        true
    }

    /// How long sessions last.
    pub fn ttl(&self) -> Duration {
        self.current().ttl()
    }

    /// Issues a session (see [`SessionKeys::issue`]).
    pub fn issue(
        &self,
        tenant: &str,
        user: uuid::Uuid,
        now: OffsetDateTime,
    ) -> Result<(String, SessionClaims), SessionError> {
        self.current().issue(tenant, user, now)
    }

    /// Signs claims (see [`SessionKeys::sign`]).
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, SessionError> {
        self.current().sign(claims)
    }

    /// Verifies a token (see [`SessionKeys::verify_as`]).
    pub fn verify_as<T: DeserializeOwned>(
        &self,
        token: &str,
        issuer: &str,
    ) -> Result<T, SessionError> {
        self.current().verify_as(token, issuer)
    }

    /// Verifies a session (see [`SessionKeys::verify`]).
    pub fn verify(&self, token: &str) -> Result<SessionClaims, SessionError> {
        self.current().verify(token)
    }
}

/// The installation's session key set in NATS, opened with a KEK.
#[derive(Clone)]
pub struct InstallationKeys {
    bucket: kv::Store,
    namespace: Namespace,
    kek: Kek,
}

impl std::fmt::Debug for InstallationKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationKeys")
            .field("bucket", &secrets_bucket(&self.namespace))
            .field("kek", &self.kek)
            .finish()
    }
}

impl InstallationKeys {
    /// Opens the secrets bucket of `namespace` (creating it where it is missing).
    #[instrument(skip_all, fields(namespace = %namespace), err)]
    pub async fn open(
        client: &async_nats::Client,
        namespace: &Namespace,
        kek: Kek,
    ) -> Result<Self, KeysError> {
        let bucket = open_secrets(client, namespace).await?;
        Ok(Self {
            bucket,
            namespace: namespace.clone(),
            kek,
        })
    }

    /// The stored set and its revision, if there is one.
    #[instrument(skip_all, err)]
    pub async fn read(&self) -> Result<Option<(KeySet, u64)>, KeysError> {
        match self.bucket.entry(SESSION_KEYS).await.map_err(nats)? {
            Some(entry) if entry.operation == Operation::Put => Ok(Some((
                KeySet::open(&self.kek, &self.namespace, &entry.value)?,
                entry.revision,
            ))),
            _ => Ok(None),
        }
    }

    /// The stored set, or a new one stored now if there is none: of processes starting
    /// together, exactly one stores its set and all use that one.
    #[instrument(skip_all, err)]
    pub async fn load_or_generate(&self) -> Result<(KeySet, u64), KeysError> {
        for _ in 0..3 {
            if let Some(stored) = self.read().await? {
                return Ok(stored);
            }
            let set = KeySet::generate(OffsetDateTime::now_utc())?;
            let sealed = set.seal(&self.kek, &self.namespace)?;
            match self.bucket.create(SESSION_KEYS, sealed.into()).await {
                Ok(revision) => {
                    info!(
                        bucket = %secrets_bucket(&self.namespace),
                        kek = %self.kek.fingerprint(),
                        "generated the installation's session keys"
                    );
                    return Ok((set, revision));
                }
                // Another process stored its set first: use that one.
                Err(error) if error.kind() == CreateErrorKind::AlreadyExists => continue,
                Err(error) => return Err(nats(error)),
            }
        }
        Err(KeysError::Contended)
    }

    /// The keys for sessions lasting `ttl`, loaded (or generated) now; follow changes with
    /// [`InstallationKeys::follow`].
    pub async fn keyring(&self, ttl: Duration) -> Result<Keyring, KeysError> {
        let (set, revision) = self.load_or_generate().await?;
        let keyring = Keyring::at_revision(set.session_keys(ttl)?, revision);
        info!(
            revision,
            keys = set.keys.len(),
            signing = keyring
                .current()
                .signing_kid(OffsetDateTime::now_utc())
                .unwrap_or_default(),
            "session keys loaded from the installation"
        );
        Ok(keyring)
    }

    /// Rotates: adds a key (see [`Rotation`]) and drops keys that can verify nothing anymore,
    /// with compare-and-set on the bucket revision (a concurrent rotation is redone on top of
    /// the other, so no key is lost). Returns the keys after it.
    #[instrument(skip_all, err)]
    pub async fn rotate(&self, rotation: Rotation) -> Result<Vec<KeyInfo>, KeysError> {
        for _ in 0..ROTATION_ATTEMPTS {
            let now = OffsetDateTime::now_utc();
            let (set, revision) = self
                .read()
                .await?
                .ok_or_else(|| KeysError::Absent(secrets_bucket(&self.namespace)))?;
            let rotated = set.rotated(now, rotation)?;
            let sealed = rotated.seal(&self.kek, &self.namespace)?;
            match self
                .bucket
                .update(SESSION_KEYS, sealed.into(), revision)
                .await
            {
                Ok(revision) => {
                    info!(revision, keys = rotated.keys.len(), "session keys rotated");
                    return Ok(rotated.info(now));
                }
                Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(nats(error)),
            }
        }
        Err(KeysError::Contended)
    }

    /// The keys as they are now: ids, times and states, never material.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, KeysError> {
        let (set, _) = self
            .read()
            .await?
            .ok_or_else(|| KeysError::Absent(secrets_bucket(&self.namespace)))?;
        Ok(set.info(OffsetDateTime::now_utc()))
    }

    /// Seals the stored set under `new` instead (moving the KEK, for example out of PostgreSQL
    /// into ROLLCALL_KEK); compare-and-set. The services must then be given `new`.
    #[instrument(skip_all, err)]
    pub async fn reseal(&self, new: &Kek) -> Result<(), KeysError> {
        for _ in 0..ROTATION_ATTEMPTS {
            let (set, revision) = self
                .read()
                .await?
                .ok_or_else(|| KeysError::Absent(secrets_bucket(&self.namespace)))?;
            let sealed = set.seal(new, &self.namespace)?;
            match self
                .bucket
                .update(SESSION_KEYS, sealed.into(), revision)
                .await
            {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(nats(error)),
            }
        }
        Err(KeysError::Contended)
    }

    /// Follows the stored set into `keyring` until the task is dropped: every rotation is in
    /// force here moments after it is stored. A set that does not open keeps the keys in
    /// force (and says so).
    pub async fn follow(self, keyring: Keyring) {
        loop {
            if let Err(error) = self.watch(&keyring).await {
                warn!(error = %error, "following the session keys failed; watching again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn watch(&self, keyring: &Keyring) -> Result<(), KeysError> {
        let mut entries = self
            .bucket
            .watch_with_history(SESSION_KEYS)
            .await
            .map_err(nats)?;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(nats)?;
            if entry.operation != Operation::Put || entry.revision <= keyring.revision() {
                continue;
            }
            let ttl = keyring.ttl();
            match KeySet::open(&self.kek, &self.namespace, &entry.value)
                .and_then(|set| Ok((set.session_keys(ttl)?, set.keys.len())))
            {
                Ok((keys, count)) => {
                    let signing = keys
                        .signing_kid(OffsetDateTime::now_utc())
                        .unwrap_or_default()
                        .to_owned();
                    if keyring.replace(keys, entry.revision) {
                        info!(revision = entry.revision, keys = count, signing = %signing, "session keys changed");
                    }
                }
                Err(error) => {
                    error!(revision = entry.revision, error = %error, "the installation's session keys changed but do not open; the keys in force stay");
                }
            }
        }
        Err(KeysError::Nats("the session keys watch ended".into()))
    }
}

/// Rotates the installation's session keys (`rollcall sessions keys rotate`): the KEK as the
/// services have it (never created here), the set in `namespace`'s secrets bucket.
pub async fn rotate(
    client: &async_nats::Client,
    namespace: &Namespace,
    kek: &KekConfig,
    store: Option<&Store>,
    rotation: Rotation,
) -> Result<Vec<KeyInfo>, KeysError> {
    let kek = Kek::existing(kek, store).await?;
    InstallationKeys::open(client, namespace, kek)
        .await?
        .rotate(rotation)
        .await
}

/// Lists the installation's session keys (`rollcall sessions keys list`): ids, times and
/// states, never material.
pub async fn list(
    client: &async_nats::Client,
    namespace: &Namespace,
    kek: &KekConfig,
    store: Option<&Store>,
) -> Result<Vec<KeyInfo>, KeysError> {
    let kek = Kek::existing(kek, store).await?;
    InstallationKeys::open(client, namespace, kek)
        .await?
        .list()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str) -> Namespace {
        Namespace::new(name).unwrap()
    }

    fn kek() -> Kek {
        Kek::generate("test".into()).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_under_its_kek_namespace_and_name() {
        let (kek, ns) = (kek(), namespace("acme"));
        let sealed = seal(&kek, &ns, SESSION_KEYS, b"the plaintext").unwrap();
        assert_eq!(
            open(&kek, &ns, SESSION_KEYS, &sealed).unwrap(),
            b"the plaintext"
        );
        assert!(!String::from_utf8_lossy(&sealed).contains("the plaintext"));
    }

    #[test]
    fn a_wrong_kek_is_named_and_does_not_open() {
        let ns = namespace("acme");
        let sealed = seal(&kek(), &ns, SESSION_KEYS, b"x").unwrap();
        assert!(matches!(
            open(&kek(), &ns, SESSION_KEYS, &sealed),
            Err(KeysError::WrongKek { .. })
        ));
        // A wrong key that claims the right fingerprint still does not open.
        let mut forged: Sealed = serde_json::from_slice(&sealed).unwrap();
        let other = kek();
        forged.kek = other.fingerprint();
        let forged = serde_json::to_vec(&forged).unwrap();
        assert!(matches!(
            open(&other, &ns, SESSION_KEYS, &forged),
            Err(KeysError::Unsealable { .. })
        ));
    }

    #[test]
    fn tampered_ciphertext_does_not_open() {
        let (kek, ns) = (kek(), namespace("acme"));
        let sealed = seal(&kek, &ns, SESSION_KEYS, b"the plaintext").unwrap();
        let mut value: Sealed = serde_json::from_slice(&sealed).unwrap();
        let mut ciphertext = BASE64.decode(&value.ciphertext).unwrap();
        ciphertext[0] ^= 1;
        value.ciphertext = BASE64.encode(ciphertext);
        let tampered = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            open(&kek, &ns, SESSION_KEYS, &tampered),
            Err(KeysError::Unsealable { .. })
        ));
        assert!(matches!(
            open(&kek, &ns, SESSION_KEYS, b"not json"),
            Err(KeysError::Corrupt(_))
        ));
    }

    #[test]
    fn a_sealed_value_is_bound_to_its_namespace_and_name() {
        let kek = kek();
        let sealed = seal(&kek, &namespace("acme"), SESSION_KEYS, b"x").unwrap();
        assert!(matches!(
            open(&kek, &namespace("globex"), SESSION_KEYS, &sealed),
            Err(KeysError::Unsealable { .. })
        ));
        assert!(matches!(
            open(&kek, &namespace("acme"), "other-key", &sealed),
            Err(KeysError::Unsealable { .. })
        ));
    }

    #[test]
    fn a_kek_must_be_32_bytes_of_base64_and_one_source() {
        assert!(Kek::from_base64(&BASE64.encode([7u8; 32]), "t".into()).is_ok());
        assert!(Kek::from_base64(&BASE64.encode([7u8; 16]), "t".into()).is_err());
        assert!(Kek::from_base64("not base64!", "t".into()).is_err());
        let both = KekConfig {
            kek: Some(BASE64.encode([7u8; 32]).into()),
            kek_file: Some("/nonexistent".into()),
            kek_previous: None,
        };
        assert!(both.configured().is_err());
        let error = Kek::from_base64("c2hvcnQ=", "ROLLCALL_KEK".into()).unwrap_err();
        assert!(error.to_string().contains("ROLLCALL_KEK"));
    }

    #[test]
    fn debug_output_carries_no_key_material() {
        let kek = kek();
        let set = KeySet::generate(OffsetDateTime::now_utc()).unwrap();
        let secret = set.keys[0].secret.clone();
        let shown = format!("{kek:?} {set:?}");
        assert!(!shown.contains(&secret));
        assert!(!shown.contains(&BASE64.encode(kek.key)));
        assert!(shown.contains(&kek.fingerprint()));
    }

    #[test]
    fn a_rotation_signs_later_and_keeps_the_old_key_verifying() {
        let start = OffsetDateTime::now_utc();
        let set = KeySet::generate(start).unwrap();
        let ttl = Duration::from_secs(3600);
        let old = set.session_keys(ttl).unwrap();
        let (old_session, _) = old.issue("t", uuid::Uuid::now_v7(), start).unwrap();
        let rotated = set.rotated(start, Rotation::default()).unwrap();
        let (first, second) = (&set.keys[0].id, &rotated.keys[1].id);
        let keys = rotated.session_keys(ttl).unwrap();
        assert_eq!(keys.signing_kid(start), Some(first.as_str()));
        let later = start + time::Duration::seconds(61);
        assert_eq!(keys.signing_kid(later), Some(second.as_str()));
        assert!(keys.verify(&old_session).is_ok());
        let states: Vec<KeyState> = rotated.info(later).iter().map(|i| i.state).collect();
        assert_eq!(states[0], KeyState::Signing);
        assert!(matches!(states[1], KeyState::Verifying { .. }));
        assert_eq!(rotated.info(start)[0].state, KeyState::Pending);
    }

    #[test]
    fn a_rotation_without_delay_signs_at_once_even_at_the_same_instant() {
        let now = OffsetDateTime::now_utc();
        let set = KeySet::generate(now).unwrap();
        let at_once = Rotation {
            activate_in: Duration::ZERO,
            drop_previous: false,
        };
        let rotated = set.rotated(now, at_once).unwrap();
        let newest = rotated.keys[1].id.as_str();
        let keys = rotated.session_keys(Duration::from_secs(60)).unwrap();
        assert_eq!(keys.signing_kid(now), Some(newest));
        let info = rotated.info(now);
        assert_eq!(
            (info[0].id.as_str(), info[0].state),
            (newest, KeyState::Signing)
        );
    }

    #[test]
    fn a_retired_key_is_dropped_at_a_rotation_after_the_longest_session() {
        let start = OffsetDateTime::now_utc() - time::Duration::days(30);
        let set = KeySet::generate(start).unwrap();
        let first = set.keys[0].id.clone();
        let rotated = set.rotated(start, Rotation::default()).unwrap();
        // Within the longest session lifetime of the second key's start: kept.
        let soon = start + time::Duration::days(6);
        let kept = rotated.rotated(soon, Rotation::default()).unwrap();
        assert!(kept.keys.iter().any(|k| k.id == first));
        assert_eq!(kept.keys.len(), 3);
        // Past it: dropped.
        let late = start + time::Duration::days(8);
        let dropped = rotated.rotated(late, Rotation::default()).unwrap();
        assert!(!dropped.keys.iter().any(|k| k.id == first));
        assert_eq!(dropped.keys.len(), 2);
        // After a leak: only the new key, signing now.
        let fresh = rotated
            .rotated(
                late,
                Rotation {
                    drop_previous: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(fresh.keys.len(), 1);
        assert_eq!(fresh.info(late)[0].state, KeyState::Signing);
    }
}
