//! Every user's data key (crypto-shredding): 32 random bytes per user, kept in PostgreSQL
//! (`public.personal_data_key`) wrapped under the installation's key-encryption key (KEK), and
//! destroyed when the user is erased. The personal fields of the user's events are sealed under
//! it (`rollcall-personal`), so destroying it leaves them unreadable wherever they are stored.
//!
//! - Wrapping is XChaCha20-Poly1305 under the KEK, with the tenant and user id as associated
//!   data (a wrapped key moved to another row does not open).
//! - Each row names the KEK that wrapped it by fingerprint. A process holds the current KEK and
//!   any previous ones ([`Store::install_keks`]); [`Store::rewrap_data_keys`] moves every key to
//!   the current KEK, after which the previous ones can be dropped.
//! - Erasure keeps the row as a tombstone (`wrapped` NULL, `erased_at` set), so that a reader
//!   tells an erased person ([`KeyState::Erased`]) from a key that was never stored
//!   ([`KeyState::Missing`], an error to report, never something to show as erased).
//! - Unwrapped keys are cached in the process (bounded); [`Store::forget_data_key`] drops one
//!   when its user is erased, and fresh reads ([`Freshness::Fresh`]) bypass the cache.
//!
//! Key material never appears in logs, errors or `Debug` output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tracing::instrument;
use uuid::Uuid;

use crate::{Store, StoreError};

/// How many unwrapped keys a process keeps before it drops them all and starts again.
const CACHE_LIMIT: usize = 100_000;
/// How long a process keeps an unwrapped key: a process that never meets a user's erasure
/// (an audit API, a SCIM API without the lookup index) can open the user's fields for at most
/// this long after it.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(120);
const WRAP_FORMAT: &str = "rollcall.data-key.v1";

/// A user's data key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A key from its bytes (tests, tooling).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key's bytes, for the cipher.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

/// What is known of a user's data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// The key: the user's personal fields open.
    Key(DataKey),
    /// The user was erased: the key is gone for good.
    Erased,
    /// No key was ever stored for the user (events written before encryption, or a fault).
    Missing,
}

/// The first request for a user's new key, while it runs: its entry in the keyring's pending
/// requests goes with it.
struct Leading<'a> {
    store: &'a Store,
    id: (String, Uuid),
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.store.keyring.pending.lock() {
            pending.remove(&self.id);
        }
    }
}

/// The answer to a key being created, once there is one.
type PendingKey = tokio::sync::watch::Receiver<Option<Option<DataKey>>>;

/// Users' key states by (tenant, user).
pub type KeyStates = HashMap<(String, Uuid), KeyState>;

/// Whether a read may be answered from the process's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Cached keys serve (writers and projectors, which drop a key when they meet its user's
    /// erasure).
    Cached,
    /// Every key is read from PostgreSQL (auditors' reads, which must never show an erased
    /// person from a cache).
    Fresh,
}

/// The fingerprint naming a KEK in rows and errors (a hash of it, not the key).
pub fn kek_fingerprint(key: &[u8; 32]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"rollcall.kek-fingerprint.v1\0");
    hash.update(key);
    hex::encode(&hash.finalize()[..8])
}

#[derive(Clone)]
struct Kek {
    key: [u8; 32],
    fingerprint: String,
}

impl Kek {
    fn new(key: [u8; 32]) -> Self {
        Self {
            fingerprint: kek_fingerprint(&key),
            key,
        }
    }
}

/// The KEKs a process holds and the keys it has unwrapped; shared by every clone of a
/// [`Store`].
#[derive(Default)]
pub(crate) struct Keyring {
    keks: RwLock<Option<(Kek, Vec<Kek>)>>,
    cache: Mutex<HashMap<(String, Uuid), Cached>>,
    /// Keys being created, by (tenant, user): later requests wait for the first one's answer
    /// (`Some(None)`: it failed).
    pending: Mutex<HashMap<(String, Uuid), PendingKey>>,
    /// The writer of new keys ([`Store::data_key_for_writing`]).
    creator: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Creation>>>,
    /// The pool of the store the keyring was made with (its commits wait for the disk): where
    /// new keys are written, whichever clone asks.
    durable: std::sync::OnceLock<sqlx::PgPool>,
    /// Spare users' ids whose keys are stored already, by tenant ([`Store::spare_user`]).
    spares: Mutex<Spares>,
    /// Held (shared) by every top-up of the spares while it runs: [`Store::release_spare_users`]
    /// takes it whole to wait for them.
    topping_up: Arc<tokio::sync::RwLock<()>>,
    /// Set only by the benchmark ([`Store::set_sealing_for_benchmark`]): new events are
    /// written with their personal fields in clear.
    unsealed: std::sync::atomic::AtomicBool,
    /// How many times [`Store::data_keys`] read keys from PostgreSQL.
    reads: std::sync::atomic::AtomicU64,
}

/// What this process knows of a user's data key ([`Freshness::Cached`] reads need no query).
enum Cached {
    /// Unwrapped at that instant: served for [`CACHE_TTL`].
    Key(DataKey, std::time::Instant),
    /// Read as a tombstone: for good, since no key is ever stored for an erased user again, so
    /// replaying an erased user's events asks PostgreSQL once.
    Erased,
}

impl Cached {
    /// A key unwrapped now.
    fn key(key: &DataKey) -> Self {
        Self::Key(key.clone(), std::time::Instant::now())
    }
}

/// The spare users of every tenant this process created users in.
#[derive(Default)]
struct Spares {
    tenants: HashMap<String, TenantSpares>,
    /// Released: none are made or handed out any more.
    closed: bool,
}

/// A tenant's spare users: ids no user has had, each with a data key stored and committed.
struct TenantSpares {
    ready: std::collections::VecDeque<(Uuid, DataKey)>,
    /// How many the tenant keeps: doubled (up to [`SPARES_MOST`]) whenever a create found
    /// none left.
    want: usize,
    /// A top-up is running.
    filling: bool,
    /// When the last top-up failed: the next waits [`SPARES_RETRY`].
    failed: Option<std::time::Instant>,
}

/// Spare users a tenant keeps at first.
const SPARES_FIRST: usize = 16;
/// Spare users a tenant keeps at most.
const SPARES_MOST: usize = 256;
/// How long after a failed top-up the next one waits.
const SPARES_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").finish_non_exhaustive()
    }
}

fn associated_data(tenant: &str, user: Uuid) -> Vec<u8> {
    format!("{WRAP_FORMAT}\0{tenant}\0{user}").into_bytes()
}

fn wrap(kek: &Kek, tenant: &str, user: Uuid, key: &DataKey) -> Result<Vec<u8>, StoreError> {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|e| StoreError::Kek(format!("no randomness: {e}")))?;
    let ciphertext = XChaCha20Poly1305::new(&kek.key.into())
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &key.0,
                aad: &associated_data(tenant, user),
            },
        )
        .map_err(|_| StoreError::Kek("wrapping a data key failed".into()))?;
    let mut wrapped = nonce.to_vec();
    wrapped.extend_from_slice(&ciphertext);
    Ok(wrapped)
}

fn unwrap(kek: &Kek, tenant: &str, user: Uuid, wrapped: &[u8]) -> Result<DataKey, StoreError> {
    let corrupt = || {
        StoreError::Corrupt(format!(
            "the data key of user {user} in tenant {tenant} does not open under KEK {}: it was changed or moved",
            kek.fingerprint
        ))
    };
    if wrapped.len() < 24 {
        return Err(corrupt());
    }
    let (nonce, ciphertext) = wrapped.split_at(24);
    let nonce = <[u8; 24]>::try_from(nonce).map_err(|_| corrupt())?;
    let plain = XChaCha20Poly1305::new(&kek.key.into())
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad: &associated_data(tenant, user),
            },
        )
        .map_err(|_| corrupt())?;
    <[u8; 32]>::try_from(plain.as_slice())
        .map(DataKey)
        .map_err(|_| corrupt())
}

type Row = (String, Uuid, Option<String>, Option<Vec<u8>>);

impl Store {
    /// Gives this store (and every clone of it) the KEK that wraps new data keys and the
    /// previous KEKs that still open older ones.
    pub fn install_keks(&self, current: [u8; 32], previous: Vec<[u8; 32]>) {
        let keks = (
            Kek::new(current),
            previous.into_iter().map(Kek::new).collect(),
        );
        if let Ok(mut slot) = self.keyring.keks.write() {
            *slot = Some(keks);
        }
        self.clear_data_key_cache();
    }

    /// The fingerprint of the KEK that wraps new data keys, once installed.
    pub fn kek_in_use(&self) -> Option<String> {
        self.keyring
            .keks
            .read()
            .ok()?
            .as_ref()
            .map(|(current, _)| current.fingerprint.clone())
    }

    fn keks(&self) -> Result<(Kek, Vec<Kek>), StoreError> {
        self.keyring
            .keks
            .read()
            .ok()
            .and_then(|keks| keks.clone())
            .ok_or_else(|| {
                StoreError::Kek("no key-encryption key was given to this process".into())
            })
    }

    fn opening(
        &self,
        tenant: &str,
        user: Uuid,
        kek: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, StoreError> {
        let (current, previous) = self.keks()?;
        let kek = std::iter::once(&current)
            .chain(previous.iter())
            .find(|candidate| candidate.fingerprint == kek)
            .ok_or_else(|| StoreError::Kek(format!(
                "the data key of user {user} in tenant {tenant} is wrapped under KEK {kek}, which this process does not hold (it holds {}): give it as ROLLCALL_KEK or ROLLCALL_KEK_PREVIOUS",
                std::iter::once(&current).chain(previous.iter()).map(|k| k.fingerprint.as_str()).collect::<Vec<_>>().join(", ")
            )))?;
        unwrap(kek, tenant, user, wrapped)
    }

    fn remember(&self, tenant: &str, user: Uuid, known: Cached) {
        if let Ok(mut cache) = self.keyring.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert((tenant.to_owned(), user), known);
        }
    }

    /// What this process knows of `user`'s key: one it unwrapped less than [`CACHE_TTL`] ago,
    /// or a tombstone it read.
    fn cached(&self, tenant: &str, user: Uuid) -> Option<KeyState> {
        let cache = self.keyring.cache.lock().ok()?;
        match cache.get(&(tenant.to_owned(), user))? {
            Cached::Key(key, at) => (at.elapsed() < CACHE_TTL).then(|| KeyState::Key(key.clone())),
            Cached::Erased => Some(KeyState::Erased),
        }
    }

    /// A key this process unwrapped less than [`CACHE_TTL`] ago.
    fn cached_key(&self, tenant: &str, user: Uuid) -> Option<DataKey> {
        match self.cached(tenant, user)? {
            KeyState::Key(key) => Some(key),
            KeyState::Erased | KeyState::Missing => None,
        }
    }

    /// Drops every cached key (and tombstone).
    pub fn clear_data_key_cache(&self) {
        if let Ok(mut cache) = self.keyring.cache.lock() {
            cache.clear();
        }
    }

    /// Drops a user's key from this process's cache (its user was erased).
    pub fn forget_data_key(&self, tenant: &str, user: Uuid) {
        if let Ok(mut cache) = self.keyring.cache.lock() {
            cache.remove(&(tenant.to_owned(), user));
        }
    }

    /// The data key to seal a user's new events under: the one stored, or a new one stored
    /// now (a user being created, or one whose events predate encryption). Stored before any
    /// event is sealed under it; refused for an erased user.
    #[instrument(skip_all, fields(tenant, user.id = %user), err)]
    pub async fn data_key_for_writing(
        &self,
        tenant: &str,
        user: Uuid,
    ) -> Result<DataKey, StoreError> {
        if let Some(key) = self.cached_key(tenant, user) {
            return Ok(key);
        }
        // One request per user at a time in this process: a create's early request and its
        // write's both wait for the first (a second would wait for a second commit).
        let id = (tenant.to_owned(), user);
        let (leader, mut waiting) = {
            let mut pending = self
                .keyring
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match pending.get(&id) {
                Some(receiver) => (None, Some(receiver.clone())),
                None => {
                    let (sender, receiver) = tokio::sync::watch::channel(None);
                    pending.insert(id.clone(), receiver);
                    (Some(sender), None)
                }
            }
        };
        if let Some(receiver) = waiting.as_mut() {
            if let Ok(done) = receiver.wait_for(Option::is_some).await {
                if let Some(Some(key)) = done.clone() {
                    return Ok(key);
                }
            }
            // The first request failed: this one asks again on its own.
        }
        // The leader's entry goes when it is done, also if its caller gave up on it.
        let _leading = leader.is_some().then(|| Leading {
            store: self,
            id: id.clone(),
        });
        let created = self.create_data_key(tenant, user).await;
        if let Some(sender) = leader {
            let _ = sender.send(Some(created.as_ref().ok().cloned()));
        }
        created
    }

    /// Stores a new data key for `user` (or reads back the one stored first).
    async fn create_data_key(&self, tenant: &str, user: Uuid) -> Result<DataKey, StoreError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| StoreError::Kek(format!("no randomness: {e}")))?;
        let candidate = DataKey(bytes);
        let (current, _) = self.keks()?;
        let wrapped = wrap(&current, tenant, user, &candidate)?;
        // Stored with the keys other writes of this process ask for at the same moment: one
        // statement and one commit for all of them.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = Creation {
            key: NewKey {
                tenant: tenant.to_owned(),
                user,
                kek: current.fingerprint.clone(),
                wrapped,
            },
            reply,
        };
        self.creator()
            .send(request)
            .map_err(|_| unavailable("the data key writer stopped"))?;
        let stored = answer
            .await
            .map_err(|_| unavailable("the data key writer stopped"))?
            .map_err(|error| unavailable(&error))?;
        let key = match stored {
            Some((Some(kek), Some(wrapped))) => self.opening(tenant, user, &kek, &wrapped)?,
            Some(_) => {
                return Err(StoreError::Erased {
                    tenant: tenant.to_owned(),
                    user,
                })
            }
            None => {
                return Err(StoreError::Corrupt(format!(
                    "the data key of user {user} in tenant {tenant} was neither stored nor found"
                )))
            }
        };
        self.remember(tenant, user, Cached::key(&key));
        Ok(key)
    }

    /// The id for a new user of `tenant` from this process's spares: an id no user has had,
    /// whose data key was stored and committed before the request came (and is now cached),
    /// so that sealing the new user's events waits for no commit. `None` when the tenant has
    /// no spare left (the create stores a key of its own then). Either way the spares are
    /// topped up in the background; a tenant that runs out keeps twice as many.
    ///
    /// A spare's key seals nothing until a user is created with its id. A process stopped
    /// cleanly removes its spares' keys ([`Store::release_spare_users`]); one killed leaves
    /// them, as keys of users that never existed.
    pub fn spare_user(&self, tenant: &str) -> Option<Uuid> {
        let (taken, top_up) = {
            let mut spares = self
                .keyring
                .spares
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if spares.closed {
                return None;
            }
            let spares = match spares.tenants.entry(tenant.to_owned()) {
                std::collections::hash_map::Entry::Occupied(entry) => {
                    let spares = entry.into_mut();
                    if spares.ready.is_empty() {
                        spares.want = (spares.want * 2).min(SPARES_MOST);
                    }
                    spares
                }
                std::collections::hash_map::Entry::Vacant(entry) => entry.insert(TenantSpares {
                    ready: std::collections::VecDeque::new(),
                    want: SPARES_FIRST,
                    filling: false,
                    failed: None,
                }),
            };
            let taken = spares.ready.pop_front();
            let resting = spares
                .failed
                .is_some_and(|failed| failed.elapsed() < SPARES_RETRY);
            // The top-up holds its share of `topping_up` from here, so that a release that
            // finds the spares open waits for it.
            let top_up = if !spares.filling && !resting && spares.ready.len() <= spares.want / 2 {
                self.keyring
                    .topping_up
                    .clone()
                    .try_read_owned()
                    .ok()
                    .map(|running| (running, spares.want - spares.ready.len()))
            } else {
                None
            };
            if top_up.is_some() {
                spares.filling = true;
            }
            (taken, top_up)
        };
        if let Some((running, count)) = top_up {
            self.top_up_spares(tenant, count, running);
        }
        let (user, key) = taken?;
        self.remember(tenant, user, Cached::key(&key));
        Some(user)
    }

    /// Stores `count` new spare users' keys for `tenant` in the background, a statement of at
    /// most [`CREATION_BATCH`] at a time (beside the writer of creates' own keys, not in its
    /// queue), each batch a tenant's spares as soon as it is committed.
    fn top_up_spares(
        &self,
        tenant: &str,
        count: usize,
        running: tokio::sync::OwnedRwLockReadGuard<()>,
    ) {
        let store = self.clone();
        let tenant = tenant.to_owned();
        tokio::spawn(async move {
            let mut left = count;
            let mut failure = None;
            while left > 0 && failure.is_none() {
                let batch = left.min(CREATION_BATCH);
                left -= batch;
                match store.make_spares(&tenant, batch).await {
                    Ok(made) => store.with_spares(&tenant, |spares| spares.ready.extend(made)),
                    Err(error) => failure = Some(error),
                }
            }
            if let Some(error) = &failure {
                tracing::warn!(%error, "storing spare users' data keys failed; creates store their own meanwhile");
            }
            store.with_spares(&tenant, |spares| {
                spares.filling = false;
                spares.failed = failure.is_some().then(std::time::Instant::now);
            });
            drop(running);
        });
    }

    fn with_spares(&self, tenant: &str, change: impl FnOnce(&mut TenantSpares)) {
        let mut spares = self
            .keyring
            .spares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(spares) = spares.tenants.get_mut(tenant) {
            change(spares);
        }
    }

    /// Stores `count` keys for new ids of `tenant` in one statement: those stored.
    async fn make_spares(
        &self,
        tenant: &str,
        count: usize,
    ) -> Result<Vec<(Uuid, DataKey)>, StoreError> {
        let (current, _) = self.keks()?;
        let mut made = Vec::with_capacity(count);
        let mut rows = Vec::with_capacity(count);
        for _ in 0..count {
            let user = Uuid::now_v7();
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| StoreError::Kek(format!("no randomness: {e}")))?;
            let key = DataKey(bytes);
            rows.push(NewKey {
                tenant: tenant.to_owned(),
                user,
                kek: current.fingerprint.clone(),
                wrapped: wrap(&current, tenant, user, &key)?,
            });
            made.push((user, key));
        }
        let answers = store_keys(&self.durable_pool(), &rows).await;
        // A fresh id's row is the one just stored; anything else is no spare.
        Ok(made
            .into_iter()
            .zip(rows)
            .zip(answers)
            .filter(|((_, row), answer)| {
                matches!(answer, Ok(Some((Some(kek), Some(wrapped))))
                    if *kek == row.kek && *wrapped == row.wrapped)
            })
            .map(|((made, _), _)| made)
            .collect())
    }

    /// How many spare users this process holds for `tenant` now.
    pub fn spare_users(&self, tenant: &str) -> usize {
        self.keyring
            .spares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .tenants
            .get(tenant)
            .map_or(0, |spares| spares.ready.len())
    }

    /// Waits until no top-up of the spares is running (the benchmark, between its runs).
    #[doc(hidden)]
    pub async fn spares_settled(&self) {
        drop(self.keyring.topping_up.write().await);
    }

    /// Stops handing out spare users and removes their stored keys (none of them sealed
    /// anything), after waiting for top-ups under way: what a SCIM API does when it stops.
    /// How many were removed.
    #[instrument(skip_all, err)]
    pub async fn release_spare_users(&self) -> Result<usize, StoreError> {
        self.keyring
            .spares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .closed = true;
        let _quiet = self.keyring.topping_up.write().await;
        let released: Vec<(String, Uuid)> = self
            .keyring
            .spares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .tenants
            .drain()
            .flat_map(|(tenant, spares)| {
                spares
                    .ready
                    .into_iter()
                    .map(move |(user, _)| (tenant.clone(), user))
            })
            .collect();
        for (tenant, user) in &released {
            self.forget_data_key(tenant, *user);
        }
        let (tenants, users): (Vec<&str>, Vec<Uuid>) = released
            .iter()
            .map(|(tenant, user)| (tenant.as_str(), *user))
            .unzip();
        sqlx::query(
            "DELETE FROM public.personal_data_key k
              USING unnest($1::text[], $2::uuid[]) AS s (tenant, user_id)
              WHERE k.tenant = s.tenant AND k.user_id = s.user_id AND k.wrapped IS NOT NULL",
        )
        .bind(&tenants)
        .bind(&users)
        .execute(self.pool())
        .await?;
        Ok(released.len())
    }

    /// Whether new events are sealed: always, except in the benchmark's runs that measure
    /// what sealing costs ([`Store::set_sealing_for_benchmark`]).
    pub fn seals_personal_data(&self) -> bool {
        !self
            .keyring
            .unsealed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns sealing of new events off (`false`) or on again, for this store and its clones.
    /// Only `rollcall bench` calls it, to measure `create` with and without sealing in the same
    /// run; no setting reaches it. Events written meanwhile keep their personal fields in
    /// clear, as events written before sealing existed did.
    #[doc(hidden)]
    pub fn set_sealing_for_benchmark(&self, seal: bool) {
        self.keyring
            .unsealed
            .store(!seal, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many queries this store (and its clones) made to read data keys
    /// ([`Store::data_keys`]), each for any number of users: what the key cache and reading
    /// keys in batches save.
    pub fn data_key_reads(&self) -> u64 {
        self.keyring
            .reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The keys of `users` (tenant, id), each as [`KeyState`].
    #[instrument(skip_all, fields(users = users.len()), err)]
    pub async fn data_keys(
        &self,
        users: &[(String, Uuid)],
        freshness: Freshness,
    ) -> Result<HashMap<(String, Uuid), KeyState>, StoreError> {
        let mut found = HashMap::with_capacity(users.len());
        let mut wanted: Vec<&(String, Uuid)> = Vec::new();
        for user in users {
            let cached = match freshness {
                Freshness::Cached => self.cached(&user.0, user.1),
                Freshness::Fresh => None,
            };
            match cached {
                Some(state) => {
                    found.insert(user.clone(), state);
                }
                None => wanted.push(user),
            }
        }
        if wanted.is_empty() {
            return Ok(found);
        }
        let tenants: Vec<&str> = wanted.iter().map(|(tenant, _)| tenant.as_str()).collect();
        let ids: Vec<Uuid> = wanted.iter().map(|(_, id)| *id).collect();
        self.keyring
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT k.tenant, k.user_id, k.kek, k.wrapped
               FROM unnest($1::text[], $2::uuid[]) AS w (tenant, user_id)
               JOIN public.personal_data_key k USING (tenant, user_id)",
        )
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(self.pool())
        .await?;
        for (tenant, user, kek, wrapped) in rows {
            let state = match (kek, wrapped) {
                (Some(kek), Some(wrapped)) => {
                    let key = self.opening(&tenant, user, &kek, &wrapped)?;
                    // A fresh read is an auditor's: it leaves nothing behind.
                    if freshness == Freshness::Cached {
                        self.remember(&tenant, user, Cached::key(&key));
                    }
                    KeyState::Key(key)
                }
                _ => {
                    if freshness == Freshness::Cached {
                        self.remember(&tenant, user, Cached::Erased);
                    }
                    KeyState::Erased
                }
            };
            found.insert((tenant, user), state);
        }
        for user in wanted {
            found.entry(user.clone()).or_insert(KeyState::Missing);
        }
        Ok(found)
    }

    /// Every stored data key (tombstones as [`KeyState::Erased`]), unwrapped, if there are at
    /// most `limit`: what a rebuild reads once instead of batch by batch (one scan of the
    /// table, and no query per batch). `None` when there are more. Nothing is cached.
    #[instrument(skip_all, err)]
    pub async fn all_data_keys(&self, limit: i64) -> Result<Option<KeyStates>, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM public.personal_data_key")
            .fetch_one(self.pool())
            .await?;
        if count > limit {
            return Ok(None);
        }
        let mut keys = HashMap::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut rows = sqlx::query_as::<_, Row>(
            "SELECT tenant, user_id, kek, wrapped FROM public.personal_data_key",
        )
        .fetch(self.pool());
        while let Some((tenant, user, kek, wrapped)) = rows.try_next().await? {
            let state = match (kek, wrapped) {
                // A key that does not open is left out: asked for when needed, its error is
                // that user's events' own.
                (Some(kek), Some(wrapped)) => match self.opening(&tenant, user, &kek, &wrapped) {
                    Ok(key) => KeyState::Key(key),
                    Err(_) => continue,
                },
                _ => KeyState::Erased,
            };
            keys.insert((tenant, user), state);
        }
        Ok(Some(keys))
    }

    /// Removes the data key stored for a user that was never created (its creation failed
    /// before anything was appended): never a key events were sealed under.
    pub async fn forget_unused_data_key(&self, tenant: &str, user: Uuid) -> Result<(), StoreError> {
        self.forget_data_key(tenant, user);
        sqlx::query("DELETE FROM public.personal_data_key WHERE tenant = $1 AND user_id = $2 AND wrapped IS NOT NULL")
            .bind(tenant)
            .bind(user)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Destroys a user's data key (its personal fields become unreadable everywhere), leaving
    /// a tombstone. Whether a key was destroyed now (false: it was erased before).
    #[instrument(skip_all, fields(tenant, user.id = %user), err)]
    pub async fn erase_data_key(&self, tenant: &str, user: Uuid) -> Result<bool, StoreError> {
        self.forget_data_key(tenant, user);
        // The read is a statement of its own: as a CTE of the upsert, PostgreSQL evaluates it
        // after the upsert changed the row, and `FOR UPDATE` skips a row its own command
        // changed (it would always say nothing was destroyed).
        let mut transaction = self.begin().await?;
        let live: Option<bool> = sqlx::query_scalar(
            "SELECT wrapped IS NOT NULL FROM public.personal_data_key
              WHERE tenant = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(tenant)
        .bind(user)
        .fetch_optional(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO public.personal_data_key AS k (tenant, user_id, kek, wrapped, erased_at)
             VALUES ($1, $2, NULL, NULL, now())
             ON CONFLICT (tenant, user_id) DO UPDATE
                SET kek = NULL, wrapped = NULL, erased_at = coalesce(k.erased_at, now())",
        )
        .bind(tenant)
        .bind(user)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        self.forget_data_key(tenant, user);
        Ok(live == Some(true))
    }

    /// Whether any user's data key is stored (wrapped under some KEK).
    pub async fn has_data_keys(&self) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM public.personal_data_key WHERE kek IS NOT NULL)",
        )
        .fetch_one(self.pool())
        .await?)
    }

    /// Projector processes connected to this database (each names itself on its lock
    /// connections).
    pub async fn projector_processes(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name LIKE 'rollcall projector%'",
        )
        .fetch_one(self.pool())
        .await?)
    }

    /// Checks, before anything is written, that this process holds every KEK that wraps a
    /// stored data key and that one key of each opens: a wrong KEK is an error at start, never
    /// a reason to write anything. The number of data keys stored.
    #[instrument(skip_all, err)]
    pub async fn check_data_keys(&self) -> Result<u64, StoreError> {
        let (current, previous) = self.keks()?;
        let samples: Vec<(String, Uuid, String, Vec<u8>, i64)> = sqlx::query_as(
            "SELECT DISTINCT ON (kek) tenant, user_id, kek, wrapped,
                    count(*) OVER (PARTITION BY kek)
               FROM public.personal_data_key WHERE kek IS NOT NULL ORDER BY kek",
        )
        .fetch_all(self.pool())
        .await?;
        let mut total = 0u64;
        for (tenant, user, kek, wrapped, count) in samples {
            total += count as u64;
            let Some(holder) = std::iter::once(&current)
                .chain(previous.iter())
                .find(|candidate| candidate.fingerprint == kek)
            else {
                return Err(StoreError::Kek(format!(
                    "{count} personal data keys are wrapped under KEK {kek}, but the KEK given is {} (ROLLCALL_KEK, ROLLCALL_KEK_FILE, or the one kept in PostgreSQL): give the KEK they were wrapped with (a new KEK goes in ROLLCALL_KEK with the old one in ROLLCALL_KEK_PREVIOUS, then `rollcall users rewrap-keys`); nothing was written",
                    current.fingerprint
                )));
            };
            unwrap(holder, &tenant, user, &wrapped)?;
        }
        Ok(total)
    }

    /// Wraps every data key not yet under the current KEK again under it, `batch` at a time,
    /// telling `progress` how many were moved so far. The number moved.
    #[instrument(skip_all, err)]
    pub async fn rewrap_data_keys(
        &self,
        batch: i64,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, StoreError> {
        let (current, _) = self.keks()?;
        let mut moved = 0u64;
        loop {
            let rows: Vec<(String, Uuid, String, Vec<u8>)> = sqlx::query_as(
                "SELECT tenant, user_id, kek, wrapped FROM public.personal_data_key
                  WHERE kek IS NOT NULL AND kek <> $1 LIMIT $2",
            )
            .bind(&current.fingerprint)
            .bind(batch)
            .fetch_all(self.pool())
            .await?;
            if rows.is_empty() {
                return Ok(moved);
            }
            for (tenant, user, kek, wrapped) in rows {
                let key = self.opening(&tenant, user, &kek, &wrapped)?;
                let rewrapped = wrap(&current, &tenant, user, &key)?;
                // Only if unchanged since read: an erasure in between wins.
                sqlx::query(
                    "UPDATE public.personal_data_key SET kek = $3, wrapped = $4
                      WHERE tenant = $1 AND user_id = $2 AND kek = $5",
                )
                .bind(&tenant)
                .bind(user)
                .bind(&current.fingerprint)
                .bind(&rewrapped)
                .bind(&kek)
                .execute(self.pool())
                .await?;
                moved += 1;
            }
            progress(moved);
        }
    }
}

/// A data key to store, wrapped.
struct NewKey {
    tenant: String,
    user: Uuid,
    kek: String,
    wrapped: Vec<u8>,
}

/// A data key to store, and where to say what is stored.
struct Creation {
    key: NewKey,
    reply: tokio::sync::oneshot::Sender<Result<Option<Stored>, String>>,
}

/// A stored key: the KEK's fingerprint and the wrapped key (both `None`: a tombstone).
type Stored = (Option<String>, Option<Vec<u8>>);

/// Keys stored in one statement at most.
const CREATION_BATCH: usize = 256;

/// A PostgreSQL failure of the batched writer, as an error a client retries.
fn unavailable(error: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!(
        "storing a data key: {error}"
    )))
}

impl Store {
    /// The writer of new data keys (started on first use, and again if it stopped): it stores
    /// every key asked for while the previous statement ran in one statement, reads back those
    /// another writer stored first, and answers each caller. It writes through the pool of the
    /// store the keyring was made with (commits wait for the disk), whichever clone asks, and
    /// ends when the last clone is gone.
    fn creator(&self) -> tokio::sync::mpsc::UnboundedSender<Creation> {
        let mut slot = self
            .keyring
            .creator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = slot.as_ref().filter(|sender| !sender.is_closed()) {
            return sender.clone();
        }
        let (sender, mut requests) = tokio::sync::mpsc::unbounded_channel::<Creation>();
        let pool = self.durable_pool();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(CREATION_BATCH);
            while requests.recv_many(&mut batch, CREATION_BATCH).await > 0 {
                let (keys, replies): (Vec<NewKey>, Vec<_>) = batch
                    .drain(..)
                    .map(|request| (request.key, request.reply))
                    .unzip();
                let answers = store_keys(&pool, &keys).await;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
        });
        *slot = Some(sender.clone());
        sender
    }

    /// The pool of the store the keyring was made with: where new keys are written.
    fn durable_pool(&self) -> sqlx::PgPool {
        self.keyring
            .durable
            .get()
            .cloned()
            .unwrap_or_else(|| self.pool().clone())
    }
}

/// Stores a batch of new keys; for each, what is stored now (its key, another writer's, or a
/// tombstone). Rows go in key order, each once, so that two processes' batches cannot wait on
/// each other; a deadlock or serialization failure is tried again once.
async fn store_keys(pool: &sqlx::PgPool, batch: &[NewKey]) -> Vec<Result<Option<Stored>, String>> {
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by(|&a, &b| {
        (&batch[a].tenant, batch[a].user).cmp(&(&batch[b].tenant, batch[b].user))
    });
    order.dedup_by(|a, b| batch[*a].tenant == batch[*b].tenant && batch[*a].user == batch[*b].user);
    let mut stored = store_ordered(pool, batch, &order).await;
    if let Err(sqlx::Error::Database(error)) = &stored {
        if error
            .code()
            .is_some_and(|code| code == "40P01" || code == "40001")
        {
            stored = store_ordered(pool, batch, &order).await;
        }
    }
    match stored {
        Ok(stored) => batch
            .iter()
            .map(|c| Ok(stored.get(&(c.tenant.clone(), c.user)).cloned()))
            .collect(),
        Err(error) => batch.iter().map(|_| Err(error.to_string())).collect(),
    }
}

async fn store_ordered(
    pool: &sqlx::PgPool,
    batch: &[NewKey],
    order: &[usize],
) -> Result<HashMap<(String, Uuid), Stored>, sqlx::Error> {
    let tenants: Vec<&str> = order.iter().map(|&i| batch[i].tenant.as_str()).collect();
    let users: Vec<Uuid> = order.iter().map(|&i| batch[i].user).collect();
    let keks: Vec<&str> = order.iter().map(|&i| batch[i].kek.as_str()).collect();
    let wrapped: Vec<&[u8]> = order.iter().map(|&i| batch[i].wrapped.as_slice()).collect();
    let inserted: Vec<Row> = sqlx::query_as(
        "INSERT INTO public.personal_data_key (tenant, user_id, kek, wrapped)
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bytea[])
         ON CONFLICT (tenant, user_id) DO NOTHING
         RETURNING tenant, user_id, kek, wrapped",
    )
    .bind(&tenants)
    .bind(&users)
    .bind(&keks)
    .bind(&wrapped)
    .fetch_all(pool)
    .await?;
    let mut stored: HashMap<(String, Uuid), Stored> = inserted
        .into_iter()
        .map(|(tenant, user, kek, wrapped)| ((tenant, user), (kek, wrapped)))
        .collect();
    // Stored before (a retried creation, another process): read back in a statement of its
    // own, whose snapshot sees rows committed while the insert waited.
    let (tenants, users): (Vec<&str>, Vec<Uuid>) = tenants
        .iter()
        .zip(&users)
        .filter(|(tenant, user)| !stored.contains_key(&(tenant.to_string(), **user)))
        .map(|(tenant, user)| (*tenant, *user))
        .unzip();
    if !tenants.is_empty() {
        let before: Vec<Row> = sqlx::query_as(
            "SELECT k.tenant, k.user_id, k.kek, k.wrapped
               FROM unnest($1::text[], $2::uuid[]) AS w (tenant, user_id)
               JOIN public.personal_data_key k USING (tenant, user_id)",
        )
        .bind(&tenants)
        .bind(&users)
        .fetch_all(pool)
        .await?;
        stored.extend(
            before
                .into_iter()
                .map(|(tenant, user, kek, wrapped)| ((tenant, user), (kek, wrapped))),
        );
    }
    Ok(stored)
}

/// Shared by a store and its clones; new keys are written through `pool`.
pub(crate) fn keyring(pool: &sqlx::PgPool) -> Arc<Keyring> {
    let keyring = Keyring::default();
    let _ = keyring.durable.set(pool.clone());
    Arc::new(keyring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_key_opens_only_for_its_tenant_and_user_under_its_kek() {
        let kek = Kek::new([7; 32]);
        let key = DataKey([9; 32]);
        let user = Uuid::from_u128(1);
        let wrapped = wrap(&kek, "acme", user, &key).unwrap();
        assert_eq!(unwrap(&kek, "acme", user, &wrapped).unwrap(), key);
        assert!(unwrap(&kek, "other", user, &wrapped).is_err());
        assert!(unwrap(&kek, "acme", Uuid::from_u128(2), &wrapped).is_err());
        assert!(unwrap(&Kek::new([8; 32]), "acme", user, &wrapped).is_err());
        let mut changed = wrapped.clone();
        changed[30] ^= 1;
        assert!(unwrap(&kek, "acme", user, &changed).is_err());
        assert!(unwrap(&kek, "acme", user, &wrapped[..10]).is_err());
    }

    #[test]
    fn neither_a_key_nor_a_kek_shows_in_debug_or_errors() {
        let key = DataKey([0xAB; 32]);
        assert_eq!(format!("{key:?}"), "DataKey(..)");
        let kek = Kek::new([0xCD; 32]);
        let error = unwrap(&kek, "t", Uuid::nil(), &[0; 40])
            .unwrap_err()
            .to_string();
        assert!(
            !error.contains("cdcd") && !error.contains("abab"),
            "{error}"
        );
        assert_eq!(kek.fingerprint.len(), 16);
    }
}
