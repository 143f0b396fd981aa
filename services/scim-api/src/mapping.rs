//! SCIM ↔ domain: resources rendered from aggregate state or read-model rows, and the domain
//! commands a created, replaced or patched resource means.

use std::collections::HashSet;

use rollcall_domain::group::{GroupCommand, Member};
use rollcall_domain::user::UserCommand;
use rollcall_domain::{AttributeChange, Attributes};
use rollcall_scim::change::{diff, Change};
use rollcall_scim::resource::tidy;
use rollcall_scim::{GROUP_RESOURCE, USER_RESOURCE};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// The ETag and `meta.version` of an aggregate version.
pub fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

fn timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// What `meta` says of a resource.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    /// The SCIM base URL (`https://host/scim/v2`).
    pub base: &'a str,
    /// The aggregate version.
    pub version: u64,
    /// Created.
    pub created: OffsetDateTime,
    /// Last modified.
    pub modified: OffsetDateTime,
}

fn meta(resource_type: &str, endpoint: &str, id: Uuid, meta: Meta<'_>) -> Value {
    json!({
        "resourceType": resource_type,
        "created": timestamp(meta.created),
        "lastModified": timestamp(meta.modified),
        "location": format!("{}{endpoint}/{id}", meta.base),
        "version": etag(meta.version),
    })
}

/// A user as SCIM returns it (`active` is among its attributes when assigned). `groups` is
/// given when the caller looked them up.
pub fn user(
    id: Uuid,
    attributes: &Attributes,
    groups: Option<&[(Uuid, String)]>,
    at: Meta<'_>,
) -> Value {
    let mut document = attributes.clone();
    document.insert("id".into(), Value::String(id.to_string()));
    if let Some(groups) = groups.filter(|groups| !groups.is_empty()) {
        let groups: Vec<Value> = groups
            .iter()
            .map(|(group, name)| json!({"value": group.to_string(), "$ref": format!("{}/Groups/{group}", at.base), "display": name, "type": "direct"}))
            .collect();
        document.insert("groups".into(), Value::Array(groups));
    }
    document.insert("meta".into(), meta("User", "/Users", id, at));
    let mut document = Value::Object(document);
    tidy(&USER_RESOURCE, &mut document);
    document
}

/// A member as a group returns it: id, type, display name.
pub type MemberView<'m> = (&'m str, Option<&'m str>, Option<&'m str>);

/// A group as SCIM returns it, with its members.
pub fn group<'m>(
    id: Uuid,
    attributes: &Attributes,
    members: impl IntoIterator<Item = MemberView<'m>>,
    at: Meta<'_>,
) -> Value {
    let mut document = attributes.clone();
    document.insert("id".into(), Value::String(id.to_string()));
    let members: Vec<Value> = members
        .into_iter()
        .map(|(value, kind, display)| {
            let kind = kind.unwrap_or("User");
            let endpoint = if kind.eq_ignore_ascii_case("Group") { "Groups" } else { "Users" };
            let mut member = json!({"value": value, "$ref": format!("{}/{endpoint}/{value}", at.base), "type": kind});
            if let Some(display) = display {
                member["display"] = Value::String(display.to_owned());
            }
            member
        })
        .collect();
    if !members.is_empty() {
        document.insert("members".into(), Value::Array(members));
    }
    document.insert("meta".into(), meta("Group", "/Groups", id, at));
    let mut document = Value::Object(document);
    tidy(&GROUP_RESOURCE, &mut document);
    document
}

fn without(resource: &Value, keys: &[&str]) -> Attributes {
    let mut attributes = resource.as_object().cloned().unwrap_or_default();
    for key in keys {
        attributes.remove(*key);
    }
    attributes
}

fn to_domain(change: Change) -> AttributeChange {
    AttributeChange {
        path: change.path,
        before: change.before,
        after: change.after,
        redacted: change.redacted,
    }
}

/// The command a new user resource (checked by `rollcall_scim::resource::create`) means.
/// The password is never kept: Rollcall does not authenticate with SCIM passwords.
pub fn provision(resource: &Value) -> UserCommand {
    let active = resource
        .get("active")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    UserCommand::Provision {
        attributes: without(resource, &["schemas", "password", "id", "meta", "groups"]),
        active,
    }
}

/// What a POST records about a password: only that one was set (the value never enters an
/// event or the state).
pub fn password_set(resource: &Value) -> Option<UserCommand> {
    resource.get("password").map(|_| {
        UserCommand::ChangeAttributes(vec![AttributeChange {
            path: "password".into(),
            before: None,
            after: Some(Value::String(rollcall_scim::change::REDACTED.into())),
            redacted: true,
        }])
    })
}

/// The commands that take a user from `before` to `after` (both SCIM documents), in order:
/// attribute changes, then activation. Going inactive or active again is its own command
/// however it was sent (`"False"`, `false`, PUT, path-less PATCH); an unassigned `active`
/// means active.
pub fn user_update(before: &Value, after: &Value) -> Vec<UserCommand> {
    let mut changes = Vec::new();
    let mut activation = Vec::new();
    for change in diff(&USER_RESOURCE, before, after) {
        if change.path != "active" {
            changes.push(to_domain(change));
            continue;
        }
        let explicit_false = |value: &Option<Value>| value.as_ref() == Some(&Value::Bool(false));
        match (
            explicit_false(&change.before),
            explicit_false(&change.after),
        ) {
            (false, true) => activation.push(UserCommand::Deactivate),
            (true, false) => {
                activation.push(UserCommand::Reactivate);
                if change.after.is_none() {
                    // Reactivation sets true; the request left it unassigned.
                    let cleared = AttributeChange {
                        path: "active".into(),
                        before: Some(Value::Bool(true)),
                        after: None,
                        redacted: false,
                    };
                    activation.push(UserCommand::ChangeAttributes(vec![cleared]));
                }
            }
            _ => changes.push(to_domain(change)),
        }
    }
    let mut commands = Vec::new();
    if !changes.is_empty() {
        commands.push(UserCommand::ChangeAttributes(changes));
    }
    commands.extend(activation);
    commands
}

fn members_of(resource: &Value) -> Vec<Member> {
    resource
        .get("members")
        .and_then(Value::as_array)
        .map(|members| {
            members
                .iter()
                .filter_map(|m| {
                    let value = m.get("value")?.as_str()?.to_owned();
                    let kind = m.get("type").and_then(Value::as_str).map(str::to_owned);
                    let display = m.get("display").and_then(Value::as_str).map(str::to_owned);
                    Some(Member {
                        value,
                        kind,
                        display,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The command a new group resource means.
pub fn create_group(resource: &Value) -> GroupCommand {
    GroupCommand::Create {
        attributes: without(resource, &["schemas", "members", "id", "meta"]),
        members: members_of(resource),
    }
}

/// The commands that take a group from `before` to `after`: attribute changes (a displayName
/// change is a rename), members added, members removed.
pub fn group_update(before: &Value, after: &Value) -> Vec<GroupCommand> {
    let changes: Vec<AttributeChange> = diff(
        &GROUP_RESOURCE,
        &strip_members(before),
        &strip_members(after),
    )
    .into_iter()
    .map(to_domain)
    .collect();
    let before_members = members_of(before);
    let after_members = members_of(after);
    // Sets, not pairwise comparison: groups hold tens of thousands of members.
    let before_keys: HashSet<String> = before_members.iter().map(Member::key).collect();
    let after_keys: HashSet<String> = after_members.iter().map(Member::key).collect();
    let added: Vec<Member> = after_members
        .into_iter()
        .filter(|m| !before_keys.contains(&m.key()))
        .collect();
    let removed: Vec<String> = before_members
        .into_iter()
        .filter(|m| !after_keys.contains(&m.key()))
        .map(|m| m.value)
        .collect();
    let mut commands = Vec::new();
    if !changes.is_empty() {
        commands.push(GroupCommand::ChangeAttributes(changes));
    }
    if !added.is_empty() {
        commands.push(GroupCommand::AddMembers(added));
    }
    if !removed.is_empty() {
        commands.push(GroupCommand::RemoveMembers(removed));
    }
    commands
}

/// A PATCH whose every operation adds or removes members, as domain commands, without
/// rendering the group: the cost follows the request, not the group's size (groups hold tens of
/// thousands of members). `None` when any operation needs the general path; `Some(Err)` when a
/// value is invalid. `current` lists the members, for `Remove` on `members` without a value.
pub fn member_commands(
    request: &rollcall_scim::PatchRequest,
    current: impl Fn() -> Vec<String>,
) -> Option<Result<Vec<GroupCommand>, rollcall_scim::ScimError>> {
    use rollcall_scim::patch::OpKind;
    use rollcall_scim::{CompValue, CompareOp, Filter};
    let members = rollcall_scim::schema::GROUP.attribute("members")?;
    let mut commands = Vec::new();
    for operation in &request.operations {
        let path = operation.path.as_ref()?;
        let attribute = &path.attribute;
        let core = attribute
            .urn
            .as_deref()
            .is_none_or(|urn| urn.eq_ignore_ascii_case(rollcall_scim::schema::GROUP_SCHEMA));
        if !core || !attribute.name.eq_ignore_ascii_case("members") || attribute.sub_attr.is_some()
        {
            return None;
        }
        let listed = |value: &Value| -> Result<Vec<Member>, rollcall_scim::ScimError> {
            let normalized = rollcall_scim::value::normalize(members, value.clone(), "members")?;
            if let Some(normalized) = &normalized {
                rollcall_scim::limits::check_value("members", normalized)?;
            }
            Ok(members_of(
                &json!({"members": normalized.unwrap_or(Value::Null)}),
            ))
        };
        match (operation.op, &path.filter, &operation.value) {
            (OpKind::Add, None, Some(value)) => match listed(value) {
                Ok(added) if !added.is_empty() => commands.push(GroupCommand::AddMembers(added)),
                Ok(_) => {}
                Err(error) => return Some(Err(error)),
            },
            // Entra's default member removal: exactly the listed members (ENTRA.md §4.9).
            (OpKind::Remove, None, Some(value)) if !rollcall_scim::value::is_unassigned(value) => {
                match listed(value) {
                    Ok(removed) => commands.push(GroupCommand::RemoveMembers(
                        removed.into_iter().map(|m| m.value).collect(),
                    )),
                    Err(error) => return Some(Err(error)),
                }
            }
            (OpKind::Remove, None, _) => commands.push(GroupCommand::RemoveMembers(current())),
            // The flag dialect: members[value eq "<id>"].
            (
                OpKind::Remove,
                Some(Filter::Compare(by, CompareOp::Eq, CompValue::String(id))),
                _,
            ) if by.urn.is_none()
                && by.sub_attr.is_none()
                && by.name.eq_ignore_ascii_case("value") =>
            {
                if let Err(error) = rollcall_scim::limits::check_text("members.value", id) {
                    return Some(Err(error));
                }
                commands.push(GroupCommand::RemoveMembers(vec![id.clone()]));
            }
            _ => return None,
        }
    }
    Some(Ok(commands))
}

fn strip_members(resource: &Value) -> Value {
    let mut resource = resource.clone();
    if let Some(map) = resource.as_object_mut() {
        map.remove("members");
    }
    resource
}

/// The string value of a top-level attribute.
pub fn text<'a>(resource: &'a Value, name: &str) -> Option<&'a str> {
    resource.get(name).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deactivation_is_its_own_command_next_to_attribute_changes() {
        let before = json!({"userName": "ada", "active": true, "title": "Dr"});
        let after = json!({"userName": "ada", "active": false, "title": "Prof"});
        let commands = user_update(&before, &after);
        assert_eq!(commands.len(), 2);
        assert!(
            matches!(&commands[0], UserCommand::ChangeAttributes(changes) if changes[0].path == "title")
        );
        assert_eq!(commands[1], UserCommand::Deactivate);
        assert!(user_update(&before, &before).is_empty());
    }

    #[test]
    fn member_changes_are_computed_as_sets() {
        let before = json!({"displayName": "g", "members": [{"value": "a"}, {"value": "b"}]});
        let after = json!({"displayName": "h", "members": [{"value": "B"}, {"value": "c"}]});
        let commands = group_update(&before, &after);
        assert!(
            matches!(&commands[0], GroupCommand::ChangeAttributes(c) if c[0].path == "displayName")
        );
        assert_eq!(
            commands[1],
            GroupCommand::AddMembers(vec![Member::new("c")])
        );
        assert_eq!(commands[2], GroupCommand::RemoveMembers(vec!["a".into()]));
    }

    fn request(operations: Value) -> rollcall_scim::PatchRequest {
        rollcall_scim::PatchRequest::from_json(&json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})).unwrap()
    }

    #[test]
    fn member_only_patches_become_commands_without_the_group() {
        let commands = member_commands(
            &request(json!([
                {"op": "Add", "path": "members", "value": [{"$ref": null, "value": "a"}, {"value": "b"}]},
                {"op": "Remove", "path": "members", "value": [{"value": "c"}]},
                {"op": "remove", "path": "members[value eq \"d\"]"},
                {"op": "Remove", "path": "members"}
            ])),
            || vec!["x".into(), "y".into()],
        );
        assert_eq!(
            commands,
            Some(Ok(vec![
                GroupCommand::AddMembers(vec![Member::new("a"), Member::new("b")]),
                GroupCommand::RemoveMembers(vec!["c".into()]),
                GroupCommand::RemoveMembers(vec!["d".into()]),
                GroupCommand::RemoveMembers(vec!["x".into(), "y".into()]),
            ]))
        );
        // Anything else takes the general path.
        assert_eq!(
            member_commands(
                &request(json!([{"op": "replace", "path": "members", "value": []}])),
                Vec::new
            ),
            None
        );
        assert_eq!(
            member_commands(
                &request(json!([{"op": "Replace", "path": "displayName", "value": "x"}])),
                Vec::new
            ),
            None
        );
        assert_eq!(
            member_commands(
                &request(json!([{"op": "remove", "path": "members[type eq \"User\"]"}])),
                Vec::new
            ),
            None
        );
        assert!(matches!(
            member_commands(
                &request(json!([{"op": "Add", "path": "members", "value": [{"value": 5}]}])),
                Vec::new
            ),
            Some(Err(_))
        ));
    }

    /// The largest user document the limits let through, filled with `filler` (a four-byte
    /// character: the most bytes one character takes in JSON): every attribute at its longest,
    /// values added one by one while the document stays within the limits.
    fn largest_user(filler: char) -> Value {
        use rollcall_scim::limits::{check_resource, max_chars, max_values};
        use rollcall_scim::schema::{AttributeType, Mutability, Resolved};
        let text = |path: &str, salt: usize| {
            let mut text = format!("{salt}");
            text.extend(std::iter::repeat_n(filler, max_chars(path) - text.len()));
            Value::String(text)
        };
        let mut doc = json!({"userName": text("userName", 0)});
        for (schema, in_extension) in USER_RESOURCE
            .schemas()
            .map(|s| (s, !std::ptr::eq(s, USER_RESOURCE.schema)))
        {
            let common = if in_extension {
                &[][..]
            } else {
                rollcall_scim::schema::COMMON_ATTRIBUTES
            };
            for attribute in common.iter().chain(schema.attributes) {
                if attribute.mutability == Mutability::ReadOnly || attribute.name == "userName" {
                    continue;
                }
                let path = Resolved {
                    schema: Some(schema),
                    in_extension,
                    attribute,
                    sub_attribute: None,
                }
                .canonical_path();
                let element = |salt: usize| match attribute.kind {
                    AttributeType::Complex => Value::Object(
                        attribute
                            .sub_attributes
                            .iter()
                            .filter(|sub| {
                                matches!(sub.kind, AttributeType::String | AttributeType::Reference)
                                    && sub.mutability != Mutability::ReadOnly
                            })
                            .map(|sub| {
                                (
                                    sub.name.to_owned(),
                                    text(&format!("{path}.{}", sub.name), salt),
                                )
                            })
                            .collect(),
                    ),
                    AttributeType::String | AttributeType::Reference => text(&path, salt),
                    AttributeType::Binary => {
                        Value::String("QUJD".repeat(max_chars(&format!("{path}.value")) / 4))
                    }
                    _ => Value::Bool(true),
                };
                let key = if in_extension {
                    format!("{}:{}", schema.id, attribute.name)
                } else {
                    attribute.name.to_owned()
                };
                let slot = |doc: &mut Value, value: Value| {
                    if in_extension {
                        doc[schema.id][attribute.name] = value;
                    } else {
                        doc[attribute.name] = value;
                    }
                };
                if attribute.multi_valued {
                    let mut values = Vec::new();
                    for salt in 0..max_values(&key).unwrap_or(0) {
                        values.push(if attribute.name == "x509Certificates" {
                            json!({"value": "QUJD".repeat(max_chars("x509Certificates.value") / 4 - salt)})
                        } else {
                            element(salt)
                        });
                        let mut next = doc.clone();
                        slot(&mut next, Value::Array(values.clone()));
                        if check_resource(&USER_RESOURCE, &next, None).is_err() {
                            break;
                        }
                        doc = next;
                    }
                } else {
                    let mut next = doc.clone();
                    slot(&mut next, element(0));
                    if check_resource(&USER_RESOURCE, &next, None).is_ok() {
                        doc = next;
                    }
                }
            }
        }
        doc
    }

    #[test]
    fn the_largest_user_documents_the_limits_allow_make_events_within_the_default_max_payload() {
        use rollcall_domain::user::{decide, evolve, User};
        use rollcall_domain::EventKind;
        use rollcall_scim::limits::{
            document_bytes, max_event_bytes, MAX_DOCUMENT_BYTES, NATS_DEFAULT_MAX_PAYLOAD,
        };
        let (before, after) = (largest_user('😀'), largest_user('😁'));
        assert!(
            document_bytes(&before) > MAX_DOCUMENT_BYTES * 9 / 10,
            "{}",
            document_bytes(&before)
        );
        assert!(document_bytes(&after) <= MAX_DOCUMENT_BYTES);
        let envelope = |event_type: &str, payload: Value| rollcall_eventlog::Envelope {
            event_id: Uuid::now_v7(),
            tenant: "t".repeat(63),
            aggregate_type: "user".into(),
            aggregate_id: Uuid::now_v7(),
            version: u64::MAX,
            event_type: event_type.into(),
            schema_version: 1,
            occurred_at: OffsetDateTime::now_utc(),
            actor: rollcall_eventlog::Actor::ScimToken {
                token_id: "x".repeat(64),
            },
            request_id: Some(Uuid::now_v7().to_string()),
            traceparent: Some(format!("00-{}-{}-01", "0".repeat(32), "0".repeat(16))),
            payload,
        };
        let provisioned = decide(&User::default(), provision(&before)).unwrap();
        let user = provisioned.iter().fold(User::default(), evolve);
        let mut events = provisioned;
        for command in user_update(&before, &after) {
            events.extend(decide(&user, command).unwrap());
        }
        assert!(events
            .iter()
            .any(|e| e.event_type() == "user.attributes_changed"));
        // As stored: personal fields sealed (each larger by a third, and a nonce and tag).
        let key = rollcall_store::personal_key::DataKey::from_bytes([1; 32]);
        for event in events {
            let mut stored = envelope(event.event_type(), event.to_payload());
            rollcall_personal::seal(&mut stored, &key).unwrap();
            assert_eq!(stored.schema_version, rollcall_personal::SEALED_VERSION);
            let size = stored.to_bytes().len();
            assert!(
                size < max_event_bytes(NATS_DEFAULT_MAX_PAYLOAD),
                "{} is {size} bytes",
                event.event_type()
            );
        }
    }

    #[test]
    fn member_only_patches_hold_member_values_to_the_limits() {
        for operations in [
            json!([{"op": "Add", "path": "members", "value": [{"value": "a\u{0}"}]}]),
            json!([{"op": "Remove", "path": "members", "value": [{"value": "x".repeat(257)}]}]),
            json!([{"op": "Add", "path": "members", "value": [{"value": "a", "display": "A\nB"}]}]),
            json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", "x".repeat(257))}]),
        ] {
            let error = member_commands(&request(operations.clone()), Vec::new);
            assert!(
                matches!(&error, Some(Err(e)) if e.scim_type == Some(rollcall_scim::ScimType::InvalidValue)),
                "{operations}: {error:?}"
            );
        }
    }

    #[test]
    fn provisioning_never_keeps_the_password() {
        let UserCommand::Provision { attributes, active } =
            provision(&json!({"userName": "ada", "password": "x", "active": false, "schemas": []}))
        else {
            panic!()
        };
        assert!(!active);
        assert!(attributes.get("password").is_none() && attributes.get("schemas").is_none());
    }

    #[test]
    fn clearing_active_on_an_inactive_user_reactivates_then_clears() {
        let commands = user_update(
            &json!({"userName": "a", "active": false}),
            &json!({"userName": "a"}),
        );
        assert_eq!(commands[0], UserCommand::Reactivate);
        assert!(
            matches!(&commands[1], UserCommand::ChangeAttributes(c) if c[0].path == "active" && c[0].after.is_none())
        );
        let commands = user_update(
            &json!({"userName": "a", "active": true}),
            &json!({"userName": "a"}),
        );
        assert!(
            matches!(&commands[..], [UserCommand::ChangeAttributes(c)] if c[0].path == "active")
        );
    }
}
