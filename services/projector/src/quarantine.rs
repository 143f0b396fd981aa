//! The quarantine: an event the projector cannot apply (a bug, a constraint nobody foresaw)
//! stops only its own aggregate. It is recorded with its error, its aggregate is marked, later
//! events of that aggregate are held behind it in order, and every other event goes on. The
//! users whose access it concerns are denied until an operator resolves it with `rollcall
//! projector quarantine retry|skip`, which appends a resolution event that this module applies.
//!
//! A commit (one write of several events, one message) is quarantined, skipped and applied
//! again as a whole, so that the read models never hold half a write.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use rollcall_domain::group::GroupEvent;
use rollcall_domain::EventKind;
use rollcall_eventlog::consumer::Delivered;
use rollcall_eventlog::quarantine::{Resolution, SKIPPED};
use rollcall_eventlog::{Envelope, LoadError};
use rollcall_store::quarantine::{self, NewQuarantine, QuarantineRow, Status};
use rollcall_store::StoreError;
use sqlx::{Acquire, PgConnection};
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::apply::{apply_effects, Pending};
use crate::ProjectorError;

/// An aggregate: `(tenant, id)`.
pub type Key = (String, Uuid);

/// The aggregates with an unresolved quarantine, as this projector last committed them.
#[derive(Debug, Clone, Default)]
pub struct Quarantined(Arc<Mutex<HashSet<Key>>>);

impl Quarantined {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<Key>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an aggregate is quarantined.
    pub fn contains(&self, tenant: &str, id: Uuid) -> bool {
        self.set().contains(&(tenant.to_owned(), id))
    }

    /// Replaces the whole set (as loaded at the start of a consumption).
    pub fn replace(&self, keys: impl IntoIterator<Item = Key>) {
        let mut set = self.set();
        set.clear();
        set.extend(keys);
    }

    /// Applies what a committed transaction changed.
    pub fn commit(&self, changes: &Changes) {
        let mut set = self.set();
        for key in &changes.quarantined {
            set.insert(key.clone());
        }
        for key in &changes.released {
            set.remove(key);
        }
    }

    /// How many aggregates are quarantined.
    pub fn len(&self) -> usize {
        self.set().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.set().is_empty()
    }
}

/// What one transaction changes in the set, applied once it commits.
#[derive(Debug, Default)]
pub struct Changes {
    quarantined: Vec<Key>,
    released: Vec<Key>,
}

impl Changes {
    /// Whether the transaction quarantined this aggregate.
    pub fn quarantines(&self, key: &Key) -> bool {
        self.quarantined.contains(key) && !self.released.contains(key)
    }

    /// Marks an aggregate quarantined.
    pub fn quarantine(&mut self, key: Key) {
        self.released.retain(|k| k != &key);
        self.quarantined.push(key);
    }
}

/// How a failure to apply events is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The event itself cannot be applied, however often it is tried: quarantine it.
    Poison,
    /// The server answered with a passing condition (a deadlock, a timeout): try again a few
    /// times, then treat the event as poison.
    Passing,
    /// PostgreSQL or NATS is out of reach: wait and try again, without end.
    Unreachable,
}

/// SQLSTATE classes that pass: transaction rollback (40: serialization, deadlock), insufficient
/// resources (53), operator intervention (57: a cancelled statement), system error (58).
const PASSING_CLASSES: [&str; 4] = ["40", "53", "57", "58"];

/// SQLSTATEs that say the server is out of reach, not that the event is hard to apply: a
/// connection exception (class 08), too many connections, an administrator's or a crash's
/// shutdown, a server that cannot take connections yet (a restart, a failover).
fn unreachable(code: &str) -> bool {
    code.starts_with("08") || ["53300", "57P01", "57P02", "57P03"].contains(&code)
}

/// How a failure is handled.
pub fn classify(error: &ProjectorError) -> Failure {
    match error {
        ProjectorError::Event { .. } => Failure::Poison,
        ProjectorError::Store(StoreError::Database(sqlx::Error::Database(database))) => {
            let code = database.code();
            let class = code
                .as_deref()
                .map_or("", |code| code.get(..2).unwrap_or(""));
            if code.as_deref().is_some_and(unreachable) {
                Failure::Unreachable
            } else if PASSING_CLASSES.contains(&class) {
                Failure::Passing
            } else {
                Failure::Poison
            }
        }
        ProjectorError::Store(StoreError::Corrupt(_) | StoreError::Invalid(_)) => Failure::Poison,
        ProjectorError::Store(StoreError::Database(
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::TypeNotFound { .. },
        )) => Failure::Poison,
        ProjectorError::Log(LoadError::Corrupt { .. }) => Failure::Poison,
        _ => Failure::Unreachable,
    }
}

/// The users whose access an event would change, beyond its own aggregate: a group event's
/// named members and the group's current members (a rename or deletion changes what policies
/// see for every member).
pub async fn affected_users(
    connection: &mut PgConnection,
    envelope: &Envelope,
) -> Result<Vec<Uuid>, ProjectorError> {
    if envelope.aggregate_type != GroupEvent::AGGREGATE {
        return Ok(Vec::new());
    }
    let mut users: Vec<Uuid> =
        quarantine::member_users(connection, &envelope.tenant, envelope.aggregate_id).await?;
    if let Ok(event) = GroupEvent::from_payload(
        &envelope.event_type,
        envelope.schema_version,
        &envelope.payload,
    ) {
        let named: Vec<&str> = match &event {
            GroupEvent::Created { members, .. } | GroupEvent::MembersAdded { members } => {
                members.iter().map(|m| m.value.as_str()).collect()
            }
            GroupEvent::MembersRemoved { members } => members.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        users.extend(named.iter().filter_map(|id| Uuid::parse_str(id).ok()));
    }
    users.sort_unstable();
    users.dedup();
    Ok(users)
}

/// Records `delivered` in the quarantine (`status` failed or held) and asks for the access
/// state of every user it concerns to be published again (now denied). The caller audits it.
pub async fn record(
    connection: &mut PgConnection,
    pending: &mut Pending,
    delivered: &Delivered,
    status: Status,
    reason: &str,
    audited: bool,
    attempts: i32,
) -> Result<(), ProjectorError> {
    let envelope = &delivered.envelope;
    let affected = affected_users(connection, envelope).await?;
    quarantine::record(
        connection,
        &NewQuarantine {
            sequence: delivered.sequence,
            position: delivered.position,
            event_id: envelope.event_id,
            tenant: &envelope.tenant,
            aggregate_type: &envelope.aggregate_type,
            aggregate_id: envelope.aggregate_id,
            event_type: &envelope.event_type,
            status,
            error: reason,
            envelope: &envelope.to_bytes(),
            affected_users: &affected,
            audited,
            attempts,
        },
    )
    .await?;
    for user in affected.iter().chain(
        (envelope.aggregate_type == rollcall_domain::user::UserEvent::AGGREGATE)
            .then_some(&envelope.aggregate_id),
    ) {
        pending.enqueue_user(delivered.sequence, &envelope.tenant, *user);
    }
    Ok(())
}

/// Applies an operator's resolution: a skip passes over the named message (its event, or every
/// event of its commit); then the aggregate's remaining quarantined messages are applied in
/// order, each in a savepoint (a commit whole or not at all), until one fails again (it and the
/// rest stay quarantined). The resolution event itself is audited by the caller. `connection`
/// is inside the caller's transaction (the batch's), which the savepoints nest in.
pub async fn resolve(
    connection: &mut PgConnection,
    store: &rollcall_store::Store,
    pending: &mut Pending,
    changes: &mut Changes,
    delivered: &Delivered,
) -> Result<(), ProjectorError> {
    let envelope = &delivered.envelope;
    let key = (envelope.tenant.clone(), envelope.aggregate_id);
    let resolution: Resolution = match serde_json::from_value(envelope.payload.clone()) {
        Ok(resolution) => resolution,
        Err(error) => {
            warn!(sequence = delivered.sequence, error = %error, "unreadable quarantine resolution; ignored");
            return Ok(());
        }
    };
    let rows = quarantine::unresolved(connection, &key.0, key.1).await?;
    let by = delivered.sequence;
    let skips = |row: &QuarantineRow| {
        envelope.event_type == SKIPPED && row.sequence as u64 == resolution.sequence
    };
    let mut remaining = rows.len();
    let skipped = rows.iter().filter(|row| skips(row)).count();
    if skipped > 0 {
        quarantine::resolve(
            connection,
            resolution.sequence as i64,
            Status::Skipped,
            by,
            &resolution.reason,
        )
        .await?;
        remaining -= skipped;
        info!(
            sequence = resolution.sequence,
            events = skipped,
            "quarantined event skipped by an operator"
        );
    }
    let retried: Vec<&QuarantineRow> = rows.iter().filter(|row| !skips(row)).collect();
    for commit in retried.chunk_by(|a, b| a.sequence == b.sequence) {
        let Some(sequence) = commit.first().map(|row| row.sequence) else {
            continue;
        };
        let held: Result<Vec<Envelope>, _> = commit
            .iter()
            .map(|row| Envelope::from_bytes(&row.envelope))
            .collect();
        let held = match held {
            Ok(held) => held,
            Err(error) => {
                quarantine::failed_again(connection, sequence, &format!("unreadable: {error}"))
                    .await?;
                break;
            }
        };
        let mut attempt = Pending::default();
        // A savepoint in the batch's transaction (dropped mid-way, that transaction rolls back).
        #[allow(clippy::disallowed_methods)]
        let mut savepoint = connection.begin().await.map_err(StoreError::from)?;
        let mut outcome = Ok(());
        for (row, held) in commit.iter().zip(&held) {
            outcome = apply_effects(
                &mut savepoint,
                store,
                &mut attempt,
                held,
                row.sequence as u64,
                row.position as u32,
            )
            .await;
            if outcome.is_err() {
                break;
            }
        }
        match outcome {
            Ok(()) => {
                savepoint.commit().await.map_err(StoreError::from)?;
                pending.take_outbox(attempt, by);
                quarantine::resolve(
                    connection,
                    sequence,
                    Status::Applied,
                    by,
                    &resolution.reason,
                )
                .await?;
                remaining -= commit.len();
            }
            Err(failure) => {
                savepoint.rollback().await.map_err(StoreError::from)?;
                error!(sequence, error = %failure, "a quarantined event failed again; it stays quarantined");
                quarantine::failed_again(connection, sequence, &failure.to_string()).await?;
                break;
            }
        }
    }
    // Whatever was quarantined concerned these users: publish their state again either way.
    for row in &rows {
        for user in &row.affected_users {
            pending.enqueue_user(by, &key.0, *user);
        }
        if row.aggregate_type == rollcall_domain::user::UserEvent::AGGREGATE {
            pending.enqueue_user(by, &key.0, key.1);
        }
    }
    if remaining == 0 {
        changes.released.push(key);
    } else {
        changes.quarantine(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_event_is_poison_and_an_unreachable_server_is_not() {
        assert_eq!(
            classify(&ProjectorError::Event {
                sequence: 1,
                reason: "x".into()
            }),
            Failure::Poison
        );
        assert_eq!(
            classify(&ProjectorError::Store(StoreError::Database(
                sqlx::Error::PoolTimedOut
            ))),
            Failure::Unreachable
        );
        assert_eq!(
            classify(&ProjectorError::Log(LoadError::Nats("down".into()))),
            Failure::Unreachable
        );
        assert_eq!(
            classify(&ProjectorError::Log(LoadError::Corrupt {
                sequence: 3,
                reason: "not JSON".into()
            })),
            Failure::Poison
        );
    }

    #[test]
    fn a_server_restarting_or_out_of_connections_is_unreachable_and_a_deadlock_passes() {
        for code in ["08006", "08001", "53300", "57P01", "57P02", "57P03"] {
            assert!(unreachable(code), "{code}");
        }
        for code in ["40001", "40P01", "57014", "23505", "54000"] {
            assert!(!unreachable(code), "{code}");
        }
    }

    #[test]
    fn a_released_aggregate_leaves_the_set_and_a_new_one_enters() {
        let set = Quarantined::default();
        let id = Uuid::nil();
        let mut changes = Changes::default();
        changes.quarantine(("a".into(), id));
        assert!(changes.quarantines(&("a".into(), id)));
        set.commit(&changes);
        assert!(set.contains("a", id));
        assert!(!set.contains("b", id));
        let changes = Changes {
            quarantined: vec![],
            released: vec![("a".into(), id)],
        };
        set.commit(&changes);
        assert!(set.is_empty());
    }
}
