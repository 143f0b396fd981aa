//! The rebuild's bulk apply: a batch's events folded per resource in memory, then written with
//! a few statements per table instead of a few per event.
//!
//! It gives exactly the rows that applying the events one by one ([`crate::apply`]) gives: each
//! event goes through the same `evolve`, from the state the previous one left, and the
//! memberships a deletion removes are removed in the same order. What it cannot fold (an event
//! that does not apply, a resolution of the quarantine, a resource in quarantine) or what
//! PostgreSQL refuses sends the batch back to the one-by-one path, which quarantines what must
//! be. It writes no access outbox: a rebuild does not publish (the live state is published).

use std::collections::{HashMap, HashSet};

use rollcall_domain::group::{self, Group, GroupEvent, GroupState};
use rollcall_domain::user::{self, User, UserEvent};
use rollcall_domain::{ApplicationEvent, EventKind, IdentityEvent, StreamEvent};
use rollcall_eventlog::consumer::Delivered;
use rollcall_eventlog::Envelope;
use rollcall_store::access::{self, RevocationRow};
use rollcall_store::group::{GroupRow, MemberEntry, NewMember};
use rollcall_store::user::UserRow;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::apply::{self, Pending};
use crate::ProjectorError;

/// A resource as the batch has left it so far.
struct Slot<'a, S> {
    /// Its state; `None` while absent (never created, or deleted).
    state: Option<S>,
    /// When it was created (kept across changes, as the row keeps it).
    created_at: Option<OffsetDateTime>,
    /// The batch's last event of it (its version and time go into the row), if any.
    last: Option<&'a Envelope>,
    /// Whether an event of the batch deleted it (its row and memberships go first).
    deleted: bool,
}

impl<'a, S> Slot<'a, S> {
    fn absent() -> Self {
        Self {
            state: None,
            created_at: None,
            last: None,
            deleted: false,
        }
    }

    /// What to write for it: its state, last event and creation time, unless it ends the
    /// batch absent or the batch did not change it.
    fn written(self) -> Option<(S, &'a Envelope, OffsetDateTime)> {
        Some((self.state?, self.last?, self.created_at?))
    }
}

/// A membership the batch touched: added (kept if it was there), removed, or removed and
/// added again (its earlier row goes first).
enum Membership {
    Added(NewMember, OffsetDateTime),
    Removed,
    Replaced(NewMember, OffsetDateTime),
}

/// An event made ready for folding off the writing task: its domain event read from the
/// payload and its audit record drafted (the rebuild's reader does it while the previous batch
/// is written).
pub(crate) struct Prepared {
    event: Result<Parsed, String>,
    draft: apply::Draft,
}

enum Parsed {
    User(UserEvent),
    Group(GroupEvent),
    /// An application or SSF stream event: audited only (the access services fold them from
    /// the stream themselves).
    Application,
}

/// An event's payload with its personal fields opened, and the schema version it then has.
pub(crate) type Opened<'a> = (&'a serde_json::Value, u32);

/// Prepares an event for [`Fold::apply`]: its domain event read from `opened` (its payload with
/// the personal fields opened, when they are sealed; why they did not open otherwise), its
/// audit record drafted from the stored envelope.
pub(crate) fn prepare(
    delivered: &Delivered,
    opened: Result<Option<Opened<'_>>, String>,
) -> Prepared {
    let stored = &delivered.envelope;
    let draft = apply::draft(stored, delivered.sequence, delivered.position);
    let (payload, schema_version) = match opened {
        Ok(Some(opened)) => opened,
        Ok(None) => (&stored.payload, stored.schema_version),
        Err(reason) => {
            return Prepared {
                event: Err(reason),
                draft,
            }
        }
    };
    let event_type = stored.event_type.as_str();
    let event = match stored.aggregate_type.as_str() {
        UserEvent::AGGREGATE => {
            UserEvent::from_payload(event_type, schema_version, payload).map(Parsed::User)
        }
        GroupEvent::AGGREGATE => {
            GroupEvent::from_payload(event_type, schema_version, payload).map(Parsed::Group)
        }
        IdentityEvent::AGGREGATE => {
            IdentityEvent::from_payload(event_type, schema_version, payload)
                .map(|_| Parsed::Application)
        }
        StreamEvent::AGGREGATE => StreamEvent::from_payload(event_type, schema_version, payload)
            .map(|_| Parsed::Application),
        ApplicationEvent::AGGREGATE => {
            ApplicationEvent::from_payload(event_type, schema_version, payload)
                .map(|_| Parsed::Application)
        }
        other => Err(format!("unknown aggregate type {other:?}")),
    };
    Prepared { event, draft }
}

type Key<'a> = (&'a str, Uuid);

/// A batch's events folded per resource.
#[derive(Default)]
pub(crate) struct Fold<'a> {
    users: HashMap<Key<'a>, Slot<'a, User>>,
    groups: HashMap<Key<'a>, Slot<'a, GroupState>>,
    members: HashMap<(&'a str, Uuid, String), Membership>,
    revocations: Vec<RevocationRow>,
}

impl<'a> Fold<'a> {
    /// Reads the current rows of every user and group the events concern (locked, in one
    /// statement each).
    ///
    /// `written`, when given, holds the id of every user and group that has a row (a rebuild
    /// knows what it wrote into its empty schema): the others are not looked up.
    pub(crate) async fn load(
        connection: &mut PgConnection,
        events: &'a [Delivered],
        written: Option<&HashSet<Uuid>>,
    ) -> Result<Fold<'a>, ProjectorError> {
        let mut fold = Fold::default();
        for event in events {
            let key = (event.envelope.tenant.as_str(), event.envelope.aggregate_id);
            match event.envelope.aggregate_type.as_str() {
                UserEvent::AGGREGATE => {
                    fold.users.entry(key).or_insert_with(Slot::absent);
                }
                GroupEvent::AGGREGATE => {
                    fold.groups.entry(key).or_insert_with(Slot::absent);
                }
                _ => {}
            }
        }
        let stored = |key: &&Key<'a>| written.is_none_or(|written| written.contains(&key.1));
        let keys: Vec<Key<'a>> = fold.users.keys().filter(stored).copied().collect();
        let mut rows: HashMap<_, _> = rollcall_store::user::lock_many(connection, &keys)
            .await?
            .into_iter()
            .map(|row| ((row.tenant.clone(), row.id), row))
            .collect();
        for (key, slot) in &mut fold.users {
            if let Some(row) = rows.remove(&(key.0.to_owned(), key.1)) {
                let attributes = row.attributes.0;
                slot.state = Some(if row.active {
                    User::Active(attributes)
                } else {
                    User::Inactive(attributes)
                });
                slot.created_at = Some(row.created_at);
            }
        }
        let keys: Vec<Key<'a>> = fold.groups.keys().filter(stored).copied().collect();
        let mut rows: HashMap<_, _> = rollcall_store::group::lock_many(connection, &keys)
            .await?
            .into_iter()
            .map(|row| ((row.tenant.clone(), row.id), row))
            .collect();
        for (key, slot) in &mut fold.groups {
            if let Some(row) = rows.remove(&(key.0.to_owned(), key.1)) {
                // Members live in their own table; the events say who came and who went.
                slot.state = Some(GroupState {
                    attributes: row.attributes.0,
                    members: Default::default(),
                });
                slot.created_at = Some(row.created_at);
            }
        }
        Ok(fold)
    }

    /// Folds one event into the batch's state; returns its drafted audit record.
    pub(crate) fn apply(
        &mut self,
        delivered: &'a Delivered,
        prepared: Prepared,
    ) -> Result<apply::Draft, ProjectorError> {
        let envelope = &delivered.envelope;
        let sequence = delivered.sequence;
        let fail = |reason: String| ProjectorError::Event { sequence, reason };
        let key = (envelope.tenant.as_str(), envelope.aggregate_id);
        let at = envelope.occurred_at;
        match prepared.event.map_err(fail)? {
            Parsed::User(event) => {
                let slot = self.users.entry(key).or_insert_with(Slot::absent);
                let current = slot.state.take().unwrap_or(User::Absent);
                match user::evolve(current, &event) {
                    next @ (User::Active(_) | User::Inactive(_)) => {
                        if let Some(attributes) = next.attributes() {
                            keys_fit_index(key.0, attributes, USER_KEYS, sequence)?;
                        }
                        slot.created_at.get_or_insert(at);
                        slot.state = Some(next);
                    }
                    User::Deleted | User::Erased => {
                        slot.created_at = None;
                        slot.deleted = true;
                        // Deleting a user removes it from every group.
                        let member = envelope.aggregate_id.to_string();
                        self.members.retain(|(tenant, _, key), _| {
                            !(*tenant == envelope.tenant && *key == member)
                        });
                    }
                    User::Absent => {
                        return Err(fail(format!(
                            "{} for a user that does not exist",
                            envelope.event_type
                        )))
                    }
                }
                slot.last = Some(envelope);
                self.revocations.extend(apply::revocation(
                    &event,
                    envelope,
                    sequence,
                    delivered.position,
                ));
            }
            Parsed::Group(event) => {
                let slot = self.groups.entry(key).or_insert_with(Slot::absent);
                let current = slot.state.take().map_or(Group::Absent, Group::Active);
                match group::evolve(current, &event) {
                    Group::Active(mut state) => {
                        state.members.clear();
                        keys_fit_index(key.0, &state.attributes, GROUP_KEYS, sequence)?;
                        slot.created_at.get_or_insert(at);
                        slot.state = Some(state);
                        match &event {
                            GroupEvent::Created { members, .. }
                            | GroupEvent::MembersAdded { members } => {
                                for member in members {
                                    fits_index(key.0, &member.value, sequence)?;
                                    add(&mut self.members, key, member, at);
                                }
                            }
                            GroupEvent::MembersRemoved { members } => {
                                for member in members {
                                    self.members.insert(
                                        (key.0, key.1, member.to_lowercase()),
                                        Membership::Removed,
                                    );
                                }
                            }
                            _ => {}
                        }
                    }
                    Group::Deleted => {
                        slot.created_at = None;
                        slot.deleted = true;
                        self.members
                            .retain(|(tenant, group, _), _| !(*tenant == key.0 && *group == key.1));
                    }
                    Group::Absent => {
                        return Err(fail(format!(
                            "{} for a group that does not exist",
                            envelope.event_type
                        )))
                    }
                }
                slot.last = Some(envelope);
            }
            Parsed::Application => {}
        }
        Ok(prepared.draft)
    }

    /// Writes the folded state on `connection` and, at the same time, the audit records and
    /// chain heads in `pending` on `journal`.
    pub(crate) async fn write(
        self,
        connection: &mut PgConnection,
        journal: &mut PgConnection,
        pending: Pending,
    ) -> Result<(), ProjectorError> {
        // Both run to their end, even when the other fails: a `COPY` given up between its last
        // data and the server's answer would leave that answer unread on its pooled connection.
        let (rows, audit) = tokio::join!(self.write_rows(connection), pending.flush(journal));
        rows.and(audit)
    }

    /// Writes the folded state: deletions first (a deleted user's or group's memberships with
    /// them), then memberships removed, memberships added, rows and revocations.
    async fn write_rows(self, connection: &mut PgConnection) -> Result<(), ProjectorError> {
        fn deleted<'a, S>(slots: &HashMap<Key<'a>, Slot<'a, S>>) -> Vec<Key<'a>> {
            slots
                .iter()
                .filter(|(_, slot)| slot.deleted)
                .map(|(key, _)| *key)
                .collect()
        }
        let (deleted_users, deleted_groups) = (deleted(&self.users), deleted(&self.groups));
        let users: Vec<UserRow> = self
            .users
            .into_values()
            .filter_map(Slot::written)
            .map(|(state, last, created_at)| apply::user_row(last, state, created_at))
            .collect();
        let groups: Vec<GroupRow> = self
            .groups
            .into_values()
            .filter_map(Slot::written)
            .map(|(state, last, created_at)| apply::group_row(last, state, created_at))
            .collect();
        rollcall_store::user::delete_many(connection, &deleted_users).await?;
        rollcall_store::group::delete_many(connection, &deleted_groups).await?;
        let removed: Vec<(&str, Uuid, &str)> = self
            .members
            .iter()
            .filter(|(_, m)| matches!(m, Membership::Removed | Membership::Replaced(..)))
            .map(|((tenant, group, key), _)| (*tenant, *group, key.as_str()))
            .collect();
        rollcall_store::group::delete_member_keys(connection, &removed).await?;
        let added: Vec<MemberEntry> = self
            .members
            .into_iter()
            .filter_map(|((tenant, group, key), membership)| match membership {
                Membership::Added(member, at) | Membership::Replaced(member, at) => {
                    Some(MemberEntry {
                        tenant: tenant.to_owned(),
                        group,
                        key,
                        member,
                        added_at: at,
                    })
                }
                Membership::Removed => None,
            })
            .collect();
        rollcall_store::group::insert_members(connection, &added).await?;
        rollcall_store::user::upsert_many(connection, &users).await?;
        rollcall_store::group::upsert_many(connection, &groups).await?;
        access::record_many(connection, &self.revocations).await?;
        Ok(())
    }
}

/// A member added: kept as it is when it is there already.
fn add<'a>(
    members: &mut HashMap<(&'a str, Uuid, String), Membership>,
    group: Key<'a>,
    member: &group::Member,
    at: OffsetDateTime,
) {
    let key = (group.0, group.1, member.value.to_lowercase());
    let added = apply::new_member(member);
    match members.get(&key) {
        Some(Membership::Added(..) | Membership::Replaced(..)) => {}
        Some(Membership::Removed) => {
            members.insert(key, Membership::Replaced(added, at));
        }
        None => {
            members.insert(key, Membership::Added(added, at));
        }
    }
}

/// The attributes a user's lookup indexes hold.
const USER_KEYS: &[&str] = &["userName", "externalId"];
/// The attributes a group's lookup indexes hold.
const GROUP_KEYS: &[&str] = &["displayName", "externalId"];

/// Refuses (so that the batch is applied event by event) a state whose lookup keys might not
/// fit an index entry: the live projector wrote every state and PostgreSQL may have refused
/// this one, while the bulk path writes only a batch's last state (and its indexes may not be
/// built yet).
fn keys_fit_index(
    tenant: &str,
    attributes: &rollcall_domain::Attributes,
    names: &[&str],
    sequence: u64,
) -> Result<(), ProjectorError> {
    for name in names {
        if let Some(value) = attributes.get(*name).and_then(serde_json::Value::as_str) {
            fits_index(tenant, value, sequence)?;
        }
    }
    Ok(())
}

/// Refuses a key that might not fit an index entry.
fn fits_index(tenant: &str, key: &str, sequence: u64) -> Result<(), ProjectorError> {
    if rollcall_store::lookup_key::indexable(tenant, key) {
        return Ok(());
    }
    Err(ProjectorError::Event {
        sequence,
        reason: "a key too long to be certain that an index entry holds it".into(),
    })
}
