//! A resource's attributes as a canonical JSON document, and changes to it addressed by
//! canonical paths (`title`, `name.givenName`,
//! `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Attribute values by canonical name; extension attributes nest under their schema URI.
pub type Attributes = Map<String, Value>;

/// One attribute's change: what an auditor reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeChange {
    /// The canonical path.
    pub path: String,
    /// The value before; absent if unassigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The value after; absent if now unassigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// The values are hidden because the attribute is write-only (a password): the change
    /// records only that it happened, and the state never holds the value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

/// Splits a canonical path into (schema URI, attribute, sub-attribute).
fn split(path: &str) -> (Option<&str>, &str, Option<&str>) {
    let (urn, rest) = match path.rsplit_once(':') {
        Some((urn, rest)) => (Some(urn), rest),
        None => (None, path),
    };
    match rest.split_once('.') {
        Some((name, sub)) => (urn, name, Some(sub)),
        None => (urn, rest, None),
    }
}

/// The value at a canonical path, if any.
pub fn get<'a>(attributes: &'a Attributes, path: &str) -> Option<&'a Value> {
    let (urn, name, sub) = split(path);
    let container = match urn {
        Some(urn) => attributes.get(urn)?.as_object()?,
        None => attributes,
    };
    let value = container.get(name)?;
    match sub {
        Some(sub) => value.get(sub),
        None => Some(value),
    }
}

/// Applies changes in order: each path is set to its `after`, or removed when `after` is
/// absent. Redacted changes are not applied: their values are never kept.
pub fn apply(attributes: &mut Attributes, changes: &[AttributeChange]) {
    for change in changes.iter().filter(|change| !change.redacted) {
        let (urn, name, sub) = split(&change.path);
        let container = match urn {
            Some(urn) => {
                let slot = attributes
                    .entry(urn.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                match slot.as_object_mut() {
                    Some(container) => container,
                    None => continue,
                }
            }
            None => &mut *attributes,
        };
        match (sub, &change.after) {
            (None, Some(after)) => {
                container.insert(name.to_owned(), after.clone());
            }
            (None, None) => {
                container.remove(name);
            }
            (Some(sub), after) => {
                let parent = container
                    .entry(name.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(parent) = parent {
                    match after {
                        Some(after) => parent.insert(sub.to_owned(), after.clone()),
                        None => parent.remove(sub),
                    };
                    if parent.is_empty() {
                        container.remove(name);
                    }
                }
            }
        }
        if let Some(urn) = urn {
            if attributes
                .get(urn)
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                attributes.remove(urn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    fn change(path: &str, after: Option<Value>) -> AttributeChange {
        AttributeChange {
            path: path.into(),
            before: None,
            after,
            redacted: false,
        }
    }

    #[test]
    fn changes_set_and_remove_plain_sub_and_extension_paths() {
        let mut attributes = json!({"userName": "ada", "name": {"givenName": "Ada"}})
            .as_object()
            .unwrap()
            .clone();
        apply(
            &mut attributes,
            &[
                change("name.familyName", Some(json!("Lovelace"))),
                change(&format!("{ENTERPRISE}:manager.value"), Some(json!("271"))),
                change("name.givenName", None),
                change("title", Some(json!("Countess"))),
            ],
        );
        assert_eq!(
            Value::Object(attributes.clone()),
            json!({"userName": "ada", "name": {"familyName": "Lovelace"}, "title": "Countess", ENTERPRISE: {"manager": {"value": "271"}}})
        );
        assert_eq!(
            get(&attributes, &format!("{ENTERPRISE}:manager.value")),
            Some(&json!("271"))
        );
        apply(
            &mut attributes,
            &[change(&format!("{ENTERPRISE}:manager.value"), None)],
        );
        assert!(attributes.get(ENTERPRISE).is_none());
    }

    #[test]
    fn redacted_changes_never_reach_the_state() {
        let mut attributes = Attributes::new();
        apply(
            &mut attributes,
            &[AttributeChange {
                path: "password".into(),
                before: None,
                after: Some(json!("[redacted]")),
                redacted: true,
            }],
        );
        assert!(attributes.is_empty());
    }
}
