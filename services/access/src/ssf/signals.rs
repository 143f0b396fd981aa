//! What each lifecycle event means to a Shared Signals receiver: the CAEP and RISC events it
//! derives, with their subjects. Pure: a [`TenantFold`] holds what the tenant's earlier events
//! said (who a user is, who is in which group), and [`TenantFold::derive`] reads one event
//! against it before [`TenantFold::apply`] folds it in.
//!
//! | Rollcall event | SETs (one each, sharing `txn` = the event id) |
//! | --- | --- |
//! | `user.deactivated` | RISC `account-disabled`, CAEP `session-revoked` (complex: user + tenant) |
//! | `user.reactivated` | RISC `account-enabled` |
//! | `user.deleted` | RISC `account-purged` |
//! | `user.attributes_changed` of `userName` / `emails` | RISC `identifier-changed` (old subject, `new-value`) |
//! | `user.attributes_changed` of `password` | CAEP `credential-change` (`password`, `update`; never the value) |
//! | `user.sessions_revoked` (sign-out, `rollcall sessions revoke`) | CAEP `session-revoked` (complex: user + tenant + session) |
//! | `group.created` with members, `group.members_added` / `_removed`, `group.renamed`, `group.deleted` | CAEP `token-claims-change` per member whose `groups` changed, with the new `groups` |

use std::collections::{BTreeSet, HashMap};

use rollcall_domain::group::{self, Group};
use rollcall_domain::user::{self, User};
use rollcall_domain::{EventKind, GroupEvent, IdentityEvent, UserEvent};
use rollcall_eventlog::{Actor, Envelope};
use serde_json::{json, Value};
use uuid::Uuid;

/// CAEP and RISC event type URIs.
pub mod uri {
    /// CAEP session revoked.
    pub const SESSION_REVOKED: &str =
        "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
    /// CAEP credential change.
    pub const CREDENTIAL_CHANGE: &str =
        "https://schemas.openid.net/secevent/caep/event-type/credential-change";
    /// CAEP token claims change.
    pub const TOKEN_CLAIMS_CHANGE: &str =
        "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";
    /// RISC account disabled.
    pub const ACCOUNT_DISABLED: &str =
        "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
    /// RISC account enabled.
    pub const ACCOUNT_ENABLED: &str =
        "https://schemas.openid.net/secevent/risc/event-type/account-enabled";
    /// RISC account purged.
    pub const ACCOUNT_PURGED: &str =
        "https://schemas.openid.net/secevent/risc/event-type/account-purged";
    /// RISC identifier changed.
    pub const IDENTIFIER_CHANGED: &str =
        "https://schemas.openid.net/secevent/risc/event-type/identifier-changed";
    /// SSF verification.
    pub const VERIFICATION: &str =
        "https://schemas.openid.net/secevent/ssf/event-type/verification";
    /// SSF stream updated.
    pub const STREAM_UPDATED: &str =
        "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";
}

/// The lifecycle events a stream can carry (`events_supported`).
pub const SUPPORTED: [&str; 7] = [
    uri::ACCOUNT_DISABLED,
    uri::ACCOUNT_ENABLED,
    uri::ACCOUNT_PURGED,
    uri::IDENTIFIER_CHANGED,
    uri::SESSION_REVOKED,
    uri::CREDENTIAL_CHANGE,
    uri::TOKEN_CLAIMS_CHANGE,
];

/// One SET's content before it is addressed and signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// The event type URI.
    pub event: &'static str,
    /// The event's members (`event_timestamp`, `initiating_entity`, …).
    pub body: Value,
    /// The subject.
    pub sub_id: Value,
    /// Every subject naming the same person (a receiver that removed any of them gets none).
    pub identifiers: Vec<Value>,
}

/// An email subject, the address in lower case (receivers' subjects are compared the same way).
pub fn email_subject(email: &str) -> Value {
    json!({"format": "email", "email": email.to_lowercase()})
}

/// A subject as a receiver gave it, made comparable: email addresses in lower case.
pub fn normalize_subject(subject: &Value) -> Value {
    match (subject["format"].as_str(), subject["email"].as_str()) {
        (Some("email"), Some(email)) => email_subject(email),
        _ => subject.clone(),
    }
}

/// What a tenant's events said so far.
#[derive(Debug, Clone, Default)]
pub struct TenantFold {
    users: HashMap<Uuid, User>,
    groups: HashMap<Uuid, Group>,
    /// Groups by member key ([`rollcall_domain::Member::key`]).
    member_of: HashMap<String, BTreeSet<Uuid>>,
    /// The provider account each user last signed in as: (issuer, subject).
    links: HashMap<Uuid, (String, String)>,
}

/// Who initiated an event, in CAEP's words.
fn initiating_entity(envelope: &Envelope) -> &'static str {
    match &envelope.actor {
        Actor::Operator { name } if name == "sign-out" => "user",
        Actor::ScimToken { .. } | Actor::Operator { .. } | Actor::SsfReceiver { .. } => "admin",
        Actor::System { .. } => "system",
    }
}

impl TenantFold {
    /// The subjects of user `id` as known now, the one SETs carry first: `email` (primary
    /// first) when it has one; `iss_sub` of the provider account it signed in as, once it has;
    /// `iss_sub` with `issuer` and the user's id (the `sub` of Rollcall's sessions).
    fn user_subjects(&self, issuer: &str, id: Uuid) -> Vec<Value> {
        let mut subjects: Vec<Value> = self
            .users
            .get(&id)
            .and_then(User::attributes)
            .map(|attributes| {
                user::emails(attributes)
                    .into_iter()
                    .map(email_subject)
                    .collect()
            })
            .unwrap_or_default();
        if let Some((provider, subject)) = self
            .links
            .get(&id)
            .filter(|(_, subject)| subject != rollcall_personal::ERASED)
        {
            subjects.push(json!({"format": "iss_sub", "iss": provider, "sub": subject}));
        }
        subjects.push(json!({"format": "iss_sub", "iss": issuer, "sub": id.to_string()}));
        subjects
    }

    fn group_name(&self, id: Uuid) -> Option<String> {
        self.groups
            .get(&id)?
            .state()?
            .display_name()
            .map(str::to_owned)
    }

    /// The signals `envelope` derives, read against what came before it (call before
    /// [`TenantFold::apply`]). `issuer` is the tenant's SSF issuer.
    pub fn derive(&self, issuer: &str, envelope: &Envelope) -> Vec<Signal> {
        let common = json!({
            "event_timestamp": envelope.occurred_at.unix_timestamp(),
            "initiating_entity": initiating_entity(envelope),
        });
        let with = |extra: Value| {
            let mut body = common.clone();
            if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
                body.extend(extra.clone());
            }
            body
        };
        match envelope.aggregate_type.as_str() {
            UserEvent::AGGREGATE => {
                let Ok(event) = UserEvent::from_payload(
                    &envelope.event_type,
                    envelope.schema_version,
                    &envelope.payload,
                ) else {
                    return Vec::new();
                };
                self.user_signals(issuer, envelope, &event, &with)
            }
            GroupEvent::AGGREGATE => {
                let Ok(event) = GroupEvent::from_payload(
                    &envelope.event_type,
                    envelope.schema_version,
                    &envelope.payload,
                ) else {
                    return Vec::new();
                };
                self.group_signals(issuer, envelope, &event, &with)
            }
            _ => Vec::new(),
        }
    }

    fn user_signals(
        &self,
        issuer: &str,
        envelope: &Envelope,
        event: &UserEvent,
        with: &dyn Fn(Value) -> Value,
    ) -> Vec<Signal> {
        let id = envelope.aggregate_id;
        let identifiers = self.user_subjects(issuer, id);
        let subject = identifiers[0].clone();
        let session_subject = |session: Option<&str>| {
            let mut complex = json!({
                "format": "complex",
                "user": subject,
                "tenant": {"format": "opaque", "id": envelope.tenant},
            });
            if let Some(session) = session {
                complex["session"] = json!({"format": "opaque", "id": session});
            }
            complex
        };
        let signal = |event: &'static str, body: Value, sub_id: Value| Signal {
            event,
            body,
            sub_id,
            identifiers: identifiers.clone(),
        };
        match event {
            UserEvent::Deactivated => vec![
                signal(uri::ACCOUNT_DISABLED, with(json!({})), subject.clone()),
                signal(uri::SESSION_REVOKED, with(json!({})), session_subject(None)),
            ],
            UserEvent::Reactivated => {
                vec![signal(
                    uri::ACCOUNT_ENABLED,
                    with(json!({})),
                    subject.clone(),
                )]
            }
            UserEvent::Deleted => vec![signal(
                uri::ACCOUNT_PURGED,
                with(json!({})),
                subject.clone(),
            )],
            // An erasure names the person by Rollcall's opaque id alone (their personal data is
            // going), and only if no deletion said it already.
            UserEvent::Erased { .. } if self.users.contains_key(&id) => {
                let opaque = json!({"format": "iss_sub", "iss": issuer, "sub": id.to_string()});
                vec![Signal {
                    event: uri::ACCOUNT_PURGED,
                    body: with(json!({})),
                    sub_id: opaque.clone(),
                    identifiers: vec![opaque],
                }]
            }
            UserEvent::SessionsRevoked { session_id, .. } => vec![signal(
                uri::SESSION_REVOKED,
                with(json!({})),
                session_subject(session_id.as_deref()),
            )],
            UserEvent::AttributesChanged { changes } => {
                let mut signals = Vec::new();
                if changes.iter().any(|c| c.path == "password") {
                    signals.push(signal(
                        uri::CREDENTIAL_CHANGE,
                        with(json!({"credential_type": "password", "change_type": "update"})),
                        subject.clone(),
                    ));
                }
                let before = self.users.get(&id).and_then(User::attributes);
                let mut after = before.cloned().unwrap_or_default();
                rollcall_domain::attributes::apply(&mut after, changes);
                let old_email =
                    before.and_then(|b| user::emails(b).first().map(|e| e.to_lowercase()));
                let new_email = user::emails(&after).first().map(|e| e.to_lowercase());
                if changes.iter().any(|c| c.path == "emails") && old_email != new_email {
                    if let Some(new) = new_email {
                        signals.push(signal(
                            uri::IDENTIFIER_CHANGED,
                            with(json!({"new-value": new})),
                            subject.clone(),
                        ));
                    }
                }
                let old_name = before.and_then(|b| b.get("userName")?.as_str().map(str::to_owned));
                let new_name = after.get("userName").and_then(Value::as_str);
                if let (Some(old), Some(new)) = (old_name, new_name) {
                    if changes.iter().any(|c| c.path == "userName") && old != new {
                        let sub_id = if old.contains('@') {
                            email_subject(&old)
                        } else {
                            json!({"format": "opaque", "id": old})
                        };
                        signals.push(signal(
                            uri::IDENTIFIER_CHANGED,
                            with(json!({"new-value": new})),
                            sub_id,
                        ));
                    }
                }
                signals
            }
            UserEvent::Provisioned { .. } | UserEvent::Abandoned | UserEvent::Erased { .. } => {
                Vec::new()
            }
        }
    }

    fn group_signals(
        &self,
        issuer: &str,
        envelope: &Envelope,
        event: &GroupEvent,
        with: &dyn Fn(Value) -> Value,
    ) -> Vec<Signal> {
        let id = envelope.aggregate_id;
        let current = self
            .groups
            .get(&id)
            .and_then(Group::state)
            .map(|state| &state.members);
        let is_member = |key: &String| current.is_some_and(|members| members.contains_key(key));
        let touched: Vec<String> = match event {
            GroupEvent::Created { .. } | GroupEvent::MembersAdded { .. } => event
                .named_member_keys()
                .into_iter()
                .filter(|k| !is_member(k))
                .collect(),
            GroupEvent::MembersRemoved { .. } => event
                .named_member_keys()
                .into_iter()
                .filter(is_member)
                .collect(),
            GroupEvent::Renamed { .. } | GroupEvent::Deleted => current
                .map(|members| members.keys().cloned().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if touched.is_empty() {
            return Vec::new();
        }
        // This group after the event: its name, and whether each touched user is in it.
        let (name_after, in_after): (Option<String>, bool) = match event {
            GroupEvent::Deleted => (None, false),
            GroupEvent::Renamed { after, .. } => (Some(after.clone()), true),
            GroupEvent::MembersRemoved { .. } => (self.group_name(id), false),
            GroupEvent::Created { attributes, .. } => (
                attributes
                    .get("displayName")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                true,
            ),
            _ => (self.group_name(id), true),
        };
        let claim = |key: &str| -> Vec<String> {
            let mut names: BTreeSet<String> = self
                .member_of
                .get(key)
                .into_iter()
                .flatten()
                .filter(|group| **group != id)
                .filter_map(|group| self.group_name(*group))
                .collect();
            if in_after {
                names.extend(name_after.clone());
            }
            names.into_iter().collect()
        };
        let mut seen = BTreeSet::new();
        touched
            .into_iter()
            .filter(|key| seen.insert(key.clone()))
            .filter_map(|key| {
                let user = Uuid::parse_str(&key)
                    .ok()
                    .filter(|user| self.users.get(user).and_then(User::attributes).is_some())?;
                let identifiers = self.user_subjects(issuer, user);
                Some(Signal {
                    event: uri::TOKEN_CLAIMS_CHANGE,
                    body: with(json!({"claims": {"groups": claim(&key)}})),
                    sub_id: identifiers[0].clone(),
                    identifiers,
                })
            })
            .collect()
    }

    /// Folds `envelope` in.
    pub fn apply(&mut self, envelope: &Envelope) {
        match envelope.aggregate_type.as_str() {
            UserEvent::AGGREGATE => {
                if let Ok(event) = UserEvent::from_payload(
                    &envelope.event_type,
                    envelope.schema_version,
                    &envelope.payload,
                ) {
                    let user = self
                        .users
                        .remove(&envelope.aggregate_id)
                        .unwrap_or_default();
                    let user = user::evolve(user, &event);
                    match user {
                        User::Deleted => {}
                        User::Erased => {
                            self.links.remove(&envelope.aggregate_id);
                        }
                        user => {
                            self.users.insert(envelope.aggregate_id, user);
                        }
                    }
                }
            }
            GroupEvent::AGGREGATE => {
                if let Ok(event) = GroupEvent::from_payload(
                    &envelope.event_type,
                    envelope.schema_version,
                    &envelope.payload,
                ) {
                    self.apply_group(envelope, &event);
                }
            }
            IdentityEvent::AGGREGATE => {
                if let Ok(IdentityEvent::Linked {
                    user_id,
                    issuer,
                    subject,
                }) = IdentityEvent::from_payload(
                    &envelope.event_type,
                    envelope.schema_version,
                    &envelope.payload,
                ) {
                    self.links.insert(user_id, (issuer, subject));
                }
            }
            _ => {}
        }
    }

    /// Folds a group event in at the cost of the members it names, not of the group's size:
    /// only an event that ends the group touches every member.
    fn apply_group(&mut self, envelope: &Envelope, event: &GroupEvent) {
        let id = envelope.aggregate_id;
        let state = self.groups.remove(&id).unwrap_or_default();
        let touched: Vec<String> = match event {
            GroupEvent::Deleted | GroupEvent::Abandoned => state
                .state()
                .map(|state| state.members.keys().cloned().collect())
                .unwrap_or_default(),
            _ => event.named_member_keys(),
        };
        let state = group::evolve(state, event);
        let members = state.state().map(|state| &state.members);
        for key in touched {
            if members.is_some_and(|members| members.contains_key(&key)) {
                self.member_of.entry(key).or_default().insert(id);
            } else if let Some(groups) = self.member_of.get_mut(&key) {
                groups.remove(&id);
                if groups.is_empty() {
                    self.member_of.remove(&key);
                }
            }
        }
        if !matches!(state, Group::Deleted) {
            self.groups.insert(id, state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_domain::{AttributeChange, Member};
    use time::OffsetDateTime;

    const ISSUER: &str = "https://rollcall.example/acme";

    fn envelope(aggregate: Uuid, payload: Value, actor: Actor) -> Envelope {
        let kind = payload["type"].as_str().unwrap_or_default().to_owned();
        Envelope {
            event_id: Uuid::now_v7(),
            tenant: "acme".into(),
            aggregate_type: kind.split('.').next().unwrap_or_default().into(),
            aggregate_id: aggregate,
            version: 1,
            event_type: kind,
            schema_version: 1,
            occurred_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
            actor,
            request_id: None,
            traceparent: None,
            payload,
        }
    }

    fn scim() -> Actor {
        Actor::ScimToken {
            token_id: "t".into(),
        }
    }

    fn step(fold: &mut TenantFold, envelope: Envelope) -> Vec<Signal> {
        let signals = fold.derive(ISSUER, &envelope);
        fold.apply(&envelope);
        signals
    }

    #[test]
    fn a_deactivation_is_account_disabled_and_session_revoked_with_the_users_email() {
        let mut fold = TenantFold::default();
        let ada = Uuid::now_v7();
        step(
            &mut fold,
            envelope(
                ada,
                json!({"type": "user.provisioned", "active": true, "attributes": {"userName": "ada", "emails": [{"value": "Ada@Example.com", "primary": true}]}}),
                scim(),
            ),
        );
        let signals = step(
            &mut fold,
            envelope(ada, json!({"type": "user.deactivated"}), scim()),
        );
        let events: Vec<&str> = signals.iter().map(|s| s.event).collect();
        assert_eq!(events, [uri::ACCOUNT_DISABLED, uri::SESSION_REVOKED]);
        assert_eq!(
            signals[0].sub_id,
            json!({"format": "email", "email": "ada@example.com"})
        );
        assert_eq!(signals[1].sub_id["format"], "complex");
        assert_eq!(
            signals[1].sub_id["tenant"],
            json!({"format": "opaque", "id": "acme"})
        );
        assert_eq!(signals[0].body["initiating_entity"], "admin");
        assert_eq!(signals[0].body["event_timestamp"], 1_700_000_000);
        let purged = step(
            &mut fold,
            envelope(ada, json!({"type": "user.deleted"}), scim()),
        );
        assert_eq!(purged[0].event, uri::ACCOUNT_PURGED);
        assert_eq!(purged[0].sub_id["email"], "ada@example.com");
    }

    #[test]
    fn an_erasure_is_account_purged_by_the_opaque_id_alone_unless_a_deletion_said_it() {
        let mut fold = TenantFold::default();
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        for (user, name) in [(ada, "ada"), (bob, "bob")] {
            step(
                &mut fold,
                envelope(
                    user,
                    json!({"type": "user.provisioned", "active": true, "attributes": {"userName": name, "emails": [{"value": format!("{name}@example.com")}]}}),
                    scim(),
                ),
            );
        }
        let erased = json!({"type": "user.erased", "reason": "DSR-1"});
        let purged = step(&mut fold, envelope(ada, erased.clone(), scim()));
        let opaque = json!({"format": "iss_sub", "iss": ISSUER, "sub": ada.to_string()});
        assert_eq!(purged.len(), 1);
        assert_eq!(purged[0].event, uri::ACCOUNT_PURGED);
        assert_eq!(purged[0].sub_id, opaque);
        assert_eq!(purged[0].identifiers, [opaque]);
        // A deletion named the person already: the erasure that follows sends nothing.
        step(
            &mut fold,
            envelope(bob, json!({"type": "user.deleted"}), scim()),
        );
        assert!(step(&mut fold, envelope(bob, erased, scim())).is_empty());
        // An erased person's provider account reads [erased] in a replay: never a subject.
        let carol = Uuid::now_v7();
        step(
            &mut fold,
            envelope(
                carol,
                json!({"type": "user.provisioned", "active": true, "attributes": {"userName": "[erased]", "emails": "[erased]"}}),
                scim(),
            ),
        );
        step(
            &mut fold,
            envelope(
                Uuid::now_v7(),
                json!({"type": "identity.linked", "user_id": carol, "issuer": "https://idp", "subject": "[erased]"}),
                scim(),
            ),
        );
        let disabled = step(
            &mut fold,
            envelope(carol, json!({"type": "user.deactivated"}), scim()),
        );
        let rollcall = json!({"format": "iss_sub", "iss": ISSUER, "sub": carol.to_string()});
        assert_eq!(disabled[0].sub_id, rollcall);
        assert_eq!(disabled[0].identifiers, [rollcall]);
    }

    #[test]
    fn a_sign_out_names_its_session_and_a_password_is_a_credential_change_without_its_value() {
        let mut fold = TenantFold::default();
        let ada = Uuid::now_v7();
        step(
            &mut fold,
            envelope(
                ada,
                json!({"type": "user.provisioned", "active": true, "attributes": {"userName": "ada"}}),
                scim(),
            ),
        );
        let signals = step(
            &mut fold,
            envelope(
                ada,
                json!({"type": "user.sessions_revoked", "session_id": "s-1", "reason": "signed out"}),
                Actor::Operator {
                    name: "sign-out".into(),
                },
            ),
        );
        assert_eq!(
            signals[0].sub_id["session"],
            json!({"format": "opaque", "id": "s-1"})
        );
        assert_eq!(
            signals[0].sub_id["user"],
            json!({"format": "iss_sub", "iss": ISSUER, "sub": ada.to_string()}),
            "without an email or a sign-in: Rollcall's own issuer and the user's id"
        );
        // Once ada signed in through the provider, SETs name her as the provider does.
        step(
            &mut fold,
            envelope(
                Uuid::now_v7(),
                json!({"type": "identity.linked", "user_id": ada, "issuer": "https://idp.example/v2.0", "subject": "pairwise-ada"}),
                Actor::System {
                    name: "sign-in".into(),
                },
            ),
        );
        let revoked = step(
            &mut fold,
            envelope(
                ada,
                json!({"type": "user.sessions_revoked", "reason": "r"}),
                scim(),
            ),
        );
        assert_eq!(
            revoked[0].sub_id["user"],
            json!({"format": "iss_sub", "iss": "https://idp.example/v2.0", "sub": "pairwise-ada"})
        );
        assert_eq!(signals[0].body["initiating_entity"], "user");
        let change = AttributeChange {
            path: "password".into(),
            before: None,
            after: None,
            redacted: true,
        };
        let signals = step(
            &mut fold,
            envelope(
                ada,
                json!({"type": "user.attributes_changed", "changes": [change]}),
                scim(),
            ),
        );
        assert_eq!(signals.len(), 1);
        assert_eq!(signals[0].event, uri::CREDENTIAL_CHANGE);
        assert_eq!(signals[0].body["credential_type"], "password");
    }

    #[test]
    fn membership_changes_carry_each_touched_users_new_groups() {
        let mut fold = TenantFold::default();
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        for (id, name) in [(ada, "ada"), (bob, "bob")] {
            step(
                &mut fold,
                envelope(
                    id,
                    json!({"type": "user.provisioned", "active": true, "attributes": {"userName": name}}),
                    scim(),
                ),
            );
        }
        let (eng, ops) = (Uuid::now_v7(), Uuid::now_v7());
        let created = step(
            &mut fold,
            envelope(
                eng,
                json!({"type": "group.created", "attributes": {"displayName": "Engineering"}, "members": [Member::new(ada.to_string())]}),
                scim(),
            ),
        );
        assert_eq!(created[0].body["claims"]["groups"], json!(["Engineering"]));
        step(
            &mut fold,
            envelope(
                ops,
                json!({"type": "group.created", "attributes": {"displayName": "Ops"}, "members": [Member::new(ada.to_string()), Member::new(bob.to_string())]}),
                scim(),
            ),
        );
        let removed = step(
            &mut fold,
            envelope(
                ops,
                json!({"type": "group.members_removed", "members": [ada.to_string().to_uppercase()]}),
                scim(),
            ),
        );
        assert_eq!(removed.len(), 1, "only ada's groups changed: {removed:?}");
        assert_eq!(removed[0].body["claims"]["groups"], json!(["Engineering"]));
        let again = step(
            &mut fold,
            envelope(
                ops,
                json!({"type": "group.members_removed", "members": [ada.to_string()]}),
                scim(),
            ),
        );
        assert!(again.is_empty(), "removing a non-member changes no claim");
        let deleted = step(
            &mut fold,
            envelope(ops, json!({"type": "group.deleted"}), scim()),
        );
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].body["claims"]["groups"], json!([]));
    }

    /// `member_of` inverted from the groups' own member lists.
    fn inverted(fold: &TenantFold) -> HashMap<String, BTreeSet<Uuid>> {
        let mut out: HashMap<String, BTreeSet<Uuid>> = HashMap::new();
        for (id, group) in &fold.groups {
            for key in group.state().into_iter().flat_map(|s| s.members.keys()) {
                out.entry(key.clone()).or_default().insert(*id);
            }
        }
        out
    }

    #[test]
    fn the_groups_of_each_member_follow_every_kind_of_group_event() {
        let mut fold = TenantFold::default();
        let users: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let member = |i: usize| Member::new(users[i].to_string());
        let events = [
            (
                a,
                json!({"type": "group.created", "attributes": {"displayName": "A"}, "members": [member(0), member(1), member(2)]}),
            ),
            (
                b,
                json!({"type": "group.created", "attributes": {"displayName": "B"}, "members": [member(2), member(3)]}),
            ),
            (
                a,
                json!({"type": "group.members_added", "members": [member(3), member(0)]}),
            ),
            (
                a,
                json!({"type": "group.members_removed", "members": [users[1].to_string().to_uppercase(), users[5].to_string()]}),
            ),
            (
                b,
                json!({"type": "group.renamed", "before": "B", "after": "Bee"}),
            ),
            (a, json!({"type": "group.deleted"})),
            (
                b,
                json!({"type": "group.members_added", "members": [member(4)]}),
            ),
            (
                b,
                json!({"type": "group.members_removed", "members": [users[2].to_string()]}),
            ),
        ];
        for (group, payload) in events {
            fold.apply(&envelope(group, payload.clone(), scim()));
            assert_eq!(fold.member_of, inverted(&fold), "after {payload}");
        }
        let keys: BTreeSet<&String> = fold.member_of.keys().collect();
        assert_eq!(keys.len(), 2, "only b's members are left: {keys:?}");
    }
}
