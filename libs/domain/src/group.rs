//! The Group aggregate: created, renamed, changed, members added and removed, deleted.
//! Membership is what access decisions read, so every change to it is its own event naming
//! exactly who came and who went.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attributes::{self, AttributeChange, Attributes};
use crate::event::EventKind;

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's id (a user's or group's id).
    pub value: String,
    /// `User` or `Group`, when the client said.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A display name, when the client sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Member {
    /// A member by id.
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            kind: None,
            display: None,
        }
    }

    /// Member ids are compared without case (Microsoft's reference server does the same).
    pub fn key(&self) -> String {
        self.value.to_lowercase()
    }
}

/// An existing group's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupState {
    /// Attributes other than members (`displayName`, `externalId`, …).
    pub attributes: Attributes,
    /// Members by [`Member::key`].
    pub members: BTreeMap<String, Member>,
}

impl GroupState {
    /// The displayName.
    pub fn display_name(&self) -> Option<&str> {
        self.attributes.get("displayName")?.as_str()
    }
}

/// A group's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Group {
    /// Never created.
    #[default]
    Absent,
    /// Created.
    Active(GroupState),
    /// Deleted; the id is never reused.
    Deleted,
}

impl Group {
    /// The state, unless absent or deleted.
    pub fn state(&self) -> Option<&GroupState> {
        match self {
            Group::Active(state) => Some(state),
            Group::Absent | Group::Deleted => None,
        }
    }
}

/// What may be asked of a group.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupCommand {
    /// Create the group.
    Create {
        /// Attributes other than members; `displayName` is required.
        attributes: Attributes,
        /// Its first members.
        members: Vec<Member>,
    },
    /// Change attributes other than members; a `displayName` change is a rename.
    ChangeAttributes(Vec<AttributeChange>),
    /// Add members (those already in are skipped).
    AddMembers(Vec<Member>),
    /// Remove members by id (those not in are skipped).
    RemoveMembers(Vec<String>),
    /// Delete the group.
    Delete,
    /// Record that the group was never created: the writer that claimed its displayName
    /// stopped before creating it (see `UserCommand::Abandon`).
    Abandon,
}

/// What happened to a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum GroupEvent {
    /// The group was created.
    #[serde(rename = "group.created")]
    Created {
        /// Attributes other than members.
        attributes: Attributes,
        /// Its first members.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        members: Vec<Member>,
    },
    /// The displayName changed.
    #[serde(rename = "group.renamed")]
    Renamed {
        /// The old name.
        before: String,
        /// The new name.
        after: String,
    },
    /// Other attributes changed.
    #[serde(rename = "group.attributes_changed")]
    AttributesChanged {
        /// The changes.
        changes: Vec<AttributeChange>,
    },
    /// Members were added.
    #[serde(rename = "group.members_added")]
    MembersAdded {
        /// Who.
        members: Vec<Member>,
    },
    /// Members were removed.
    #[serde(rename = "group.members_removed")]
    MembersRemoved {
        /// Who, by id.
        members: Vec<String>,
    },
    /// The group was deleted.
    #[serde(rename = "group.deleted")]
    Deleted,
    /// The group was never created: its writer stopped after claiming the displayName, and
    /// the claim was recovered. The id stays unused for good.
    #[serde(rename = "group.abandoned")]
    Abandoned,
}

impl GroupEvent {
    /// The member keys ([`Member::key`]) this event adds or removes; none for an event that
    /// changes no membership by name (a deletion ends every membership).
    pub fn named_member_keys(&self) -> Vec<String> {
        match self {
            GroupEvent::Created { members, .. } | GroupEvent::MembersAdded { members } => {
                members.iter().map(Member::key).collect()
            }
            GroupEvent::MembersRemoved { members } => {
                members.iter().map(|m| m.to_lowercase()).collect()
            }
            _ => Vec::new(),
        }
    }
}

impl EventKind for GroupEvent {
    const AGGREGATE: &'static str = "group";

    fn event_type(&self) -> &'static str {
        match self {
            GroupEvent::Created { .. } => "group.created",
            GroupEvent::Renamed { .. } => "group.renamed",
            GroupEvent::AttributesChanged { .. } => "group.attributes_changed",
            GroupEvent::MembersAdded { .. } => "group.members_added",
            GroupEvent::MembersRemoved { .. } => "group.members_removed",
            GroupEvent::Deleted => "group.deleted",
            GroupEvent::Abandoned => "group.abandoned",
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The group does not exist.
    #[error("the group does not exist")]
    NotFound,
    /// The group was deleted.
    #[error("the group was deleted")]
    Deleted,
    /// A group with this id exists already.
    #[error("the group exists already")]
    AlreadyCreated,
    /// A group needs a non-empty displayName.
    #[error("displayName is required")]
    DisplayNameRequired,
}

fn display_name(attributes: &Attributes) -> Option<&str> {
    attributes
        .get("displayName")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
}

/// The members, each once (the first of those with one [`Member::key`]), in their order.
fn dedupe(members: Vec<Member>) -> Vec<Member> {
    let mut seen = BTreeSet::new();
    members
        .into_iter()
        .filter(|m| seen.insert(m.key()))
        .collect()
}

/// Decides what a command means for a group.
pub fn decide(group: &Group, command: GroupCommand) -> Result<Vec<GroupEvent>, GroupError> {
    let state = match (group, command) {
        (
            Group::Absent,
            GroupCommand::Create {
                attributes,
                members,
            },
        ) => {
            if display_name(&attributes).is_none() {
                return Err(GroupError::DisplayNameRequired);
            }
            return Ok(vec![GroupEvent::Created {
                attributes,
                members: dedupe(members),
            }]);
        }
        (Group::Absent, GroupCommand::Abandon) => return Ok(vec![GroupEvent::Abandoned]),
        (Group::Absent, _) => return Err(GroupError::NotFound),
        (Group::Deleted, _) => return Err(GroupError::Deleted),
        (Group::Active(_), GroupCommand::Create { .. } | GroupCommand::Abandon) => {
            return Err(GroupError::AlreadyCreated)
        }
        (Group::Active(_), GroupCommand::Delete) => return Ok(vec![GroupEvent::Deleted]),
        (Group::Active(state), command) => (state, command),
    };
    match state {
        (state, GroupCommand::ChangeAttributes(changes)) => {
            let (renames, others): (Vec<_>, Vec<_>) =
                changes.into_iter().partition(|c| c.path == "displayName");
            let mut events = Vec::new();
            if let Some(rename) = renames.into_iter().last() {
                let after = rename
                    .after
                    .as_ref()
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty());
                let Some(after) = after else {
                    return Err(GroupError::DisplayNameRequired);
                };
                let before = state.display_name().unwrap_or_default();
                if before != after {
                    events.push(GroupEvent::Renamed {
                        before: before.to_owned(),
                        after: after.to_owned(),
                    });
                }
            }
            if !others.is_empty() {
                events.push(GroupEvent::AttributesChanged { changes: others });
            }
            Ok(events)
        }
        (state, GroupCommand::AddMembers(members)) => {
            let added: Vec<Member> = dedupe(members)
                .into_iter()
                .filter(|m| !state.members.contains_key(&m.key()))
                .collect();
            Ok(if added.is_empty() {
                vec![]
            } else {
                vec![GroupEvent::MembersAdded { members: added }]
            })
        }
        (state, GroupCommand::RemoveMembers(ids)) => {
            // A set, not a search of the list: a removal names up to tens of thousands of ids.
            let mut seen = BTreeSet::new();
            let mut removed: Vec<String> = Vec::new();
            for id in ids {
                if let Some(member) = state.members.get(&id.to_lowercase()) {
                    if seen.insert(member.value.as_str()) {
                        removed.push(member.value.clone());
                    }
                }
            }
            Ok(if removed.is_empty() {
                vec![]
            } else {
                vec![GroupEvent::MembersRemoved { members: removed }]
            })
        }
        (_, GroupCommand::Create { .. } | GroupCommand::Delete | GroupCommand::Abandon) => {
            Ok(vec![])
        }
    }
}

/// Folds one event into a group's state. Total and panic-free.
pub fn evolve(group: Group, event: &GroupEvent) -> Group {
    match (group, event) {
        (
            Group::Absent,
            GroupEvent::Created {
                attributes,
                members,
            },
        ) => Group::Active(GroupState {
            attributes: attributes.clone(),
            members: members.iter().map(|m| (m.key(), m.clone())).collect(),
        }),
        (Group::Active(mut state), GroupEvent::Renamed { after, .. }) => {
            state
                .attributes
                .insert("displayName".into(), Value::String(after.clone()));
            Group::Active(state)
        }
        (Group::Active(mut state), GroupEvent::AttributesChanged { changes }) => {
            attributes::apply(&mut state.attributes, changes);
            Group::Active(state)
        }
        (Group::Active(mut state), GroupEvent::MembersAdded { members }) => {
            state
                .members
                .extend(members.iter().map(|m| (m.key(), m.clone())));
            Group::Active(state)
        }
        (Group::Active(mut state), GroupEvent::MembersRemoved { members }) => {
            for id in members {
                state.members.remove(&id.to_lowercase());
            }
            Group::Active(state)
        }
        (_, GroupEvent::Deleted) => Group::Deleted,
        (Group::Absent, GroupEvent::Abandoned) => Group::Deleted,
        (group, _) => group,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn created(name: &str, members: &[&str]) -> GroupEvent {
        GroupEvent::Created {
            attributes: json!({"displayName": name}).as_object().unwrap().clone(),
            members: members.iter().map(|m| Member::new(*m)).collect(),
        }
    }

    fn given(events: &[GroupEvent]) -> Group {
        events.iter().fold(Group::default(), evolve)
    }

    #[test]
    fn adding_members_records_only_newcomers() {
        let group = given(&[created("Finance", &["a"])]);
        let events = decide(
            &group,
            GroupCommand::AddMembers(vec![Member::new("A"), Member::new("b"), Member::new("b")]),
        );
        assert_eq!(
            events,
            Ok(vec![GroupEvent::MembersAdded {
                members: vec![Member::new("b")]
            }])
        );
        assert_eq!(
            decide(&group, GroupCommand::AddMembers(vec![Member::new("a")])),
            Ok(vec![])
        );
    }

    #[test]
    fn removing_members_records_only_those_who_were_in() {
        let group = given(&[created("Finance", &["a", "b"])]);
        let events = decide(
            &group,
            GroupCommand::RemoveMembers(vec!["B".into(), "z".into()]),
        );
        assert_eq!(
            events,
            Ok(vec![GroupEvent::MembersRemoved {
                members: vec!["b".into()]
            }])
        );
        let group = given(&[
            created("Finance", &["a", "b"]),
            GroupEvent::MembersRemoved {
                members: vec!["b".into()],
            },
        ]);
        assert_eq!(group.state().unwrap().members.len(), 1);
    }

    #[test]
    fn creating_keeps_the_first_of_each_member_in_the_order_sent() {
        let command = GroupCommand::Create {
            attributes: json!({"displayName": "g"}).as_object().unwrap().clone(),
            members: ["b", "A", "B", "c", "a"]
                .into_iter()
                .map(Member::new)
                .collect(),
        };
        let Ok(events) = decide(&Group::Absent, command) else {
            panic!("refused")
        };
        let [GroupEvent::Created { members, .. }] = &events[..] else {
            panic!("{events:?}")
        };
        let ids: Vec<&str> = members.iter().map(|m| m.value.as_str()).collect();
        assert_eq!(ids, ["b", "A", "c"]);
    }

    #[test]
    fn a_removal_naming_a_member_many_times_removes_them_once_in_the_order_named() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let group = given(&[created("g", &refs)]);
        let named: Vec<String> = ids
            .iter()
            .rev()
            .chain(ids.iter())
            .map(|id| id.to_uppercase())
            .collect();
        let Ok(events) = decide(&group, GroupCommand::RemoveMembers(named)) else {
            panic!("refused")
        };
        let [GroupEvent::MembersRemoved { members }] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(members.len(), 20_000);
        assert_eq!(
            (members[0].as_str(), members[19_999].as_str()),
            ("m19999", "m0")
        );
    }

    #[test]
    fn a_display_name_change_is_a_rename_and_cannot_empty_it() {
        let group = given(&[created("Finance", &[])]);
        let rename = |after: Option<&str>| {
            GroupCommand::ChangeAttributes(vec![AttributeChange {
                path: "displayName".into(),
                before: Some(json!("Finance")),
                after: after.map(|a| json!(a)),
                redacted: false,
            }])
        };
        assert_eq!(
            decide(&group, rename(Some("Finance-Admins"))),
            Ok(vec![GroupEvent::Renamed {
                before: "Finance".into(),
                after: "Finance-Admins".into()
            }])
        );
        assert_eq!(
            decide(&group, rename(None)),
            Err(GroupError::DisplayNameRequired)
        );
        let renamed = given(&[
            created("Finance", &[]),
            GroupEvent::Renamed {
                before: "Finance".into(),
                after: "Ops".into(),
            },
        ]);
        assert_eq!(renamed.state().unwrap().display_name(), Some("Ops"));
    }

    #[test]
    fn a_deleted_group_refuses_everything() {
        let group = given(&[created("Finance", &[]), GroupEvent::Deleted]);
        assert_eq!(
            decide(&group, GroupCommand::AddMembers(vec![Member::new("a")])),
            Err(GroupError::Deleted)
        );
        assert_eq!(
            decide(&Group::Absent, GroupCommand::Delete),
            Err(GroupError::NotFound)
        );
    }

    #[test]
    fn creating_needs_a_display_name() {
        let command = GroupCommand::Create {
            attributes: Attributes::new(),
            members: vec![],
        };
        assert_eq!(
            decide(&Group::Absent, command),
            Err(GroupError::DisplayNameRequired)
        );
    }
}
