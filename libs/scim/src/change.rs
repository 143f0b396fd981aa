//! What a write changed, attribute by attribute: the future event payload an auditor reads
//! ("`name.givenName` went from `Ada` to `Augusta`"). Values of write-only attributes
//! (`password`) never appear; a change to one is recorded as redacted.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resource::attribute_value;
use crate::schema::{
    Attribute, AttributeType, Mutability, Resolved, ResourceType, Returned, COMMON_ATTRIBUTES,
};
use crate::value::ElementSet;

/// What stands in for the value of a write-only attribute in a [`Change`].
pub const REDACTED: &str = "[redacted]";

/// One attribute's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Canonical path: `title`, `name.givenName`, `emails`,
    /// `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`.
    pub path: String,
    /// The value before, absent if it was unassigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The value after, absent if it is now unassigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// Whether the values are hidden ([`REDACTED`]) because the attribute is write-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

/// The changes from `before` to `after`, in schema order; empty when nothing changed.
///
/// Complex single-valued attributes (`name`, `manager`) are compared sub-attribute by
/// sub-attribute; multi-valued attributes as a whole list; read-only attributes not at all.
pub fn diff(rt: &ResourceType, before: &Value, after: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    for (schema, in_extension) in rt
        .schemas()
        .map(|schema| (schema, !std::ptr::eq(schema, rt.schema)))
    {
        let common = if in_extension {
            &[][..]
        } else {
            COMMON_ATTRIBUTES
        };
        for attribute in common.iter().chain(schema.attributes) {
            if attribute.mutability == Mutability::ReadOnly {
                continue;
            }
            let resolved = Resolved {
                schema: Some(schema),
                in_extension,
                attribute,
                sub_attribute: None,
            };
            let old = attribute_value(before, &resolved);
            let new = attribute_value(after, &resolved);
            if attribute.kind == AttributeType::Complex && !attribute.multi_valued {
                for sub in attribute.sub_attributes {
                    let old = old.and_then(|value| value.get(sub.name));
                    let new = new.and_then(|value| value.get(sub.name));
                    let path = Resolved {
                        sub_attribute: Some(sub),
                        ..resolved
                    }
                    .canonical_path();
                    push(&mut changes, path, sub, old, new);
                }
            } else {
                push(&mut changes, resolved.canonical_path(), attribute, old, new);
            }
        }
    }
    changes
}

fn push(
    changes: &mut Vec<Change>,
    path: String,
    attribute: &Attribute,
    old: Option<&Value>,
    new: Option<&Value>,
) {
    if old == new {
        return;
    }
    let redacted =
        attribute.returned == Returned::Never || attribute.mutability == Mutability::WriteOnly;
    let shown = |value: Option<&Value>| match (value, redacted) {
        (Some(_), true) => Some(Value::String(REDACTED.into())),
        (value, _) => value.cloned(),
    };
    changes.push(Change {
        path,
        before: shown(old),
        after: shown(new),
        redacted,
    });
}

/// The elements `after` has that `before` lacks, and those `before` had that `after` lacks,
/// for a multi-valued attribute (group members: who was added, who removed). Linear in the
/// number of elements: each side is looked up in a set of the other.
pub fn element_delta(
    attribute: &Attribute,
    before: Option<&Value>,
    after: Option<&Value>,
) -> (Vec<Value>, Vec<Value>) {
    let items =
        |value: Option<&Value>| value.and_then(Value::as_array).cloned().unwrap_or_default();
    let (before, after) = (items(before), items(after));
    let missing_from = |haystack: &[Value], needles: &[Value]| {
        let haystack = ElementSet::of(attribute, haystack);
        needles
            .iter()
            .filter(|needle| !haystack.contains(needle))
            .cloned()
            .collect::<Vec<_>>()
    };
    (missing_from(&before, &after), missing_from(&after, &before))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{GROUP, USER_RESOURCE};
    use serde_json::json;

    #[test]
    fn complex_single_values_change_per_sub_attribute_and_passwords_are_redacted() {
        let before = json!({"userName": "ada", "name": {"givenName": "Ada", "familyName": "Lovelace"}, "password": "old"});
        let after = json!({"userName": "ada", "name": {"givenName": "Augusta", "familyName": "Lovelace"}, "password": "new"});
        assert_eq!(
            diff(&USER_RESOURCE, &before, &after),
            vec![
                Change {
                    path: "name.givenName".into(),
                    before: Some(json!("Ada")),
                    after: Some(json!("Augusta")),
                    redacted: false
                },
                Change {
                    path: "password".into(),
                    before: Some(json!(REDACTED)),
                    after: Some(json!(REDACTED)),
                    redacted: true
                },
            ]
        );
        assert!(diff(&USER_RESOURCE, &before, &before).is_empty());
    }

    #[test]
    fn member_delta_names_who_came_and_went() {
        let members = GROUP.attribute("members").unwrap();
        let (added, removed) = element_delta(
            members,
            Some(&json!([{"value": "a"}, {"value": "b"}])),
            Some(&json!([{"value": "B"}, {"value": "c"}])),
        );
        assert_eq!(added, vec![json!({"value": "c"})]);
        assert_eq!(removed, vec![json!({"value": "a"})]);
    }
}
