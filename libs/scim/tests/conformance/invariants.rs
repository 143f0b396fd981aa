//! The invariants hostile input must never break, each as a function of raw bytes that panics
//! naming the broken invariant. Written once and used three times: by the fuzz targets
//! (`fuzz/fuzz_targets/`, which include this file), by the property tests, and by the replay of
//! every input a fuzzer ever broke (`fixtures/fuzz/`, see `regressions.rs`).
//!
//! - [`filter`]: parsing a filter (or a PATCH path, or an attribute path) never panics;
//!   what parses prints back to the same AST (unless its canonical text is over the length
//!   limit); checking, matching and running a parsed filter as a query never panic.
//! - [`patch`]: applying any PATCH to any document the schema accepts never panics, and what
//!   it yields the schema accepts as it stands (canonical, every required attribute); it
//!   reports changes exactly when the document changed.
//! - [`resource`]: a body the schema accepts for a create is in canonical form once created,
//!   and a PUT of the same body over it changes nothing.

use std::sync::OnceLock;

use rollcall_scim::limits::MAX_FILTER_LENGTH;
use rollcall_scim::list::QueryParams;
use rollcall_scim::schema::resource_type;
use rollcall_scim::{
    matching, patch, resource, AttrPath, Filter, PatchPath, PatchRequest, Query, ResourceType,
    GROUP_RESOURCE, USER_RESOURCE,
};
use serde_json::{Map, Value};

/// `fixtures/resources.json`, parsed once: the documents filters are matched against and that
/// PATCH cases may name.
pub fn fixture_resources() -> &'static Map<String, Value> {
    static RESOURCES: OnceLock<Map<String, Value>> = OnceLock::new();
    RESOURCES.get_or_init(|| {
        serde_json::from_str(include_str!("../../fixtures/resources.json"))
            .expect("fixtures/resources.json is a JSON object")
    })
}

fn of_type(rt: &ResourceType) -> impl Iterator<Item = &'static Value> + '_ {
    let users = std::ptr::eq(rt, &USER_RESOURCE);
    fixture_resources()
        .values()
        .filter(move |r| r.get("userName").is_some() == users)
}

/// Asserts that `printed`, the canonical text of what `text` parsed to, parses back to it. The
/// canonical form quotes bare values and writes numbers in full, so near the length limit it
/// may exceed it: then only the length may be what refuses it.
fn parses_back<T: PartialEq + std::fmt::Debug>(
    text: &str,
    printed: &str,
    parsed: &T,
    parse: impl Fn(&str) -> Result<T, rollcall_scim::filter::ParseError>,
) {
    match parse(printed) {
        Ok(again) => assert_eq!(
            &again, parsed,
            "{text:?} printed as {printed:?} parses to something else"
        ),
        Err(error) if printed.len() > MAX_FILTER_LENGTH && error.message.contains("bytes long") => {
        }
        Err(error) => panic!("{text:?} printed as {printed:?} does not parse: {error}"),
    }
}

/// Filters, PATCH paths and attribute paths.
pub fn filter(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(filter) = Filter::parse(text) {
        parses_back(text, &filter.to_string(), &filter, Filter::parse);
        let _ = filter.equalities();
        for rt in [&USER_RESOURCE, &GROUP_RESOURCE] {
            let _ = matching::check(rt, &filter);
            for document in of_type(rt) {
                let _ = matching::matches(rt, document, &filter);
            }
            let params = QueryParams {
                filter: Some(text.to_owned()),
                sort_by: Some("displayName".to_owned()),
                ..QueryParams::default()
            };
            if let Ok(query) = Query::parse(rt, &params) {
                let _ = query.run(rt, of_type(rt).cloned());
            }
        }
    }
    if let Ok(path) = PatchPath::parse(text) {
        parses_back(text, &path.to_string(), &path, PatchPath::parse);
    }
    if let Ok(path) = AttrPath::parse(text) {
        parses_back(text, &path.to_string(), &path, AttrPath::parse);
    }
}

/// The resource type a case names (`"type": "User"`), and the case as a JSON object.
fn case(input: &[u8]) -> Option<(&'static ResourceType, Map<String, Value>)> {
    let Ok(Value::Object(case)) = serde_json::from_slice::<Value>(input) else {
        return None;
    };
    let rt = resource_type(case.get("type")?.as_str()?)?;
    Some((rt, case))
}

/// The document the schema accepts as stored: checked, canonical, with every required
/// attribute (the limits on a request are not the schema's and are left out).
fn accepted(rt: &ResourceType, document: Value) -> Result<Value, rollcall_scim::ScimError> {
    let canonical = resource::normalize(rt, document)?;
    resource::check_required(rt, &canonical)?;
    Ok(canonical)
}

/// A PATCH case: `{"type": "User", "before": <document, or a name in resources.json>,
/// "request": <PatchOp body>}` (the shape of `fixtures/patch/*.json`).
pub fn patch(input: &[u8]) {
    let Some((rt, case)) = case(input) else {
        return;
    };
    let before = match case.get("before") {
        Some(Value::String(name)) => fixture_resources().get(name).cloned(),
        other => other.cloned(),
    };
    let (Some(before), Some(request)) = (before, case.get("request")) else {
        return;
    };
    let Ok(before) = accepted(rt, before) else {
        return;
    };
    let Ok(request) = PatchRequest::from_json(request) else {
        return;
    };
    let Ok(patched) = patch::apply(rt, &before, &request) else {
        return;
    };
    match accepted(rt, patched.resource.clone()) {
        Ok(again) => assert_eq!(
            again, patched.resource,
            "PATCH made a document that is not in canonical form"
        ),
        Err(error) => panic!(
            "PATCH made a document the schema refuses ({}): {}",
            error.detail, patched.resource
        ),
    }
    assert_eq!(
        patched.changes.is_empty(),
        patched.resource == before,
        "PATCH reported changes {:?} for a document that changed: {}",
        patched.changes,
        patched.resource != before
    );
}

/// A create case: `{"type": "User", "request": <POST body>}` (the shape of
/// `fixtures/create/*.json`). Returns the resource type and the created document, for callers
/// that take it further (the fuzz target maps it to domain commands).
pub fn resource(input: &[u8]) -> Option<(&'static ResourceType, Value)> {
    let (rt, case) = case(input)?;
    let request = case.get("request")?;
    let created = resource::create(rt, request.clone()).ok()?;
    assert_eq!(
        accepted(rt, created.clone()).as_ref(),
        Ok(&created),
        "a created document is not in canonical form"
    );
    match resource::replace(rt, &created, request.clone()) {
        Ok(replaced) => assert_eq!(
            replaced, created,
            "a PUT of the body a resource was created from changed it"
        ),
        Err(error) => panic!(
            "a PUT of the body a resource was created from was refused: {}",
            error.detail
        ),
    }
    Some((rt, created))
}
