//! Entra's lookups from memory: every SCIM API process folds the event stream into an index of
//! its users and groups (by id, userName, externalId, displayName and member), as the access
//! service keeps its decision state, and answers the lookups Entra sends before each write
//! (`userName eq`, `externalId eq`, `displayName eq`, `id eq`, `members[value eq]`, joined by
//! `and`) from it instead of from PostgreSQL.
//!
//! Read-your-writes across replicas: before a lookup is answered from the index, the stream's
//! last sequence is read from its leader by a probe that started after the lookup did, and the
//! index must have applied that far. Every write answered before the lookup began (on any
//! replica) was appended by then, so it is in the answer. Probes are shared: one is in flight
//! at a time, and every lookup that arrived during it waits for the next. A lookup the index
//! cannot answer so (the index still catching up after the process started, the stream not
//! answering, the index behind for longer than [`CATCH_UP`]) is answered from PostgreSQL,
//! whose read model every answered write is already in. So are the lookups of a tenant whose
//! read model lacks events the index folded (the projector quarantined or skipped them, or the
//! index could not read or apply one), and every lookup once the stream was replaced.
//!
//! The index mirrors the read model the projector writes: a deleted user leaves every group,
//! members are compared by their lowercase id, names and externalIds by their case folding.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rollcall_domain::group::{self, Group, GroupEvent, GroupState};
use rollcall_domain::user::{self, User, UserEvent};
use rollcall_domain::{Attributes, EventKind};
use rollcall_eventlog::consumer::{decode, Delivered};
use rollcall_eventlog::EventLog;
use rollcall_scim::case::fold;
use rollcall_store::group::GroupCondition;
use rollcall_store::personal_key::Freshness;
use rollcall_store::user::UserCondition;
use rollcall_store::Store;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch, Notify};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::mapping::{self, Meta};

/// How long a lookup waits for the index to apply what the stream holds before it is answered
/// from PostgreSQL instead.
pub const CATCH_UP: Duration = Duration::from_millis(250);

/// How long a lookup waits for a probe of the stream's last sequence.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// How often the tenants whose read model is behind the stream (quarantine) are read.
const QUARANTINE_EVERY: Duration = Duration::from_secs(1);

/// How old that list may be before the index stops answering.
const QUARANTINE_STALE: Duration = Duration::from_secs(3);

/// The most messages the feed opens and applies together (those that arrived meanwhile).
const FEED_CHUNK: usize = 256;

/// How long the feed waits before it follows the stream again after an error.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One resource in the index, with what its `meta` says.
#[derive(Debug)]
struct Entry<S> {
    state: S,
    version: u64,
    created: OffsetDateTime,
    modified: OffsetDateTime,
}

impl<S> Entry<S> {
    fn meta<'b>(&self, base: &'b str) -> Meta<'b> {
        Meta {
            base,
            version: self.version,
            created: self.created,
            modified: self.modified,
        }
    }
}

/// The folded key of an attribute holding text.
fn key(attributes: &Attributes, name: &str) -> Option<String> {
    attributes
        .get(name)
        .and_then(Value::as_str)
        .map(|text| fold(text).into_owned())
}

/// Ids, sorted: most keys name one resource, which a sorted vector holds in 16 bytes where a
/// set takes a node of a few hundred.
type Ids = Vec<Uuid>;

/// Adds `id` under `key` in a multi-map.
fn insert(map: &mut HashMap<String, Ids>, key: Option<String>, id: Uuid) {
    if let Some(key) = key {
        let ids = map.entry(key).or_default();
        if let Err(at) = ids.binary_search(&id) {
            ids.insert(at, id);
        }
    }
}

/// Removes `id` from under `key` in a multi-map.
fn remove(map: &mut HashMap<String, Ids>, key: Option<&str>, id: Uuid) {
    if let Some(key) = key {
        if let Some(ids) = map.get_mut(key) {
            if let Ok(at) = ids.binary_search(&id) {
                ids.remove(at);
            }
            if ids.is_empty() {
                map.remove(key);
            }
        }
    }
}

/// A user as the index keeps it: its attributes as compact JSON (parsed only to render or
/// change it; a parsed document takes several times the memory), and whether it is active.
#[derive(Debug)]
struct StoredUser {
    attributes: Box<str>,
    active: bool,
}

impl StoredUser {
    fn attributes(&self) -> Option<Attributes> {
        serde_json::from_str(&self.attributes).ok()
    }
}

/// One tenant's users and groups.
#[derive(Debug, Default)]
struct Tenant {
    users: HashMap<Uuid, Entry<StoredUser>>,
    user_names: HashMap<String, Ids>,
    user_external_ids: HashMap<String, Ids>,
    /// Groups' attributes (their members are in `member_of` only).
    groups: HashMap<Uuid, Entry<Attributes>>,
    group_names: HashMap<String, Ids>,
    group_external_ids: HashMap<String, Ids>,
    /// The groups of each member key (a member's lowercase id).
    member_of: HashMap<String, Ids>,
    /// Set once an event of the tenant could not be read or does not apply: the projector
    /// quarantines such events, so the read model may no longer be what the index folds, and
    /// PostgreSQL answers the tenant's lookups from then on.
    diverged: bool,
}

impl Tenant {
    fn apply_user(&mut self, id: Uuid, event: &UserEvent, at: OffsetDateTime, version: u64) {
        let previous = self.users.remove(&id);
        let created = previous.as_ref().map_or(at, |entry| entry.created);
        let current = match previous {
            Some(entry) => {
                let Some(attributes) = entry.state.attributes() else {
                    self.diverged = true;
                    return;
                };
                remove(
                    &mut self.user_names,
                    key(&attributes, "userName").as_deref(),
                    id,
                );
                remove(
                    &mut self.user_external_ids,
                    key(&attributes, "externalId").as_deref(),
                    id,
                );
                if entry.state.active {
                    User::Active(attributes)
                } else {
                    User::Inactive(attributes)
                }
            }
            None => User::Absent,
        };
        let (attributes, active) = match user::evolve(current, event) {
            User::Active(attributes) => (attributes, true),
            User::Inactive(attributes) => (attributes, false),
            User::Absent => {
                // An event for a user that does not exist: the projector quarantines it.
                self.diverged = true;
                return;
            }
            User::Deleted | User::Erased => {
                // A deleted user leaves every group (as the read model's rows do).
                self.member_of.remove(&id.to_string());
                return;
            }
        };
        insert(&mut self.user_names, key(&attributes, "userName"), id);
        insert(
            &mut self.user_external_ids,
            key(&attributes, "externalId"),
            id,
        );
        let Ok(json) = serde_json::to_string(&attributes) else {
            self.diverged = true;
            return;
        };
        self.users.insert(
            id,
            Entry {
                state: StoredUser {
                    attributes: json.into_boxed_str(),
                    active,
                },
                version,
                created,
                modified: at,
            },
        );
    }

    fn apply_group(&mut self, id: Uuid, event: &GroupEvent, at: OffsetDateTime, version: u64) {
        let previous = self.groups.remove(&id);
        let created = previous.as_ref().map_or(at, |entry| entry.created);
        let current = match previous {
            Some(entry) => {
                remove(
                    &mut self.group_names,
                    key(&entry.state, "displayName").as_deref(),
                    id,
                );
                remove(
                    &mut self.group_external_ids,
                    key(&entry.state, "externalId").as_deref(),
                    id,
                );
                // Members are not kept here: the events say who came and who went.
                Group::Active(GroupState {
                    attributes: entry.state,
                    members: Default::default(),
                })
            }
            None => Group::Absent,
        };
        let state = match group::evolve(current, event) {
            Group::Active(state) => state,
            Group::Deleted => {
                // A deletion takes every member out (rare: it looks at every member key).
                self.member_of.retain(|_, groups| {
                    if let Ok(at) = groups.binary_search(&id) {
                        groups.remove(at);
                    }
                    !groups.is_empty()
                });
                return;
            }
            Group::Absent => {
                // An event for a group that does not exist: the projector quarantines it.
                self.diverged = true;
                return;
            }
        };
        // Any other event changes only the members it names (a member change costs the same
        // on a group of 100,000 as on a group of 10).
        match event {
            GroupEvent::Created { members, .. } | GroupEvent::MembersAdded { members } => {
                for member in members {
                    insert(&mut self.member_of, Some(member.key()), id);
                }
            }
            GroupEvent::MembersRemoved { members } => {
                for member in members {
                    remove(&mut self.member_of, Some(&member.to_lowercase()), id);
                }
            }
            _ => {}
        }
        insert(
            &mut self.group_names,
            key(&state.attributes, "displayName"),
            id,
        );
        insert(
            &mut self.group_external_ids,
            key(&state.attributes, "externalId"),
            id,
        );
        self.groups.insert(
            id,
            Entry {
                state: state.attributes,
                version,
                created,
                modified: at,
            },
        );
    }

    /// The ids that meet every condition, or `None` when there is none.
    fn matching<C>(conditions: &[C], candidates: impl Fn(&C) -> Ids) -> Option<Ids> {
        let mut matching: Option<Ids> = None;
        for condition in conditions {
            let ids = candidates(condition);
            matching = Some(match matching {
                None => ids,
                Some(mut so_far) => {
                    so_far.retain(|id| ids.binary_search(id).is_ok());
                    so_far
                }
            });
        }
        matching
    }

    fn lookup(map: &HashMap<String, Ids>, text: &str) -> Ids {
        map.get(fold(text).as_ref()).cloned().unwrap_or_default()
    }

    /// The page of these resources in the read model's order (creation, then id), rendered.
    fn page<S>(
        ids: Ids,
        entries: &HashMap<Uuid, Entry<S>>,
        page: Page,
        render: impl Fn(&Entry<S>, Uuid) -> Option<Value>,
    ) -> Option<Found> {
        let mut found: Vec<(&Entry<S>, Uuid)> = ids
            .into_iter()
            .filter_map(|id| Some((entries.get(&id)?, id)))
            .collect();
        found.sort_by_key(|(entry, id)| (entry.created, *id));
        let total = found.len();
        let (resources, versions) = found
            .into_iter()
            .skip(page.offset)
            .take(page.limit)
            .map(|(entry, id)| Some((render(entry, id)?, entry.version)))
            .collect::<Option<(Vec<Value>, Vec<u64>)>>()?;
        Some(Found {
            resources,
            total,
            versions,
        })
    }

    /// `[id]` if it is one of `entries`.
    fn present<S>(entries: &HashMap<Uuid, Entry<S>>, id: Uuid) -> Ids {
        entries.get(&id).map(|_| id).into_iter().collect()
    }

    fn users(&self, conditions: &[UserCondition], page: Page, base: &str) -> Option<Found> {
        let ids = Self::matching(conditions, |condition| match condition {
            UserCondition::Id(id) => Self::present(&self.users, *id),
            UserCondition::UserName(name) => Self::lookup(&self.user_names, name),
            UserCondition::ExternalId(id) => Self::lookup(&self.user_external_ids, id),
        })?;
        Self::page(ids, &self.users, page, |entry, id| {
            let attributes = entry.state.attributes()?;
            let groups = page.joined.then(|| self.groups_of(id));
            Some(mapping::user(
                id,
                &attributes,
                groups.as_deref(),
                entry.meta(base),
            ))
        })
    }

    /// A user's groups as the read model lists them: by folded displayName (byte by byte), then
    /// id.
    fn groups_of(&self, user: Uuid) -> Vec<(Uuid, String)> {
        let mut groups: Vec<(String, Uuid, String)> = self
            .member_of
            .get(&user.to_string())
            .into_iter()
            .flatten()
            .filter_map(|group| {
                let name = self.groups.get(group)?.state.get("displayName");
                let name = name.and_then(Value::as_str).unwrap_or_default().to_owned();
                Some((fold(&name).into_owned(), *group, name))
            })
            .collect();
        groups.sort();
        groups.into_iter().map(|(_, id, name)| (id, name)).collect()
    }

    fn groups(&self, conditions: &[GroupCondition], page: Page, base: &str) -> Option<Found> {
        // Members are listed in the order they were added, which only the read model keeps.
        if page.joined {
            return None;
        }
        let ids = Self::matching(conditions, |condition| match condition {
            GroupCondition::Id(id) => Self::present(&self.groups, *id),
            GroupCondition::DisplayName(name) => Self::lookup(&self.group_names, name),
            GroupCondition::ExternalId(id) => Self::lookup(&self.group_external_ids, id),
            GroupCondition::Member(member) => self
                .member_of
                .get(&member.to_lowercase())
                .cloned()
                .unwrap_or_default(),
        })?;
        Self::page(ids, &self.groups, page, |entry, id| {
            let members = std::iter::empty();
            Some(mapping::group(id, &entry.state, members, entry.meta(base)))
        })
    }
}

/// Which page of the matching resources to render, and whether with their joined attribute (a
/// user's groups, a group's members).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// How many matching resources come before the page.
    pub offset: usize,
    /// The most resources on the page.
    pub limit: usize,
    /// Whether the joined attribute is rendered.
    pub joined: bool,
}

/// A page of lookup results: their documents, and how many resources matched in all.
#[derive(Debug, Default)]
pub struct Found {
    /// The documents on the page.
    pub resources: Vec<Value>,
    /// Their versions (`meta.version`, the `ETag`), in the same order.
    pub versions: Vec<u64>,
    /// How many matched.
    pub total: usize,
}

/// Shared probes of the stream's last sequence: a lookup waits for one that started after it.
#[derive(Debug)]
struct Probes {
    started: AtomicU64,
    /// (the last probe finished, the stream's last sequence it read).
    done: watch::Sender<(u64, u64)>,
    wanted: Notify,
}

#[derive(Debug)]
struct Inner {
    tenants: RwLock<HashMap<String, Tenant>>,
    /// The stream sequence of the last message applied.
    applied: watch::Sender<u64>,
    /// Whether the index is caught up enough to try answering: it reached [`Inner::target`]
    /// since it last (re)started or last fell behind a lookup.
    ready: AtomicBool,
    /// The sequence whose application makes the index ready again.
    target: AtomicU64,
    /// Set when a message could not be read and its tenant is not known, or the stream was
    /// replaced: the index no longer answers at all (until the process restarts).
    blind: AtomicBool,
    /// When the stream the index folds was created (known once the feed started).
    created: std::sync::Mutex<Option<OffsetDateTime>>,
    /// The tenants whose read model does not hold all their events (a quarantine, open or
    /// skipped), with when the list was read: the index does not answer for them.
    behind: RwLock<(HashSet<String>, Option<Instant>)>,
    probes: Probes,
    /// Set only by `rollcall bench` ([`LookupIndex::set_probing_for_benchmark`]): lookups wait
    /// for no probe, so a write another replica answered may be missing from their answer.
    unprobed: AtomicBool,
    /// Debug builds: the feed applies nothing while set (tests make the index fall behind).
    #[cfg(debug_assertions)]
    held: AtomicBool,
    /// Dropped with the index: stops the feed (which may be waiting on a quiet stream).
    _stop: oneshot::Sender<()>,
}

/// The lookup index of this process.
#[derive(Debug, Clone)]
pub struct LookupIndex {
    inner: Arc<Inner>,
}

impl LookupIndex {
    /// Starts following the stream of `log` from its first message; the index answers lookups
    /// once it has caught up. It stops when the last clone of the index is dropped.
    pub fn start(log: EventLog, store: Store) -> Self {
        let (index, stopped) = Self::new();
        tokio::spawn(quarantine(Arc::downgrade(&index.inner), store.clone()));
        let feed = feed(Arc::downgrade(&index.inner), log.clone(), store);
        tokio::spawn(async move {
            tokio::select! {
                _ = stopped => {}
                () = feed => {}
            }
        });
        tokio::spawn(probe(Arc::downgrade(&index.inner), log));
        index
    }

    /// An index that follows nothing and never vouches for itself ([`LookupIndex::current`] is
    /// `false`): events reach it only through [`LookupIndex::apply`]. For measuring it.
    pub fn detached() -> Self {
        Self::new().0
    }

    /// Applies the events of one message, as the feed does.
    pub fn apply(&self, events: &[Delivered]) {
        self.inner.apply(events);
    }

    fn new() -> (Self, oneshot::Receiver<()>) {
        let (applied, _) = watch::channel(0);
        let (done, _) = watch::channel((0, 0));
        let (stop, stopped) = oneshot::channel();
        let inner = Arc::new(Inner {
            tenants: RwLock::default(),
            applied,
            ready: AtomicBool::new(false),
            target: AtomicU64::new(0),
            blind: AtomicBool::new(false),
            created: std::sync::Mutex::new(None),
            behind: RwLock::default(),
            probes: Probes {
                started: AtomicU64::new(0),
                done,
                wanted: Notify::new(),
            },
            unprobed: AtomicBool::new(false),
            #[cfg(debug_assertions)]
            held: AtomicBool::new(false),
            _stop: stop,
        });
        (Self { inner }, stopped)
    }

    /// Waits until the index holds every write answered before this call, and says whether it
    /// does (`false`: answer from PostgreSQL).
    pub async fn current(&self) -> bool {
        let inner = &self.inner;
        if !inner.ready.load(Ordering::Acquire) || inner.blind.load(Ordering::Acquire) {
            return false;
        }
        let known = inner
            .behind
            .read()
            .ok()
            .and_then(|behind| behind.1)
            .is_some_and(|read| read.elapsed() < QUARANTINE_STALE);
        if !known {
            debug!("which tenants are in quarantine is not known; answering from PostgreSQL");
            return false;
        }
        if inner.unprobed.load(Ordering::Relaxed) {
            return true;
        }
        let probes = &self.inner.probes;
        // A probe that starts after this point sees every write answered before it.
        let target = probes.started.load(Ordering::Acquire) + 1;
        let mut done = probes.done.subscribe();
        probes.wanted.notify_one();
        let head = match tokio::time::timeout(
            PROBE_TIMEOUT,
            done.wait_for(|(finished, _)| *finished >= target),
        )
        .await
        {
            Ok(Ok(done)) => done.1,
            _ => {
                debug!(
                    "the stream's last sequence is not known in time; answering from PostgreSQL"
                );
                return false;
            }
        };
        let mut applied = inner.applied.subscribe();
        let caught_up =
            tokio::time::timeout(CATCH_UP, applied.wait_for(|applied| *applied >= head)).await;
        if !matches!(caught_up, Ok(Ok(_))) {
            debug!(
                head,
                "the lookup index is behind the stream; answering from PostgreSQL until it caught up"
            );
            // Later lookups do not wait for it either, until it reaches this head.
            inner.target.fetch_max(head, Ordering::AcqRel);
            inner.ready.store(false, Ordering::Release);
            // Unless it did meanwhile (the feed may have looked at the target before it moved).
            if *inner.applied.borrow() >= inner.target.load(Ordering::Acquire) {
                inner.ready.store(true, Ordering::Release);
            }
            return false;
        }
        true
    }

    /// Turns the probe of the stream's last sequence off (`false`) or on again, for this index
    /// and its clones. Only `rollcall bench` calls it, to measure in the same run what the
    /// probe (read-your-writes across replicas) costs a lookup; no setting reaches it. While
    /// off, [`LookupIndex::current`] vouches for an index that is ready without asking NATS,
    /// so a write another replica answered may be missing from a lookup's answer.
    #[doc(hidden)]
    pub fn set_probing_for_benchmark(&self, probe: bool) {
        self.inner.unprobed.store(!probe, Ordering::Relaxed);
    }

    /// How many probes of the stream's last sequence this index started: one serves every
    /// lookup that waits for it.
    pub fn probes_started(&self) -> u64 {
        self.inner.probes.started.load(Ordering::Acquire)
    }

    /// Whether the index may answer `tenant`'s lookups at all (checked before a lookup waits
    /// for [`LookupIndex::current`]): not when the tenant's read model is behind the stream or
    /// the index diverged from it.
    pub fn answers(&self, tenant: &str) -> bool {
        self.inner
            .answer(tenant, |_| Some(Found::default()))
            .is_some()
    }

    /// The users of `tenant` that meet every condition, or `None` when the index does not
    /// answer them. Call [`LookupIndex::current`] first.
    pub fn users(
        &self,
        tenant: &str,
        conditions: &[UserCondition],
        page: Page,
        base: &str,
    ) -> Option<Found> {
        self.inner
            .answer(tenant, |tenant| tenant.users(conditions, page, base))
    }

    /// The groups of `tenant` that meet every condition, or `None` when the index does not
    /// answer them (a page with members). Call [`LookupIndex::current`] first.
    pub fn groups(
        &self,
        tenant: &str,
        conditions: &[GroupCondition],
        page: Page,
        base: &str,
    ) -> Option<Found> {
        self.inner
            .answer(tenant, |tenant| tenant.groups(conditions, page, base))
    }

    /// Holds the feed (it applies nothing more until released, once it has applied the messages
    /// it was applying, at most [`FEED_CHUNK`]), so that the index falls behind the stream.
    /// Debug builds only: for the tests of what a lookup does then.
    #[cfg(debug_assertions)]
    pub fn hold_feed(&self, held: bool) {
        self.inner.held.store(held, Ordering::Release);
    }
}

impl Inner {
    /// Whether the stream created at `created` is the one the index folds (the first it
    /// sees is); a replaced stream (restored, recreated) blinds the index for good.
    fn same_stream(&self, created: OffsetDateTime) -> bool {
        let Ok(mut folded) = self.created.lock() else {
            return false;
        };
        match *folded {
            None => {
                *folded = Some(created);
                true
            }
            Some(folded) if folded == created => true,
            Some(_) => {
                if !self.blind.swap(true, Ordering::AcqRel) {
                    warn!("the event stream was replaced since the lookup index started; PostgreSQL answers every lookup until this process restarts");
                }
                false
            }
        }
    }

    /// What `lookup` finds in `tenant`'s part of the index (nothing for a tenant it has never
    /// seen), unless the tenant is answered from PostgreSQL (its read model is behind the
    /// stream, or the index diverged from it).
    fn answer(&self, tenant: &str, lookup: impl FnOnce(&Tenant) -> Option<Found>) -> Option<Found> {
        if self.is_behind(tenant) {
            return None;
        }
        let tenants = self.tenants.read().ok()?;
        match tenants.get(tenant) {
            Some(tenant) if tenant.diverged => None,
            Some(tenant) => lookup(tenant),
            None => lookup(&Tenant::default()),
        }
    }

    /// Whether the tenant's read model is behind the stream (a quarantine).
    fn is_behind(&self, tenant: &str) -> bool {
        self.behind
            .read()
            .map_or(true, |behind| behind.0.contains(tenant))
    }

    /// Stops answering for `tenant` (an event of its could not be read or does not apply).
    fn diverge(&self, tenant: &str) {
        if let Ok(mut tenants) = self.tenants.write() {
            tenants.entry(tenant.to_owned()).or_default().diverged = true;
        }
    }

    /// Applies the events of one message.
    fn apply(&self, events: &[Delivered]) {
        let Ok(mut tenants) = self.tenants.write() else {
            return;
        };
        for delivered in events {
            let envelope = &delivered.envelope;
            let (kind, schema, payload) = (
                &envelope.event_type,
                envelope.schema_version,
                &envelope.payload,
            );
            let (id, at, version) = (
                envelope.aggregate_id,
                envelope.occurred_at,
                envelope.version,
            );
            match envelope.aggregate_type.as_str() {
                UserEvent::AGGREGATE => match UserEvent::from_payload(kind, schema, payload) {
                    Ok(event) => tenants
                        .entry(envelope.tenant.clone())
                        .or_default()
                        .apply_user(id, &event, at, version),
                    Err(reason) => {
                        warn!(sequence = delivered.sequence, reason, "the lookup index cannot read an event; PostgreSQL answers the tenant's lookups");
                        tenants.entry(envelope.tenant.clone()).or_default().diverged = true;
                    }
                },
                GroupEvent::AGGREGATE => match GroupEvent::from_payload(kind, schema, payload) {
                    Ok(event) => tenants
                        .entry(envelope.tenant.clone())
                        .or_default()
                        .apply_group(id, &event, at, version),
                    Err(reason) => {
                        warn!(sequence = delivered.sequence, reason, "the lookup index cannot read an event; PostgreSQL answers the tenant's lookups");
                        tenants.entry(envelope.tenant.clone()).or_default().diverged = true;
                    }
                },
                _ => {}
            }
        }
    }
}

/// Follows the stream into the index, from where it left off after an error.
async fn feed(inner: Weak<Inner>, log: EventLog, store: Store) {
    use async_nats::jetstream::consumer::{pull, DeliverPolicy};
    loop {
        if let Some(inner) = inner.upgrade() {
            inner.ready.store(false, Ordering::Release);
        }
        let info = log
            .head_and_creation()
            .await
            .map_err(|error| error.to_string());
        let followed = async {
            let (head, created) = info?;
            let applied = {
                let Some(inner) = inner.upgrade() else {
                    return Ok(());
                };
                if !inner.same_stream(created) {
                    return Ok(());
                }
                inner.target.store(head, Ordering::Release);
                let applied = *inner.applied.borrow();
                applied
            };
            let consumer = log
                .stream()
                .create_consumer(pull::OrderedConfig {
                    filter_subject: log.namespace().all_events(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: applied + 1,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|error| error.to_string())?;
            let messages = consumer
                .messages()
                .await
                .map_err(|error| error.to_string())?;
            if head <= applied {
                if let Some(inner) = inner.upgrade() {
                    inner.ready.store(true, Ordering::Release);
                }
            }
            // What arrived together is opened together: the data keys of every user whose
            // events are sealed in it are read in one query, not one a message (another
            // replica's writes are not in this process's key cache).
            let mut chunks = messages.ready_chunks(FEED_CHUNK);
            while let Some(chunk) = chunks.next().await {
                let Some(inner) = inner.upgrade() else {
                    return Ok(());
                };
                #[cfg(debug_assertions)]
                while inner.held.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let mut decoded = Vec::with_capacity(chunk.len());
                let mut broken = None;
                for message in chunk {
                    match message {
                        Ok(message) => decoded.push((decode(&message), message)),
                        // Those before it are applied first; the stream is followed again
                        // from after them.
                        Err(error) => {
                            broken = Some(error.to_string());
                            break;
                        }
                    }
                }
                let owners = rollcall_personal::sealed_owners(
                    decoded
                        .iter_mut()
                        .filter_map(|(events, _)| events.as_mut().ok())
                        .flatten(),
                );
                if !owners.is_empty() {
                    // PostgreSQL did not answer: nothing of the chunk is applied yet, follow
                    // again from before it. Any other error is met again by the message whose
                    // key it is, and handled there.
                    if let Err(error @ rollcall_store::StoreError::Database(_)) =
                        store.data_keys(&owners, Freshness::Cached).await
                    {
                        return Err(format!("reading data keys: {error}"));
                    }
                }
                for (decoded, message) in decoded {
                    follow_one(&inner, &store, decoded, &message).await?;
                }
                if let Some(error) = broken {
                    return Err(error);
                }
            }
            Err("the stream's messages ended".to_owned())
        };
        match followed.await {
            Ok(()) => return,
            Err(error) => {
                if inner.strong_count() == 0 {
                    return;
                }
                warn!(error, "the lookup index lost the stream; PostgreSQL answers lookups until it has caught up again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Opens and applies one message the feed received (decoded as `decoded`), and notes it
/// applied. `Err` when PostgreSQL did not answer: the feed follows the stream again from it.
async fn follow_one(
    inner: &Inner,
    store: &Store,
    decoded: Result<Vec<Delivered>, rollcall_eventlog::LoadError>,
    message: &async_nats::jetstream::Message,
) -> Result<(), String> {
    let sequence = match decoded {
        Ok(mut events) => {
            rollcall_personal::forget_erased(store, events.iter().map(|e| &e.envelope));
            match rollcall_personal::open_all(store, &mut events, Freshness::Cached).await {
                Ok(()) => {}
                Err(rollcall_personal::PersonalError::Store(
                    error @ rollcall_store::StoreError::Database(_),
                )) => {
                    return Err(format!("reading data keys: {error}"));
                }
                Err(error) => {
                    if let Some(first) = events.first() {
                        warn!(error = %error, "the lookup index cannot open an event's personal fields; PostgreSQL answers its tenant's lookups");
                        inner.diverge(&first.envelope.tenant);
                    }
                }
            }
            inner.apply(&events);
            events.first().map(|event| event.sequence)
        }
        Err(error) => {
            match rollcall_eventlog::partition::subject_tenant(&message.subject) {
                Some(tenant) => {
                    warn!(error = %error, "the lookup index cannot read a message; PostgreSQL answers its tenant's lookups");
                    inner.diverge(tenant);
                }
                None => {
                    warn!(error = %error, "the lookup index cannot read a message of no known tenant; PostgreSQL answers every lookup");
                    inner.blind.store(true, Ordering::Release);
                }
            }
            message.info().ok().map(|info| info.stream_sequence)
        }
    };
    if let Some(sequence) = sequence {
        inner.applied.send_replace(sequence);
        if sequence >= inner.target.load(Ordering::Acquire)
            && !inner.ready.swap(true, Ordering::AcqRel)
        {
            info!(sequence, "the lookup index caught up with the stream");
        }
    }
    Ok(())
}

/// Reads which tenants' read models are behind the stream (a quarantine) every second.
async fn quarantine(inner: Weak<Inner>, store: Store) {
    let mut interval = tokio::time::interval(QUARANTINE_EVERY);
    loop {
        interval.tick().await;
        if inner.strong_count() == 0 {
            return;
        }
        match store.tenants_behind_stream().await {
            Ok(tenants) => {
                let Some(inner) = inner.upgrade() else { return };
                let read = (tenants.into_iter().collect(), Some(Instant::now()));
                if let Ok(mut behind) = inner.behind.write() {
                    *behind = read;
                };
            }
            Err(error) => debug!(error = %error, "reading the quarantine failed"),
        }
    }
}

/// Runs probes of the stream's last sequence while lookups want them, one at a time.
async fn probe(inner: Weak<Inner>, log: EventLog) {
    loop {
        let Some(inner) = inner.upgrade() else { return };
        // Wakes at least once a second to notice the index is gone.
        let wanted = tokio::time::timeout(Duration::from_secs(1), inner.probes.wanted.notified());
        if wanted.await.is_err() {
            continue;
        }
        let id = inner.probes.started.fetch_add(1, Ordering::AcqRel) + 1;
        match log.head_and_creation().await {
            Ok((head, created)) => {
                // A replaced stream's lookups wait for no probe: they find the index blind.
                if inner.same_stream(created) {
                    inner.probes.done.send_replace((id, head));
                }
            }
            Err(error) => {
                // The lookups waiting for it time out and are answered from PostgreSQL.
                debug!(error = %error, "probing the stream's last sequence failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_domain::group::Member;
    use serde_json::json;

    fn attributes(value: Value) -> Attributes {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn at() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    const PAGE: Page = Page {
        offset: 0,
        limit: 100,
        joined: true,
    };

    #[test]
    fn names_are_looked_up_by_their_folding_and_follow_renames() {
        let mut tenant = Tenant::default();
        let id = Uuid::now_v7();
        let created = UserEvent::Provisioned {
            attributes: attributes(json!({"userName": "Ada@Example.com", "externalId": "E1"})),
            active: true,
        };
        tenant.apply_user(id, &created, at(), 1);
        let by_name = |tenant: &Tenant, name: &str| {
            tenant
                .users(&[UserCondition::UserName(name.into())], PAGE, "http://x")
                .unwrap()
                .total
        };
        assert_eq!(by_name(&tenant, "ada@example.COM"), 1);
        let renamed = UserEvent::AttributesChanged {
            changes: vec![rollcall_domain::AttributeChange {
                path: "userName".into(),
                before: Some(json!("Ada@Example.com")),
                after: Some(json!("grace@example.com")),
                redacted: false,
            }],
        };
        tenant.apply_user(id, &renamed, at(), 2);
        assert_eq!(by_name(&tenant, "ada@example.com"), 0);
        assert_eq!(by_name(&tenant, "GRACE@example.com"), 1);
    }

    #[test]
    fn a_tenant_with_an_event_that_does_not_apply_is_no_longer_answered_from_the_index() {
        let index = LookupIndex::detached();
        let (known, unknown) = (Uuid::now_v7(), Uuid::now_v7());
        let delivered = |id, event: &UserEvent, version| Delivered {
            sequence: version,
            position: 0,
            envelope: rollcall_eventlog::Envelope {
                event_id: Uuid::now_v7(),
                tenant: "acme".into(),
                aggregate_type: UserEvent::AGGREGATE.into(),
                aggregate_id: id,
                version,
                event_type: event.event_type().into(),
                schema_version: 1,
                occurred_at: at(),
                actor: rollcall_eventlog::Actor::Operator {
                    name: "test".into(),
                },
                request_id: None,
                traceparent: None,
                payload: event.to_payload(),
            },
        };
        let created = UserEvent::Provisioned {
            attributes: attributes(json!({"userName": "u"})),
            active: true,
        };
        index.apply(&[delivered(known, &created, 1)]);
        let lookup = || index.users("acme", &[UserCondition::Id(known)], PAGE, "http://x");
        assert_eq!(lookup().map(|found| found.total), Some(1));
        // The projector quarantines a deactivation of a user that does not exist.
        index.apply(&[delivered(unknown, &UserEvent::Deactivated, 1)]);
        assert!(lookup().is_none());
        // Other tenants are answered as before.
        assert!(index
            .users("other", &[UserCondition::Id(known)], PAGE, "http://x")
            .is_some());
    }

    #[test]
    fn members_added_and_removed_are_found_by_any_case_of_their_id() {
        let mut tenant = Tenant::default();
        let group = Uuid::now_v7();
        tenant.apply_group(
            group,
            &GroupEvent::Created {
                attributes: attributes(json!({"displayName": "G"})),
                members: vec![Member::new("A")],
            },
            at(),
            1,
        );
        let page = Page {
            joined: false,
            ..PAGE
        };
        let members = |tenant: &Tenant, member: &str| {
            let condition = [GroupCondition::Member(member.into())];
            tenant.groups(&condition, page, "http://x").unwrap().total
        };
        let added = GroupEvent::MembersAdded {
            members: vec![Member::new("b"), Member::new("a")],
        };
        tenant.apply_group(group, &added, at(), 2);
        assert_eq!((members(&tenant, "a"), members(&tenant, "B")), (1, 1));
        let removed = GroupEvent::MembersRemoved {
            members: vec!["A".into(), "not-a-member".into()],
        };
        tenant.apply_group(group, &removed, at(), 3);
        assert_eq!((members(&tenant, "a"), members(&tenant, "b")), (0, 1));
        assert!(!tenant.member_of.contains_key("not-a-member"));
    }

    #[test]
    fn a_deleted_user_leaves_every_group_and_a_deleted_group_every_member() {
        let mut tenant = Tenant::default();
        let (user, group) = (Uuid::now_v7(), Uuid::now_v7());
        tenant.apply_user(
            user,
            &UserEvent::Provisioned {
                attributes: attributes(json!({"userName": "u"})),
                active: true,
            },
            at(),
            1,
        );
        tenant.apply_group(
            group,
            &GroupEvent::Created {
                attributes: attributes(json!({"displayName": "G"})),
                members: vec![Member::new(user.to_string().to_uppercase())],
            },
            at(),
            1,
        );
        let member = |tenant: &Tenant| {
            tenant
                .groups(
                    &[GroupCondition::Member(user.to_string())],
                    Page {
                        joined: false,
                        ..PAGE
                    },
                    "http://x",
                )
                .unwrap()
                .total
        };
        assert_eq!(member(&tenant), 1);
        let found = tenant
            .users(&[UserCondition::Id(user)], PAGE, "http://x")
            .unwrap();
        assert_eq!(found.resources[0]["groups"][0]["display"], "G");
        tenant.apply_user(user, &UserEvent::Deleted, at(), 2);
        assert_eq!(member(&tenant), 0);
        tenant.apply_group(group, &GroupEvent::Deleted, at(), 2);
        assert!(tenant.member_of.is_empty() && tenant.group_names.is_empty());
    }
}
