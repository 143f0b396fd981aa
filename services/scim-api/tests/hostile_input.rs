//! SCIM JSON → domain commands under hostile input: the invariant the `scim_commands` fuzz
//! target checks (`fuzz/fuzz_targets/scim_commands.rs` includes this file), and the replay of
//! every input that once broke it (`fixtures/fuzz/scim_commands/`, copied there by
//! `scripts/fuzz.sh`).
#![allow(clippy::unwrap_used)]

use rollcall_domain::group::{self, Group};
use rollcall_domain::user::{self, User};
use rollcall_scim::{patch, resource, PatchRequest, GROUP_RESOURCE, USER_RESOURCE};
use rollcall_scim_api::mapping;
use serde_json::Value;

#[allow(dead_code)]
#[path = "../../../libs/scim/tests/conformance/invariants.rs"]
mod scim;

/// What the domain makes of a document SCIM accepted: the state after its creation. Panics if
/// the domain refuses what SCIM accepted, or if an unchanged document means a command.
fn created(is_user: bool, document: &Value) -> (Option<User>, Option<Group>) {
    if is_user {
        let events = user::decide(&User::Absent, mapping::provision(document))
            .unwrap_or_else(|e| panic!("the domain refused a user SCIM accepted: {e}"));
        let mut state = events.iter().fold(User::Absent, user::evolve);
        if let Some(password) = mapping::password_set(document) {
            let events = user::decide(&state, password)
                .unwrap_or_else(|e| panic!("the domain refused a password set: {e}"));
            state = events.iter().fold(state, user::evolve);
        }
        assert!(
            mapping::user_update(document, document).is_empty(),
            "an unchanged user means a command"
        );
        (Some(state), None)
    } else {
        let events = group::decide(&Group::Absent, mapping::create_group(document))
            .unwrap_or_else(|e| panic!("the domain refused a group SCIM accepted: {e}"));
        assert!(
            mapping::group_update(document, document).is_empty(),
            "an unchanged group means a command"
        );
        (None, Some(events.iter().fold(Group::Absent, group::evolve)))
    }
}

/// A `{"type", "request"}` create case is checked and made canonical by rollcall-scim
/// (`scim::resource`), mapped to commands and decided by the domain; a `{"type", "before",
/// "request"}` PATCH case goes through Entra's member fast path (`member_commands`) and the
/// general path (`patch::apply`, then `group_update`/`user_update`) to the domain. Nothing
/// panics; what SCIM accepts, the domain accepts.
pub fn scim_commands(data: &[u8]) {
    if let Some((rt, document)) = scim::resource(data) {
        created(std::ptr::eq(rt, &USER_RESOURCE), &document);
    }
    let Ok(case) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let (Some(request), Some(before)) = (case.get("request"), case.get("before")) else {
        return;
    };
    let Ok(request) = PatchRequest::from_json(request) else {
        return;
    };
    let is_user = case.get("type").and_then(Value::as_str) == Some("User");
    let rt = if is_user {
        &USER_RESOURCE
    } else {
        &GROUP_RESOURCE
    };
    let before = match before {
        Value::String(name) => scim::fixture_resources().get(name).cloned(),
        other => Some(other.clone()),
    };
    let Some(Ok(before)) = before.map(|before| resource::create(rt, before)) else {
        return;
    };
    let (user_state, group_state) = created(is_user, &before);
    if let (Some(Ok(commands)), Some(mut state)) = (
        mapping::member_commands(&request, Vec::new),
        group_state.clone(),
    ) {
        for command in commands {
            if let Ok(events) = group::decide(&state, command) {
                state = events.iter().fold(state, group::evolve);
            }
        }
    }
    let Ok(patched) = patch::apply(rt, &before, &request) else {
        return;
    };
    match (user_state, group_state) {
        (Some(mut state), _) => {
            for command in mapping::user_update(&before, &patched.resource) {
                if let Ok(events) = user::decide(&state, command) {
                    state = events.iter().fold(state, user::evolve);
                }
            }
        }
        (_, Some(mut state)) => {
            for command in mapping::group_update(&before, &patched.resource) {
                if let Ok(events) = group::decide(&state, command) {
                    state = events.iter().fold(state, group::evolve);
                }
            }
        }
        (None, None) => {}
    }
}

#[test]
fn no_input_that_once_broke_scim_to_domain_mapping_breaks_it_now() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fuzz/scim_commands");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| scim_commands(&bytes));
        assert!(outcome.is_ok(), "{} breaks an invariant", file.display());
    }
}
