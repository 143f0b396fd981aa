//! Property tests: the filter and path parsers never panic on any input, and printing an AST
//! then parsing it gives the same AST.

use proptest::prelude::*;
use rollcall_scim::{AttrPath, CompValue, CompareOp, Filter, PatchPath};
use serde_json::Number;

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z][a-zA-Z0-9_-]{0,10}".prop_filter("keywords are not names", |n| {
            !["and", "or", "not"].contains(&n.to_ascii_lowercase().as_str())
        }),
        Just("$ref".to_owned()),
    ]
}

fn urn() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some("urn:ietf:params:scim:schemas:core:2.0:User".to_owned())),
        1 => Just(Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User".to_owned())),
    ]
}

fn path() -> impl Strategy<Value = AttrPath> {
    (urn(), name(), proptest::option::of(name())).prop_map(|(urn, name, sub_attr)| AttrPath {
        urn,
        name,
        sub_attr,
    })
}

fn op() -> impl Strategy<Value = CompareOp> {
    prop_oneof![
        Just(CompareOp::Eq),
        Just(CompareOp::Ne),
        Just(CompareOp::Co),
        Just(CompareOp::Sw),
        Just(CompareOp::Ew),
        Just(CompareOp::Gt),
        Just(CompareOp::Ge),
        Just(CompareOp::Lt),
        Just(CompareOp::Le),
    ]
}

fn value() -> impl Strategy<Value = CompValue> {
    prop_oneof![
        Just(CompValue::Null),
        any::<bool>().prop_map(CompValue::Bool),
        any::<i64>().prop_map(|n| CompValue::Number(n.into())),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(CompValue::Number),
        any::<String>().prop_map(CompValue::String),
    ]
}

fn comparison(path: BoxedStrategy<AttrPath>) -> impl Strategy<Value = Filter> {
    prop_oneof![
        path.clone().prop_map(Filter::Present),
        (path, op(), value()).prop_map(|(p, o, v)| Filter::Compare(p, o, v)),
    ]
}

/// `and`/`or` chains of two to four operands, and `not`; a chain inside a chain of its own
/// kind stands for a parenthesized one.
fn logic(leaf: BoxedStrategy<Filter>) -> BoxedStrategy<Filter> {
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
            proptest::collection::vec(inner.clone(), 2..=4).prop_map(Filter::And),
            proptest::collection::vec(inner, 2..=4).prop_map(Filter::Or),
        ]
    })
    .boxed()
}

/// How many attribute expressions the parser counts in a filter (a value filter counts
/// itself and those inside it).
fn terms(filter: &Filter) -> usize {
    match filter {
        Filter::Present(_) | Filter::Compare(..) => 1,
        Filter::ValuePath(_, inner) => 1 + terms(inner),
        Filter::Not(inner) => terms(inner),
        Filter::And(operands) | Filter::Or(operands) => operands.iter().map(terms).sum(),
    }
}

/// Filters inside `[ ]`: sub-attribute names only, no nesting.
fn element_filter() -> BoxedStrategy<Filter> {
    logic(comparison(name().prop_map(AttrPath::new).boxed()).boxed())
}

fn filter() -> BoxedStrategy<Filter> {
    let value_path = (urn(), name(), element_filter()).prop_map(|(urn, name, inner)| {
        Filter::ValuePath(
            AttrPath {
                urn,
                name,
                sub_attr: None,
            },
            Box::new(inner),
        )
    });
    logic(prop_oneof![3 => comparison(path().boxed()), 1 => value_path].boxed())
}

fn patch_path() -> impl Strategy<Value = PatchPath> {
    prop_oneof![
        path().prop_map(|attribute| PatchPath {
            attribute,
            filter: None
        }),
        (
            urn(),
            name(),
            element_filter(),
            proptest::option::of(name())
        )
            .prop_map(|(urn, name, filter, sub_attr)| {
                PatchPath {
                    attribute: AttrPath {
                        urn,
                        name,
                        sub_attr,
                    },
                    filter: Some(filter),
                }
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn printed_filters_parse_back_to_the_same_ast(filter in filter()) {
        prop_assume!(terms(&filter) <= rollcall_scim::limits::MAX_FILTER_TERMS);
        let printed = filter.to_string();
        prop_assert_eq!(Filter::parse(&printed), Ok(filter), "printed: {}", printed);
    }

    #[test]
    fn printed_patch_paths_parse_back_to_the_same_ast(path in patch_path()) {
        prop_assume!(path.filter.as_ref().is_none_or(|f| terms(f) <= rollcall_scim::limits::MAX_FILTER_TERMS));
        let printed = path.to_string();
        prop_assert_eq!(PatchPath::parse(&printed), Ok(path), "printed: {}", printed);
    }

    #[test]
    fn the_filter_parser_never_panics_and_reparses_what_it_accepts(input in any::<String>()) {
        if let Ok(filter) = Filter::parse(&input) {
            prop_assert_eq!(Filter::parse(&filter.to_string()), Ok(filter));
        }
    }

    #[test]
    fn the_filter_parser_never_panics_on_filter_like_noise(
        input in r#"[a-zA-Z.:\[\]() "\\0-9$-]{0,60}"#
    ) {
        if let Ok(filter) = Filter::parse(&input) {
            prop_assert_eq!(Filter::parse(&filter.to_string()), Ok(filter));
        }
        let _ = PatchPath::parse(&input);
        let _ = AttrPath::parse(&input);
    }

    #[test]
    fn the_path_parser_never_panics(input in any::<String>()) {
        if let Ok(path) = PatchPath::parse(&input) {
            prop_assert_eq!(PatchPath::parse(&path.to_string()), Ok(path));
        }
    }
}

// --- The invariants of hostile input (`invariants.rs`), on generated input ---

use crate::invariants;
use serde_json::{json, Value};

/// PATCH paths of a User: plain, dotted, filtered, URN-qualified, read-only, unknown, in odd case.
fn user_path() -> impl Strategy<Value = Option<String>> {
    const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let known = vec![
        "userName".to_owned(),
        "USERNAME".to_owned(),
        "displayName".to_owned(),
        "title".to_owned(),
        "active".to_owned(),
        "externalId".to_owned(),
        "name".to_owned(),
        "name.givenName".to_owned(),
        "emails".to_owned(),
        "emails.value".to_owned(),
        "emails.primary".to_owned(),
        "emails.type".to_owned(),
        r#"emails[type eq "work"]"#.to_owned(),
        r#"emails[type eq "work"].value"#.to_owned(),
        r#"Emails[Type Eq "Work"].Primary"#.to_owned(),
        r#"emails[primary eq true].type"#.to_owned(),
        r#"emails[value co "@" or not (type pr)]"#.to_owned(),
        r#"phoneNumbers[type eq "mobile"].value"#.to_owned(),
        r#"addresses[type eq "work"].streetAddress"#.to_owned(),
        "addresses.primary".to_owned(),
        "ims.value".to_owned(),
        "roles".to_owned(),
        "x509Certificates".to_owned(),
        "groups".to_owned(),
        "id".to_owned(),
        "meta.created".to_owned(),
        ENTERPRISE.to_owned(),
        format!("{ENTERPRISE}:manager"),
        format!("{ENTERPRISE}:manager.value"),
        format!("{ENTERPRISE}:department"),
        "urn:ietf:params:scim:schemas:core:2.0:User:name.familyName".to_owned(),
        "nope".to_owned(),
    ];
    proptest::option::weighted(0.9, proptest::sample::select(known))
}

/// PATCH paths of a Group.
fn group_path() -> impl Strategy<Value = Option<String>> {
    let known = vec![
        "displayName".to_owned(),
        "externalId".to_owned(),
        "members".to_owned(),
        "Members".to_owned(),
        "members.value".to_owned(),
        "members.display".to_owned(),
        r#"members[value eq "u1"]"#.to_owned(),
        r#"members[value eq "U1"].display"#.to_owned(),
        r#"members[type eq "Group"]"#.to_owned(),
        r#"members[value sw "u" and not (type eq "Group")]"#.to_owned(),
        "urn:ietf:params:scim:schemas:core:2.0:Group:members".to_owned(),
        "id".to_owned(),
        "userName".to_owned(),
    ];
    proptest::option::weighted(0.9, proptest::sample::select(known))
}

/// Values a client may send for any of those paths.
fn patch_value() -> impl Strategy<Value = Option<Value>> {
    let values = vec![
        json!("x"),
        json!(""),
        json!("False"),
        json!("true"),
        json!(true),
        json!(false),
        json!(5),
        json!(null),
        json!([]),
        json!({}),
        json!("2025-01-01T00:00:00Z"),
        json!({"value": "u1"}),
        json!({"value": "b@x.test", "type": "work", "primary": true}),
        json!([{"value": "a@x.test", "type": "work", "primary": true}]),
        json!([{"value": "b@x.test", "primary": true}, {"value": "c@x.test", "type": "home"}]),
        json!([{"value": "u1"}, {"value": "U1"}, {"value": "u2", "type": "Group"}]),
        json!([{"value": "u1"}]),
        json!({"givenName": "Ada", "familyName": "Lovelace"}),
        json!({"title": "Dr", "name.givenName": "G", "emails": [{"value": "d@x.test", "primary": "True"}]}),
        json!({"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "d", "manager": "271"}}),
        json!({"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager": {"value": ""}}),
        json!({"active": "False", "displayName": "Name"}),
        json!({"members": [{"value": "u3"}]}),
        json!({"type": "work"}),
    ];
    proptest::option::weighted(0.9, proptest::sample::select(values))
}

fn operation(path: BoxedStrategy<Option<String>>) -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(vec!["add", "Add", "replace", "Replace", "remove", "REMOVE"]),
        path,
        patch_value(),
    )
        .prop_map(|(op, path, value)| {
            let mut operation = json!({"op": op});
            if let Some(path) = path {
                operation["path"] = Value::String(path);
            }
            if let Some(value) = value {
                operation["value"] = value;
            }
            operation
        })
}

/// The fixture resources of one type.
fn named(users: bool) -> Vec<String> {
    invariants::fixture_resources()
        .iter()
        .filter(|(_, resource)| resource.get("userName").is_some() == users)
        .map(|(name, _)| name.clone())
        .collect()
}

fn patch_case() -> impl Strategy<Value = Value> {
    let case = |rt: &'static str, path: BoxedStrategy<Option<String>>| {
        (
            proptest::sample::select(named(rt == "User")),
            proptest::collection::vec(operation(path), 1..4),
        )
            .prop_map(move |(name, operations)| {
                json!({
                    "type": rt,
                    "before": name,
                    "request": {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations},
                })
            })
    };
    prop_oneof![
        3 => case("User", user_path().boxed()),
        1 => case("Group", group_path().boxed()),
    ]
}

/// POST bodies: a fixture resource with some attributes replaced by arbitrary values.
fn create_case() -> impl Strategy<Value = Value> {
    let names: Vec<String> = invariants::fixture_resources().keys().cloned().collect();
    (
        proptest::sample::select(names),
        proptest::collection::vec((user_path(), patch_value()), 0..4),
    )
        .prop_map(|(name, edits)| {
            let mut body = invariants::fixture_resources()[&name].clone();
            let rt = if body.get("userName").is_some() {
                "User"
            } else {
                "Group"
            };
            for (path, value) in edits {
                if let (Some(path), Some(map)) = (path, body.as_object_mut()) {
                    map.insert(path, value.unwrap_or(Value::Null));
                }
            }
            json!({"type": rt, "request": body})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn parsing_and_matching_any_text_as_a_filter_never_panics(
        input in r#"[a-zA-Z.:\[\]() "\\0-9$-]{0,80}"#
    ) {
        invariants::filter(input.as_bytes());
    }

    #[test]
    fn matching_any_generated_filter_never_panics(filter in filter()) {
        invariants::filter(filter.to_string().as_bytes());
    }

    #[test]
    fn patch_on_any_document_never_panics_and_yields_what_the_schema_accepts(case in patch_case()) {
        invariants::patch(case.to_string().as_bytes());
    }

    #[test]
    fn a_created_resource_is_canonical_and_a_put_of_its_body_changes_nothing(case in create_case()) {
        invariants::resource(case.to_string().as_bytes());
    }
}
