//! Which attributes a response carries (RFC 7644 §3.4.2.5, §3.9): `attributes` and
//! `excludedAttributes` applied under each attribute's `returned` rule. `password`
//! (`returned: never`) is never returned; `id` and `schemas` (`always`) always are.

use serde_json::{Map, Value};

use crate::error::ScimError;
use crate::filter::AttrPath;
use crate::resource::{attribute_value, container_mut, tidy};
use crate::schema::{
    Attribute, AttributeType, Resolved, ResourceType, Returned, Schema, COMMON_ATTRIBUTES,
};

/// A parsed `attributes` / `excludedAttributes` pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projection {
    attributes: Vec<Selector>,
    excluded: Vec<Selector>,
}

#[derive(Debug, Clone, PartialEq)]
enum Selector {
    Schema(&'static Schema),
    Attribute(Resolved),
}

/// How much of one attribute a response carries.
enum Keep {
    None,
    All,
    Subs(Vec<&'static Attribute>),
}

impl Projection {
    /// Parses the comma-separated `attributes` and `excludedAttributes` parameters.
    ///
    /// Names are resolved without case; names that are no attribute of `rt` are ignored (a
    /// client may ask one list for attributes of several resource types); malformed names
    /// are `400 invalidValue`.
    pub fn parse(
        rt: &ResourceType,
        attributes: Option<&str>,
        excluded: Option<&str>,
    ) -> Result<Self, ScimError> {
        Ok(Self {
            attributes: selectors(rt, attributes)?,
            excluded: selectors(rt, excluded)?,
        })
    }

    /// Like [`Projection::parse`], from lists (as in a `POST /.search` body).
    pub fn from_lists(
        rt: &ResourceType,
        attributes: &[String],
        excluded: &[String],
    ) -> Result<Self, ScimError> {
        Self::parse(rt, Some(&attributes.join(",")), Some(&excluded.join(",")))
    }

    fn keep(&self, schema: &Schema, resolved: &Resolved) -> Keep {
        let attribute = resolved.attribute;
        let same = |r: &Resolved| std::ptr::eq(r.attribute, attribute);
        match attribute.returned {
            Returned::Never => return Keep::None,
            Returned::Always => return Keep::All,
            Returned::Default | Returned::Request => {}
        }
        if !self.attributes.is_empty() {
            let whole = self.attributes.iter().any(|s| match s {
                Selector::Schema(s) => std::ptr::eq(*s, schema) && resolved.schema.is_some(),
                Selector::Attribute(r) => same(r) && r.sub_attribute.is_none(),
            });
            if whole {
                return Keep::All;
            }
            let subs: Vec<_> = self
                .attributes
                .iter()
                .filter_map(|s| match s {
                    Selector::Attribute(r) if same(r) => r.sub_attribute,
                    _ => None,
                })
                .collect();
            return if subs.is_empty() {
                Keep::None
            } else {
                Keep::Subs(subs)
            };
        }
        if attribute.returned == Returned::Request {
            return Keep::None;
        }
        let excluded_whole = self.excluded.iter().any(|s| match s {
            Selector::Schema(s) => std::ptr::eq(*s, schema) && resolved.in_extension,
            Selector::Attribute(r) => same(r) && r.sub_attribute.is_none(),
        });
        if excluded_whole {
            return Keep::None;
        }
        let excluded_subs: Vec<_> = self
            .excluded
            .iter()
            .filter_map(|s| match s {
                Selector::Attribute(r) if same(r) => r.sub_attribute,
                _ => None,
            })
            .collect();
        if excluded_subs.is_empty() {
            Keep::All
        } else {
            Keep::Subs(
                attribute
                    .sub_attributes
                    .iter()
                    .filter(|sub| !excluded_subs.iter().any(|x| std::ptr::eq(*x, *sub)))
                    .collect(),
            )
        }
    }

    /// Whether a response carries any of this attribute (so that, for example, a group's
    /// members need not be loaded for `excludedAttributes=members`).
    pub fn includes(&self, rt: &ResourceType, attribute: &str) -> bool {
        let Some(resolved) = rt.resolve(None, attribute, None) else {
            return false;
        };
        let schema = resolved.schema.unwrap_or(rt.schema);
        !matches!(self.keep(schema, &resolved), Keep::None)
    }

    /// The resource as the response carries it.
    pub fn apply(&self, rt: &ResourceType, resource: &Value) -> Value {
        let mut out = Map::new();
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
                let resolved = Resolved {
                    schema: Some(schema),
                    in_extension,
                    attribute,
                    sub_attribute: None,
                };
                let Some(value) = attribute_value(resource, &resolved) else {
                    continue;
                };
                let kept = match self.keep(schema, &resolved) {
                    Keep::None => continue,
                    Keep::All => strip_never(attribute, value.clone()),
                    Keep::Subs(subs) => only_subs(attribute, value, &subs),
                };
                if let Some(kept) = kept {
                    container_mut(&mut out, &resolved).insert(attribute.name.to_owned(), kept);
                }
            }
        }
        let mut out = Value::Object(out);
        tidy(rt, &mut out);
        out
    }
}

fn selectors(rt: &ResourceType, list: Option<&str>) -> Result<Vec<Selector>, ScimError> {
    let mut out = Vec::new();
    for name in list
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        if let Some(schema) = rt.schema_by_urn(name) {
            out.push(Selector::Schema(schema));
            continue;
        }
        let path = AttrPath::parse(name).map_err(|error| {
            ScimError::invalid_value(format!("attribute name {name:?}: {error}"))
        })?;
        if let Some(resolved) =
            rt.resolve(path.urn.as_deref(), &path.name, path.sub_attr.as_deref())
        {
            out.push(Selector::Attribute(resolved));
        }
    }
    Ok(out)
}

fn keep_sub(attribute: &Attribute, value: &Value, keep: impl Fn(&str) -> bool) -> Option<Value> {
    let filter_element = |element: &Value| -> Option<Value> {
        let Value::Object(map) = element else {
            return Some(element.clone());
        };
        let kept: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!kept.is_empty()).then_some(Value::Object(kept))
    };
    match value {
        Value::Array(items) if attribute.multi_valued => {
            let kept: Vec<_> = items.iter().filter_map(filter_element).collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        other => filter_element(other),
    }
}

fn strip_never(attribute: &Attribute, value: Value) -> Option<Value> {
    if attribute.kind != AttributeType::Complex {
        return Some(value);
    }
    keep_sub(attribute, &value, |key| {
        attribute
            .sub_attribute(key)
            .is_none_or(|sub| sub.returned != Returned::Never)
    })
}

fn only_subs(attribute: &Attribute, value: &Value, subs: &[&'static Attribute]) -> Option<Value> {
    keep_sub(attribute, value, |key| {
        subs.iter().any(|sub| sub.name == key)
            || attribute
                .sub_attribute(key)
                .is_some_and(|sub| sub.returned == Returned::Always)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{GROUP_RESOURCE, USER_RESOURCE};
    use serde_json::json;

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
            "id": "1", "userName": "ada", "password": "s3cret", "title": "Dr",
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"value": "a@x", "type": "work"}],
            "meta": {"resourceType": "User"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"}
        })
    }

    fn project(attributes: Option<&str>, excluded: Option<&str>) -> Value {
        Projection::parse(&USER_RESOURCE, attributes, excluded)
            .unwrap()
            .apply(&USER_RESOURCE, &user())
    }

    #[test]
    fn by_default_everything_but_the_password() {
        let mut expected = user();
        expected.as_object_mut().unwrap().remove("password");
        assert_eq!(project(None, None), expected);
    }

    #[test]
    fn attributes_narrows_to_what_is_named_plus_always_returned() {
        assert_eq!(
            project(Some("name.givenName,EMAILS.value,password"), None),
            json!({"id": "1", "name": {"givenName": "Ada"}, "emails": [{"value": "a@x"}],
                   "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]})
        );
        assert_eq!(
            project(
                Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"),
                None
            ),
            json!({"id": "1", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"},
                   "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]})
        );
    }

    #[test]
    fn excluded_attributes_never_remove_id() {
        let projected = project(None, Some("id,title,name.familyName,department"));
        assert_eq!(projected["id"], "1");
        assert!(projected.get("title").is_none());
        assert_eq!(projected["name"], json!({"givenName": "Ada"}));
        assert!(projected
            .get("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")
            .is_none());
    }

    #[test]
    fn excluding_members_is_known_before_loading_them() {
        let projection = Projection::parse(&GROUP_RESOURCE, None, Some("members")).unwrap();
        assert!(!projection.includes(&GROUP_RESOURCE, "members"));
        assert!(Projection::default().includes(&GROUP_RESOURCE, "members"));
        assert!(!Projection::parse(&GROUP_RESOURCE, Some("id"), None)
            .unwrap()
            .includes(&GROUP_RESOURCE, "members"));
    }
}
