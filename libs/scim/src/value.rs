//! Attribute values checked and coerced against their definitions, and compared the way the
//! schema says (`caseExact`, types). Entra's quirks live here: string booleans (`"False"`), a
//! bare id for a complex reference (`"manager": "271"`), `"$ref": null`, JSON `null` for absent.

use std::cmp::Ordering;

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::ScimError;
use crate::schema::{Attribute, AttributeType};

/// Reads a boolean the way Entra sends it: a JSON boolean, or `"true"`/`"false"` in any case.
pub fn as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) if text.eq_ignore_ascii_case("true") => Some(true),
        Value::String(text) if text.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Whether a value counts as unassigned (RFC 7643 §2.5): null, an empty array or object.
pub fn is_unassigned(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// Parses an xsd:dateTime as RFC 3339.
pub fn parse_date_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(path: &str, expected: &str, value: &Value) -> ScimError {
    ScimError::invalid_value(format!(
        "{path} must be {expected}, not {}",
        describe(value)
    ))
}

/// Checks and coerces a whole attribute value (a list for a multi-valued attribute).
///
/// `Ok(None)` means unassigned: `null`, `[]`, an empty complex value.
pub fn normalize(
    attribute: &Attribute,
    value: Value,
    path: &str,
) -> Result<Option<Value>, ScimError> {
    if value.is_null() {
        return Ok(None);
    }
    if !attribute.multi_valued {
        return normalize_one(attribute, value, path);
    }
    let items = match value {
        Value::Array(items) => items,
        // A single value where a list is expected: take it as a list of one.
        other => vec![other],
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if let Some(item) = normalize_one(attribute, item, path)? {
            if !out
                .iter()
                .any(|existing| same_element(attribute, existing, &item))
            {
                out.push(item);
            }
        }
    }
    check_single_primary(attribute, &out, path)?;
    Ok((!out.is_empty()).then_some(Value::Array(out)))
}

/// RFC 7643 §2.4: the primary value `true` appears no more than once.
fn check_single_primary(
    attribute: &Attribute,
    items: &[Value],
    path: &str,
) -> Result<(), ScimError> {
    let primaries = items
        .iter()
        .filter(|item| item.get("primary") == Some(&Value::Bool(true)))
        .count();
    if attribute.sub_attribute("primary").is_some() && primaries > 1 {
        return Err(ScimError::invalid_value(format!(
            "{path}: at most one value may have primary set to true"
        )));
    }
    Ok(())
}

/// Checks and coerces one value of an attribute (one element of a multi-valued one).
pub fn normalize_one(
    attribute: &Attribute,
    value: Value,
    path: &str,
) -> Result<Option<Value>, ScimError> {
    if value.is_null() {
        return Ok(None);
    }
    match attribute.kind {
        AttributeType::Complex => normalize_complex(attribute, value, path),
        AttributeType::String | AttributeType::Reference => match value {
            Value::String(_) => Ok(Some(value)),
            other => Err(wrong_type(path, "a string", &other)),
        },
        AttributeType::Binary => match value {
            Value::String(text) if is_base64(&text) => Ok(Some(Value::String(text))),
            Value::String(_) => Err(ScimError::invalid_value(format!(
                "{path} must be base64-encoded"
            ))),
            other => Err(wrong_type(path, "a base64 string", &other)),
        },
        AttributeType::Boolean => match as_bool(&value) {
            Some(flag) => Ok(Some(Value::Bool(flag))),
            None => Err(wrong_type(path, "true or false", &value)),
        },
        AttributeType::Integer => match &value {
            Value::Number(number) if number.is_i64() || number.is_u64() => Ok(Some(value)),
            other => Err(wrong_type(path, "an integer", other)),
        },
        AttributeType::Decimal => match &value {
            Value::Number(_) => Ok(Some(value)),
            other => Err(wrong_type(path, "a number", other)),
        },
        AttributeType::DateTime => match &value {
            Value::String(text) if parse_date_time(text).is_some() => Ok(Some(value)),
            Value::String(text) => Err(ScimError::invalid_value(format!(
                "{path} must be a date-time such as 2025-03-04T10:00:00Z, not {text:?}"
            ))),
            other => Err(wrong_type(path, "a date-time string", other)),
        },
    }
}

fn normalize_complex(
    attribute: &Attribute,
    value: Value,
    path: &str,
) -> Result<Option<Value>, ScimError> {
    let map = match value {
        Value::Object(map) => map,
        // Entra sends the manager as a bare id (ENTRA.md §4.4): `"manager": "271"`.
        Value::String(text) if attribute.sub_attribute("value").is_some() => {
            if text.is_empty() {
                return Ok(None);
            }
            let mut map = Map::new();
            map.insert("value".into(), Value::String(text));
            map
        }
        // Microsoft's older manager shape: `[{"$ref": …, "value": "<id>"}]` for a single value.
        Value::Array(mut items) if !attribute.multi_valued && items.len() == 1 => {
            return normalize_complex(attribute, items.remove(0), path);
        }
        other => return Err(wrong_type(path, "an object", &other)),
    };
    let mut out = Map::new();
    for (key, sub_value) in map {
        let Some(sub) = attribute.sub_attribute(&key) else {
            return Err(ScimError::invalid_value(format!(
                "{path} has no sub-attribute {key:?}; its sub-attributes are {}",
                attribute
                    .sub_attributes
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if sub.mutability == crate::schema::Mutability::ReadOnly {
            // RFC 7643 §2.2: read-only values sent by a client are ignored.
            continue;
        }
        let sub_path = format!("{path}.{}", sub.name);
        if let Some(sub_value) = normalize_one(sub, sub_value, &sub_path)? {
            out.insert(sub.name.to_owned(), sub_value);
        }
    }
    // "Replace with empty" removes a manager (ENTRA.md §4.4).
    if out.get("value").is_some_and(|value| value == "") && out.len() == 1 {
        return Ok(None);
    }
    Ok((!out.is_empty()).then_some(Value::Object(out)))
}

fn is_base64(text: &str) -> bool {
    let trimmed = text.trim_end_matches('=');
    text.len() - trimmed.len() <= 2
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
}

/// Compares two strings the way `attribute` says: exactly, or ignoring case.
pub fn strings_equal(attribute: &Attribute, left: &str, right: &str) -> bool {
    if attribute.case_exact {
        left == right
    } else {
        left == right || left.to_lowercase() == right.to_lowercase()
    }
}

/// Whether two simple values of `attribute` are equal under its rules.
pub fn simple_equal(attribute: &Attribute, left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::String(l), Value::String(r)) => match attribute.kind {
            AttributeType::DateTime => match (parse_date_time(l), parse_date_time(r)) {
                (Some(l), Some(r)) => l == r,
                _ => l == r,
            },
            _ => strings_equal(attribute, l, r),
        },
        (Value::Number(l), Value::Number(r)) => l.as_f64() == r.as_f64(),
        _ => left == right,
    }
}

/// Whether two elements of a multi-valued attribute are the same element.
///
/// Elements with a `value` are the same when their `value` (and `type`, where both have one)
/// are equal: adding a member twice is a no-op (Microsoft's reference server compares member
/// values without case). Other elements must be equal in every sub-attribute.
pub fn same_element(attribute: &Attribute, left: &Value, right: &Value) -> bool {
    if attribute.kind != AttributeType::Complex {
        return simple_equal(attribute, left, right);
    }
    let (Value::Object(l), Value::Object(r)) = (left, right) else {
        return left == right;
    };
    if let (Some(value_def), Some(lv), Some(rv)) = (
        attribute.sub_attribute("value"),
        l.get("value"),
        r.get("value"),
    ) {
        let types_differ = match (
            attribute.sub_attribute("type"),
            l.get("type"),
            r.get("type"),
        ) {
            (Some(type_def), Some(lt), Some(rt)) => !simple_equal(type_def, lt, rt),
            _ => false,
        };
        return !types_differ && simple_equal(value_def, lv, rv);
    }
    l.len() == r.len()
        && l.iter().all(|(key, lv)| {
            let sub = attribute.sub_attribute(key);
            r.get(key)
                .is_some_and(|rv| sub.map_or(lv == rv, |sub| simple_equal(sub, lv, rv)))
        })
}

/// Orders two simple values of `attribute` (for `sortBy` and `gt`/`lt`), if comparable.
pub fn order(attribute: &Attribute, left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::String(l), Value::String(r)) => Some(match attribute.kind {
            AttributeType::DateTime => match (parse_date_time(l), parse_date_time(r)) {
                (Some(l), Some(r)) => l.cmp(&r),
                _ => l.cmp(r),
            },
            _ if attribute.case_exact => l.cmp(r),
            _ => l.to_lowercase().cmp(&r.to_lowercase()),
        }),
        (Value::Number(l), Value::Number(r)) => {
            if let (Some(l), Some(r)) = (l.as_i64(), r.as_i64()) {
                Some(l.cmp(&r))
            } else {
                l.as_f64()?.partial_cmp(&r.as_f64()?)
            }
        }
        (Value::Bool(l), Value::Bool(r)) => Some(l.cmp(r)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ENTERPRISE_USER, USER};
    use serde_json::json;

    fn attribute(name: &str) -> &'static Attribute {
        USER.attribute(name)
            .or_else(|| ENTERPRISE_USER.attribute(name))
            .unwrap()
    }

    #[test]
    fn string_booleans_in_any_case_become_booleans() {
        for (input, expected) in [("True", true), ("FALSE", false), ("false", false)] {
            assert_eq!(
                normalize(attribute("active"), json!(input), "active").unwrap(),
                Some(json!(expected))
            );
        }
        assert!(normalize(attribute("active"), json!("yes"), "active").is_err());
    }

    #[test]
    fn a_bare_manager_id_becomes_a_complex_value() {
        assert_eq!(
            normalize(attribute("manager"), json!("271"), "manager").unwrap(),
            Some(json!({"value": "271"}))
        );
        assert_eq!(
            normalize(
                attribute("manager"),
                json!([{"$ref": "https://x/Users/9", "value": "9"}]),
                "manager"
            )
            .unwrap(),
            Some(json!({"$ref": "https://x/Users/9", "value": "9"}))
        );
        assert_eq!(
            normalize(attribute("manager"), json!(""), "manager").unwrap(),
            None
        );
        assert_eq!(
            normalize(attribute("manager"), json!({"value": ""}), "manager").unwrap(),
            None
        );
    }

    #[test]
    fn nulls_are_absent_and_sub_attribute_names_take_their_canonical_case() {
        assert_eq!(
            normalize(
                attribute("emails"),
                json!([{"Value": "a@b.c", "TYPE": "work", "display": null}]),
                "emails"
            )
            .unwrap(),
            Some(json!([{"value": "a@b.c", "type": "work"}]))
        );
        assert_eq!(
            normalize(attribute("title"), Value::Null, "title").unwrap(),
            None
        );
    }

    #[test]
    fn wrong_types_and_unknown_sub_attributes_are_invalid_values() {
        let error = normalize(attribute("userName"), json!(5), "userName").unwrap_err();
        assert_eq!(error.scim_type, Some(crate::error::ScimType::InvalidValue));
        assert!(normalize(attribute("name"), json!({"nickname": "x"}), "name").is_err());
        assert!(normalize(
            attribute("emails"),
            json!([{"value": "a", "primary": true}, {"value": "b", "primary": "True"}]),
            "emails"
        )
        .is_err());
    }

    #[test]
    fn duplicate_elements_collapse() {
        assert_eq!(
            normalize(
                attribute("emails"),
                json!([{"value": "A@b.c"}, {"value": "a@B.c"}]),
                "emails"
            )
            .unwrap(),
            Some(json!([{"value": "A@b.c"}]))
        );
    }
}
