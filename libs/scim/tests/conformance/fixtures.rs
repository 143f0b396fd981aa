//! Table-driven tests over `libs/scim/fixtures/`: each case names its source (an RFC section
//! or an ENTRA.md section), its input, and the expected outcome.

use std::path::{Path, PathBuf};

use rollcall_scim::change::Change;
use rollcall_scim::schema::resource_type;
use rollcall_scim::{matching, patch, resource, Filter, PatchRequest, ResourceType, ScimError};
use serde::Deserialize;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn resources() -> serde_json::Map<String, Value> {
    load(&fixture_dir().join("resources.json"))
}

/// A resource given inline, or by its name in `resources.json`.
fn resolve_resource(value: &Value) -> Value {
    match value {
        Value::String(name) => resources()
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no resource {name}")),
        other => other.clone(),
    }
}

fn files_in(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixture_dir().join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {dir}");
    files
}

#[derive(Debug, Deserialize)]
struct ExpectedError {
    status: u16,
    #[serde(rename = "scimType")]
    scim_type: String,
}

fn assert_error(name: &str, actual: &ScimError, expected: &ExpectedError) {
    assert_eq!(actual.status, expected.status, "{name}: {actual:?}");
    assert_eq!(
        actual.scim_type.map(|t| t.as_str()),
        Some(expected.scim_type.as_str()),
        "{name}: {actual:?}"
    );
    assert!(
        !actual.detail.is_empty(),
        "{name}: an error must say what to fix"
    );
}

fn rt(name: &str) -> &'static ResourceType {
    resource_type(name).unwrap_or_else(|| panic!("no resource type {name}"))
}

#[derive(Debug, Deserialize)]
struct PatchCase {
    name: String,
    source: String,
    #[serde(rename = "type")]
    resource_type: String,
    before: Value,
    request: Value,
    after: Option<Value>,
    changes: Option<Vec<Change>>,
    error: Option<ExpectedError>,
}

#[test]
fn patch_fixtures_give_the_expected_resource_changes_or_error() {
    let mut count = 0;
    for file in files_in("patch") {
        let cases: Vec<PatchCase> = load(&file);
        for case in cases {
            let label = format!(
                "{} / {} ({})",
                file.file_name().unwrap().to_string_lossy(),
                case.name,
                case.source
            );
            let rt = rt(&case.resource_type);
            let before = resolve_resource(&case.before);
            let outcome = PatchRequest::from_json(&case.request)
                .and_then(|request| patch::apply(rt, &before, &request));
            match (outcome, &case.error) {
                (Err(error), Some(expected)) => assert_error(&label, &error, expected),
                (Ok(patched), Some(_)) => {
                    panic!("{label}: expected an error, got {}", patched.resource)
                }
                (Err(error), None) => panic!("{label}: {error:?}"),
                (Ok(patched), None) => {
                    let after = case
                        .after
                        .as_ref()
                        .unwrap_or_else(|| panic!("{label}: no expected after"));
                    assert_eq!(&patched.resource, after, "{label}");
                    assert_eq!(
                        patched.changes.is_empty(),
                        patched.resource == before,
                        "{label}: changes iff the resource changed"
                    );
                    if let Some(changes) = &case.changes {
                        assert_eq!(&patched.changes, changes, "{label}");
                    }
                }
            }
            count += 1;
        }
    }
    assert!(count >= 60, "only {count} PATCH cases ran");
}

#[derive(Debug, Deserialize)]
struct CreateCase {
    name: String,
    source: String,
    #[serde(rename = "type")]
    resource_type: String,
    request: Value,
    stored: Option<Value>,
    error: Option<ExpectedError>,
}

#[test]
fn create_fixtures_store_the_canonical_resource_or_refuse_it() {
    let mut count = 0;
    for file in files_in("create") {
        let cases: Vec<CreateCase> = load(&file);
        for case in cases {
            let label = format!("{} ({})", case.name, case.source);
            let outcome = resource::create(rt(&case.resource_type), case.request.clone());
            match (outcome, &case.error, &case.stored) {
                (Err(error), Some(expected), _) => assert_error(&label, &error, expected),
                (Ok(stored), None, Some(expected)) => assert_eq!(&stored, expected, "{label}"),
                (outcome, ..) => panic!("{label}: unexpected {outcome:?}"),
            }
            count += 1;
        }
    }
    assert!(count >= 15, "only {count} create cases ran");
}

#[derive(Debug, Deserialize)]
struct FilterFile {
    cases: Vec<FilterCase>,
}

#[derive(Debug, Deserialize)]
struct FilterCase {
    filter: String,
    source: String,
    resource: Option<String>,
    matches: Option<bool>,
    error: Option<String>,
}

#[test]
fn filter_fixtures_match_what_they_should_and_refuse_what_they_should() {
    let file: FilterFile = load(&fixture_dir().join("filters.json"));
    let resources = resources();
    for case in &file.cases {
        let label = format!("{} ({})", case.filter, case.source);
        match (&case.error, &case.resource, case.matches) {
            (Some(expected), None, None) => {
                // Either the grammar or the schema check refuses it, as invalidFilter.
                let error = match Filter::parse(&case.filter) {
                    Err(error) => error.into_filter_error(&case.filter),
                    Ok(filter) => {
                        let checks: Vec<ScimError> = ["User", "Group"]
                            .iter()
                            .filter_map(|t| matching::check(rt(t), &filter).err())
                            .collect();
                        assert_eq!(
                            checks.len(),
                            2,
                            "{label}: expected a refusal, parsed {filter:?}"
                        );
                        checks.into_iter().next().unwrap()
                    }
                };
                assert_eq!(error.status, 400, "{label}");
                assert_eq!(
                    error.scim_type.map(|t| t.as_str()),
                    Some(expected.as_str()),
                    "{label}"
                );
            }
            (None, Some(resource), Some(expected)) => {
                let filter = Filter::parse(&case.filter).unwrap_or_else(|e| panic!("{label}: {e}"));
                let resource = &resources[resource];
                let rt = if resource.get("userName").is_some() {
                    rt("User")
                } else {
                    rt("Group")
                };
                matching::check(rt, &filter).unwrap_or_else(|e| panic!("{label}: {e:?}"));
                assert_eq!(
                    matching::matches(rt, resource, &filter),
                    expected,
                    "{label}"
                );
                let printed = filter.to_string();
                assert_eq!(
                    Filter::parse(&printed).as_ref(),
                    Ok(&filter),
                    "{label}: printed as {printed}"
                );
            }
            _ => panic!("{label}: a case needs either resource + matches, or error"),
        }
    }
    assert!(file.cases.len() >= 60);
}

#[test]
fn patch_bodies_round_trip_their_paths() {
    // Every path used in the PATCH fixtures prints back as it parsed.
    for file in files_in("patch") {
        let cases: Vec<PatchCase> = load(&file);
        for case in cases {
            let Ok(request) = PatchRequest::from_json(&case.request) else {
                continue;
            };
            for operation in request.operations {
                if let Some(path) = operation.path {
                    let printed = path.to_string();
                    assert_eq!(
                        rollcall_scim::PatchPath::parse(&printed),
                        Ok(path),
                        "{}",
                        case.name
                    );
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct PathFile {
    parse: Vec<String>,
    refuse: Vec<String>,
}

#[test]
fn path_fixtures_parse_and_print_back_or_are_refused_as_invalid_path() {
    let file: PathFile = load(&fixture_dir().join("paths.json"));
    for text in &file.parse {
        let path = rollcall_scim::PatchPath::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(&path.to_string(), text);
    }
    for text in &file.refuse {
        let error = rollcall_scim::PatchPath::parse(text).expect_err(text);
        assert_eq!(
            error.into_path_error(text).scim_type,
            Some(rollcall_scim::ScimType::InvalidPath)
        );
    }
}
