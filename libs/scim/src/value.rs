//! Attribute values checked and coerced against their definitions, and compared the way the
//! schema says (`caseExact`, types). Entra's quirks live here: string booleans (`"False"`), a
//! bare id for a complex reference (`"manager": "271"`), `"$ref": null`, JSON `null` for absent.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

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

/// Whether a complex value holds nothing but an empty `value`. "Replace with empty" removes a
/// manager (ENTRA.md §4.4), so such a value is unassigned, in a POST as after a PATCH.
pub fn is_blank_element(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|map| map.len() == 1 && map.get("value").is_some_and(|v| v == ""))
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
    let mut seen = ElementSet::new(attribute);
    for item in items {
        if let Some(item) = normalize_one(attribute, item, path)? {
            // The first of equal elements wins, in linear time (groups hold tens of thousands
            // of members).
            if seen.insert_new(&item) {
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
    let out = Value::Object(out);
    if is_blank_element(&out) {
        return Ok(None);
    }
    Ok((!is_unassigned(&out)).then_some(out))
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
        crate::case::equal(left, right)
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

/// What a value is compared as: two values are equal under a rule exactly when their keys are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Null,
    Bool(bool),
    /// A number as JSON equality sees it: `1` and `1.0` differ.
    Integer(i128),
    Float(u64),
    /// A number as [`simple_equal`] sees it: by its `f64` (`1` and `1.0` are equal).
    Numeric(u64),
    /// A string, exactly or case-folded as its attribute says.
    Text(String),
    /// A date-time, as the instant it names (nanoseconds since the epoch).
    Instant(i128),
    Array(Vec<Key>),
    /// Members sorted by name (JSON object equality ignores their order).
    Object(Vec<(String, Key)>),
}

fn float_bits(number: f64) -> u64 {
    // 0.0 == -0.0: one key for both.
    if number == 0.0 {
        0
    } else {
        number.to_bits()
    }
}

/// The key of `==` on JSON values.
fn raw_key(value: &Value) -> Key {
    match value {
        Value::Null => Key::Null,
        Value::Bool(flag) => Key::Bool(*flag),
        Value::Number(number) => match (number.as_u64(), number.as_i64(), number.as_f64()) {
            (Some(n), ..) => Key::Integer(i128::from(n)),
            (None, Some(n), _) => Key::Integer(i128::from(n)),
            (None, None, Some(n)) => Key::Float(float_bits(n)),
            (None, None, None) => Key::Text(number.to_string()),
        },
        Value::String(text) => Key::Text(text.clone()),
        Value::Array(items) => Key::Array(items.iter().map(raw_key).collect()),
        Value::Object(map) => Key::Object(sorted(map.iter().map(|(k, v)| (k.clone(), raw_key(v))))),
    }
}

fn sorted(members: impl Iterator<Item = (String, Key)>) -> Vec<(String, Key)> {
    let mut members: Vec<_> = members.collect();
    members.sort_by(|a, b| a.0.cmp(&b.0));
    members
}

/// The key of [`simple_equal`] for `attribute`.
fn simple_key(attribute: &Attribute, value: &Value) -> Key {
    match value {
        Value::String(text) => match attribute.kind {
            AttributeType::DateTime => match parse_date_time(text) {
                Some(instant) => Key::Instant(instant.unix_timestamp_nanos()),
                None => Key::Text(text.clone()),
            },
            _ if attribute.case_exact => Key::Text(text.clone()),
            _ => Key::Text(crate::case::fold(text).into_owned()),
        },
        Value::Number(number) => match number.as_f64() {
            Some(n) => Key::Numeric(float_bits(n)),
            None => raw_key(value),
        },
        other => raw_key(other),
    }
}

/// What [`simple_equal`] compares a simple value of an attribute as: `simple_equal(a, x, y)`
/// holds exactly when `equality_key(a, x) == equality_key(a, y)`. For sets and maps of values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EqualityKey(Key);

/// The [`EqualityKey`] of a simple value of `attribute`.
pub fn equality_key(attribute: &Attribute, value: &Value) -> EqualityKey {
    EqualityKey(simple_key(attribute, value))
}

/// How [`same_element`] sees an element.
enum Element {
    /// An element with a `value` (and maybe a `type`): the same as another with an equal value
    /// unless both have types and they differ.
    Valued { value: Key, kind: Option<Key> },
    /// Any other element: the same as another only if equal in every sub-attribute.
    Whole(Key),
}

fn element(attribute: &Attribute, item: &Value) -> Element {
    if attribute.kind != AttributeType::Complex {
        return Element::Whole(simple_key(attribute, item));
    }
    let Value::Object(map) = item else {
        return Element::Whole(raw_key(item));
    };
    if let (Some(value_def), Some(value)) = (attribute.sub_attribute("value"), map.get("value")) {
        let kind = attribute
            .sub_attribute("type")
            .and_then(|type_def| Some(simple_key(type_def, map.get("type")?)));
        return Element::Valued {
            value: simple_key(value_def, value),
            kind,
        };
    }
    Element::Whole(Key::Object(sorted(map.iter().map(|(key, value)| {
        let compared = match attribute.sub_attribute(key) {
            Some(sub) => simple_key(sub, value),
            None => raw_key(value),
        };
        (key.clone(), compared)
    }))))
}

#[derive(Debug, Default)]
struct Types {
    /// An element without a type holds this value.
    untyped: bool,
    /// The types of the elements that hold this value.
    types: HashSet<Key>,
}

/// A set of elements of a multi-valued attribute under [`same_element`], answering in constant
/// time what comparing with every element would answer: de-duplicating, adding and removing
/// members is linear in their number, not quadratic.
#[derive(Debug)]
pub struct ElementSet<'a> {
    attribute: &'a Attribute,
    valued: HashMap<Key, Types>,
    whole: HashSet<Key>,
}

impl<'a> ElementSet<'a> {
    /// An empty set of elements of `attribute`.
    pub fn new(attribute: &'a Attribute) -> Self {
        Self {
            attribute,
            valued: HashMap::new(),
            whole: HashSet::new(),
        }
    }

    /// The set of `items`.
    pub fn of<'v>(attribute: &'a Attribute, items: impl IntoIterator<Item = &'v Value>) -> Self {
        let mut set = Self::new(attribute);
        for item in items {
            set.insert(item);
        }
        set
    }

    /// Whether some element of the set is [`same_element`] as `item`.
    pub fn contains(&self, item: &Value) -> bool {
        self.holds(&element(self.attribute, item))
    }

    fn holds(&self, element: &Element) -> bool {
        match element {
            Element::Valued {
                value,
                kind: Some(kind),
            } => self
                .valued
                .get(value)
                .is_some_and(|held| held.untyped || held.types.contains(kind)),
            Element::Valued { value, kind: None } => self.valued.contains_key(value),
            Element::Whole(key) => self.whole.contains(key),
        }
    }

    /// Adds `item` unless the set holds the same element already; returns whether it added it.
    /// (De-duplicating a list: each element is compared with those kept before it.)
    pub fn insert_new(&mut self, item: &Value) -> bool {
        let element = element(self.attribute, item);
        if self.holds(&element) {
            return false;
        }
        self.record(element);
        true
    }

    /// Adds `item`, also if the set holds the same element already: `[{"value": "a", "type":
    /// "work"}, {"value": "a"}]` then holds an element without a type, the same as any with
    /// value `a`, as comparing with each of the two would say.
    pub fn insert(&mut self, item: &Value) {
        let element = element(self.attribute, item);
        self.record(element);
    }

    fn record(&mut self, element: Element) {
        match element {
            Element::Valued { value, kind } => {
                let held = self.valued.entry(value).or_default();
                match kind {
                    Some(kind) => {
                        held.types.insert(kind);
                    }
                    None => held.untyped = true,
                }
            }
            Element::Whole(key) => {
                self.whole.insert(key);
            }
        }
    }
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
            _ => crate::case::cmp(l, r),
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

    /// De-duplication by comparing each element with every one kept before it: the rule
    /// [`ElementSet`] must give in linear time.
    fn pairwise(attribute: &Attribute, existing: &[Value], added: &[Value]) -> Vec<Value> {
        let mut out = existing.to_vec();
        for item in added {
            if !out.iter().any(|kept| same_element(attribute, kept, item)) {
                out.push(item.clone());
            }
        }
        out
    }

    fn linear(attribute: &Attribute, existing: &[Value], added: &[Value]) -> Vec<Value> {
        let mut set = ElementSet::of(attribute, existing);
        let mut out = existing.to_vec();
        out.extend(added.iter().filter(|item| set.insert_new(item)).cloned());
        out
    }

    #[test]
    fn de_duplication_keeps_order_and_the_first_of_equal_elements() {
        let emails = attribute("emails");
        let items = [
            json!({"value": "B@x.test", "type": "work"}),
            json!({"value": "a@x.test", "type": "work"}),
            json!({"value": "b@X.TEST", "type": "WORK", "primary": true}),
            json!({"value": "a@x.test", "type": "home"}),
            json!({"value": "a@x.test"}),
            json!({"display": "no value"}),
            json!({"display": "NO VALUE"}),
            json!({"display": "no value", "type": "work"}),
        ];
        let expected = vec![
            items[0].clone(),
            items[1].clone(),
            items[3].clone(),
            items[5].clone(),
            items[7].clone(),
        ];
        assert_eq!(
            normalize(emails, Value::Array(items.to_vec()), "emails").unwrap(),
            Some(Value::Array(expected.clone()))
        );
        assert_eq!(linear(emails, &[], &items), expected);
        assert_eq!(pairwise(emails, &[], &items), expected);
    }

    #[test]
    fn an_untyped_duplicate_already_held_makes_every_later_element_with_its_value_a_duplicate() {
        let emails = attribute("emails");
        let existing = [json!({"value": "a", "type": "work"}), json!({"value": "A"})];
        let added = [json!({"value": "a", "type": "home"}), json!({"value": "b"})];
        let expected = vec![existing[0].clone(), existing[1].clone(), added[1].clone()];
        assert_eq!(linear(emails, &existing, &added), expected);
        assert_eq!(pairwise(emails, &existing, &added), expected);
        // In a list being de-duplicated, a dropped duplicate is not compared with.
        let list = [existing[0].clone(), existing[1].clone(), added[0].clone()];
        let expected = vec![list[0].clone(), list[2].clone()];
        assert_eq!(linear(emails, &[], &list), expected);
        assert_eq!(pairwise(emails, &[], &list), expected);
    }

    #[test]
    fn members_are_the_same_without_case_and_ids_of_other_rules_keep_theirs() {
        let members = crate::schema::GROUP.attribute("members").unwrap();
        let items: Vec<Value> = ["abc", "ABC", "Straße", "STRASSE", "x"]
            .iter()
            .map(|id| json!({"value": id}))
            .collect();
        assert_eq!(
            normalize(members, Value::Array(items.clone()), "members").unwrap(),
            Some(json!([{"value": "abc"}, {"value": "Straße"}, {"value": "x"}]))
        );
        assert_eq!(linear(members, &[], &items), pairwise(members, &[], &items));
        // `id` is caseExact: its key keeps case.
        let id = crate::schema::common_attribute("id").unwrap();
        assert_ne!(equality_key(id, &json!("A")), equality_key(id, &json!("a")));
        assert_eq!(
            equality_key(attribute("userName"), &json!("A")),
            equality_key(attribute("userName"), &json!("a"))
        );
    }

    #[test]
    fn twenty_thousand_members_de_duplicate_to_the_distinct_ones() {
        let members = crate::schema::GROUP.attribute("members").unwrap();
        let items: Vec<Value> = (0..20_000)
            .map(|i| json!({"value": format!("ID-{}", i % 10_000)}))
            .chain((0..10_000).map(|i| json!({"value": format!("id-{i}")})))
            .collect();
        let normalized = normalize(members, Value::Array(items), "members")
            .unwrap()
            .unwrap();
        let kept = normalized.as_array().unwrap();
        assert_eq!(kept.len(), 10_000);
        assert_eq!(kept[0], json!({"value": "ID-0"}));
        assert_eq!(kept[9_999], json!({"value": "ID-9999"}));
    }

    fn element_strategy() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let text = prop_oneof![
            Just("a".to_owned()),
            Just("A".to_owned()),
            Just("ß".to_owned()),
            Just("SS".to_owned()),
            Just("work".to_owned()),
            Just("Work".to_owned()),
            Just("2025-01-01T00:00:00Z".to_owned()),
            Just("2025-01-01T01:00:00+01:00".to_owned()),
        ];
        let scalar = prop_oneof![
            text.clone().prop_map(Value::String),
            any::<bool>().prop_map(Value::Bool),
            (0i64..3).prop_map(Value::from),
            Just(json!(1.0)),
            Just(Value::Null),
        ];
        let keys = proptest::sample::subsequence(
            vec!["value", "type", "primary", "display", "other"],
            0..=5,
        );
        prop_oneof![
            4 => (keys, proptest::collection::vec(scalar.clone(), 5)).prop_map(|(keys, values)| {
                Value::Object(keys.into_iter().map(str::to_owned).zip(values).collect())
            }),
            1 => scalar,
        ]
    }

    proptest::proptest! {
        #[test]
        fn element_sets_de_duplicate_as_pairwise_comparison_does(
            existing in proptest::collection::vec(element_strategy(), 0..6),
            added in proptest::collection::vec(element_strategy(), 0..12),
            name in proptest::sample::select(vec!["emails", "addresses", "roles", "x509Certificates"]),
        ) {
            let attribute = attribute(name);
            proptest::prop_assert_eq!(linear(attribute, &[], &added), pairwise(attribute, &[], &added));
            proptest::prop_assert_eq!(linear(attribute, &existing, &added), pairwise(attribute, &existing, &added));
            let members = crate::schema::GROUP.attribute("members").unwrap();
            proptest::prop_assert_eq!(linear(members, &existing, &added), pairwise(members, &existing, &added));
        }
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
