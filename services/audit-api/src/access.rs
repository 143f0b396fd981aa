//! Who could reach which application at an instant, and why, from the audited events alone:
//! a tenant's users, groups and applications folded in stream order, and the applications'
//! policies asked through [`rollcall_domain::policy`], the definition the access service's live
//! decisions use.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rollcall_domain::application::{self, Application, ApplicationEvent};
use rollcall_domain::group::{self, Group, GroupEvent};
use rollcall_domain::policy::{verdict, GroupRef, Person, Policy, Verdict};
use rollcall_domain::user::{self, User, UserEvent};
use rollcall_domain::EventKind;
use rollcall_store::audit::AuditRow;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::history::timestamp;

/// The event that did something, as an auditor follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// Its event id.
    pub event: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its stream sequence.
    pub sequence: i64,
    /// When.
    pub at: String,
}

impl Cause {
    fn of(row: &AuditRow) -> Self {
        Self {
            event: row.event_id,
            event_type: row.event_type.clone(),
            sequence: row.sequence,
            at: timestamp(row.occurred_at),
        }
    }
}

/// A group membership through which a policy let a user in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Via {
    /// The group's id.
    pub group_id: Uuid,
    /// Its displayName then.
    pub group: String,
    /// Since when the user was a member.
    pub since: String,
    /// The event that made the user a member.
    pub event: Uuid,
}

#[derive(Debug, Clone)]
struct Membership {
    since: OffsetDateTime,
    event: Uuid,
}

#[derive(Debug, Clone, Default)]
struct Folded {
    group: Group,
    /// Members by lowercase id, with when and by which event they joined.
    members: HashMap<String, Membership>,
}

/// A tenant as its events left it.
#[derive(Debug, Clone, Default)]
pub struct World {
    users: BTreeMap<Uuid, User>,
    groups: HashMap<Uuid, Folded>,
    /// Groups by lowercase member id.
    member_of: HashMap<String, BTreeSet<Uuid>>,
    applications: BTreeMap<String, (Application, Vec<Policy>)>,
    policy_version: i64,
}

/// An application as configured at an instant: its name, policies and their version.
#[derive(Debug)]
pub struct Configured<'w> {
    /// Its name.
    pub name: &'w str,
    policies: &'w [Policy],
}

/// A user as the policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'w> {
    world: &'w World,
    /// The user's id.
    pub id: Uuid,
    user: &'w User,
}

impl Seen<'_> {
    fn attribute(&self, name: &str) -> Option<&Value> {
        self.user.attributes()?.get(name)
    }
}

impl Person for Seen<'_> {
    fn user_name(&self) -> &str {
        self.attribute("userName")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The emails as the access state has them ([`user::emails`]).
    fn emails(&self) -> impl Iterator<Item = &str> {
        self.user
            .attributes()
            .map(user::emails)
            .unwrap_or_default()
            .into_iter()
    }

    fn groups(&self) -> impl Iterator<Item = GroupRef<'_>> {
        self.world
            .member_of
            .get(&self.id.to_string())
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let state = self.world.groups.get(id)?.group.state()?;
                Some(GroupRef {
                    id: *id,
                    display_name: state.display_name(),
                    external_id: state.attributes.get("externalId").and_then(Value::as_str),
                })
            })
    }

    fn active(&self) -> bool {
        self.user.is_active()
    }
}

impl World {
    /// Folds a tenant's audited events, in stream order.
    pub fn fold<'r>(rows: impl IntoIterator<Item = &'r AuditRow>) -> Result<Self, String> {
        let mut world = World::default();
        for row in rows {
            world.apply(row)?;
        }
        Ok(world)
    }

    /// Folds one event; returns the users whose access it may change (`None`: everyone's, as
    /// an application changed).
    pub fn apply(&mut self, row: &AuditRow) -> Result<Affected, String> {
        let schema = row.schema_version as u32;
        match row.aggregate_type.as_str() {
            UserEvent::AGGREGATE => {
                let event = UserEvent::from_payload(&row.event_type, schema, &row.payload.0)?;
                let state = self.users.remove(&row.aggregate_id).unwrap_or_default();
                match user::evolve(state, &event) {
                    User::Deleted | User::Erased => {
                        // A deleted user leaves every group.
                        let key = row.aggregate_id.to_string();
                        for group in self.member_of.remove(&key).unwrap_or_default() {
                            if let Some(folded) = self.groups.get_mut(&group) {
                                folded.members.remove(&key);
                            }
                        }
                    }
                    state => {
                        self.users.insert(row.aggregate_id, state);
                    }
                }
                Ok(Affected::Users(vec![row.aggregate_id]))
            }
            GroupEvent::AGGREGATE => {
                let event = GroupEvent::from_payload(&row.event_type, schema, &row.payload.0)?;
                let id = row.aggregate_id;
                let folded = self.groups.entry(id).or_default();
                folded.group = group::evolve(std::mem::take(&mut folded.group), &event);
                // Whose groups change: the members added or removed; for a rename, a new
                // externalId or a deletion, every member (rules name groups those ways).
                let mut touched: Vec<String> = match &event {
                    GroupEvent::Created { .. }
                    | GroupEvent::MembersAdded { .. }
                    | GroupEvent::MembersRemoved { .. } => Vec::new(),
                    _ => folded.members.keys().cloned().collect(),
                };
                match &event {
                    GroupEvent::Created { members, .. } | GroupEvent::MembersAdded { members } => {
                        for member in members {
                            let key = member.key();
                            folded.members.entry(key.clone()).or_insert(Membership {
                                since: row.occurred_at,
                                event: row.event_id,
                            });
                            self.member_of.entry(key.clone()).or_default().insert(id);
                            touched.push(key);
                        }
                    }
                    GroupEvent::MembersRemoved { members } => {
                        for member in members {
                            let key = member.to_lowercase();
                            folded.members.remove(&key);
                            if let Some(groups) = self.member_of.get_mut(&key) {
                                groups.remove(&id);
                            }
                            touched.push(key);
                        }
                    }
                    GroupEvent::Deleted | GroupEvent::Abandoned => {
                        for key in std::mem::take(&mut folded.members).into_keys() {
                            if let Some(groups) = self.member_of.get_mut(&key) {
                                groups.remove(&id);
                            }
                        }
                    }
                    GroupEvent::Renamed { .. } | GroupEvent::AttributesChanged { .. } => {}
                }
                let users = touched
                    .iter()
                    .filter_map(|key| Uuid::parse_str(key).ok())
                    .collect();
                Ok(Affected::Users(users))
            }
            ApplicationEvent::AGGREGATE => {
                // As the access services fold applications: an event that cannot be read or
                // placed is passed over, and an application whose policies do not compile is
                // not in force (no one gets in through it).
                self.policy_version = row.sequence;
                let Ok(event) =
                    ApplicationEvent::from_payload(&row.event_type, schema, &row.payload.0)
                else {
                    return Ok(Affected::Users(Vec::new()));
                };
                let name = match &event {
                    ApplicationEvent::Configured { application } => application.name.clone(),
                    ApplicationEvent::Removed { before } => before.name.clone(),
                    _ => match self.applications.keys().find(|name| {
                        application::application_id(&row.tenant, name) == row.aggregate_id
                    }) {
                        Some(name) => name.clone(),
                        None => return Ok(Affected::Users(Vec::new())),
                    },
                };
                let (state, _) = self.applications.remove(&name).unwrap_or_default();
                let state = application::evolve(state, &event);
                let policies = state
                    .spec()
                    .and_then(|spec| Policy::compile_all(&spec.policies, &name).ok())
                    .unwrap_or_default();
                self.applications.insert(name.clone(), (state, policies));
                Ok(Affected::Application(name))
            }
            _ => Ok(Affected::Users(Vec::new())),
        }
    }

    /// The stream sequence of the last application event folded.
    pub fn policy_version(&self) -> i64 {
        self.policy_version
    }

    /// The applications configured, by name.
    pub fn applications(&self) -> impl Iterator<Item = Configured<'_>> {
        self.applications
            .iter()
            .filter(|(_, (state, _))| state.spec().is_some())
            .map(|(name, (_, policies))| Configured { name, policies })
    }

    /// Application `name`, if configured.
    pub fn application(&self, name: &str) -> Option<Configured<'_>> {
        let (name, (state, policies)) = self.applications.get_key_value(name)?;
        state.spec()?;
        Some(Configured { name, policies })
    }

    /// The bypass policy of an application, if it has one: anyone gets in, signed in or not.
    pub fn bypass<'w>(&self, application: &Configured<'w>) -> Option<&'w str> {
        application
            .policies
            .iter()
            .find(|p| p.action == rollcall_domain::application::Action::Bypass)
            .map(|p| p.name.as_str())
    }

    /// Every existing user, by id.
    pub fn users(&self) -> impl Iterator<Item = Seen<'_>> {
        self.users
            .iter()
            .filter(|(_, user)| user.attributes().is_some())
            .map(|(id, user)| Seen {
                world: self,
                id: *id,
                user,
            })
    }

    /// User `id`, if it exists.
    pub fn user(&self, id: Uuid) -> Option<Seen<'_>> {
        let user = self.users.get(&id).filter(|u| u.attributes().is_some())?;
        Some(Seen {
            world: self,
            id,
            user,
        })
    }

    /// What the application's policies decide for the user, with the memberships through
    /// which they let the user in.
    pub fn decide<'w>(
        &'w self,
        application: &Configured<'w>,
        user: &Seen<'_>,
    ) -> (Verdict<'w>, Vec<Via>) {
        let decided = verdict(application.policies, user);
        let via = match decided {
            Verdict::Allowed(policy) => policy
                .via(user)
                .into_iter()
                .filter_map(|group| self.via(group, user.id))
                .collect(),
            _ => Vec::new(),
        };
        (decided, via)
    }

    fn via(&self, group: Uuid, user: Uuid) -> Option<Via> {
        let folded = self.groups.get(&group)?;
        let membership = folded.members.get(&user.to_string())?;
        Some(Via {
            group_id: group,
            group: folded
                .group
                .state()
                .and_then(|s| s.display_name())
                .unwrap_or_default()
                .to_owned(),
            since: timestamp(membership.since),
            event: membership.event,
        })
    }
}

/// Whose access an event may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affected {
    /// These users'.
    Users(Vec<Uuid>),
    /// Everyone's on this application.
    Application(String),
}

/// Why a user could not reach an application.
pub fn reason(verdict: &Verdict<'_>) -> String {
    match verdict {
        Verdict::Inactive => "the user was deactivated".into(),
        Verdict::Denied(policy) => format!("policy {:?} denies", policy.name),
        Verdict::NoPolicy => "no policy matches".into(),
        Verdict::Bypass(_) | Verdict::Allowed(_) => String::new(),
    }
}

/// The name of the policy that lets a user in, if one does.
pub fn deciding(verdict: &Verdict<'_>) -> Option<String> {
    match verdict {
        Verdict::Bypass(policy) | Verdict::Allowed(policy) => Some(policy.name.clone()),
        _ => None,
    }
}

/// One stretch of time during which a user could reach an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Granted {
    /// From.
    pub from: String,
    /// Until (none: still, at the end of the range).
    pub to: Option<String>,
    /// The event that opened it.
    pub opened_by: Cause,
    /// The event that closed it.
    pub closed_by: Option<Cause>,
}

/// A user's stretches of access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserIntervals {
    /// The user's id.
    pub id: Uuid,
    /// Their userName (the last one seen).
    #[serde(rename = "userName")]
    pub user_name: String,
    /// The stretches, in order.
    pub intervals: Vec<Granted>,
}

/// A user's stretch of access: who, from, until, opened by, closed by.
type Stretch = (
    Uuid,
    OffsetDateTime,
    Option<OffsetDateTime>,
    Cause,
    Option<Cause>,
);

/// Per user, the stretches of time within `from`..`to` during which application `name` let
/// them in, with the events that opened and closed each: the tenant's events replayed in
/// stream order, each user's access asked again after every event that may change it.
pub fn intervals(
    rows: &[AuditRow],
    name: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<UserIntervals>, String> {
    let mut world = World::default();
    let mut open: HashMap<Uuid, (OffsetDateTime, Cause)> = HashMap::new();
    let mut closed: Vec<Stretch> = Vec::new();
    let mut names: HashMap<Uuid, String> = HashMap::new();
    // A stream prefix: the events up to the first one stamped after `to`. A commit (the rows
    // of one sequence) is asked about once, after its last row, as live applies it whole.
    let prefix: Vec<&AuditRow> = rows
        .iter()
        .take_while(|row| row.occurred_at <= to)
        .collect();
    let mut pending: BTreeSet<Uuid> = BTreeSet::new();
    for (index, row) in prefix.iter().enumerate() {
        match world.apply(row)? {
            Affected::Application(app) if app == name => {
                pending.extend(world.users.keys().copied());
                pending.extend(open.keys().copied());
            }
            Affected::Application(_) => {}
            Affected::Users(users) => pending.extend(users),
        }
        if prefix
            .get(index + 1)
            .is_some_and(|next| next.sequence == row.sequence)
        {
            continue;
        }
        for id in std::mem::take(&mut pending) {
            let allowed = match (world.application(name), world.user(id)) {
                (Some(app), Some(user)) => {
                    names.insert(id, user.user_name().to_owned());
                    world.decide(&app, &user).0.allows()
                }
                _ => false,
            };
            match (allowed, open.contains_key(&id)) {
                (true, false) => {
                    open.insert(id, (row.occurred_at, Cause::of(row)));
                }
                (false, true) => {
                    if let Some((start, opened)) = open.remove(&id) {
                        closed.push((
                            id,
                            start,
                            Some(row.occurred_at),
                            opened,
                            Some(Cause::of(row)),
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    for (id, (start, opened)) in open {
        closed.push((id, start, None, opened, None));
    }
    closed.sort_by_key(|(_, start, _, opened, _)| (*start, opened.sequence));
    let mut by_user: BTreeMap<(String, Uuid), Vec<Granted>> = BTreeMap::new();
    for (id, start, end, opened_by, closed_by) in closed {
        if start > to || end.is_some_and(|end| end < from || end == start) {
            continue;
        }
        let user_name = names.get(&id).cloned().unwrap_or_default();
        by_user.entry((user_name, id)).or_default().push(Granted {
            from: timestamp(start),
            to: end.map(timestamp),
            opened_by,
            closed_by,
        });
    }
    Ok(by_user
        .into_iter()
        .map(|((user_name, id), intervals)| UserIntervals {
            id,
            user_name,
            intervals,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_domain::application::{ApplicationSpec, PolicySpec, Routes, RuleSpec};
    use rollcall_domain::group::Member;
    use sqlx::types::Json;

    const T: i64 = 1_800_000_000;

    fn row(sequence: i64, at: i64, id: Uuid, payload: Value) -> AuditRow {
        let event_type = payload["type"].as_str().unwrap().to_owned();
        AuditRow {
            sequence,
            position: 0,
            event_id: Uuid::from_u128(sequence as u128),
            tenant: "t".into(),
            aggregate_type: event_type.split('.').next().unwrap().to_owned(),
            aggregate_id: id,
            version: 1,
            event_type,
            schema_version: 1,
            actor: Json(serde_json::json!({"kind": "operator", "name": "test"})),
            request_id: None,
            trace_id: None,
            traceparent: None,
            occurred_at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            payload: Json(payload),
            prev_hash: Vec::new(),
            hash: Vec::new(),
        }
    }

    fn finance(group: &str) -> ApplicationSpec {
        ApplicationSpec {
            name: "finance".into(),
            routes: Routes {
                hosts: vec!["finance.test".into()],
                paths: Vec::new(),
                url: None,
            },
            policies: vec![PolicySpec {
                name: "members".into(),
                action: rollcall_domain::application::Action::Allow,
                include: vec![RuleSpec {
                    group: Some(group.into()),
                    ..Default::default()
                }],
                require: Vec::new(),
                exclude: Vec::new(),
            }],
        }
    }

    /// A user, groups A and B, finance open to A; then, at one instant, B joins the user and
    /// the policy moves to B, in the order given.
    fn history(membership_first: bool) -> Vec<AuditRow> {
        let (user, a, b) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let app = rollcall_domain::application::application_id("t", "finance");
        let group = |name: &str| serde_json::json!({"type": "group.created", "attributes": {"displayName": name}});
        let mut rows = vec![
            row(
                1,
                T,
                user,
                serde_json::json!({"type": "user.provisioned", "attributes": {"userName": "ada"}, "active": true}),
            ),
            row(2, T, a, group("A")),
            row(3, T, b, group("B")),
            row(
                4,
                T,
                app,
                ApplicationEvent::Configured {
                    application: finance("A"),
                }
                .to_payload(),
            ),
        ];
        let joined = GroupEvent::MembersAdded {
            members: vec![Member::new(user.to_string())],
        }
        .to_payload();
        let moved = ApplicationEvent::PolicyChanged {
            before: finance("A").policies,
            after: finance("B").policies,
        }
        .to_payload();
        let (first, second) = match membership_first {
            true => ((b, joined), (app, moved)),
            false => ((app, moved), (b, joined)),
        };
        rows.push(row(5, T + 60, first.0, first.1));
        rows.push(row(6, T + 60, second.0, second.1));
        rows
    }

    #[test]
    fn at_one_instant_the_stream_order_decides_which_event_opened_access() {
        for membership_first in [true, false] {
            let rows = history(membership_first);
            let to = OffsetDateTime::from_unix_timestamp(T + 120).unwrap();
            let users = intervals(&rows, "finance", OffsetDateTime::UNIX_EPOCH, to).unwrap();
            // Access opens only once both happened: by whichever came second in the stream.
            assert_eq!(users.len(), 1);
            let stretches = &users[0].intervals;
            assert_eq!(stretches.len(), 1, "{stretches:?}");
            assert_eq!(stretches[0].opened_by.sequence, 6);
            let expected = match membership_first {
                true => "application.policy_changed",
                false => "group.members_added",
            };
            assert_eq!(stretches[0].opened_by.event_type, expected);
            // As of that instant, both are in, whatever their order: the user is allowed, via B.
            let world = World::fold(&rows).unwrap();
            let app = world.application("finance").unwrap();
            let user = world.user(Uuid::from_u128(1)).unwrap();
            let (verdict, via) = world.decide(&app, &user);
            assert!(verdict.allows());
            assert_eq!(via[0].group, "B");
            // Before it, the user had no access (A was never theirs).
            let before: Vec<&AuditRow> = rows.iter().filter(|r| r.sequence <= 4).collect();
            let world = World::fold(before).unwrap();
            let app = world.application("finance").unwrap();
            let user = world.user(Uuid::from_u128(1)).unwrap();
            assert!(!world.decide(&app, &user).0.allows());
        }
    }

    fn open_to_everyone() -> Vec<AuditRow> {
        let user = Uuid::from_u128(1);
        let app = rollcall_domain::application::application_id("t", "finance");
        let mut spec = finance("A");
        spec.policies[0].include[0] = RuleSpec {
            everyone: Some(true),
            ..Default::default()
        };
        vec![
            row(
                1,
                T,
                user,
                serde_json::json!({"type": "user.provisioned", "attributes": {"userName": "ada"}, "active": true}),
            ),
            row(
                2,
                T,
                app,
                ApplicationEvent::Configured { application: spec }.to_payload(),
            ),
        ]
    }

    #[test]
    fn a_commit_is_asked_about_whole_and_a_later_event_stamped_earlier_ends_the_prefix() {
        let user = Uuid::from_u128(1);
        let mut rows = open_to_everyone();
        // One commit (one sequence): deactivated and reactivated. Live never saw the user out.
        let mut out = row(
            3,
            T + 10,
            user,
            serde_json::json!({"type": "user.deactivated"}),
        );
        let mut back = row(
            3,
            T + 10,
            user,
            serde_json::json!({"type": "user.reactivated"}),
        );
        back.position = 1;
        out.position = 0;
        rows.extend([out, back]);
        // A writer with a slow clock: appended after a later-stamped event.
        rows.push(row(
            4,
            T + 100,
            user,
            serde_json::json!({"type": "user.deactivated"}),
        ));
        rows.push(row(
            5,
            T + 50,
            user,
            serde_json::json!({"type": "user.reactivated"}),
        ));
        let at = |s: i64| OffsetDateTime::from_unix_timestamp(T + s).unwrap();
        let users = intervals(&rows, "finance", OffsetDateTime::UNIX_EPOCH, at(60)).unwrap();
        assert_eq!(users[0].intervals.len(), 1, "{:?}", users[0].intervals);
        assert_eq!(users[0].intervals[0].to, None);
        let users = intervals(&rows, "finance", OffsetDateTime::UNIX_EPOCH, at(200)).unwrap();
        let stretches = &users[0].intervals;
        assert_eq!(stretches.len(), 2, "{stretches:?}");
        assert_eq!(stretches[0].closed_by.as_ref().unwrap().sequence, 4);
        assert_eq!(stretches[1].opened_by.sequence, 5);
    }

    #[test]
    fn an_application_event_that_cannot_be_placed_is_passed_over_as_the_access_services_do() {
        let mut rows = open_to_everyone();
        let orphan = ApplicationEvent::PolicyChanged {
            before: Vec::new(),
            after: Vec::new(),
        };
        rows.push(row(3, T, Uuid::from_u128(9), orphan.to_payload()));
        rows.push(row(
            4,
            T,
            Uuid::from_u128(9),
            serde_json::json!({"type": "application.configured", "application": "nonsense"}),
        ));
        let world = World::fold(&rows).unwrap();
        assert_eq!(world.policy_version(), 4);
        let app = world.application("finance").unwrap();
        let user = world.user(Uuid::from_u128(1)).unwrap();
        assert!(world.decide(&app, &user).0.allows());
    }
}
