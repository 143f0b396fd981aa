//! The User aggregate: provisioned, changed, deactivated (Entra's deprovisioning), reactivated,
//! deleted. Deactivation is its own event however it arrived (`active: false`, `"False"`, a PUT
//! or a path-less PATCH): the edge turns every form into [`UserCommand::Deactivate`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attributes::{self, AttributeChange, Attributes};
use crate::event::EventKind;

/// A user's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum User {
    /// Never provisioned.
    #[default]
    Absent,
    /// Provisioned and active.
    Active(Attributes),
    /// Provisioned and deactivated: readable and findable, but denied access.
    Inactive(Attributes),
    /// Deleted; the id is never reused.
    Deleted,
    /// Erased: deleted, and its personal data destroyed (its data key); the id is never reused.
    Erased,
}

impl User {
    /// The attributes, unless absent or deleted.
    pub fn attributes(&self) -> Option<&Attributes> {
        match self {
            User::Active(attributes) | User::Inactive(attributes) => Some(attributes),
            User::Absent | User::Deleted | User::Erased => None,
        }
    }

    /// Whether the user exists and is active.
    pub fn is_active(&self) -> bool {
        matches!(self, User::Active(_))
    }

    /// The userName, if the user exists.
    pub fn user_name(&self) -> Option<&str> {
        self.attributes()?.get("userName")?.as_str()
    }
}

/// A user's email addresses as access decisions read them: every `emails[].value`, the
/// primary one first (the others in their order). The access state the projector publishes and
/// the audit API's access as of an instant both read them here.
pub fn emails(attributes: &Attributes) -> Vec<&str> {
    let mut emails: Vec<(bool, &str)> = attributes
        .get("emails")
        .and_then(Value::as_array)
        .map(|emails| {
            emails
                .iter()
                .filter_map(|e| {
                    Some((
                        e.get("primary") == Some(&Value::Bool(true)),
                        e.get("value")?.as_str()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    emails.sort_by_key(|(primary, _)| !primary);
    emails.into_iter().map(|(_, email)| email).collect()
}

/// What may be asked of a user.
#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    /// Create the user with these attributes (without `password`, `id`, `meta`).
    Provision {
        /// The attributes; `userName` is required.
        attributes: Attributes,
        /// Whether the user starts active.
        active: bool,
    },
    /// Change attributes; `active` only between unassigned and true (going inactive or back is
    /// [`UserCommand::Deactivate`] / [`UserCommand::Reactivate`]).
    ChangeAttributes(Vec<AttributeChange>),
    /// Deny access from now on (Entra's deprovisioning).
    Deactivate,
    /// Allow access again.
    Reactivate,
    /// Delete the user for good.
    Delete,
    /// Record that the user was never created: the writer that claimed its userName stopped
    /// before creating it. Only for an absent user; appended expecting no earlier event, it
    /// fences that writer out for good, so that the claim can be recovered at once.
    Abandon,
    /// Erase the user's personal data (an operator's action, or retention): the user is gone,
    /// and every personal field of its events is unreadable for good.
    Erase {
        /// Why, for the record (no personal data).
        reason: String,
    },
    /// Void sessions (an operator's action): one session, or every session issued so far.
    RevokeSessions {
        /// The session, or `None` for all of the user's sessions issued until now.
        session_id: Option<String>,
        /// Why, for the record.
        reason: String,
    },
}

/// What happened to a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum UserEvent {
    /// The user was created.
    #[serde(rename = "user.provisioned")]
    Provisioned {
        /// Its attributes.
        attributes: Attributes,
        /// Whether it started active.
        active: bool,
    },
    /// Attributes changed, each with its value before and after.
    #[serde(rename = "user.attributes_changed")]
    AttributesChanged {
        /// The changes.
        changes: Vec<AttributeChange>,
    },
    /// The user was deactivated.
    #[serde(rename = "user.deactivated")]
    Deactivated,
    /// The user was reactivated.
    #[serde(rename = "user.reactivated")]
    Reactivated,
    /// The user was deleted.
    #[serde(rename = "user.deleted")]
    Deleted,
    /// The user was never created: its writer stopped after claiming the userName, and the
    /// claim was recovered. The id stays unused for good.
    #[serde(rename = "user.abandoned")]
    Abandoned,
    /// The user's personal data was erased (its data key destroyed): the user is gone, and
    /// the personal fields of its earlier events read `[erased]`. Holds no personal data.
    #[serde(rename = "user.erased")]
    Erased {
        /// Why (an operator's words, or the retention rule).
        reason: String,
    },
    /// Sessions were revoked by an operator: one, or all issued before the event.
    #[serde(rename = "user.sessions_revoked")]
    SessionsRevoked {
        /// The session, or absent for every session issued before the event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
        /// Why.
        reason: String,
    },
}

impl EventKind for UserEvent {
    const AGGREGATE: &'static str = "user";

    fn event_type(&self) -> &'static str {
        match self {
            UserEvent::Provisioned { .. } => "user.provisioned",
            UserEvent::AttributesChanged { .. } => "user.attributes_changed",
            UserEvent::Deactivated => "user.deactivated",
            UserEvent::Reactivated => "user.reactivated",
            UserEvent::Deleted => "user.deleted",
            UserEvent::SessionsRevoked { .. } => "user.sessions_revoked",
            UserEvent::Abandoned => "user.abandoned",
            UserEvent::Erased { .. } => "user.erased",
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// The user does not exist.
    #[error("the user does not exist")]
    NotFound,
    /// The user was deleted.
    #[error("the user was deleted")]
    Deleted,
    /// A user with this id exists already.
    #[error("the user exists already")]
    AlreadyProvisioned,
    /// A user needs a non-empty userName.
    #[error("userName is required")]
    UserNameRequired,
    /// A revocation or an erasure needs a reason.
    #[error("a reason is required")]
    ReasonRequired,
    /// The user's personal data was erased.
    #[error("the user was erased")]
    Erased,
    /// Going inactive or active again is its own command, never an attribute change.
    #[error("deactivation and reactivation are their own commands")]
    ActivationIsACommand,
}

fn has_user_name(attributes: &Attributes) -> bool {
    attributes
        .get("userName")
        .and_then(Value::as_str)
        .is_some_and(|name| !name.is_empty())
}

/// Decides what a command means for a user.
pub fn decide(user: &User, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
    match (user, command) {
        (User::Absent, UserCommand::Provision { attributes, active }) => {
            if !has_user_name(&attributes) {
                return Err(UserError::UserNameRequired);
            }
            Ok(vec![UserEvent::Provisioned { attributes, active }])
        }
        (User::Absent, UserCommand::Abandon) => Ok(vec![UserEvent::Abandoned]),
        (User::Absent, _) => Err(UserError::NotFound),
        (User::Erased, UserCommand::Erase { .. }) => Ok(vec![]),
        (User::Erased, _) => Err(UserError::Erased),
        (User::Deleted | User::Active(_) | User::Inactive(_), UserCommand::Erase { reason }) => {
            if reason.trim().is_empty() {
                return Err(UserError::ReasonRequired);
            }
            Ok(vec![UserEvent::Erased { reason }])
        }
        (User::Deleted, _) => Err(UserError::Deleted),
        (_, UserCommand::Provision { .. } | UserCommand::Abandon) => {
            Err(UserError::AlreadyProvisioned)
        }
        (
            User::Active(current) | User::Inactive(current),
            UserCommand::ChangeAttributes(changes),
        ) => {
            if changes.is_empty() {
                return Ok(vec![]);
            }
            let flips = |value: &Option<Value>| value.as_ref() == Some(&Value::Bool(false));
            if changes
                .iter()
                .any(|c| c.path == "active" && (flips(&c.before) || flips(&c.after)))
            {
                return Err(UserError::ActivationIsACommand);
            }
            let mut next = current.clone();
            attributes::apply(&mut next, &changes);
            if !has_user_name(&next) {
                return Err(UserError::UserNameRequired);
            }
            Ok(vec![UserEvent::AttributesChanged { changes }])
        }
        (User::Active(_), UserCommand::Deactivate) => Ok(vec![UserEvent::Deactivated]),
        // Entra repeats `active: false`; a second deactivation records nothing.
        (User::Inactive(_), UserCommand::Deactivate) => Ok(vec![]),
        (User::Inactive(_), UserCommand::Reactivate) => Ok(vec![UserEvent::Reactivated]),
        (User::Active(_), UserCommand::Reactivate) => Ok(vec![]),
        (_, UserCommand::Delete) => Ok(vec![UserEvent::Deleted]),
        (_, UserCommand::RevokeSessions { session_id, reason }) => {
            if reason.trim().is_empty() {
                return Err(UserError::ReasonRequired);
            }
            Ok(vec![UserEvent::SessionsRevoked { session_id, reason }])
        }
    }
}

fn lifecycle(attributes: Attributes) -> User {
    // `active` unassigned means active (RFC 7643 leaves its meaning to the service provider);
    // only an explicit false denies access.
    if attributes.get("active") == Some(&Value::Bool(false)) {
        User::Inactive(attributes)
    } else {
        User::Active(attributes)
    }
}

/// Folds one event into a user's state. Total: an event that cannot follow the state leaves it
/// as it was (unreachable from a valid history; never a panic).
pub fn evolve(user: User, event: &UserEvent) -> User {
    match (user, event) {
        (User::Absent, UserEvent::Provisioned { attributes, active }) => {
            let mut attributes = attributes.clone();
            if !active {
                attributes.insert("active".into(), Value::Bool(false));
            }
            lifecycle(attributes)
        }
        (
            User::Active(mut attributes) | User::Inactive(mut attributes),
            UserEvent::AttributesChanged { changes },
        ) => {
            attributes::apply(&mut attributes, changes);
            lifecycle(attributes)
        }
        (User::Active(mut attributes), UserEvent::Deactivated) => {
            attributes.insert("active".into(), Value::Bool(false));
            User::Inactive(attributes)
        }
        (User::Inactive(mut attributes), UserEvent::Reactivated) => {
            attributes.insert("active".into(), Value::Bool(true));
            User::Active(attributes)
        }
        (User::Erased, _) => User::Erased,
        (_, UserEvent::Erased { .. }) => User::Erased,
        (_, UserEvent::Deleted) => User::Deleted,
        (User::Absent, UserEvent::Abandoned) => User::Deleted,
        (user, _) => user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_read_primary_first_and_values_without_a_string_are_passed_over() {
        let attributes = |emails: serde_json::Value| -> Attributes {
            serde_json::json!({"emails": emails})
                .as_object()
                .unwrap()
                .clone()
        };
        let listed = attributes(serde_json::json!([
            {"value": "work@example.com"},
            {"type": "home"},
            {"value": "main@example.com", "primary": true},
            {"value": 7},
            {"value": "old@example.com", "primary": false}
        ]));
        assert_eq!(
            emails(&listed),
            ["main@example.com", "work@example.com", "old@example.com"]
        );
        assert!(emails(&attributes(serde_json::json!("a@example.com"))).is_empty());
        assert!(emails(&Attributes::new()).is_empty());
    }
    use serde_json::json;

    #[test]
    fn an_abandoned_user_can_never_be_created_and_only_an_absent_one_is_abandoned() {
        let abandoned = [UserEvent::Abandoned].iter().fold(User::default(), evolve);
        assert_eq!(abandoned, User::Deleted);
        assert_eq!(
            decide(
                &abandoned,
                UserCommand::Provision {
                    attributes: json!({"userName": "ada"}).as_object().unwrap().clone(),
                    active: true
                }
            ),
            Err(UserError::Deleted)
        );
        assert_eq!(
            decide(&User::Absent, UserCommand::Abandon),
            Ok(vec![UserEvent::Abandoned])
        );
        let existing = User::Active(json!({"userName": "ada"}).as_object().unwrap().clone());
        assert_eq!(
            decide(&existing, UserCommand::Abandon),
            Err(UserError::AlreadyProvisioned)
        );
    }

    fn attributes(value: Value) -> Attributes {
        value.as_object().unwrap().clone()
    }

    fn provisioned(name: &str) -> UserEvent {
        UserEvent::Provisioned {
            attributes: attributes(json!({"userName": name})),
            active: true,
        }
    }

    fn given(events: &[UserEvent]) -> User {
        events.iter().fold(User::default(), evolve)
    }

    #[test]
    fn provisioning_needs_a_user_name() {
        let command = UserCommand::Provision {
            attributes: attributes(json!({"displayName": "Ada"})),
            active: true,
        };
        assert_eq!(
            decide(&User::Absent, command),
            Err(UserError::UserNameRequired)
        );
    }

    #[test]
    fn deactivating_an_inactive_user_records_nothing() {
        let user = given(&[provisioned("ada"), UserEvent::Deactivated]);
        assert_eq!(decide(&user, UserCommand::Deactivate), Ok(vec![]));
    }

    #[test]
    fn reactivating_an_inactive_user_records_it() {
        let user = given(&[provisioned("ada"), UserEvent::Deactivated]);
        assert_eq!(
            decide(&user, UserCommand::Reactivate),
            Ok(vec![UserEvent::Reactivated])
        );
        assert!(given(&[
            provisioned("ada"),
            UserEvent::Deactivated,
            UserEvent::Reactivated
        ])
        .is_active());
    }

    #[test]
    fn erasing_a_live_or_deleted_user_records_it_once_and_nothing_follows() {
        let erase = || UserCommand::Erase {
            reason: "GDPR request 12".into(),
        };
        let erased = UserEvent::Erased {
            reason: "GDPR request 12".into(),
        };
        for history in [
            vec![provisioned("ada")],
            vec![provisioned("ada"), UserEvent::Deactivated],
            vec![provisioned("ada"), UserEvent::Deleted],
        ] {
            let user = given(&history);
            assert_eq!(decide(&user, erase()), Ok(vec![erased.clone()]));
            let user = evolve(user, &erased);
            assert_eq!(user, User::Erased);
            assert_eq!(user.attributes(), None);
            assert_eq!(decide(&user, erase()), Ok(vec![]));
            assert_eq!(decide(&user, UserCommand::Delete), Err(UserError::Erased));
            assert_eq!(evolve(user, &provisioned("ada")), User::Erased);
        }
        assert_eq!(decide(&User::Absent, erase()), Err(UserError::NotFound));
        let blank = UserCommand::Erase { reason: " ".into() };
        assert_eq!(
            decide(&given(&[provisioned("ada")]), blank),
            Err(UserError::ReasonRequired)
        );
    }

    #[test]
    fn a_deleted_user_cannot_be_changed_or_reprovisioned() {
        let user = given(&[provisioned("ada"), UserEvent::Deleted]);
        assert_eq!(
            decide(&user, UserCommand::Reactivate),
            Err(UserError::Deleted)
        );
        let command = UserCommand::Provision {
            attributes: attributes(json!({"userName": "ada"})),
            active: true,
        };
        assert_eq!(decide(&user, command), Err(UserError::Deleted));
    }

    #[test]
    fn provisioning_twice_is_refused_and_changing_nothing_records_nothing() {
        let user = given(&[provisioned("ada")]);
        let command = UserCommand::Provision {
            attributes: attributes(json!({"userName": "ada"})),
            active: true,
        };
        assert_eq!(decide(&user, command), Err(UserError::AlreadyProvisioned));
        assert_eq!(
            decide(&user, UserCommand::ChangeAttributes(vec![])),
            Ok(vec![])
        );
    }

    #[test]
    fn active_is_an_attribute_but_flipping_it_is_a_command() {
        let user = given(&[provisioned("ada")]);
        let flip = AttributeChange {
            path: "active".into(),
            before: None,
            after: Some(json!(false)),
            redacted: false,
        };
        assert_eq!(
            decide(&user, UserCommand::ChangeAttributes(vec![flip])),
            Err(UserError::ActivationIsACommand)
        );
        let inactive = given(&[provisioned("ada"), UserEvent::Deactivated]);
        assert_eq!(
            inactive.attributes().unwrap().get("active"),
            Some(&json!(false))
        );
        let cleared = AttributeChange {
            path: "active".into(),
            before: Some(json!(true)),
            after: None,
            redacted: false,
        };
        let reactivated_then_cleared = given(&[
            provisioned("ada"),
            UserEvent::Deactivated,
            UserEvent::Reactivated,
            UserEvent::AttributesChanged {
                changes: vec![cleared],
            },
        ]);
        assert!(
            reactivated_then_cleared.is_active(),
            "unassigned active means active"
        );
        assert!(reactivated_then_cleared
            .attributes()
            .unwrap()
            .get("active")
            .is_none());
    }

    #[test]
    fn an_operator_revocation_is_an_event_and_changes_no_attribute() {
        let user = given(&[provisioned("ada")]);
        let command = UserCommand::RevokeSessions {
            session_id: Some("s1".into()),
            reason: "laptop stolen".into(),
        };
        let events = decide(&user, command).unwrap();
        assert_eq!(
            events,
            vec![UserEvent::SessionsRevoked {
                session_id: Some("s1".into()),
                reason: "laptop stolen".into()
            }]
        );
        assert_eq!(evolve(user.clone(), &events[0]), user);
        let blank = UserCommand::RevokeSessions {
            session_id: None,
            reason: " ".into(),
        };
        assert_eq!(decide(&user, blank), Err(UserError::ReasonRequired));
        assert_eq!(
            decide(
                &User::Absent,
                UserCommand::RevokeSessions {
                    session_id: None,
                    reason: "x".into()
                }
            ),
            Err(UserError::NotFound)
        );
    }

    #[test]
    fn removing_the_user_name_is_refused() {
        let user = given(&[provisioned("ada")]);
        let change = AttributeChange {
            path: "userName".into(),
            before: Some(json!("ada")),
            after: None,
            redacted: false,
        };
        assert_eq!(
            decide(&user, UserCommand::ChangeAttributes(vec![change])),
            Err(UserError::UserNameRequired)
        );
    }

    #[test]
    fn events_keep_their_wire_names_and_read_back() {
        let event = UserEvent::Deactivated;
        assert_eq!(event.to_payload(), json!({"type": "user.deactivated"}));
        let changed = UserEvent::AttributesChanged {
            changes: vec![AttributeChange {
                path: "title".into(),
                before: None,
                after: Some(json!("Dr")),
                redacted: false,
            }],
        };
        let payload = changed.to_payload();
        assert_eq!(
            payload,
            json!({"type": "user.attributes_changed", "changes": [{"path": "title", "after": "Dr"}]})
        );
        assert_eq!(
            UserEvent::from_payload(changed.event_type(), 1, &payload),
            Ok(changed)
        );
        assert!(UserEvent::from_payload("user.deactivated", 99, &json!({})).is_err());
    }
}
