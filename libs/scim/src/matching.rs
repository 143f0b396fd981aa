//! What a filter means for a resource: [`check`] refuses filters that name unknown attributes
//! or compare a type the wrong way (`400 invalidFilter`), and [`matches`] evaluates a filter
//! against a resource, honouring `caseExact` (userName matches without case) and types.
//!
//! Rules the RFC leaves open, as Rollcall decides them:
//! - a complex attribute compared without a sub-attribute compares its `value`
//!   (`emails co "x"`, `members eq "<id>"`, `manager eq "<id>"`);
//! - a multi-valued attribute matches when any value matches; `ne` matches when none is equal;
//! - an absent attribute matches `ne` and `eq null`, nothing else.
//!
//! Both walk an `and`/`or` chain in a loop: they recurse only where the filter nests
//! (parentheses, `not`, `[…]`), which the parser bounds (`limits::MAX_FILTER_DEPTH`).

use serde_json::Value;

use crate::error::ScimError;
use crate::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::resource::attribute_value;
use crate::schema::{Attribute, AttributeType, ResourceType};
use crate::value::{as_bool, order, parse_date_time};

/// Where a filter's attribute paths are resolved: a resource, or one element of a complex
/// attribute (inside `emails[…]`).
#[derive(Clone, Copy)]
enum Scope<'a> {
    Resource(&'a ResourceType),
    Element(&'static Attribute),
}

/// Resolves a path for comparison: the attribute (or sub-attribute) holding each compared
/// value, the sub-attribute inside an element scope, and the resource-level resolution.
fn resolve(
    scope: Scope<'_>,
    path: &AttrPath,
) -> Result<
    (
        &'static Attribute,
        Option<&'static Attribute>,
        Option<crate::schema::Resolved>,
    ),
    String,
> {
    match scope {
        Scope::Resource(rt) => {
            let resolved = rt
                .resolve(path.urn.as_deref(), &path.name, path.sub_attr.as_deref())
                .ok_or_else(|| format!("{path} is not an attribute of {}", rt.name))?;
            let compared = match resolved.sub_attribute {
                Some(sub) => sub,
                None if resolved.attribute.kind == AttributeType::Complex => resolved
                    .attribute
                    .sub_attribute("value")
                    .ok_or_else(|| format!("{path} is complex; name one of its sub-attributes"))?,
                None => resolved.attribute,
            };
            Ok((compared, None, Some(resolved)))
        }
        Scope::Element(parent) => {
            let sub = parent
                .sub_attribute(&path.name)
                .ok_or_else(|| format!("{} has no sub-attribute {}", parent.name, path.name))?;
            Ok((sub, Some(sub), None))
        }
    }
}

/// Checks that every attribute a filter names exists and that each comparison fits the
/// attribute's type.
pub fn check(rt: &ResourceType, filter: &Filter) -> Result<(), ScimError> {
    check_in(Scope::Resource(rt), filter)
        .map_err(|detail| ScimError::invalid_filter(format!("invalid filter: {detail}")))
}

fn check_in(scope: Scope<'_>, filter: &Filter) -> Result<(), String> {
    match filter {
        Filter::Present(path) => resolve(scope, path).map(|_| ()),
        Filter::Compare(path, op, value) => {
            let (compared, ..) = resolve(scope, path)?;
            check_comparison(path, compared, *op, value)
        }
        Filter::ValuePath(path, inner) => {
            let Scope::Resource(_) = scope else {
                return Err("value filters cannot be nested".into());
            };
            let (_, _, resolved) = resolve(scope, path)?;
            let attribute = resolved
                .map(|r| r.attribute)
                .ok_or("value filter outside a resource")?;
            if attribute.kind != AttributeType::Complex || path.sub_attr.is_some() {
                return Err(format!(
                    "{path} is not a complex attribute; [ ] filters need one"
                ));
            }
            check_in(Scope::Element(attribute), inner)
        }
        Filter::Not(inner) => check_in(scope, inner),
        Filter::And(operands) | Filter::Or(operands) => operands
            .iter()
            .try_for_each(|operand| check_in(scope, operand)),
    }
}

fn check_comparison(
    path: &AttrPath,
    attribute: &Attribute,
    op: CompareOp,
    value: &CompValue,
) -> Result<(), String> {
    let ordering = matches!(
        op,
        CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le
    );
    let substring = matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew);
    if value == &CompValue::Null && op != CompareOp::Eq && op != CompareOp::Ne {
        return Err(format!(
            "{path} {} null: only eq and ne compare with null",
            op.as_str()
        ));
    }
    match attribute.kind {
        AttributeType::Boolean => {
            if ordering || substring {
                return Err(format!("{path} is a boolean; use eq or ne"));
            }
            if value != &CompValue::Null && expected_bool(value).is_none() {
                return Err(format!(
                    "{path} is a boolean; compare it with true or false"
                ));
            }
        }
        AttributeType::Binary if ordering || substring => {
            return Err(format!("{path} is binary; use eq or ne"));
        }
        AttributeType::Integer | AttributeType::Decimal if substring => {
            return Err(format!(
                "{path} is a number; {} needs a string",
                op.as_str()
            ));
        }
        AttributeType::DateTime
            if ordering
                && !matches!(value, CompValue::String(text) if parse_date_time(text).is_some()) =>
        {
            return Err(format!(
                "{path} is a date-time; compare it with one such as \"2025-01-31T00:00:00Z\""
            ));
        }
        _ => {}
    }
    Ok(())
}

/// Checks a value filter (`emails[type eq "work"]`) against the sub-attributes of `attribute`.
pub fn check_element(attribute: &'static Attribute, filter: &Filter) -> Result<(), String> {
    check_in(Scope::Element(attribute), filter)
}

/// Whether one element of the complex `attribute` matches a value filter.
pub fn matches_element(attribute: &'static Attribute, element: &Value, filter: &Filter) -> bool {
    matches_in(Scope::Element(attribute), element, filter)
}

/// Whether `resource` (canonical JSON of type `rt`) matches `filter`.
///
/// A filter that [`check`] refuses matches nothing.
pub fn matches(rt: &ResourceType, resource: &Value, filter: &Filter) -> bool {
    matches_in(Scope::Resource(rt), resource, filter)
}

fn matches_in(scope: Scope<'_>, root: &Value, filter: &Filter) -> bool {
    match filter {
        Filter::Present(path) => {
            values(scope, root, path).is_some_and(|(_, values)| values.iter().any(|v| !is_empty(v)))
        }
        Filter::Compare(path, op, expected) => {
            let Some((attribute, values)) = values(scope, root, path) else {
                return false;
            };
            if values.is_empty() {
                return match op {
                    CompareOp::Eq => expected == &CompValue::Null,
                    CompareOp::Ne => expected != &CompValue::Null,
                    _ => false,
                };
            }
            match op {
                CompareOp::Ne => !values
                    .iter()
                    .any(|v| compare(attribute, v, CompareOp::Eq, expected)),
                _ => values.iter().any(|v| compare(attribute, v, *op, expected)),
            }
        }
        Filter::ValuePath(path, inner) => {
            let Scope::Resource(rt) = scope else {
                return false;
            };
            let Some(resolved) = rt.resolve(path.urn.as_deref(), &path.name, None) else {
                return false;
            };
            let element_scope = Scope::Element(resolved.attribute);
            match attribute_value(root, &resolved) {
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|item| matches_in(element_scope, item, inner)),
                Some(item @ Value::Object(_)) => matches_in(element_scope, item, inner),
                _ => false,
            }
        }
        Filter::Not(inner) => !matches_in(scope, root, inner),
        Filter::And(operands) => operands
            .iter()
            .all(|operand| matches_in(scope, root, operand)),
        Filter::Or(operands) => operands
            .iter()
            .any(|operand| matches_in(scope, root, operand)),
    }
}

/// The values a path selects in `root`, with the attribute they are values of.
fn values<'v>(
    scope: Scope<'_>,
    root: &'v Value,
    path: &AttrPath,
) -> Option<(&'static Attribute, Vec<&'v Value>)> {
    let (compared, element_sub, resolved) = resolve(scope, path).ok()?;
    let mut out = Vec::new();
    match (element_sub, resolved) {
        (Some(sub), _) => out.extend(root.get(sub.name)),
        (None, Some(resolved)) => {
            let attribute = resolved.attribute;
            let mut pick = |value: &'v Value| {
                if attribute.kind == AttributeType::Complex {
                    out.extend(value.get(compared.name));
                } else {
                    out.push(value);
                }
            };
            match attribute_value(root, &resolved) {
                Some(Value::Array(items)) if attribute.multi_valued => {
                    items.iter().for_each(&mut pick)
                }
                Some(value) => pick(value),
                None => {}
            }
        }
        (None, None) => return None,
    }
    Some((compared, out))
}

fn is_empty(value: &Value) -> bool {
    crate::value::is_unassigned(value) || value == ""
}

fn expected_bool(value: &CompValue) -> Option<bool> {
    match value {
        CompValue::Bool(flag) => Some(*flag),
        // `roles[primary eq "True"]` (ENTRA.md §4.7)
        CompValue::String(text) => as_bool(&Value::String(text.clone())),
        _ => None,
    }
}

fn expected_text(value: &CompValue) -> Option<String> {
    match value {
        CompValue::String(text) => Some(text.clone()),
        CompValue::Number(number) => Some(number.to_string()),
        CompValue::Bool(flag) => Some(flag.to_string()),
        CompValue::Null => None,
    }
}

fn compare(attribute: &Attribute, actual: &Value, op: CompareOp, expected: &CompValue) -> bool {
    if expected == &CompValue::Null {
        return match op {
            CompareOp::Eq => actual.is_null(),
            CompareOp::Ne => !actual.is_null(),
            _ => false,
        };
    }
    match attribute.kind {
        AttributeType::Boolean => match (as_bool(actual), expected_bool(expected)) {
            (Some(actual), Some(expected)) => match op {
                CompareOp::Eq => actual == expected,
                CompareOp::Ne => actual != expected,
                _ => false,
            },
            _ => false,
        },
        AttributeType::Integer | AttributeType::Decimal => {
            let expected = match expected {
                CompValue::Number(number) => Value::Number(number.clone()),
                CompValue::String(text) => match serde_json::from_str::<serde_json::Number>(text) {
                    Ok(number) => Value::Number(number),
                    Err(_) => return false,
                },
                _ => return false,
            };
            order(attribute, actual, &expected).is_some_and(|ordering| ordered(op, ordering))
        }
        AttributeType::DateTime if !matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) => {
            let (Some(actual), Some(CompValue::String(text))) = (actual.as_str(), Some(expected))
            else {
                return false;
            };
            match (parse_date_time(actual), parse_date_time(text)) {
                (Some(actual), Some(expected)) => ordered(op, actual.cmp(&expected)),
                _ => false,
            }
        }
        AttributeType::Complex => false,
        _ => {
            let (Some(actual), Some(expected)) = (actual.as_str(), expected_text(expected)) else {
                return false;
            };
            let (actual, expected) = if attribute.case_exact {
                (actual.to_owned(), expected)
            } else {
                let folded = crate::case::fold(&expected).into_owned();
                (crate::case::fold(actual).into_owned(), folded)
            };
            match op {
                CompareOp::Co => actual.contains(&expected),
                CompareOp::Sw => actual.starts_with(&expected),
                CompareOp::Ew => actual.ends_with(&expected),
                _ => ordered(op, actual.cmp(&expected)),
            }
        }
    }
}

fn ordered(op: CompareOp, ordering: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match op {
        CompareOp::Eq => ordering == Equal,
        CompareOp::Ne => ordering != Equal,
        CompareOp::Gt => ordering == Greater,
        CompareOp::Ge => ordering != Less,
        CompareOp::Lt => ordering == Less,
        CompareOp::Le => ordering != Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{GROUP_RESOURCE, USER_RESOURCE};
    use serde_json::json;

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "2819c223",
            "userName": "Bjensen@Example.com",
            "active": true,
            "emails": [{"value": "bjensen@example.com", "type": "work"}, {"value": "babs@jensen.org", "type": "home"}],
            "meta": {"lastModified": "2011-05-13T04:42:34Z"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": {"value": "271"}}
        })
    }

    fn holds(filter: &str) -> bool {
        let filter = Filter::parse(filter).unwrap();
        check(&USER_RESOURCE, &filter).unwrap();
        matches(&USER_RESOURCE, &user(), &filter)
    }

    #[test]
    fn user_name_matches_without_case_but_id_with_case() {
        assert!(holds(r#"userName eq "bjensen@example.com""#));
        assert!(!holds(r#"id eq "2819C223""#));
    }

    #[test]
    fn string_booleans_compare_with_boolean_attributes() {
        assert!(holds(r#"active eq "True""#));
        assert!(!holds("active eq false"));
    }

    #[test]
    fn dates_compare_as_instants() {
        assert!(holds(r#"meta.lastModified gt "2011-05-13T05:42:33+01:00""#));
        assert!(!holds(r#"meta.lastModified gt "2011-05-13T04:42:34Z""#));
    }

    #[test]
    fn manager_compares_its_value_and_absent_attributes_match_ne() {
        assert!(holds(r#"manager eq "271""#));
        assert!(holds(r#"title ne "Boss""#));
        assert!(!holds("title pr"));
    }

    #[test]
    fn misuse_is_an_invalid_filter() {
        for bad in [
            r#"active co "t""#,
            r#"shoeSize eq 1"#,
            r#"name eq "x""#,
            r#"meta.created gt "yesterday""#,
            "emails[nope eq 1]",
            r#"userName[value eq "x"]"#,
        ] {
            let error = check(&USER_RESOURCE, &Filter::parse(bad).unwrap()).unwrap_err();
            assert_eq!(
                error.scim_type,
                Some(crate::error::ScimType::InvalidFilter),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_chain_at_the_term_limit_is_checked_and_matched_on_a_small_stack() {
        crate::filter::on_small_stack(|| {
            let limit = crate::limits::MAX_FILTER_TERMS;
            let ors: Vec<String> = (1..limit)
                .map(|i| format!("userName eq \"nobody{i}\""))
                .chain([r#"userName eq "bjensen@example.com""#.to_owned()])
                .collect();
            let filter = Filter::parse(&ors.join(" or ")).unwrap();
            check(&USER_RESOURCE, &filter).unwrap();
            assert!(matches(&USER_RESOURCE, &user(), &filter));
            let ands = ors.join(" and ");
            assert!(!matches(
                &USER_RESOURCE,
                &user(),
                &Filter::parse(&ands).unwrap()
            ));
            let emails: Vec<String> = (0..limit - 1)
                .map(|i| format!("type eq \"t{i}\""))
                .collect();
            let filter = Filter::parse(&format!(
                r#"emails[{} or type eq "home"]"#,
                emails[1..].join(" or ")
            ))
            .unwrap();
            check(&USER_RESOURCE, &filter).unwrap();
            assert!(matches(&USER_RESOURCE, &user(), &filter));
        });
    }

    #[test]
    fn a_30000_operand_chain_built_in_code_is_checked_and_matched_without_recursing_along_it() {
        crate::filter::on_small_stack(|| {
            let operands: Vec<Filter> = (0..30_000)
                .map(|i| Filter::parse(&format!("userName ne \"x{i}\"")).unwrap())
                .collect();
            let filter = Filter::And(operands);
            check(&USER_RESOURCE, &filter).unwrap();
            assert!(matches(&USER_RESOURCE, &user(), &filter));
            let negated = Filter::Not(Box::new(filter));
            assert!(!matches(&USER_RESOURCE, &user(), &negated));
        });
    }

    #[test]
    fn group_membership_query_matches() {
        let group = json!({"id": "g1", "displayName": "Finance", "members": [{"value": "u1"}, {"value": "u2"}]});
        let filter = Filter::parse(r#"id eq "g1" and members eq "u2""#).unwrap();
        assert!(matches(&GROUP_RESOURCE, &group, &filter));
        let filter = Filter::parse("id eq g1 and members eq u3").unwrap();
        assert!(!matches(&GROUP_RESOURCE, &group, &filter));
    }
}
