//! How one event changes the read models. Read-model rows are written as each event is applied
//! (the next event may read them), except users: a live batch reads its users and groups at
//! once and writes the users it changed when it ends. The audit records, the access outbox and
//! the chain heads are gathered in [`Pending`] and written once per batch, in the same
//! transaction.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;

use rollcall_domain::group::{self, Group, GroupEvent, GroupState};
use rollcall_domain::user::{self, User, UserEvent};
use rollcall_domain::{ApplicationEvent, Attributes, EventKind, IdentityEvent, StreamEvent};
use rollcall_eventlog::chain::{link, GENESIS};
use rollcall_eventlog::consumer::Delivered;
use rollcall_eventlog::Envelope;
use rollcall_personal::PersonalError;
use rollcall_store::access::{self, OutboxEntry, OutboxKind, RevocationRow};
use rollcall_store::audit::{self, AuditRow};
use rollcall_store::group::{GroupRow, NewMember};
use rollcall_store::personal_key::Freshness;
use rollcall_store::user::UserRow;
use rollcall_store::Store;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ProjectorError;

/// What a batch writes at its end: audit records, outbox entries, and each tenant's chain head.
#[derive(Debug, Default)]
pub struct Pending {
    /// Whether its audit records are written with `COPY` (a rebuild's large batches).
    copy: bool,
    audit: Vec<AuditRow>,
    outbox: Vec<OutboxEntry>,
    heads: HashMap<String, (i64, Vec<u8>)>,
    known: Option<Known>,
}

/// The rows of the users and groups a batch has read or written, as they stand in its
/// transaction (`None`: no row). Read (and locked) at once for the whole batch, they spare
/// each event the statement that read its resource; the users it changed (`unwritten`) are
/// written at once when the batch ends (nothing in a batch reads `scim_user` but through
/// here), a user's deletion at once.
#[derive(Debug, Default)]
struct Known {
    users: HashMap<(String, Uuid), Option<UserRow>>,
    groups: HashMap<(String, Uuid), Option<GroupRow>>,
    unwritten: std::collections::BTreeSet<(String, Uuid)>,
}

impl Known {
    /// Writes the users changed and not written yet, in one statement (their rows leave
    /// memory: the batch is ending, or reading from PostgreSQL again).
    async fn write_users(&mut self, connection: &mut PgConnection) -> Result<(), ProjectorError> {
        let rows: Vec<UserRow> = std::mem::take(&mut self.unwritten)
            .into_iter()
            .filter_map(|key| self.users.remove(&key).flatten())
            .collect();
        if !rows.is_empty() {
            rollcall_store::user::upsert_many(connection, &rows).await?;
        }
        Ok(())
    }
}

impl Pending {
    /// Reads and locks, in one statement for users and one for groups, the rows of every user
    /// and group that `events` concern; applying them then reads their rows from memory.
    pub async fn read_resources(
        &mut self,
        connection: &mut PgConnection,
        events: &[Delivered],
    ) -> Result<(), ProjectorError> {
        let keys = |aggregate: &str| -> Vec<(&str, Uuid)> {
            let mut keys: Vec<(&str, Uuid)> = events
                .iter()
                .map(|event| &event.envelope)
                .filter(|envelope| envelope.aggregate_type == aggregate)
                .map(|envelope| (envelope.tenant.as_str(), envelope.aggregate_id))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let (users, groups) = (keys(UserEvent::AGGREGATE), keys(GroupEvent::AGGREGATE));
        fn absent<R>(keys: &[(&str, Uuid)]) -> HashMap<(String, Uuid), Option<R>> {
            keys.iter()
                .map(|(tenant, id)| (((*tenant).to_owned(), *id), None))
                .collect()
        }
        let mut known = Known {
            users: absent(&users),
            groups: absent(&groups),
            unwritten: Default::default(),
        };
        for row in rollcall_store::user::lock_many(connection, &users).await? {
            known.users.insert((row.tenant.clone(), row.id), Some(row));
        }
        for row in rollcall_store::group::lock_many(connection, &groups).await? {
            known.groups.insert((row.tenant.clone(), row.id), Some(row));
        }
        self.known = Some(known);
        Ok(())
    }

    /// Writes the users changed so far and reads every row from PostgreSQL again for the rest
    /// of the batch: a resolution of the quarantine writes rows by a way of its own.
    pub async fn forget_resources(
        &mut self,
        connection: &mut PgConnection,
    ) -> Result<(), ProjectorError> {
        if let Some(mut known) = self.known.take() {
            known.write_users(connection).await?;
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        sequence: u64,
        kind: OutboxKind,
        tenant: &str,
        subject: Uuid,
        payload: Option<Value>,
    ) {
        self.outbox.push(OutboxEntry {
            sequence,
            kind,
            tenant: tenant.to_owned(),
            subject,
            payload,
        });
    }

    /// A user whose access state must be published again.
    pub fn enqueue_user(&mut self, sequence: u64, tenant: &str, user: Uuid) {
        self.enqueue(sequence, OutboxKind::User, tenant, user, None);
    }

    /// What a rebuild's batch writes: its audit records with `COPY`.
    pub(crate) fn copied() -> Self {
        Self {
            copy: true,
            ..Self::default()
        }
    }

    /// Writes the gathered audit records now (in a savepoint of the caller's), so that a
    /// record PostgreSQL refuses can be told apart from the rest; the chain heads stay.
    pub async fn write_audit(
        &mut self,
        connection: &mut PgConnection,
    ) -> Result<(), ProjectorError> {
        let rows = std::mem::take(&mut self.audit);
        audit::insert_many(connection, &rows).await?;
        Ok(())
    }

    /// Takes another attempt's outbox entries, as caused by the event at `sequence`.
    pub fn take_outbox(&mut self, other: Pending, sequence: u64) {
        self.outbox.extend(
            other
                .outbox
                .into_iter()
                .map(|entry| OutboxEntry { sequence, ..entry }),
        );
    }

    /// Forgets the gathered audit records (their chain links stay).
    pub fn drop_audit(&mut self) {
        self.audit.clear();
    }

    /// Writes what the batch gathered.
    pub async fn flush(mut self, connection: &mut PgConnection) -> Result<(), ProjectorError> {
        if let Some(known) = &mut self.known {
            known.write_users(connection).await?;
        }
        if self.copy {
            audit::copy_many(connection, &self.audit).await?;
        } else {
            audit::insert_many(connection, &self.audit).await?;
        }
        access::enqueue_many(connection, &self.outbox).await?;
        for (tenant, (sequence, hash)) in &self.heads {
            audit::set_chain_head(connection, tenant, *sequence, hash).await?;
        }
        Ok(())
    }
}

fn text(attributes: &Attributes, name: &str) -> Option<String> {
    attributes
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The read-model row of a user in state `next` (active or not) after `envelope`'s event.
pub(crate) fn user_row(envelope: &Envelope, next: User, created_at: OffsetDateTime) -> UserRow {
    let active = next.is_active();
    let attributes = match next {
        User::Active(attributes) | User::Inactive(attributes) => attributes,
        User::Absent | User::Deleted | User::Erased => Attributes::default(),
    };
    UserRow {
        tenant: envelope.tenant.clone(),
        id: envelope.aggregate_id,
        user_name: text(&attributes, "userName").unwrap_or_default(),
        external_id: text(&attributes, "externalId"),
        active,
        attributes: Json(attributes),
        version: envelope.version as i64,
        created_at,
        updated_at: envelope.occurred_at,
    }
}

/// The read-model row of a group (members apart) in state `state` after `envelope`'s event.
pub(crate) fn group_row(
    envelope: &Envelope,
    state: GroupState,
    created_at: OffsetDateTime,
) -> GroupRow {
    GroupRow {
        tenant: envelope.tenant.clone(),
        id: envelope.aggregate_id,
        display_name: state.display_name().unwrap_or_default().to_owned(),
        external_id: text(&state.attributes, "externalId"),
        attributes: Json(state.attributes),
        version: envelope.version as i64,
        created_at,
        updated_at: envelope.occurred_at,
    }
}

/// A member as the read model keeps it.
pub(crate) fn new_member(member: &group::Member) -> NewMember {
    NewMember {
        id: member.value.clone(),
        kind: member.kind.clone(),
        display: member.display.clone(),
    }
}

/// The session revocation a user event causes, if any: every session on deactivation and
/// deletion, one session or all on an operator's revocation.
pub(crate) fn revocation(
    event: &UserEvent,
    envelope: &Envelope,
    sequence: u64,
    position: u32,
) -> Option<RevocationRow> {
    let (session_id, reason) = match event {
        UserEvent::Deactivated => (None, "deactivated".to_owned()),
        UserEvent::Deleted => (None, "deleted".to_owned()),
        UserEvent::Erased { .. } => (None, "erased".to_owned()),
        UserEvent::SessionsRevoked { session_id, reason } => {
            (session_id.clone(), format!("operator: {reason}"))
        }
        _ => return None,
    };
    let at = envelope.occurred_at;
    Some(RevocationRow {
        sequence: sequence as i64,
        position: position as i32,
        event_id: envelope.event_id,
        tenant: envelope.tenant.clone(),
        user_id: envelope.aggregate_id,
        not_before: session_id.is_none().then_some(at),
        session_id,
        reason,
        created_at: at,
    })
}

/// Applies one event to the read models, and gathers its audit record and access effects.
pub async fn apply(
    connection: &mut PgConnection,
    store: &Store,
    pending: &mut Pending,
    delivered: &Delivered,
) -> Result<(), ProjectorError> {
    let (sequence, position) = (delivered.sequence, delivered.position);
    apply_effects(
        connection,
        store,
        pending,
        &delivered.envelope,
        sequence,
        position,
    )
    .await?;
    audit(connection, pending, &delivered.envelope, sequence, position).await
}

/// Applies one event (at stream sequence `sequence`, `position` in its message) to the read
/// models and gathers its access effects, without its audit record (a quarantined event,
/// applied later, was audited when it arrived).
pub async fn apply_effects(
    connection: &mut PgConnection,
    store: &Store,
    pending: &mut Pending,
    envelope: &Envelope,
    sequence: u64,
    position: u32,
) -> Result<(), ProjectorError> {
    let opened = opened(store, envelope, sequence).await?;
    let envelope = opened.as_ref();
    if envelope.event_type == rollcall_personal::ERASED_EVENT {
        // The erasure's command destroys the key too; whichever comes first, it is gone.
        store
            .erase_data_key(&envelope.tenant, envelope.aggregate_id)
            .await?;
    }
    match envelope.aggregate_type.as_str() {
        UserEvent::AGGREGATE => {
            apply_with::<Users>(connection, pending, envelope, sequence, position).await
        }
        GroupEvent::AGGREGATE => {
            apply_with::<Groups>(connection, pending, envelope, sequence, position).await
        }
        // SSF streams and identity links have no read model here either (the access services
        // fold them): checked readable, then audited.
        IdentityEvent::AGGREGATE => IdentityEvent::from_payload(
            &envelope.event_type,
            envelope.schema_version,
            &envelope.payload,
        )
        .map(|_| ())
        .map_err(|reason| ProjectorError::Event { sequence, reason }),
        StreamEvent::AGGREGATE => StreamEvent::from_payload(
            &envelope.event_type,
            envelope.schema_version,
            &envelope.payload,
        )
        .map(|_| ())
        .map_err(|reason| ProjectorError::Event { sequence, reason }),
        // Applications have no read model here (the access services fold them from the
        // stream): an application event is checked readable, then audited.
        ApplicationEvent::AGGREGATE => ApplicationEvent::from_payload(
            &envelope.event_type,
            envelope.schema_version,
            &envelope.payload,
        )
        .map(|_| ())
        .map_err(|reason| ProjectorError::Event { sequence, reason }),
        other => Err(ProjectorError::Event {
            sequence,
            reason: format!("unknown aggregate type {other:?}"),
        }),
    }
}

/// The event with its personal fields opened under its user's data key (`[erased]` once the
/// user is erased), for the read models; a copy only when sealed. Audit records keep the
/// stored, sealed bytes.
pub(crate) async fn opened<'a>(
    store: &Store,
    envelope: &'a Envelope,
    sequence: u64,
) -> Result<Cow<'a, Envelope>, ProjectorError> {
    if !rollcall_personal::sealed(envelope) {
        return Ok(Cow::Borrowed(envelope));
    }
    let mut copy = [envelope.clone()];
    match rollcall_personal::open_all(store, &mut copy, Freshness::Cached).await {
        Ok(()) => {
            let [copy] = copy;
            Ok(Cow::Owned(copy))
        }
        Err(PersonalError::Store(error)) => Err(error.into()),
        Err(error) => Err(ProjectorError::Event {
            sequence,
            reason: error.to_string(),
        }),
    }
}

/// Reads one event of aggregate type `A`, applies it to the read models and gathers what it
/// changes in the access state.
async fn apply_with<A: Applier>(
    connection: &mut PgConnection,
    pending: &mut Pending,
    envelope: &Envelope,
    sequence: u64,
    position: u32,
) -> Result<(), ProjectorError> {
    let event = A::Event::from_payload(
        &envelope.event_type,
        envelope.schema_version,
        &envelope.payload,
    )
    .map_err(|reason| ProjectorError::Event { sequence, reason })?;
    let known = pending.known.as_mut();
    let applied = A::apply(connection, known, envelope, &event, sequence, position).await?;
    for (kind, subject, payload) in A::effects(envelope, &event, &applied) {
        pending.enqueue(sequence, kind, &envelope.tenant, subject, payload);
    }
    Ok(())
}

/// How the events of one aggregate type change the read models (IO), and then, as a pure
/// function of the event and of what applying it found, the access state.
trait Applier {
    /// The aggregate's events.
    type Event: EventKind;
    /// What applying an event found that its access effects depend on.
    type Applied;
    /// Applies one event (at `sequence`, `position` in its message) to the read models; its
    /// resource's row comes from `known` when the batch read it already, and goes back there.
    fn apply(
        connection: &mut PgConnection,
        known: Option<&mut Known>,
        envelope: &Envelope,
        event: &Self::Event,
        sequence: u64,
        position: u32,
    ) -> impl Future<Output = Result<Self::Applied, ProjectorError>> + Send;
    /// What the event changes in the access state, in publication order.
    fn effects(envelope: &Envelope, event: &Self::Event, applied: &Self::Applied) -> Vec<Effect>;
}

/// A resource's row: as the batch read it (`cached`: `Some(Some(row))` or `Some(None)` for no
/// row), else read and locked by `lock` now.
async fn row_of<R>(
    cached: Option<Option<R>>,
    lock: impl Future<Output = Result<Option<R>, rollcall_store::StoreError>>,
) -> Result<Option<R>, ProjectorError> {
    match cached {
        Some(row) => Ok(row),
        None => Ok(lock.await?),
    }
}

/// User events: `scim_user` and `revocation`; the revocation a user event caused is published
/// before the user.
struct Users;

impl Applier for Users {
    type Event = UserEvent;
    type Applied = Option<RevocationRow>;
    async fn apply(
        connection: &mut PgConnection,
        mut known: Option<&mut Known>,
        envelope: &Envelope,
        event: &UserEvent,
        sequence: u64,
        position: u32,
    ) -> Result<Option<RevocationRow>, ProjectorError> {
        let (tenant, id) = (envelope.tenant.as_str(), envelope.aggregate_id);
        let key = (tenant.to_owned(), id);
        let cached = known
            .as_deref_mut()
            .and_then(|known| known.users.remove(&key));
        let row = row_of(cached, rollcall_store::user::lock(connection, tenant, id)).await?;
        let created_at = row.as_ref().map(|row| row.created_at);
        let current = match row {
            Some(row) if row.active => User::Active(row.attributes.0),
            Some(row) => User::Inactive(row.attributes.0),
            None => User::Absent,
        };
        match user::evolve(current, event) {
            next @ (User::Active(_) | User::Inactive(_)) => {
                let created_at = created_at.unwrap_or(envelope.occurred_at);
                let row = user_row(envelope, next, created_at);
                match known {
                    Some(known) => {
                        known.unwritten.insert(key.clone());
                        known.users.insert(key, Some(row));
                    }
                    None => rollcall_store::user::upsert(connection, &row).await?,
                }
            }
            User::Deleted | User::Erased => {
                rollcall_store::user::delete(connection, tenant, id).await?;
                if let Some(known) = known {
                    known.unwritten.remove(&key);
                    known.users.insert(key, None);
                }
            }
            User::Absent => {
                return Err(ProjectorError::Event {
                    sequence,
                    reason: format!("{} for a user that does not exist", envelope.event_type),
                })
            }
        }
        let revocation = revocation(event, envelope, sequence, position);
        if let Some(row) = &revocation {
            access::record(connection, row).await?;
        }
        Ok(revocation)
    }
    fn effects(
        envelope: &Envelope,
        _: &UserEvent,
        revocation: &Option<RevocationRow>,
    ) -> Vec<Effect> {
        user_effects(envelope, revocation.as_ref())
    }
}

/// Group events: `scim_group` and `group_member`; a deletion's former members are published
/// again.
struct Groups;

impl Applier for Groups {
    type Event = GroupEvent;
    type Applied = Vec<String>;
    async fn apply(
        connection: &mut PgConnection,
        mut known: Option<&mut Known>,
        envelope: &Envelope,
        event: &GroupEvent,
        sequence: u64,
        _position: u32,
    ) -> Result<Vec<String>, ProjectorError> {
        let (tenant, id, at) = (
            envelope.tenant.as_str(),
            envelope.aggregate_id,
            envelope.occurred_at,
        );
        let key = (tenant.to_owned(), id);
        let cached = known
            .as_deref_mut()
            .and_then(|known| known.groups.remove(&key));
        let row = row_of(cached, rollcall_store::group::lock(connection, tenant, id)).await?;
        let created_at = row.as_ref().map_or(at, |row| row.created_at);
        let current = match row {
            // Members live in their own table; the event says who came and who went.
            Some(row) => Group::Active(GroupState {
                attributes: row.attributes.0,
                members: Default::default(),
            }),
            None => Group::Absent,
        };
        match group::evolve(current, event) {
            Group::Active(state) => {
                let row = group_row(envelope, state, created_at);
                rollcall_store::group::upsert(connection, &row).await?;
                if let Some(known) = known {
                    known.groups.insert(key, Some(row));
                }
                match event {
                    GroupEvent::Created { members, .. } | GroupEvent::MembersAdded { members } => {
                        let members: Vec<_> = members.iter().map(new_member).collect();
                        rollcall_store::group::add_members(connection, tenant, id, &members, at)
                            .await?;
                    }
                    GroupEvent::MembersRemoved { members } => {
                        rollcall_store::group::remove_members(connection, tenant, id, members)
                            .await?;
                    }
                    _ => {}
                }
                Ok(Vec::new())
            }
            Group::Deleted => {
                let former = rollcall_store::group::delete(connection, tenant, id).await?;
                if let Some(known) = known {
                    known.groups.insert(key, None);
                }
                Ok(former)
            }
            Group::Absent => Err(ProjectorError::Event {
                sequence,
                reason: format!("{} for a group that does not exist", envelope.event_type),
            }),
        }
    }
    fn effects(envelope: &Envelope, event: &GroupEvent, former: &Vec<String>) -> Vec<Effect> {
        group_effects(envelope, event, former)
    }
}

/// One change to the access state: the kind of key, its subject, and a payload to publish.
type Effect = (OutboxKind, Uuid, Option<Value>);

/// What a user event changes in the access state: its revocation (if any), then the user's
/// state.
fn user_effects(envelope: &Envelope, revocation: Option<&RevocationRow>) -> Vec<Effect> {
    let id = envelope.aggregate_id;
    revocation
        .map(|row| (OutboxKind::Revocation, id, Some(revocation_message(row))))
        .into_iter()
        .chain([(OutboxKind::User, id, None)])
        .collect()
}

/// What a group event changes in the access state: every user who joined or left it (`former`:
/// the members a deletion removed), then the group's state. Member ids that are not users of
/// ours (a client may add anything) are passed over.
fn group_effects(envelope: &Envelope, event: &GroupEvent, former: &[String]) -> Vec<Effect> {
    let members: Vec<&str> = match event {
        GroupEvent::Created { members, .. } | GroupEvent::MembersAdded { members } => {
            members.iter().map(|m| m.value.as_str()).collect()
        }
        GroupEvent::MembersRemoved { members } => members.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    former
        .iter()
        .map(String::as_str)
        .chain(members)
        .filter_map(|member| Uuid::parse_str(member).ok())
        .map(|user| (OutboxKind::User, user, None))
        .chain([(OutboxKind::Group, envelope.aggregate_id, None)])
        .collect()
}

/// Gathers one event's audit record and extends its tenant's chain (in stream order: by
/// sequence, then by position within a commit).
pub async fn audit(
    connection: &mut PgConnection,
    pending: &mut Pending,
    envelope: &Envelope,
    sequence: u64,
    position: u32,
) -> Result<(), ProjectorError> {
    chain(connection, pending, draft(envelope, sequence, position)).await
}

/// An event's audit record before it is chained, with the bytes its link hashes: pure work,
/// which the rebuild does on a task of its own while the previous batch is written.
pub(crate) struct Draft {
    row: AuditRow,
    canonical: Vec<u8>,
}

/// Drafts the audit record of the event at `sequence`, `position`.
pub(crate) fn draft(envelope: &Envelope, sequence: u64, position: u32) -> Draft {
    let actor = serde_json::to_value(&envelope.actor).unwrap_or(Value::Null);
    let canonical = envelope.canonical_bytes_with_actor(&actor);
    Draft {
        row: AuditRow {
            sequence: sequence as i64,
            position: position as i32,
            event_id: envelope.event_id,
            tenant: envelope.tenant.clone(),
            aggregate_type: envelope.aggregate_type.clone(),
            aggregate_id: envelope.aggregate_id,
            version: envelope.version as i64,
            event_type: envelope.event_type.clone(),
            schema_version: envelope.schema_version as i32,
            actor: Json(actor),
            request_id: envelope.request_id.clone(),
            trace_id: envelope
                .traceparent
                .as_deref()
                .and_then(rollcall_telemetry::trace_id)
                .map(str::to_owned),
            traceparent: envelope.traceparent.clone(),
            occurred_at: envelope.occurred_at,
            payload: Json(envelope.payload.clone()),
            prev_hash: Vec::new(),
            hash: Vec::new(),
        },
        canonical,
    }
}

/// Links a drafted record into its tenant's chain and gathers it.
pub(crate) async fn chain(
    connection: &mut PgConnection,
    pending: &mut Pending,
    draft: Draft,
) -> Result<(), ProjectorError> {
    let Draft { mut row, canonical } = draft;
    // Tamper evidence: the tenant's chain, extended in stream order. The head is read (and
    // locked) once per tenant per batch, then carried in memory.
    let previous = match pending.heads.get(&row.tenant) {
        Some((_, hash)) => hash.clone(),
        None => audit::lock_chain_head(connection, &row.tenant)
            .await?
            .map_or_else(|| GENESIS.to_vec(), |(_, hash)| hash),
    };
    let hash = link(&previous, &canonical).to_vec();
    row.prev_hash = previous;
    row.hash = hash.clone();
    pending
        .heads
        .insert(row.tenant.clone(), (row.sequence, hash));
    pending.audit.push(row);
    Ok(())
}

fn revocation_message(row: &RevocationRow) -> Value {
    let message = rollcall_eventlog::access::Revocation {
        schema: rollcall_eventlog::access::REVOCATION_SCHEMA.into(),
        tenant: row.tenant.clone(),
        user_id: row.user_id,
        session_id: row.session_id.clone(),
        not_before: row.not_before,
        reason: row.reason.clone(),
        event_id: row.event_id,
        sequence: row.sequence as u64,
        at: row.created_at,
    };
    serde_json::to_value(message).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_eventlog::Actor;

    fn envelope(event_type: &str) -> Envelope {
        Envelope {
            event_id: Uuid::now_v7(),
            tenant: "acme".into(),
            aggregate_type: "group".into(),
            aggregate_id: Uuid::now_v7(),
            version: 2,
            event_type: event_type.into(),
            schema_version: 1,
            occurred_at: OffsetDateTime::now_utc(),
            actor: Actor::Operator {
                name: "test".into(),
            },
            request_id: None,
            traceparent: None,
            payload: Value::Null,
        }
    }

    fn member(value: &str) -> group::Member {
        group::Member {
            value: value.into(),
            kind: None,
            display: None,
        }
    }

    #[test]
    fn members_who_come_or_go_are_published_again_then_the_group() {
        let envelope = envelope("group.members_added");
        let user = Uuid::now_v7();
        let added = GroupEvent::MembersAdded {
            members: vec![member(&user.to_string()), member("not-a-user-of-ours")],
        };
        assert_eq!(
            group_effects(&envelope, &added, &[]),
            vec![
                (OutboxKind::User, user, None),
                (OutboxKind::Group, envelope.aggregate_id, None)
            ]
        );
        let removed = GroupEvent::MembersRemoved {
            members: vec![user.to_string().to_uppercase()],
        };
        assert_eq!(group_effects(&envelope, &removed, &[])[0].1, user);
        // A deletion names no members: the ones it removed are the former members.
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        let former = [first.to_string(), second.to_string()];
        let users: Vec<Uuid> = group_effects(&envelope, &GroupEvent::Deleted, &former)
            .into_iter()
            .filter(|(kind, _, _)| *kind == OutboxKind::User)
            .map(|(_, user, _)| user)
            .collect();
        assert_eq!(users, [first, second]);
    }

    #[test]
    fn a_deactivation_publishes_its_revocation_before_the_user() {
        let mut envelope = envelope("user.deactivated");
        envelope.aggregate_type = "user".into();
        let row = revocation(&UserEvent::Deactivated, &envelope, 9, 0).unwrap();
        assert_eq!(row.not_before, Some(envelope.occurred_at));
        let effects = user_effects(&envelope, Some(&row));
        assert_eq!(effects.len(), 2);
        assert_eq!(effects[0].0, OutboxKind::Revocation);
        let message = effects[0].2.as_ref().unwrap();
        assert_eq!(message["reason"], "deactivated");
        assert_eq!(message["sequence"], 9);
        assert_eq!(effects[1], (OutboxKind::User, envelope.aggregate_id, None));
        assert_eq!(
            revocation(&UserEvent::Reactivated, &envelope, 10, 0),
            None,
            "a reactivation revokes nothing"
        );
    }
}
