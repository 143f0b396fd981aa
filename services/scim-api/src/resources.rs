//! What the one write path ([`crate::writes`]) needs to know of each SCIM resource type: its
//! repository, its document, the attribute kept unique through claims, and the commands a
//! request becomes. Users and groups differ only here, as their reads differ only in
//! [`crate::lists::Listed`].

use rollcall_domain::group::{Group, GroupCommand};
use rollcall_domain::user::{User, UserCommand};
use rollcall_scim::{limits, PatchRequest, ResourceType, GROUP_RESOURCE, USER_RESOURCE};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::aggregate::{Aggregate, Folded, Groups, Repository, Users};
use crate::error::ApiError;
use crate::mapping::{self, Meta};
use crate::AppState;

/// Where a resource is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// It has no event (or only an abandoned claim's fence).
    Absent,
    /// It exists (a deactivated user too).
    Live,
    /// It was deleted, for good.
    Deleted,
}

/// A SCIM resource type written through [`crate::writes`].
pub trait Resource: Aggregate {
    /// The attribute kept unique, without case, through claims (also the claim kind).
    const UNIQUE: &'static str;
    /// Whether a PATCH answers `204` unless the request asks for attributes (ENTRA.md §4.9:
    /// Entra prefers it for groups).
    const PATCH_ANSWERS_NO_CONTENT: bool = false;
    /// Whether its events hold personal fields, sealed under a data key of the resource.
    const PERSONAL: bool = false;
    /// The resource type.
    fn resource_type() -> &'static ResourceType;
    /// This process's repository of the type.
    fn repository(state: &AppState) -> &Repository<Self>
    where
        Self: Sized;
    /// Where the resource is in its life.
    fn stage(state: &Self::State) -> Stage;
    /// The value of [`Resource::UNIQUE`] the resource holds now.
    fn unique(state: &Self::State) -> Option<&str>;
    /// The SCIM document of a folded resource, if it exists.
    fn document(id: Uuid, folded: &Folded<Self::State>, base: &str) -> Option<Value>;
    /// The commands that create the resource from a checked `POST` body.
    fn created(resource: &Value) -> Vec<Self::Command>;
    /// The commands that turn document `current` into `next`.
    fn changed(current: &Value, next: &Value) -> Vec<Self::Command>;
    /// The command that deletes it.
    fn delete() -> Self::Command;
    /// The command that fences a claim's holder that never came to exist.
    fn abandon() -> Self::Command;
    /// Checks of a `POST` or `PUT` body before anything else is done with it.
    fn check_body(_body: &Value) -> Result<(), ApiError> {
        Ok(())
    }
    /// Checks of a PATCH request before anything else is done with it.
    fn check_patch(_request: &PatchRequest) -> Result<(), ApiError> {
        Ok(())
    }
    /// The commands of a PATCH decided without rendering the document, where the request
    /// allows it (a group's member changes: most of Entra's group traffic).
    fn commands_of_patch(
        _state: &Self::State,
        _request: &PatchRequest,
    ) -> Option<Result<Vec<Self::Command>, ApiError>> {
        None
    }
}

/// The `meta` of a folded resource.
fn meta<'b, S>(folded: &Folded<S>, base: &'b str) -> Meta<'b> {
    let now = OffsetDateTime::now_utc();
    Meta {
        base,
        version: folded.version,
        created: folded.created_at.unwrap_or(now),
        modified: folded.updated_at.unwrap_or(now),
    }
}

impl Resource for Users {
    const UNIQUE: &'static str = "userName";
    const PERSONAL: bool = true;
    fn resource_type() -> &'static ResourceType {
        &USER_RESOURCE
    }
    fn repository(state: &AppState) -> &Repository<Self> {
        &state.repositories.users
    }
    fn stage(state: &User) -> Stage {
        match state {
            User::Absent => Stage::Absent,
            User::Active(_) | User::Inactive(_) => Stage::Live,
            User::Deleted | User::Erased => Stage::Deleted,
        }
    }
    fn unique(state: &User) -> Option<&str> {
        state.user_name()
    }
    fn document(id: Uuid, folded: &Folded<User>, base: &str) -> Option<Value> {
        let attributes = folded.state.attributes()?;
        Some(mapping::user(id, attributes, None, meta(folded, base)))
    }
    fn created(resource: &Value) -> Vec<UserCommand> {
        let mut commands = vec![mapping::provision(resource)];
        commands.extend(mapping::password_set(resource));
        commands
    }
    fn changed(current: &Value, next: &Value) -> Vec<UserCommand> {
        mapping::user_update(current, next)
    }
    fn delete() -> UserCommand {
        UserCommand::Delete
    }
    fn abandon() -> UserCommand {
        UserCommand::Abandon
    }
}

impl Resource for Groups {
    const UNIQUE: &'static str = "displayName";
    const PATCH_ANSWERS_NO_CONTENT: bool = true;
    fn resource_type() -> &'static ResourceType {
        &GROUP_RESOURCE
    }
    fn repository(state: &AppState) -> &Repository<Self> {
        &state.repositories.groups
    }
    fn stage(state: &Group) -> Stage {
        match state {
            Group::Absent => Stage::Absent,
            Group::Active(_) => Stage::Live,
            Group::Deleted => Stage::Deleted,
        }
    }
    fn unique(state: &Group) -> Option<&str> {
        state.state().and_then(|state| state.display_name())
    }
    fn document(id: Uuid, folded: &Folded<Group>, base: &str) -> Option<Value> {
        let state = folded.state.state()?;
        let members = state
            .members
            .values()
            .map(|m| (m.value.as_str(), m.kind.as_deref(), m.display.as_deref()));
        Some(mapping::group(
            id,
            &state.attributes,
            members,
            meta(folded, base),
        ))
    }
    fn created(resource: &Value) -> Vec<GroupCommand> {
        vec![mapping::create_group(resource)]
    }
    fn changed(current: &Value, next: &Value) -> Vec<GroupCommand> {
        mapping::group_update(current, next)
    }
    fn delete() -> GroupCommand {
        GroupCommand::Delete
    }
    fn abandon() -> GroupCommand {
        GroupCommand::Abandon
    }
    fn check_body(body: &Value) -> Result<(), ApiError> {
        Ok(limits::check_listed_members(limits::members_in_body(body))?)
    }
    fn check_patch(request: &PatchRequest) -> Result<(), ApiError> {
        Ok(limits::check_listed_members(limits::members_in_patch(
            request,
        ))?)
    }
    fn commands_of_patch(
        state: &Group,
        request: &PatchRequest,
    ) -> Option<Result<Vec<GroupCommand>, ApiError>> {
        let listed = || {
            state
                .state()
                .map(|s| s.members.values().map(|m| m.value.clone()).collect())
                .unwrap_or_default()
        };
        mapping::member_commands(request, listed).map(|commands| Ok(commands?))
    }
}
