//! The identity headers `/auth` answers with on `200` (`X-Auth-Request-User`, `-Email`,
//! `-Groups`, `Remote-User`, `-Email`, `-Groups`), encoded so that no value can be read as
//! more than one entry or break the header: in every value, `%`, `,`, `"`, control characters
//! (CR, LF, TAB, NUL, …), every byte outside ASCII and a space at either end are
//! percent-encoded as UTF-8 (`Engineering,Admins` → `Engineering%2CAdmins`, `Zoë` → `Zo%C3%AB`).
//! List headers join the encoded entries with `,`; an application splits on `,` and then
//! percent-decodes each entry. Values without those characters are sent as they are.

use crate::decision::Identity;

/// One value, encoded as the module docs say.
pub fn encode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (index, &byte) in bytes.iter().enumerate() {
        let at_edge = index == 0 || index + 1 == bytes.len();
        let escape = match byte {
            b'%' | b',' | b'"' | 0x00..=0x1f | 0x7f..=0xff => true,
            b' ' => at_edge,
            _ => false,
        };
        if escape {
            out.push_str(&format!("%{byte:02X}"));
        } else {
            out.push(char::from(byte));
        }
    }
    out
}

/// A list of values: each encoded, joined with `,`.
pub fn encode_list(values: &[String]) -> String {
    values
        .iter()
        .map(|value| encode(value))
        .collect::<Vec<_>>()
        .join(",")
}

/// The identity headers for an allowed request, names in lower case.
pub fn headers(identity: &Identity) -> [(&'static str, String); 6] {
    let user = encode(&identity.user_name);
    let email = encode(identity.email.as_deref().unwrap_or_default());
    let groups = encode_list(&identity.groups);
    [
        ("x-auth-request-user", user.clone()),
        ("x-auth-request-email", email.clone()),
        ("x-auth-request-groups", groups.clone()),
        ("remote-user", user),
        ("remote-email", email),
        ("remote-groups", groups),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(entry: &str) -> String {
        let bytes = entry.as_bytes();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            if bytes[at] == b'%' {
                out.push(u8::from_str_radix(&entry[at + 1..at + 3], 16).unwrap());
                at += 3;
            } else {
                out.push(bytes[at]);
                at += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ordinary_names_and_emails_are_sent_as_they_are() {
        for value in [
            "Engineering",
            "Finance Admins",
            "ada@example.com",
            "o'brien+tag@example.com",
        ] {
            assert_eq!(encode(value), value);
        }
    }

    #[test]
    fn no_group_name_can_forge_another_entry_or_break_the_header() {
        let groups: Vec<String> = [
            "Engineering,Admins",
            "Admins\r\nX-Auth-Request-User: root",
            "\"Admins\"",
            " Admins",
            "Admins ",
            "100%2CAdmins",
            "Zoë",
            "tab\there",
            "nul\0byte",
        ]
        .iter()
        .map(|g| g.to_string())
        .collect();
        let header = encode_list(&groups);
        assert!(
            header.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{header}"
        );
        assert!(axum::http::HeaderValue::from_str(&header).is_ok());
        let entries: Vec<&str> = header.split(',').collect();
        assert_eq!(entries.len(), groups.len(), "{header}");
        assert!(!entries.iter().any(|e| e.trim() == "Admins"), "{header}");
        let decoded: Vec<String> = entries.iter().map(|e| decode(e)).collect();
        assert_eq!(decoded, groups);
    }

    #[test]
    fn no_groups_is_an_empty_list() {
        assert_eq!(encode_list(&[]), "");
    }
}
