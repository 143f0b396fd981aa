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

fn logic(leaf: BoxedStrategy<Filter>) -> BoxedStrategy<Filter> {
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| Filter::And(Box::new(l), Box::new(r))),
            (inner.clone(), inner).prop_map(|(l, r)| Filter::Or(Box::new(l), Box::new(r))),
        ]
    })
    .boxed()
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
        let printed = filter.to_string();
        prop_assert_eq!(Filter::parse(&printed), Ok(filter), "printed: {}", printed);
    }

    #[test]
    fn printed_patch_paths_parse_back_to_the_same_ast(path in patch_path()) {
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
