//! Every limit Rollcall puts on SCIM input, in one place: what a client may send before it is
//! refused with a SCIM error. The README's "Security" section lists them; change both together.

/// The longest filter Rollcall parses, in bytes (a `filter` parameter, a `.search` body's
/// `filter`, a PATCH `path`). Entra's lookups are a few hundred bytes at most; a longer filter
/// is `400 invalidFilter` (`invalidPath` for a PATCH path) before any parsing.
pub const MAX_FILTER_LENGTH: usize = 16 * 1024;

/// The most attribute expressions (`userName eq "x"`, `title pr`, a value filter `emails[…]`
/// and each expression inside it) one filter may hold. `and`/`or` chains are flat, so this bounds the work of
/// matching and of the SQL a filter compiles to, not the parser's recursion.
pub const MAX_FILTER_TERMS: usize = 200;

/// How deeply parentheses, `not (…)` and value filters (`emails[…]`) may nest in a filter.
/// Parsing, matching, printing and compiling a filter recurse only at these, so this bounds
/// their stack use whatever else the filter holds.
pub const MAX_FILTER_DEPTH: usize = 16;

// --- Values in User and Group documents ---

use serde_json::{Map, Value};

use crate::error::ScimError;
use crate::patch::PatchRequest;
use crate::schema::ResourceType;

//
// Every string value is checked wherever it stands (core, extension, nested in a complex or
// multi-valued attribute, reached through POST, PUT or PATCH): its length against the limit of
// its attribute, and its characters against the control-character rule. Lengths are counted in
// characters (Unicode scalar values), as Entra documents its own limits. A value longer than
// Entra can send is refused rather than truncated: a shortened userName would be another name.

/// The longest `userName`. Entra's `userPrincipalName` is at most 113 characters and `mail` at
/// most 256 (either is mapped to userName). It is a btree key (`user_name_lower`): see
/// [`MAX_INDEX_KEY_BYTES`].
pub const MAX_USER_NAME_CHARS: usize = 256;

/// The longest `externalId` (users and groups). Entra sends an objectId (36), a
/// `mailNickname` (64) or an expression; a btree key (`external_id_lower`).
pub const MAX_EXTERNAL_ID_CHARS: usize = 256;

/// The longest `displayName` (users and groups), `nickName` and member or manager `display`.
/// Entra's `displayName` is at most 256; a group's is a btree key (`display_name_lower`).
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;

/// The longest part of `name` (`givenName`, `familyName`, `middleName`, `honorificPrefix`,
/// `honorificSuffix`). Entra's `givenName` and `surname` are at most 64.
pub const MAX_NAME_PART_CHARS: usize = 256;

/// The longest `name.formatted` (Entra joins the parts into it).
pub const MAX_FORMATTED_NAME_CHARS: usize = 1024;

/// The longest `emails[].value` and `ims[].value`: RFC 5321 allows 254 characters in an
/// address; Entra's `mail` is at most 256.
pub const MAX_EMAIL_CHARS: usize = 256;

/// The longest `phoneNumbers[].value`. Entra's `telephoneNumber` and `mobile` are at most 64.
pub const MAX_PHONE_CHARS: usize = 64;

/// The longest `addresses[].streetAddress`. Entra's `streetAddress` is at most 1024.
pub const MAX_STREET_ADDRESS_CHARS: usize = 1024;

/// The longest `addresses[].formatted` (Entra joins the parts into it; it may span lines).
pub const MAX_FORMATTED_ADDRESS_CHARS: usize = 2048;

/// The longest `addresses[].locality`, `region`, `postalCode` and `country`. Entra's `city`,
/// `state` and `country` are at most 128, `postalCode` 40.
pub const MAX_ADDRESS_PART_CHARS: usize = 256;

/// The longest `title`, `userType` and EnterpriseUser text (`employeeNumber`, `costCenter`,
/// `organization`, `division`, `department`). Entra's `jobTitle` is at most 128,
/// `department` and `companyName` 64, `employeeId` 16.
pub const MAX_WORK_TEXT_CHARS: usize = 256;

/// The longest `preferredLanguage`, `locale` and `timezone` (a BCP 47 tag or an IANA zone
/// name; Entra's `preferredLanguage` is an ISO 639-1 code).
pub const MAX_LOCALE_CHARS: usize = 64;

/// The longest identifier of another resource: `manager.value`, `members[].value`. Rollcall's
/// ids are 36-character UUIDs; other servers' ids (Entra's objectIds, 36) fit well. Any text is
/// accepted as an id, as before: SCIM does not say ids are UUIDs. A member value is a btree key
/// (`group_member.member_key`).
pub const MAX_ID_CHARS: usize = 256;

/// The longest URI: `profileUrl`, `photos[].value`, every `$ref`.
pub const MAX_URI_CHARS: usize = 2048;

/// The longest `type` of a multi-valued attribute's value (`work`, `mobile`, `User`, …).
pub const MAX_TYPE_CHARS: usize = 64;

/// The longest `x509Certificates[].value` (a base64 DER certificate; a 4096-bit RSA
/// certificate is about 2,000 characters).
pub const MAX_CERTIFICATE_CHARS: usize = 16 * 1024;

/// The longest value of every other string attribute (`roles[].value` among them: Entra may
/// send a JSON-encoded role there).
pub const MAX_STRING_CHARS: usize = 1024;

/// The most values of one multi-valued attribute of a user (`emails`, `phoneNumbers`, `ims`,
/// `photos`, `addresses`, `x509Certificates`). Entra sends one per `type` it maps (work, home,
/// mobile, fax, other).
pub const MAX_VALUES: usize = 20;

/// The most `roles` and the most `entitlements` of a user (Entra sends one role per app-role
/// assignment).
pub const MAX_ROLE_VALUES: usize = 100;

/// The most members one request may list: a group's `members` in a POST or PUT body, or the
/// member values of a PATCH's operations, added and removed together. Entra sends members in
/// PATCHes of a few at a time; a larger group is built by several requests. (A request that
/// names no member, such as `Remove` on `members` without a value, is not counted.)
pub const MAX_MEMBERS_PER_REQUEST: usize = 1_000;

/// The largest encoded size of the members one request lists, in bytes (JSON, as sent).
pub const MAX_MEMBERS_BYTES_PER_REQUEST: usize = 256 * 1024;

/// The largest encoded size of a user or group document, `members` and `meta` apart, in
/// bytes. With it, the largest event a document can cause (an attribute change recording the
/// whole document before and after) stays below NATS's default `max_payload` (1 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// The only attribute whose values may hold TAB, LF and CR: RFC 7643 §4.1.2 says a
/// `formatted` address "MAY contain newlines". Every other control character (Unicode general
/// category Cc: U+0000–U+001F, U+007F–U+009F) is refused in every value: PostgreSQL cannot
/// store NUL, and line breaks would let a value forge lines and headers downstream.
pub const MULTI_LINE_ATTRIBUTES: &[&str] = &["addresses.formatted"];

/// The largest btree index entry PostgreSQL takes with 8 KiB pages ("index row size … exceeds
/// btree version 4 maximum 2704").
pub const BTREE_MAX_INDEX_ROW_BYTES: usize = 2704;

/// The largest lookup key a value within these limits can make, in bytes: the longest indexed
/// value (userName, externalId, displayName, a member id), case-folded, each character taking
/// at most [`crate::case::MAX_FOLDED_BYTES_PER_CHAR`] bytes. With a tenant name (at most 63
/// bytes) it stays below [`BTREE_MAX_INDEX_ROW_BYTES`].
pub const MAX_INDEX_KEY_BYTES: usize = MAX_USER_NAME_CHARS * crate::case::MAX_FOLDED_BYTES_PER_CHAR;

// --- Events ---

/// Bytes kept free for an event's NATS headers (`Nats-Msg-Id`, the expected sequence,
/// `Rollcall-Event-Type`, `traceparent`: about 300 bytes) within the server's `max_payload`,
/// which counts headers and payload together.
pub const EVENT_HEADER_ROOM_BYTES: usize = 4 * 1024;

/// NATS's default `max_payload` (1 MiB); the server's own value is read when Rollcall starts.
pub const NATS_DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The largest encoded event (envelope and payload) Rollcall appends to a stream whose
/// server takes messages of at most `max_payload` bytes. A write whose event would be larger
/// is refused with `413` before anything is appended.
pub fn max_event_bytes(max_payload: usize) -> usize {
    max_payload.saturating_sub(EVENT_HEADER_ROOM_BYTES)
}

/// The longest value allowed at a canonical attribute path (`userName`, `emails.value`,
/// `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`).
pub fn max_chars(path: &str) -> usize {
    let (urn, attribute) = split_urn(path);
    let enterprise = urn.is_some_and(|urn| urn.eq_ignore_ascii_case(ENTERPRISE_USER_SCHEMA));
    let (name, sub) = match attribute.split_once('.') {
        Some((name, sub)) => (name, Some(sub)),
        None => (attribute, None),
    };
    match (enterprise, name, sub) {
        (false, "userName", None) => MAX_USER_NAME_CHARS,
        (false, "externalId", None) => MAX_EXTERNAL_ID_CHARS,
        (false, "displayName" | "nickName", None) => MAX_DISPLAY_NAME_CHARS,
        (false, "name", Some("formatted")) => MAX_FORMATTED_NAME_CHARS,
        (false, "name", Some(_)) => MAX_NAME_PART_CHARS,
        (false, "title" | "userType", None) => MAX_WORK_TEXT_CHARS,
        (false, "preferredLanguage" | "locale" | "timezone", None) => MAX_LOCALE_CHARS,
        (false, "profileUrl", None) | (false, "photos", Some("value")) => MAX_URI_CHARS,
        (false, "emails" | "ims", Some("value")) => MAX_EMAIL_CHARS,
        (false, "phoneNumbers", Some("value")) => MAX_PHONE_CHARS,
        (false, "addresses", Some("formatted")) => MAX_FORMATTED_ADDRESS_CHARS,
        (false, "addresses", Some("streetAddress")) => MAX_STREET_ADDRESS_CHARS,
        (false, "addresses", Some("locality" | "region" | "postalCode" | "country")) => {
            MAX_ADDRESS_PART_CHARS
        }
        (false, "x509Certificates", Some("value")) => MAX_CERTIFICATE_CHARS,
        (false, "members", Some("value")) | (true, "manager", Some("value")) => MAX_ID_CHARS,
        (true, "manager", Some("displayName")) => MAX_DISPLAY_NAME_CHARS,
        (true, _, None) => MAX_WORK_TEXT_CHARS,
        (_, _, Some("$ref")) => MAX_URI_CHARS,
        (_, _, Some("display")) => MAX_DISPLAY_NAME_CHARS,
        (_, _, Some("type")) => MAX_TYPE_CHARS,
        _ => MAX_STRING_CHARS,
    }
}

/// The most values a multi-valued attribute of a document may hold; `None` for `members`,
/// which are bounded per request instead ([`MAX_MEMBERS_PER_REQUEST`]).
pub fn max_values(path: &str) -> Option<usize> {
    match split_urn(path).1 {
        "members" => None,
        "roles" | "entitlements" => Some(MAX_ROLE_VALUES),
        _ => Some(MAX_VALUES),
    }
}

const ENTERPRISE_USER_SCHEMA: &str = crate::schema::ENTERPRISE_USER_SCHEMA;

/// `urn:…:User:manager.value` → (`urn:…:User`, `manager.value`); a core path has no URN.
fn split_urn(path: &str) -> (Option<&str>, &str) {
    if !path.starts_with("urn:") {
        return (None, path);
    }
    match path.rfind(':') {
        Some(at) => (Some(&path[..at]), &path[at + 1..]),
        None => (None, path),
    }
}

/// Checks one string value at a canonical attribute path: no control characters (TAB, LF and
/// CR only in [`MULTI_LINE_ATTRIBUTES`]) and no more characters than [`max_chars`] allows.
/// `400 invalidValue` naming the attribute and the limit; the value itself is never echoed.
pub fn check_text(path: &str, text: &str) -> Result<(), ScimError> {
    let multi_line = MULTI_LINE_ATTRIBUTES
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(path));
    let limit = max_chars(path);
    let mut length = 0;
    for (position, character) in text.chars().enumerate() {
        let line_break = matches!(character, '\t' | '\n' | '\r');
        if character.is_control() && !(multi_line && line_break) {
            return Err(ScimError::invalid_value(format!(
                "{path} holds the control character U+{:04X} at character {}; control characters are not allowed (TAB, LF and CR only in {})",
                u32::from(character),
                position + 1,
                MULTI_LINE_ATTRIBUTES.join(", ")
            )));
        }
        length += 1;
    }
    if length > limit {
        return Err(ScimError::invalid_value(format!(
            "{path} is {length} characters long; at most {limit} are allowed"
        )));
    }
    Ok(())
}

/// Checks an attribute's whole value at its canonical path: every string in it
/// ([`check_text`]), the number of values of a multi-valued attribute ([`max_values`]), and
/// the names of sub-attributes.
pub fn check_value(path: &str, value: &Value) -> Result<(), ScimError> {
    match value {
        Value::String(text) => check_text(path, text),
        Value::Array(items) => {
            if let Some(limit) = max_values(path) {
                if items.len() > limit {
                    return Err(ScimError::invalid_value(format!(
                        "{path} has {} values; at most {limit} are allowed",
                        items.len()
                    )));
                }
            }
            items.iter().try_for_each(|item| check_element(path, item))
        }
        Value::Object(map) => check_complex(path, map),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// One value of a multi-valued attribute: a simple value or a complex one (no lists within).
fn check_element(path: &str, value: &Value) -> Result<(), ScimError> {
    match value {
        Value::Object(map) => check_complex(path, map),
        Value::Array(_) => Err(ScimError::invalid_syntax(format!(
            "{path} holds a list inside a list"
        ))),
        simple => check_value(path, simple),
    }
}

/// A complex value: simple sub-attributes only (RFC 7643 §2.3.8).
fn check_complex(path: &str, map: &Map<String, Value>) -> Result<(), ScimError> {
    for (name, sub) in map {
        if matches!(sub, Value::Object(_) | Value::Array(_)) {
            return Err(ScimError::invalid_syntax(format!(
                "{path}.{name} must be a simple value"
            )));
        }
        check_value(&format!("{path}.{name}"), sub)?;
    }
    Ok(())
}

/// Checks a user or group document against every limit above, before anything is recorded:
/// strings, counts, and the document's size ([`MAX_DOCUMENT_BYTES`], `members` apart).
///
/// With `current` (a PUT or PATCH), attributes equal to their current value are not checked
/// again, and a document larger than the limit passes if the write does not make it larger:
/// a value stored before a limit existed blocks only writes that change it.
pub fn check_resource(
    rt: &ResourceType,
    resource: &Value,
    current: Option<&Value>,
) -> Result<(), ScimError> {
    let Value::Object(map) = resource else {
        return Err(ScimError::invalid_syntax(format!(
            "a {} must be a JSON object",
            rt.name
        )));
    };
    for (key, value) in map {
        if is_service_attribute(key) {
            continue;
        }
        let before = current.and_then(|current| current.get(key));
        match rt.extension(key) {
            // `"urn:…:enterprise:2.0:User": {"department": …}`
            Some(extension) => {
                let Value::Object(attributes) = value else {
                    return Err(ScimError::invalid_syntax(format!(
                        "{} must be an object",
                        extension.id
                    )));
                };
                for (name, value) in attributes {
                    if before.and_then(|before| before.get(name)) == Some(value) {
                        continue;
                    }
                    check_value(&format!("{}:{name}", extension.id), value)?;
                }
            }
            None => {
                if before == Some(value) {
                    continue;
                }
                check_value(key, value)?;
            }
        }
    }
    let size = document_bytes(resource);
    if size > MAX_DOCUMENT_BYTES && current.is_none_or(|current| size > document_bytes(current)) {
        return Err(ScimError::invalid_value(format!(
            "the {} is {size} bytes as JSON (members apart); at most {MAX_DOCUMENT_BYTES} are allowed",
            rt.name
        )));
    }
    Ok(())
}

/// Keys a document carries that the client does not write (`schemas`, `id`, `meta`).
fn is_service_attribute(key: &str) -> bool {
    matches!(key, "schemas" | "id" | "meta")
}

/// The encoded size of a document without `members`, `meta` and `id`.
pub fn document_bytes(resource: &Value) -> usize {
    let Value::Object(map) = resource else {
        return encoded_len(resource);
    };
    map.iter()
        .filter(|(key, _)| !matches!(key.as_str(), "members" | "meta" | "id"))
        .map(|(key, value)| key.len() + 4 + encoded_len(value))
        .sum()
}

/// The length of `value` encoded as compact JSON, counted without building the text.
pub fn encoded_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Value into a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Checks the members one request lists: at most [`MAX_MEMBERS_PER_REQUEST`] of them, of at
/// most [`MAX_MEMBERS_BYTES_PER_REQUEST`] bytes in all. `values` are the member values as sent
/// (objects with `value`, or bare ids).
pub fn check_listed_members<'v>(
    values: impl IntoIterator<Item = &'v Value>,
) -> Result<(), ScimError> {
    let (mut count, mut bytes) = (0, 0);
    for value in values {
        count += 1;
        bytes += encoded_len(value);
    }
    if count > MAX_MEMBERS_PER_REQUEST {
        return Err(ScimError::invalid_value(format!(
            "the request lists {count} members; at most {MAX_MEMBERS_PER_REQUEST} are allowed per request (send several requests)"
        )));
    }
    if bytes > MAX_MEMBERS_BYTES_PER_REQUEST {
        return Err(ScimError::invalid_value(format!(
            "the members the request lists are {bytes} bytes as JSON; at most {MAX_MEMBERS_BYTES_PER_REQUEST} are allowed per request"
        )));
    }
    Ok(())
}

/// The members a POST or PUT body of a group lists (its `members`, in any case).
pub fn members_in_body(body: &Value) -> Vec<&Value> {
    let Value::Object(map) = body else {
        return Vec::new();
    };
    map.iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case("members"))
        .flat_map(|(_, value)| listed(value))
        .collect()
}

/// The members a group PATCH lists: the values of operations on `members` (or on one member,
/// `members[value eq "…"]`), and the `members` of path-less values.
pub fn members_in_patch(request: &PatchRequest) -> Vec<&Value> {
    let mut members = Vec::new();
    for operation in &request.operations {
        match (&operation.path, &operation.value) {
            (Some(path), value) if path.attribute.name.eq_ignore_ascii_case("members") => {
                match value {
                    Some(value) => members.extend(listed(value)),
                    // `members[value eq "…"]` names one member.
                    None if path.filter.is_some() => members.push(&NAMED_BY_FILTER),
                    None => {}
                }
            }
            (None, Some(value)) => members.extend(members_in_body(value)),
            _ => {}
        }
    }
    members
}

/// Stands for the one member a `members[value eq "…"]` path names.
static NAMED_BY_FILTER: Value = Value::Null;

fn listed(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

#[cfg(test)]
mod document_tests {
    use super::*;
    use crate::resource::{create, replace};
    use crate::schema::{GROUP_RESOURCE, USER_RESOURCE};
    use crate::ScimType;
    use serde_json::json;

    const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    fn refused(error: ScimError, attribute: &str) {
        assert_eq!(error.status, 400, "{error:?}");
        assert_eq!(error.scim_type, Some(ScimType::InvalidValue), "{error:?}");
        assert!(error.detail.contains(attribute), "{error:?}");
    }

    #[test]
    fn nul_and_other_control_characters_are_refused_wherever_they_stand() {
        for (body, attribute) in [
            (json!({"userName": "ada\u{0}@x.test"}), "userName"),
            (
                json!({"userName": "ada", "emails": [{"value": "a\u{1b}@x.test"}]}),
                "emails.value",
            ),
            (
                json!({"userName": "ada", ENTERPRISE: {"department": "R\u{7f}D"}}),
                "enterprise:2.0:User:department",
            ),
            (
                json!({"userName": "ada", ENTERPRISE: {"manager": "27\u{0}1"}}),
                "manager.value",
            ),
            (
                json!({"userName": "ada", "name": {"givenName": "A\u{85}da"}}),
                "name.givenName",
            ),
            (json!({"userName": "ada", "title": "Dr\tX"}), "title"),
            (json!({"userName": "ada\r\nX-Injected: 1"}), "userName"),
        ] {
            refused(create(&USER_RESOURCE, body).unwrap_err(), attribute);
        }
        let group = json!({"displayName": "g", "members": [{"value": "a\u{0}"}]});
        refused(create(&GROUP_RESOURCE, group).unwrap_err(), "members.value");
    }

    #[test]
    fn line_breaks_are_allowed_only_in_formatted_addresses() {
        let address =
            json!({"userName": "ada", "addresses": [{"formatted": "1 Main St\r\n\tSpringfield"}]});
        assert!(create(&USER_RESOURCE, address).is_ok());
        let street =
            json!({"userName": "ada", "addresses": [{"streetAddress": "1 Main St\nSpringfield"}]});
        refused(
            create(&USER_RESOURCE, street).unwrap_err(),
            "addresses.streetAddress",
        );
        let nul = json!({"userName": "ada", "addresses": [{"formatted": "1 Main St\u{0}"}]});
        refused(
            create(&USER_RESOURCE, nul).unwrap_err(),
            "addresses.formatted",
        );
    }

    #[test]
    fn each_attribute_is_held_to_its_own_length() {
        let at_most = |length: usize| "é".repeat(length);
        assert!(create(&USER_RESOURCE, json!({"userName": at_most(256)})).is_ok());
        for (body, attribute) in [
            (json!({"userName": at_most(257)}), "userName"),
            (json!({"userName": "x".repeat(6_000)}), "userName"),
            (
                json!({"userName": "ada", "externalId": at_most(257)}),
                "externalId",
            ),
            (
                json!({"userName": "ada", "emails": [{"value": at_most(257)}]}),
                "emails.value",
            ),
            (
                json!({"userName": "ada", "phoneNumbers": [{"value": at_most(65)}]}),
                "phoneNumbers.value",
            ),
            (
                json!({"userName": "ada", ENTERPRISE: {"manager": {"value": at_most(257)}}}),
                "manager.value",
            ),
            (
                json!({"userName": "ada", "nickName": at_most(257)}),
                "nickName",
            ),
        ] {
            let error = create(&USER_RESOURCE, body).unwrap_err();
            refused(error.clone(), attribute);
            assert!(error.detail.contains("at most"), "{error:?}");
        }
        refused(
            create(&GROUP_RESOURCE, json!({"displayName": at_most(257)})).unwrap_err(),
            "displayName",
        );
        refused(
            create(
                &GROUP_RESOURCE,
                json!({"displayName": "g", "members": [{"value": at_most(257)}]}),
            )
            .unwrap_err(),
            "members.value",
        );
    }

    #[test]
    fn multi_valued_attributes_hold_a_bounded_number_of_values() {
        let emails = |count: usize| {
            (0..count)
                .map(|i| json!({"value": format!("a{i}@x.test")}))
                .collect::<Vec<_>>()
        };
        assert!(create(
            &USER_RESOURCE,
            json!({"userName": "a", "emails": emails(20)})
        )
        .is_ok());
        refused(
            create(
                &USER_RESOURCE,
                json!({"userName": "a", "emails": emails(21)}),
            )
            .unwrap_err(),
            "emails has 21 values",
        );
    }

    #[test]
    fn a_document_larger_than_the_limit_is_refused() {
        let roles: Vec<Value> = (0..101)
            .map(|i| json!({"value": format!("r{i}")}))
            .collect();
        let error = create(&USER_RESOURCE, json!({"userName": "a", "roles": roles})).unwrap_err();
        refused(error, "roles has 101 values");
        let big: Vec<Value> = (0..100)
            .map(|i| json!({"value": format!("{i:04}{}", "😀".repeat(1_000)), "display": "😀".repeat(256)}))
            .collect();
        let doc = json!({"userName": "a", "roles": big.clone(), "entitlements": big});
        let error = create(&USER_RESOURCE, doc).unwrap_err();
        refused(error.clone(), "User is");
        assert!(error.detail.contains(&MAX_DOCUMENT_BYTES.to_string()));
    }

    #[test]
    fn a_stored_value_beyond_a_limit_blocks_only_writes_that_change_it() {
        let current = json!({"userName": "ada", "title": "t".repeat(300), "schemas": [crate::schema::USER_SCHEMA]});
        let kept = replace(
            &USER_RESOURCE,
            &current,
            json!({"userName": "ada", "title": "t".repeat(300), "displayName": "Ada"}),
        );
        assert!(kept.is_ok(), "{kept:?}");
        let changed = replace(
            &USER_RESOURCE,
            &current,
            json!({"userName": "ada", "title": "u".repeat(300)}),
        );
        refused(changed.unwrap_err(), "title");
    }

    #[test]
    fn members_listed_by_one_request_are_bounded_in_number_and_size() {
        let members = |count: usize| {
            (0..count)
                .map(|i| json!({"value": format!("{i:036}")}))
                .collect::<Vec<_>>()
        };
        let body = json!({"displayName": "g", "Members": members(1_001)});
        refused(
            check_listed_members(members_in_body(&body)).unwrap_err(),
            "1001 members",
        );
        assert!(check_listed_members(members_in_body(&json!({"members": members(1_000)}))).is_ok());
        let patch = PatchRequest::from_json(&json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [
                {"op": "Add", "path": "members", "value": members(600)},
                {"op": "Remove", "path": "members", "value": members(400)},
                {"op": "remove", "path": "members[value eq \"x\"]"},
                {"op": "Replace", "path": "displayName", "value": "h"}
            ]
        }))
        .unwrap();
        assert_eq!(members_in_patch(&patch).len(), 1_001);
        assert!(check_listed_members(members_in_patch(&patch)).is_err());
        let wide: Vec<Value> = (0..300)
            .map(|i| json!({"value": format!("{i}"), "display": "😀".repeat(256)}))
            .collect();
        refused(
            check_listed_members(members_in_body(&json!({"members": wide}))).unwrap_err(),
            "bytes",
        );
    }

    #[test]
    fn every_lookup_key_fits_a_postgresql_btree_entry() {
        const TENANT_BYTES: usize = 63;
        // Tuple header, two varlena headers and alignment.
        const OVERHEAD: usize = 32;
        for path in ["userName", "externalId", "displayName", "members.value"] {
            let key = max_chars(path) * crate::case::MAX_FOLDED_BYTES_PER_CHAR;
            assert!(key <= MAX_INDEX_KEY_BYTES, "{path}");
            assert!(
                key + TENANT_BYTES + OVERHEAD < BTREE_MAX_INDEX_ROW_BYTES,
                "{path}"
            );
        }
    }

    #[test]
    fn events_leave_room_for_their_headers_within_max_payload() {
        assert_eq!(
            max_event_bytes(NATS_DEFAULT_MAX_PAYLOAD),
            1024 * 1024 - EVENT_HEADER_ROOM_BYTES
        );
        assert_eq!(max_event_bytes(100), 0);
    }

    #[test]
    fn limits_are_looked_up_by_canonical_path() {
        assert_eq!(max_chars("userName"), MAX_USER_NAME_CHARS);
        assert_eq!(max_chars("name.givenName"), MAX_NAME_PART_CHARS);
        assert_eq!(
            max_chars(&format!("{ENTERPRISE}:manager.value")),
            MAX_ID_CHARS
        );
        assert_eq!(
            max_chars(&format!("{ENTERPRISE}:department")),
            MAX_WORK_TEXT_CHARS
        );
        assert_eq!(max_chars("emails.type"), MAX_TYPE_CHARS);
        assert_eq!(max_chars("roles.value"), MAX_STRING_CHARS);
        assert_eq!(max_values("members"), None);
        assert_eq!(max_values("roles"), Some(MAX_ROLE_VALUES));
        assert_eq!(max_values("emails"), Some(MAX_VALUES));
    }
}
