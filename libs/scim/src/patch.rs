//! PATCH (RFC 7644 §3.5.2) as Entra ID really sends it, in both of its dialects (ENTRA.md §4.5–§4.9,
//! §10): `op` in any case; paths with sub-attributes, value filters and URN prefixes; path-less
//! values with plain, dotted and URN-qualified keys; string booleans; `Remove` on `members` with a
//! `value` list removing exactly those members; a bare manager id; `Add`/`Replace` through a type
//! filter that matches nothing creating the element. A request applies all of its operations or
//! none, and reports what changed.
//!
//! Decisions where the RFC leaves room or Entra needs leniency:
//! - `remove` through a filter that matches nothing, or of an absent attribute, is a no-op:
//!   Entra repeats itself (ENTRA.md §11), and a second removal must not fail the object;
//! - `replace` with a `null` value unassigns the attribute; `add` with `null` does nothing;
//! - read-only attributes inside a path-less value are ignored (as in POST and PUT), while a
//!   path naming one is `400 mutability`;
//! - `replace` on `members` replaces the whole list, as RFC 7644 says (ENTRA.md §10 row 10 is
//!   unconfirmed; the caller sees the removals in the changes and can log them).

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::change::{diff, Change};
use crate::error::ScimError;
use crate::filter::{AttrPath, CompValue, Filter, PatchPath};
use crate::matching::{check_element, matches_element};
use crate::resource::{check_required, container_mut, tidy};
use crate::schema::{Attribute, AttributeType, Mutability, ResourceType};
use crate::value::{self, equality_key, is_unassigned, ElementSet};

/// The schema URI of a PATCH request body.
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// A PATCH operation's kind, read without case (Entra sends `Add`, `Replace`, `Remove`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `add`
    Add,
    /// `replace`
    Replace,
    /// `remove`
    Remove,
}

impl OpKind {
    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "add" => Some(OpKind::Add),
            "replace" => Some(OpKind::Replace),
            "remove" => Some(OpKind::Remove),
            _ => None,
        }
    }
}

/// One operation of a PATCH request.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOperation {
    /// What to do.
    pub op: OpKind,
    /// Where, parsed; `None` for a path-less `add`/`replace`.
    pub path: Option<PatchPath>,
    /// The value, if the operation carries one (Entra's member `Remove` does).
    pub value: Option<Value>,
}

/// A parsed PATCH request body.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchRequest {
    /// The operations, in order.
    pub operations: Vec<PatchOperation>,
}

fn get_ignoring_case<'m>(map: &'m Map<String, Value>, key: &str) -> Option<&'m Value> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

impl PatchRequest {
    /// Parses a PATCH body: `schemas` must name the PatchOp schema; `Operations` must hold at
    /// least one operation; every `op` and `path` must parse (`400 invalidSyntax` / `invalidPath`).
    pub fn from_json(body: &Value) -> Result<Self, ScimError> {
        let Value::Object(body) = body else {
            return Err(ScimError::invalid_syntax(
                "a PATCH body must be a JSON object",
            ));
        };
        let schemas = get_ignoring_case(body, "schemas").and_then(Value::as_array);
        if !schemas.is_some_and(|s| {
            s.iter().any(|uri| {
                uri.as_str()
                    .is_some_and(|u| u.eq_ignore_ascii_case(PATCH_OP_SCHEMA))
            })
        }) {
            return Err(ScimError::invalid_syntax(format!(
                "a PATCH body's schemas must be [\"{PATCH_OP_SCHEMA}\"]"
            )));
        }
        let Some(Value::Array(raw)) = get_ignoring_case(body, "Operations") else {
            return Err(ScimError::invalid_syntax(
                "a PATCH body needs an Operations array",
            ));
        };
        if raw.is_empty() {
            return Err(ScimError::invalid_syntax("Operations is empty"));
        }
        let operations = raw
            .iter()
            .enumerate()
            .map(|(index, raw)| parse_operation(raw).map_err(|error| at_operation(index, error)))
            .collect::<Result<_, _>>()?;
        Ok(Self { operations })
    }
}

fn parse_operation(raw: &Value) -> Result<PatchOperation, ScimError> {
    let Value::Object(raw) = raw else {
        return Err(ScimError::invalid_syntax(
            "each operation must be an object",
        ));
    };
    let op_text = get_ignoring_case(raw, "op")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let op = OpKind::parse(op_text).ok_or_else(|| {
        ScimError::invalid_syntax(format!("op {op_text:?} is not add, replace or remove"))
    })?;
    let path = match get_ignoring_case(raw, "path") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.trim().is_empty() => None,
        Some(Value::String(text)) => {
            Some(PatchPath::parse(text).map_err(|e| e.into_path_error(text))?)
        }
        Some(_) => return Err(ScimError::invalid_path("path must be a string")),
    };
    let value = get_ignoring_case(raw, "value").cloned();
    match (op, &path, &value) {
        (OpKind::Remove, None, _) => Err(ScimError::no_target("remove needs a path")),
        (OpKind::Add | OpKind::Replace, _, None) => {
            Err(ScimError::invalid_value(format!("{op_text} needs a value")))
        }
        (OpKind::Add | OpKind::Replace, None, Some(value)) if !value.is_object() => {
            Err(ScimError::invalid_value(format!(
                "{op_text} without a path needs an object of attribute values"
            )))
        }
        _ => Ok(PatchOperation { op, path, value }),
    }
}

fn at_operation(index: usize, mut error: ScimError) -> ScimError {
    error.detail = format!("Operations[{index}]: {}", error.detail);
    error
}

/// The outcome of a PATCH: the new resource and what changed (empty when nothing did).
#[derive(Debug, Clone, PartialEq)]
pub struct Patched {
    /// The resource after every operation.
    pub resource: Value,
    /// The changes, attribute by attribute.
    pub changes: Vec<Change>,
}

/// Applies every operation of `request` to `resource`, or none of them.
pub fn apply(
    rt: &ResourceType,
    resource: &Value,
    request: &PatchRequest,
) -> Result<Patched, ScimError> {
    let Value::Object(map) = resource else {
        return Err(ScimError::new(
            500,
            None,
            "stored resource is not an object",
        ));
    };
    let mut next = map.clone();
    for (index, operation) in request.operations.iter().enumerate() {
        apply_operation(rt, &mut next, operation).map_err(|error| at_operation(index, error))?;
    }
    let mut next = Value::Object(next);
    tidy(rt, &mut next);
    check_required(rt, &next)?;
    let changes = diff(rt, resource, &next);
    Ok(Patched {
        resource: next,
        changes,
    })
}

fn apply_operation(
    rt: &ResourceType,
    resource: &mut Map<String, Value>,
    operation: &PatchOperation,
) -> Result<(), ScimError> {
    match &operation.path {
        Some(path) => apply_path(
            rt,
            resource,
            operation.op,
            path,
            operation.value.clone(),
            true,
        ),
        None => {
            let Some(Value::Object(values)) = &operation.value else {
                return Err(ScimError::invalid_value(
                    "a path-less operation needs an object value",
                ));
            };
            for (key, value) in values {
                if key.eq_ignore_ascii_case("schemas") {
                    continue;
                }
                if let Some(schema) = rt.schema_by_urn(key) {
                    // `{"urn:…:enterprise:2.0:User": {"department": "x"}}`
                    let Value::Object(members) = value else {
                        return Err(ScimError::invalid_value(format!(
                            "{} must be an object",
                            schema.id
                        )));
                    };
                    for (name, value) in members {
                        if name.eq_ignore_ascii_case("schemas") {
                            continue;
                        }
                        let attribute = AttrPath::parse(name)
                            .map_err(|e| e.into_path_error(name))
                            .map(|path| AttrPath {
                                urn: Some(schema.id.to_owned()),
                                ..path
                            })?;
                        let path = PatchPath {
                            attribute,
                            filter: None,
                        };
                        apply_path(
                            rt,
                            resource,
                            operation.op,
                            &path,
                            Some(value.clone()),
                            false,
                        )?;
                    }
                    continue;
                }
                // Plain (`displayName`), dotted (`name.givenName`) or URN-qualified keys (ENTRA.md §4.6).
                let path = PatchPath::parse(key).map_err(|e| e.into_path_error(key))?;
                apply_path(
                    rt,
                    resource,
                    operation.op,
                    &path,
                    Some(value.clone()),
                    false,
                )?;
            }
            Ok(())
        }
    }
}

fn apply_path(
    rt: &ResourceType,
    resource: &mut Map<String, Value>,
    op: OpKind,
    path: &PatchPath,
    value: Option<Value>,
    explicit: bool,
) -> Result<(), ScimError> {
    let attr = &path.attribute;
    if let (Some(urn), None, None) = (&attr.urn, &attr.sub_attr, &path.filter) {
        if let Some(schema) = rt.extension(&format!("{urn}:{}", attr.name)) {
            return extension(rt, resource, op, schema, value);
        }
    }
    let resolved = rt
        .resolve(attr.urn.as_deref(), &attr.name, attr.sub_attr.as_deref())
        .ok_or_else(|| {
            ScimError::invalid_path(format!("{path} is not an attribute of {}", rt.name))
        })?;
    let attribute = resolved.attribute;
    let canonical = resolved.canonical_path();
    let read_only = attribute.mutability == Mutability::ReadOnly
        || resolved
            .sub_attribute
            .is_some_and(|sub| sub.mutability == Mutability::ReadOnly);
    if read_only {
        return if explicit {
            Err(ScimError::mutability(format!("{canonical} is read-only")))
        } else {
            Ok(())
        };
    }
    let container = container_mut(resource, &resolved);
    if let Some(filter) = &path.filter {
        if !(attribute.multi_valued && attribute.kind == AttributeType::Complex) {
            return Err(ScimError::invalid_path(format!(
                "{path}: a [filter] needs a multi-valued complex attribute, and {} is not one",
                attribute.name
            )));
        }
        check_element(attribute, filter)
            .map_err(|detail| ScimError::invalid_path(format!("{path}: {detail}")))?;
        return filtered(
            container,
            attribute,
            resolved.sub_attribute,
            filter,
            op,
            value,
            &path.to_string(),
        );
    }
    match resolved.sub_attribute {
        Some(sub) => sub_attribute(container, attribute, sub, op, value, &canonical),
        None => whole(container, attribute, op, value, &canonical),
    }
}

/// add / replace / remove on a whole extension (`path` is its schema URI): add and replace set
/// the attributes in the value object, remove unassigns every attribute of the extension.
fn extension(
    rt: &ResourceType,
    resource: &mut Map<String, Value>,
    op: OpKind,
    schema: &'static crate::schema::Schema,
    value: Option<Value>,
) -> Result<(), ScimError> {
    if op == OpKind::Remove {
        resource.remove(schema.id);
        return Ok(());
    }
    let Some(Value::Object(members)) = value else {
        return Err(ScimError::invalid_value(format!(
            "{} needs an object of its attributes",
            schema.id
        )));
    };
    for (name, value) in members {
        if name.eq_ignore_ascii_case("schemas") {
            continue;
        }
        let attribute = AttrPath::parse(&name)
            .map_err(|e| e.into_path_error(&name))
            .map(|path| AttrPath {
                urn: Some(schema.id.to_owned()),
                ..path
            })?;
        apply_path(
            rt,
            resource,
            op,
            &PatchPath {
                attribute,
                filter: None,
            },
            Some(value),
            false,
        )?;
    }
    Ok(())
}

/// add / replace / remove on a whole attribute.
fn whole(
    container: &mut Map<String, Value>,
    attribute: &'static Attribute,
    op: OpKind,
    value: Option<Value>,
    path: &str,
) -> Result<(), ScimError> {
    let name = attribute.name;
    let existing = container.get(name);
    let next = match op {
        OpKind::Remove => match (value, existing) {
            // Entra's default member removal: remove exactly the listed values (ENTRA.md §4.9).
            (Some(listed), Some(Value::Array(items)))
                if attribute.multi_valued && !is_unassigned(&listed) =>
            {
                let listed = value::normalize(attribute, listed, path)?;
                let listed = listed
                    .as_ref()
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let selection = Selection::new(attribute, listed);
                let kept: Vec<Value> = items
                    .iter()
                    .filter(|item| !selection.selects(item))
                    .cloned()
                    .collect();
                Some(Value::Array(kept))
            }
            _ => None,
        },
        OpKind::Add | OpKind::Replace => {
            let Some(new) = value::normalize(attribute, value.unwrap_or(Value::Null), path)? else {
                // `replace` with null unassigns; `add` with null does nothing.
                if op == OpKind::Replace {
                    container.remove(name);
                }
                return Ok(());
            };
            match (existing, new) {
                (Some(Value::Array(items)), Value::Array(added)) if op == OpKind::Add => {
                    let mut held = ElementSet::of(attribute, items);
                    let mut items = items.clone();
                    let mut written = Vec::new();
                    for item in added {
                        if held.insert_new(&item) {
                            written.push(items.len());
                            items.push(item);
                        }
                    }
                    keep_one_primary(&mut items, &written);
                    Some(Value::Array(items))
                }
                // RFC 7644 §3.5.2.1, §3.5.2.3: sub-attributes not given are left unchanged.
                (Some(Value::Object(old)), Value::Object(new)) if !attribute.multi_valued => {
                    let mut merged = old.clone();
                    merged.extend(new);
                    Some(Value::Object(merged))
                }
                (_, new) => Some(new),
            }
        }
    };
    if attribute.mutability == Mutability::Immutable
        && existing.is_some()
        && next.as_ref() != existing
    {
        return Err(ScimError::mutability(format!(
            "{path} is immutable and already set"
        )));
    }
    store(container, name, next);
    Ok(())
}

/// The elements a `Remove` value names: those with a listed `value` (`{"value": "<id>"}`,
/// whatever their other sub-attributes), and those the same as a listed element without one.
/// Built once, so removing n members from m is linear, not n × m.
struct Selection<'a> {
    value_def: Option<&'static Attribute>,
    values: HashSet<value::EqualityKey>,
    elements: ElementSet<'a>,
}

impl<'a> Selection<'a> {
    fn new(attribute: &'a Attribute, listed: &[Value]) -> Self {
        let value_def = attribute.sub_attribute("value");
        let mut selection = Self {
            value_def,
            values: HashSet::new(),
            elements: ElementSet::new(attribute),
        };
        for gone in listed {
            match (gone.get("value"), value_def) {
                (Some(wanted), Some(value_def)) => {
                    selection.values.insert(equality_key(value_def, wanted));
                }
                _ => selection.elements.insert(gone),
            }
        }
        selection
    }

    fn selects(&self, item: &Value) -> bool {
        let by_value = match (self.value_def, item.get("value")) {
            (Some(value_def), Some(value)) => self.values.contains(&equality_key(value_def, value)),
            _ => false,
        };
        by_value || self.elements.contains(item)
    }
}

/// add / replace / remove on `attribute.sub` with no filter.
fn sub_attribute(
    container: &mut Map<String, Value>,
    attribute: &'static Attribute,
    sub: &'static Attribute,
    op: OpKind,
    value: Option<Value>,
    path: &str,
) -> Result<(), ScimError> {
    let new = match op {
        OpKind::Remove => None,
        OpKind::Add | OpKind::Replace => {
            value::normalize_one(sub, value.unwrap_or(Value::Null), path)?
        }
    };
    if op == OpKind::Add && new.is_none() {
        return Ok(());
    }
    let name = attribute.name;
    if attribute.multi_valued {
        // `emails.value` without a filter: every element (RFC 7644 §3.5.2).
        let mut items = container
            .get(name)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if items.is_empty() {
            if let Some(new) = new {
                items.push(Value::Object(Map::from_iter([(sub.name.to_owned(), new)])));
            }
        } else {
            // RFC 7643 §2.4: `primary` is true for one value at most, so it cannot be set on all.
            if sub.name == "primary" && new == Some(Value::Bool(true)) && items.len() > 1 {
                return Err(ScimError::invalid_value(format!(
                    "{path}: at most one value may have primary set to true; name one with a filter, as in {}[type eq \"work\"].primary",
                    attribute.name
                )));
            }
            for item in &mut items {
                set_sub(item, sub, new.clone(), path)?;
            }
            // Elements that became the same are one element, as in a POST.
            dedupe(attribute, &mut items);
        }
        store(container, name, Some(Value::Array(items)));
    } else {
        let mut item = container
            .get(name)
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        set_sub(&mut item, sub, new, path)?;
        store(container, name, Some(item));
    }
    Ok(())
}

fn set_sub(
    item: &mut Value,
    sub: &Attribute,
    new: Option<Value>,
    path: &str,
) -> Result<(), ScimError> {
    let Value::Object(map) = item else {
        return Ok(());
    };
    let old = map.get(sub.name);
    if sub.mutability == Mutability::Immutable && old.is_some() && old != new.as_ref() {
        return Err(ScimError::mutability(format!(
            "{path} is immutable and already set"
        )));
    }
    match new {
        Some(new) => map.insert(sub.name.to_owned(), new),
        None => map.remove(sub.name),
    };
    Ok(())
}

/// add / replace / remove through a value filter: `emails[type eq "work"].value`,
/// `members[value eq "<id>"]`, `addresses[type eq "work"]`.
fn filtered(
    container: &mut Map<String, Value>,
    attribute: &'static Attribute,
    sub: Option<&'static Attribute>,
    filter: &Filter,
    op: OpKind,
    value: Option<Value>,
    path: &str,
) -> Result<(), ScimError> {
    let name = attribute.name;
    let mut items = container
        .get(name)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let matched: Vec<usize> = (0..items.len())
        .filter(|&i| matches_element(attribute, &items[i], filter))
        .collect();
    let new = match (op, sub) {
        (OpKind::Remove, _) => None,
        (_, Some(sub)) => value::normalize_one(sub, value.unwrap_or(Value::Null), path)?,
        (_, None) => value::normalize_one(attribute, value.unwrap_or(Value::Null), path)?,
    };
    if matched.is_empty() {
        if op == OpKind::Remove || new.is_none() {
            return Ok(());
        }
        // Entra adds (and replaces) through a type filter that matches nothing: create the element.
        let Some(mut element) = seed(attribute, filter) else {
            return Err(ScimError::no_target(format!("{path} matched no value")));
        };
        match (sub, new) {
            (Some(sub), Some(new)) => {
                element.insert(sub.name.to_owned(), new);
            }
            (None, Some(Value::Object(new))) => element.extend(new),
            _ => {}
        }
        items.push(Value::Object(element));
        let written = [items.len() - 1];
        keep_one_primary(&mut items, &written);
        dedupe(attribute, &mut items);
        store(container, name, Some(Value::Array(items)));
        return Ok(());
    }
    match (op, sub) {
        (OpKind::Remove, None) => {
            let mut removed = vec![false; items.len()];
            for &i in &matched {
                removed[i] = true;
            }
            let mut index = 0;
            items.retain(|_| {
                index += 1;
                !removed[index - 1]
            });
        }
        (_, Some(sub)) => {
            for &i in &matched {
                set_sub(&mut items[i], sub, new.clone(), path)?;
            }
        }
        (OpKind::Add, None) => {
            if let Some(Value::Object(new)) = &new {
                for &i in &matched {
                    if let Value::Object(item) = &mut items[i] {
                        item.extend(new.clone());
                    }
                }
            }
        }
        (OpKind::Replace, None) => {
            for &i in &matched {
                if let Some(new) = &new {
                    items[i] = new.clone();
                }
            }
        }
    }
    keep_one_primary(&mut items, &matched);
    // Elements that became the same are one element, as in a POST.
    dedupe(attribute, &mut items);
    store(container, name, Some(Value::Array(items)));
    Ok(())
}

/// Keeps the first of elements that are the same ([`value::same_element`]), in order.
fn dedupe(attribute: &Attribute, items: &mut Vec<Value>) {
    let mut kept = ElementSet::new(attribute);
    items.retain(|item| kept.insert_new(item));
}

/// The element a filter of `attr eq value` comparisons describes (`type eq "work"` gives
/// `{"type": "work"}`), if the filter is such a conjunction.
fn seed(attribute: &Attribute, filter: &Filter) -> Option<Map<String, Value>> {
    let mut element = Map::new();
    for (path, value) in filter.equalities()? {
        let sub = attribute.sub_attribute(&path.name)?;
        let value = match value {
            CompValue::String(text) => Value::String(text.clone()),
            CompValue::Bool(flag) => Value::Bool(*flag),
            CompValue::Number(number) => Value::Number(number.clone()),
            CompValue::Null => return None,
        };
        let value = value::normalize_one(sub, value, sub.name).ok()??;
        element.insert(sub.name.to_owned(), value);
    }
    Some(element)
}

/// RFC 7643 §2.4: one primary value at most; the one just written wins.
fn keep_one_primary(items: &mut [Value], written: &[usize]) {
    let winner = written
        .iter()
        .rev()
        .find(|&&i| items.get(i).and_then(|item| item.get("primary")) == Some(&Value::Bool(true)));
    if let Some(&winner) = winner {
        for (index, item) in items.iter_mut().enumerate() {
            if index != winner && item.get("primary") == Some(&Value::Bool(true)) {
                if let Value::Object(map) = item {
                    map.insert("primary".into(), Value::Bool(false));
                }
            }
        }
    }
}

/// Stores an attribute's new value, dropping empty elements and unassigned values (as a POST
/// does: [`value::normalize`]).
fn store(container: &mut Map<String, Value>, name: &str, value: Option<Value>) {
    let empty = |value: &Value| is_unassigned(value) || value::is_blank_element(value);
    let value = value.map(|value| match value {
        Value::Array(items) => {
            Value::Array(items.into_iter().filter(|item| !empty(item)).collect())
        }
        other => other,
    });
    match value {
        Some(value) if !empty(&value) => {
            container.insert(name.to_owned(), value);
        }
        _ => {
            container.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{GROUP_RESOURCE, USER_RESOURCE};
    use serde_json::json;

    fn patch(rt: &ResourceType, resource: Value, operations: Value) -> Result<Patched, ScimError> {
        let request = PatchRequest::from_json(
            &json!({"schemas": [PATCH_OP_SCHEMA], "Operations": operations}),
        )?;
        apply(rt, &resource, &request)
    }

    #[test]
    fn a_failing_operation_leaves_nothing_applied() {
        let user =
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "ada"});
        let error = patch(
            &USER_RESOURCE,
            user,
            json!([
                {"op": "Replace", "path": "title", "value": "Dr"},
                {"op": "Replace", "path": "active", "value": "maybe"}
            ]),
        )
        .unwrap_err();
        assert!(
            error.detail.starts_with("Operations[1]:"),
            "{}",
            error.detail
        );
    }

    #[test]
    fn removing_a_required_attribute_is_refused() {
        let user = json!({"userName": "ada"});
        let error = patch(
            &USER_RESOURCE,
            user,
            json!([{"op": "remove", "path": "userName"}]),
        )
        .unwrap_err();
        assert_eq!(error.scim_type, Some(crate::error::ScimType::InvalidValue));
    }

    #[test]
    fn read_only_paths_are_a_mutability_error() {
        let user = json!({"userName": "ada", "id": "1"});
        let error = patch(
            &USER_RESOURCE,
            user,
            json!([{"op": "replace", "path": "id", "value": "2"}]),
        )
        .unwrap_err();
        assert_eq!(error.scim_type, Some(crate::error::ScimType::Mutability));
    }

    #[test]
    fn adding_an_existing_member_changes_nothing() {
        let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "g", "members": [{"value": "abc"}]});
        let patched = patch(
            &GROUP_RESOURCE,
            group.clone(),
            json!([{"op": "Add", "path": "members", "value": [{"value": "ABC", "$ref": null}]}]),
        )
        .unwrap();
        assert!(patched.changes.is_empty());
        assert_eq!(patched.resource, group);
    }

    #[test]
    fn a_new_primary_value_demotes_the_old_one() {
        let user = json!({"userName": "ada", "emails": [{"value": "a@x", "type": "work", "primary": true}]});
        let patched = patch(&USER_RESOURCE, user, json!([{"op": "add", "path": "emails", "value": [{"value": "b@x", "type": "home", "primary": true}]}])).unwrap();
        assert_eq!(patched.resource["emails"][0]["primary"], false);
        assert_eq!(patched.resource["emails"][1]["primary"], true);
    }

    #[test]
    fn setting_primary_on_every_value_at_once_is_refused() {
        let user = json!({"userName": "ada", "emails": [{"value": "a@x", "primary": true}, {"value": "b@x"}]});
        let error = patch(
            &USER_RESOURCE,
            user.clone(),
            json!([{"op": "replace", "path": "emails.primary", "value": true}]),
        )
        .unwrap_err();
        assert_eq!(error.scim_type, Some(crate::error::ScimType::InvalidValue));
        assert!(error.detail.contains("at most one"), "{}", error.detail);
        let patched = patch(
            &USER_RESOURCE,
            user,
            json!([{"op": "replace", "path": "emails[value eq \"b@x\"].primary", "value": true}]),
        )
        .unwrap();
        assert_eq!(
            patched.resource["emails"],
            json!([{"value": "a@x", "primary": false}, {"value": "b@x", "primary": true}])
        );
    }

    #[test]
    fn values_a_patch_makes_the_same_are_kept_once_the_first_winning() {
        let user = json!({"userName": "ada", "emails": [{"value": "a@x"}, {"value": "b@x"}, {"value": "c@x", "type": "home"}]});
        let patched = patch(
            &USER_RESOURCE,
            user,
            json!([{"op": "replace", "path": "emails.value", "value": "same@x"}]),
        )
        .unwrap();
        assert_eq!(patched.resource["emails"], json!([{"value": "same@x"}]));
        let user = json!({"userName": "ada", "emails": [{"value": "a@x", "type": "work"}, {"value": "b@x", "type": "work"}]});
        let patched = patch(
            &USER_RESOURCE,
            user,
            json!([{"op": "replace", "path": "emails[type eq \"work\"]", "value": {"value": "c@x", "type": "work"}}]),
        )
        .unwrap();
        assert_eq!(
            patched.resource["emails"],
            json!([{"value": "c@x", "type": "work"}])
        );
    }

    #[test]
    fn an_element_left_with_only_an_empty_value_is_no_element() {
        let user = json!({"userName": "ada"});
        let patched = patch(
            &USER_RESOURCE,
            user.clone(),
            json!([
                {"op": "add", "path": "ims.value", "value": ""},
                {"op": "add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value", "value": ""}
            ]),
        )
        .unwrap();
        assert_eq!(
            patched.resource,
            json!({"userName": "ada", "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]})
        );
        assert!(patched.changes.is_empty());
    }

    #[test]
    fn removing_listed_members_removes_each_named_value_whatever_its_case() {
        let members: Vec<Value> = (0..3000)
            .map(|i| json!({"value": format!("m{i}")}))
            .collect();
        let group = json!({"displayName": "g", "members": members});
        let listed: Vec<Value> = (0..3000)
            .filter(|i| i % 3 != 0)
            .map(|i| json!({"value": format!("M{i}")}))
            .collect();
        let patched = patch(
            &GROUP_RESOURCE,
            group,
            json!([{"op": "Remove", "path": "members", "value": listed}]),
        )
        .unwrap();
        let kept = patched.resource["members"].as_array().unwrap();
        assert_eq!(kept.len(), 1000);
        assert_eq!(
            (&kept[0], &kept[999]),
            (&json!({"value": "m0"}), &json!({"value": "m2997"}))
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_the_right_keyword() {
        use crate::error::ScimType;
        for (body, expected) in [
            (
                json!({"Operations": [{"op": "add", "path": "title", "value": "x"}]}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"schemas": [PATCH_OP_SCHEMA], "Operations": []}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "move", "path": "title"}]}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "remove"}]}),
                ScimType::NoTarget,
            ),
            (
                json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "add", "path": "emails[type eq"}]}),
                ScimType::InvalidPath,
            ),
            (
                json!({"schemas": [PATCH_OP_SCHEMA], "Operations": [{"op": "add", "path": "title"}]}),
                ScimType::InvalidValue,
            ),
        ] {
            assert_eq!(
                PatchRequest::from_json(&body).unwrap_err().scim_type,
                Some(expected),
                "{body}"
            );
        }
    }
}
