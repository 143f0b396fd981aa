//! Resources as schema-aware JSON: a client's body checked and brought to canonical form
//! (attribute names in their schema case, extension attributes under their schema URI, no
//! nulls, read-only attributes dropped), and the attribute-level reads and writes that
//! filters, PATCH and projection share.

use serde_json::{Map, Value};

use crate::error::ScimError;
use crate::filter::AttrPath;
use crate::schema::{Mutability, Resolved, ResourceType};
use crate::value;

/// The attribute's container in a resource: the resource itself, or its extension object.
pub fn container<'v>(resource: &'v Value, resolved: &Resolved) -> Option<&'v Map<String, Value>> {
    match (resolved.in_extension, resolved.schema) {
        (true, Some(schema)) => resource.get(schema.id)?.as_object(),
        _ => resource.as_object(),
    }
}

/// The attribute's container, created if it is an extension object that does not exist yet.
pub fn container_mut<'v>(
    resource: &'v mut Map<String, Value>,
    resolved: &Resolved,
) -> &'v mut Map<String, Value> {
    match (resolved.in_extension, resolved.schema) {
        (true, Some(schema)) => {
            let slot = resource
                .entry(schema.id.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            match slot {
                Value::Object(map) => map,
                _ => unreachable!("the slot was made an object above"),
            }
        }
        _ => resource,
    }
}

/// The attribute's whole value (ignoring any sub-attribute in the path).
pub fn attribute_value<'v>(resource: &'v Value, resolved: &Resolved) -> Option<&'v Value> {
    container(resource, resolved)?.get(resolved.attribute.name)
}

/// Checks a client's resource (POST or PUT body) and brings it to canonical form.
///
/// Unknown schema URIs and unknown attributes are `400 invalidSyntax`; values of the wrong
/// type are `400 invalidValue`; read-only attributes (`id`, `meta`, `groups`) are ignored
/// (RFC 7643 §2.2); JSON `null` means absent (ENTRA.md §4.2).
pub fn normalize(rt: &ResourceType, input: Value) -> Result<Value, ScimError> {
    let Value::Object(input) = input else {
        return Err(ScimError::invalid_syntax(format!(
            "a {} must be a JSON object",
            rt.name
        )));
    };
    let mut out = Map::new();
    for (key, value) in input {
        if key.eq_ignore_ascii_case("schemas") {
            check_schemas(rt, &value)?;
            continue;
        }
        if let Some(schema) = rt.schema_by_urn(&key) {
            // `"urn:…:enterprise:2.0:User": {"department": …}`
            let Value::Object(members) = value else {
                if value.is_null() {
                    continue;
                }
                return Err(ScimError::invalid_syntax(format!(
                    "{} must be an object",
                    schema.id
                )));
            };
            for (name, value) in members
                .into_iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case("schemas"))
            {
                let path = AttrPath {
                    urn: Some(schema.id.to_owned()),
                    name,
                    sub_attr: None,
                };
                set_input(rt, &mut out, &path, value)?;
            }
            continue;
        }
        let path = AttrPath::parse(&key).map_err(|_| unknown_attribute(rt, &key))?;
        set_input(rt, &mut out, &path, value)?;
    }
    let mut resource = Value::Object(out);
    tidy(rt, &mut resource);
    Ok(resource)
}

fn unknown_attribute(rt: &ResourceType, key: &str) -> ScimError {
    ScimError::invalid_syntax(format!(
        "{key:?} is not an attribute of {}; Rollcall stores only the attributes its /Schemas lists",
        rt.name
    ))
}

fn check_schemas(rt: &ResourceType, value: &Value) -> Result<(), ScimError> {
    let Some(uris) = value.as_array() else {
        return Err(ScimError::invalid_syntax(
            "schemas must be an array of schema URIs",
        ));
    };
    let mut has_core = false;
    for uri in uris {
        let Some(uri) = uri.as_str() else {
            return Err(ScimError::invalid_syntax(
                "schemas must be an array of schema URIs",
            ));
        };
        if !rt.accepts_schema(uri) {
            return Err(ScimError::invalid_syntax(format!(
                "unknown schema {uri:?} for {}; expected {}",
                rt.name,
                rt.schemas()
                    .map(|s| s.id)
                    .collect::<Vec<_>>()
                    .join(" and optionally ")
            )));
        }
        has_core |= uri.eq_ignore_ascii_case(rt.schema.id);
    }
    if !has_core {
        return Err(ScimError::invalid_syntax(format!(
            "schemas must include {}",
            rt.schema.id
        )));
    }
    Ok(())
}

fn set_input(
    rt: &ResourceType,
    out: &mut Map<String, Value>,
    path: &AttrPath,
    value: Value,
) -> Result<(), ScimError> {
    let key = path.to_string();
    let resolved = rt
        .resolve(path.urn.as_deref(), &path.name, path.sub_attr.as_deref())
        .ok_or_else(|| unknown_attribute(rt, &key))?;
    if resolved.attribute.mutability == Mutability::ReadOnly {
        return Ok(());
    }
    let canonical = resolved.canonical_path();
    let container = container_mut(out, &resolved);
    match resolved.sub_attribute {
        None => {
            if let Some(value) = value::normalize(resolved.attribute, value, &canonical)? {
                container.insert(resolved.attribute.name.to_owned(), value);
            }
        }
        // A dotted key (`"name.givenName": …`) in a body.
        Some(sub) => {
            if resolved.attribute.multi_valued {
                return Err(ScimError::invalid_syntax(format!(
                    "{key:?}: give {} as a list",
                    resolved.attribute.name
                )));
            }
            if let Some(value) = value::normalize_one(sub, value, &canonical)? {
                let slot = container
                    .entry(resolved.attribute.name.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(parent) = slot {
                    parent.insert(sub.name.to_owned(), value);
                }
                // `"manager.value": ""` leaves no manager, as `"manager": ""` does.
                if value::is_blank_element(slot) {
                    container.remove(resolved.attribute.name);
                }
            }
        }
    }
    Ok(())
}

/// Removes empty extension objects and sets `schemas` to the core schema plus the
/// extensions the resource holds values of.
pub fn tidy(rt: &ResourceType, resource: &mut Value) {
    let Value::Object(map) = resource else { return };
    let mut schemas = vec![Value::String(rt.schema.id.to_owned())];
    for extension in rt.extensions {
        match map.get(extension.id) {
            Some(value) if !value::is_unassigned(value) => {
                schemas.push(Value::String(extension.id.to_owned()));
            }
            Some(_) => {
                map.remove(extension.id);
            }
            None => {}
        }
    }
    map.insert("schemas".into(), Value::Array(schemas));
}

/// Checks that every required attribute has a value (`userName`, group `displayName`).
pub fn check_required(rt: &ResourceType, resource: &Value) -> Result<(), ScimError> {
    for schema in rt.schemas() {
        for attribute in schema.attributes.iter().filter(|a| a.required) {
            let Some(resolved) = rt.resolve(Some(schema.id), attribute.name, None) else {
                continue;
            };
            let present = attribute_value(resource, &resolved)
                .is_some_and(|value| !value::is_unassigned(value) && value != "");
            if !present {
                return Err(ScimError::invalid_value(format!(
                    "{} is required for a {}",
                    resolved.canonical_path(),
                    rt.name
                )));
            }
        }
    }
    Ok(())
}

/// A new resource from a `POST` body: checked, canonical, with every required attribute,
/// within every limit of [`crate::limits`].
pub fn create(rt: &ResourceType, input: Value) -> Result<Value, ScimError> {
    let resource = normalize(rt, input)?;
    check_required(rt, &resource)?;
    crate::limits::check_resource(rt, &resource, None)?;
    Ok(resource)
}

/// The resource a `PUT` body makes of `current` (RFC 7644 §3.5.1): the body's values
/// replace all others; read-only values (`id`, `meta`, `groups`) stay; an immutable value
/// that is already set may not change (`400 mutability`). The new values are checked against
/// every limit of [`crate::limits`].
pub fn replace(rt: &ResourceType, current: &Value, input: Value) -> Result<Value, ScimError> {
    let mut next = normalize(rt, input)?;
    for (schema, in_extension) in rt
        .schemas()
        .map(|schema| (schema, !std::ptr::eq(schema, rt.schema)))
    {
        let common = if in_extension {
            &[][..]
        } else {
            crate::schema::COMMON_ATTRIBUTES
        };
        for attribute in schema.attributes.iter().chain(common) {
            let resolved = Resolved {
                schema: Some(schema),
                in_extension,
                attribute,
                sub_attribute: None,
            };
            let before = attribute_value(current, &resolved);
            match attribute.mutability {
                Mutability::ReadOnly => {
                    if let (Some(before), Value::Object(map)) = (before, &mut next) {
                        container_mut(map, &resolved)
                            .insert(attribute.name.to_owned(), before.clone());
                    }
                }
                Mutability::Immutable => {
                    let after = attribute_value(&next, &resolved);
                    if before.is_some() && after.is_some() && before != after {
                        return Err(ScimError::mutability(format!(
                            "{} is immutable and already set",
                            resolved.canonical_path()
                        )));
                    }
                }
                Mutability::ReadWrite | Mutability::WriteOnly => {}
            }
        }
    }
    tidy(rt, &mut next);
    check_required(rt, &next)?;
    crate::limits::check_resource(rt, &next, Some(current))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{GROUP_RESOURCE, USER_RESOURCE};
    use serde_json::json;

    #[test]
    fn extension_attributes_are_nested_under_their_urn_whichever_way_they_arrive() {
        let user = create(
            &USER_RESOURCE,
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "UserName": "ada",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department": "R&D",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": "271"}
            }),
        )
        .unwrap();
        assert_eq!(
            user,
            json!({
                "userName": "ada",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                    "department": "R&D",
                    "manager": {"value": "271"}
                },
                "schemas": [
                    "urn:ietf:params:scim:schemas:core:2.0:User",
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
                ]
            })
        );
    }

    #[test]
    fn read_only_attributes_sent_by_the_client_are_ignored() {
        let user = create(
            &USER_RESOURCE,
            json!({"userName": "ada", "id": "x", "meta": {"resourceType": "User"}, "groups": []}),
        )
        .unwrap();
        assert!(user.get("id").is_none() && user.get("meta").is_none());
    }

    #[test]
    fn missing_required_attributes_and_unknown_schemas_are_refused() {
        let error = create(&USER_RESOURCE, json!({"displayName": "Ada"})).unwrap_err();
        assert_eq!(error.scim_type, Some(crate::error::ScimType::InvalidValue));
        let error = create(
            &GROUP_RESOURCE,
            json!({"schemas": ["urn:example:Nope"], "displayName": "x"}),
        )
        .unwrap_err();
        assert_eq!(error.scim_type, Some(crate::error::ScimType::InvalidSyntax));
        let error = create(&USER_RESOURCE, json!({"userName": "ada", "shoeSize": 44})).unwrap_err();
        assert_eq!(error.scim_type, Some(crate::error::ScimType::InvalidSyntax));
        assert!(create(&USER_RESOURCE, json!([1, 2])).is_err());
    }

    #[test]
    fn put_keeps_read_only_values_and_drops_everything_not_sent() {
        let current = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "1", "userName": "ada", "title": "Dr", "meta": {"version": "W/\"1\""}});
        let next = replace(
            &USER_RESOURCE,
            &current,
            json!({"userName": "ada", "id": "other"}),
        )
        .unwrap();
        assert_eq!(next["id"], "1");
        assert_eq!(next["meta"]["version"], "W/\"1\"");
        assert!(next.get("title").is_none());
    }
}
