//! The target of a request as policies see it: a host and a path in one normal form, so that
//! every spelling of one resource meets the same policy, and spellings that servers read in
//! different ways are refused instead of guessed.
//!
//! Paths (RFC 3986):
//! - percent-encoded unreserved characters (`%61` → `a`, `%2E` → `.`) are decoded; other
//!   percent-encodings stay encoded, with upper-case hex digits; characters that may not appear
//!   raw in a path (`"`, space, `{`, …) are percent-encoded;
//! - runs of `/` become one `/`, then dot segments are removed (§5.2.4), so
//!   `/public/../admin`, `/public/%2e%2e/admin` and `//admin` are all `/admin`;
//! - refused: an encoded slash (`%2F`) or backslash (raw or `%5C`), a control character (raw or
//!   encoded: NUL, TAB, CR, LF, …), `%` not followed by two hex digits, an encoded `%` followed by
//!   two hex digits (`%2541`: double encoding), `;` (raw or `%3B`: path parameters, which some
//!   servers strip), characters outside ASCII (the proxy sends them percent-encoded), a `..`
//!   that would remove an empty segment (`/a//../b`: `/a/b` to some servers, `/b` to others),
//!   and paths longer than [`MAX_PATH`] bytes, as sent or once normalized (encoding can triple
//!   a path's length, and a normal form must itself be a path this module accepts).
//! - The case of the path is kept here; policies compare path prefixes without ASCII case
//!   (servers on case-insensitive file systems serve `/ADMIN` as `/admin`).
//!
//! Hosts: lower-cased, the port and one trailing dot removed; only DNS names (letters, digits,
//! `-`, `_`, `.`) and IP literals (`[::1]`) are accepted.

/// The longest path accepted, in bytes (before normalization).
pub const MAX_PATH: usize = 8192;

/// The longest host name accepted (RFC 1035: 253 characters).
const MAX_HOST: usize = 253;

/// Why a host or path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The path does not start with `/`.
    #[error("the path does not start with /")]
    NotAbsolutePath,
    /// Longer than [`MAX_PATH`].
    #[error("the path is longer than {MAX_PATH} bytes")]
    PathTooLong,
    /// A control character, raw or percent-encoded.
    #[error("the path holds a control character (raw or percent-encoded)")]
    ControlCharacter,
    /// A backslash, raw or `%5C`.
    #[error("the path holds a backslash (raw or %5C)")]
    Backslash,
    /// `%2F`.
    #[error("the path holds an encoded slash (%2F)")]
    EncodedSlash,
    /// `%` not followed by two hex digits.
    #[error("the path holds a % that is not followed by two hex digits")]
    InvalidPercentEncoding,
    /// `%25` followed by two hex digits.
    #[error("the path is percent-encoded twice (%25 followed by two hex digits)")]
    DoubleEncoding,
    /// `;`, raw or `%3B`.
    #[error("the path holds a ; (path parameters, which some servers strip)")]
    Semicolon,
    /// A character outside ASCII.
    #[error("the path holds a character outside ASCII; percent-encode it")]
    NotAscii,
    /// A `..` segment that would remove an empty segment.
    #[error("a .. segment follows an empty segment (//..), which servers resolve differently")]
    AmbiguousDotSegment,
    /// The host is empty.
    #[error("the host is empty")]
    EmptyHost,
    /// The host is not a DNS name or an IP literal.
    #[error("the host is not a DNS name or an IP address")]
    InvalidHost,
    /// The port is not a number up to 65535.
    #[error("the port is not a number up to 65535")]
    InvalidPort,
}

/// A host and path in normal form: the only way to ask for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    host: String,
    path: String,
}

impl Target {
    /// Normalizes `host` (with or without a port) and `path` (without query or fragment).
    pub fn new(host: &str, path: &str) -> Result<Self, TargetError> {
        Ok(Self {
            host: normalize_host(host)?,
            path: normalize_path(path)?,
        })
    }

    /// The host: lower case, without port or trailing dot.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The normalized path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// The path of a request target: what comes before `?` or `#`.
pub fn without_query(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or_default()
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Characters a path may hold raw besides unreserved ones (RFC 3986 `pchar` and `/`, without
/// `;`, which is refused).
fn is_raw_path_character(byte: u8) -> bool {
    matches!(
        byte,
        b'/' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

fn push_encoded(out: &mut String, byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(DIGITS[usize::from(byte >> 4)]));
    out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
}

/// Decodes what may be decoded, encodes what may not appear raw, refuses what is ambiguous.
fn decode(raw: &str) -> Result<String, TargetError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        let (value, encoded) = if byte == b'%' {
            let high = bytes.get(at + 1).copied().and_then(hex);
            let low = bytes.get(at + 2).copied().and_then(hex);
            let (Some(high), Some(low)) = (high, low) else {
                return Err(TargetError::InvalidPercentEncoding);
            };
            at += 3;
            ((high << 4) | low, true)
        } else {
            at += 1;
            (byte, false)
        };
        match value {
            b'\\' => return Err(TargetError::Backslash),
            b';' => return Err(TargetError::Semicolon),
            b'/' if encoded => return Err(TargetError::EncodedSlash),
            0x00..=0x1f | 0x7f => return Err(TargetError::ControlCharacter),
            0x80..=0xff if !encoded => return Err(TargetError::NotAscii),
            value if is_unreserved(value) => out.push(char::from(value)),
            value if !encoded && is_raw_path_character(value) => out.push(char::from(value)),
            value => push_encoded(&mut out, value),
        }
    }
    // `%25` is kept encoded: followed by two hex digits it reads as another encoding to any
    // server that decodes twice.
    let output = out.as_bytes();
    let doubled = output
        .windows(5)
        .any(|w| w[..3] == *b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some());
    if doubled {
        return Err(TargetError::DoubleEncoding);
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 over the segments of an absolute path (the text after its first `/`).
fn remove_dot_segments(segments: &[&str]) -> String {
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len().saturating_sub(1);
    for (index, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
        // A path ending in a dot segment names a directory: keep its trailing slash.
        if index == last && matches!(*segment, "." | "..") {
            kept.push("");
        }
    }
    format!("/{}", kept.join("/"))
}

/// Runs of `/` as one.
fn collapse_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c != '/' || !out.ends_with('/') {
            out.push(c);
        }
    }
    out
}

/// The normal form of an absolute path (without query or fragment); see the module docs.
pub fn normalize_path(raw: &str) -> Result<String, TargetError> {
    if raw.len() > MAX_PATH {
        return Err(TargetError::PathTooLong);
    }
    if !raw.starts_with('/') {
        return Err(TargetError::NotAbsolutePath);
    }
    let decoded = decode(raw)?;
    // Servers that keep empty segments and servers that merge slashes must agree on what a
    // `..` removes; where they do not, the path is refused.
    let collapsed = collapse_slashes(&decoded);
    let merged: Vec<&str> = collapsed[1..].split('/').collect();
    let normal = remove_dot_segments(&merged);
    let strict: Vec<&str> = decoded[1..].split('/').collect();
    if collapse_slashes(&remove_dot_segments(&strict)) != normal {
        return Err(TargetError::AmbiguousDotSegment);
    }
    if normal.len() > MAX_PATH {
        return Err(TargetError::PathTooLong);
    }
    Ok(normal)
}

/// The normal form of a host (with or without a port); see the module docs.
pub fn normalize_host(raw: &str) -> Result<String, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(TargetError::InvalidHost)?;
        let valid = !literal.is_empty()
            && literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !valid {
            return Err(TargetError::InvalidHost);
        }
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or(TargetError::InvalidHost)?),
        };
        (format!("[{}]", literal.to_ascii_lowercase()), port)
    } else {
        let (name, port) = match raw.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (raw, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let valid = !name.is_empty()
            && name.len() <= MAX_HOST
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(if name.is_empty() {
                TargetError::EmptyHost
            } else {
                TargetError::InvalidHost
            });
        }
        (name.to_ascii_lowercase(), port)
    };
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65_535);
        if !valid {
            return Err(TargetError::InvalidPort);
        }
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_protected_prefix_normalizes_to_it() {
        for variant in [
            "/admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
            "/./admin",
            "/admin/.",
            "//admin",
            "///admin",
            "/../admin",
            "/../../admin",
            "/public/./../admin",
            "/a/b/../../admin",
            "/a/..//admin",
        ] {
            let normal = normalize_path(variant).unwrap_or_else(|e| panic!("{variant}: {e}"));
            assert!(
                normal == "/admin" || normal == "/admin/",
                "{variant} normalized to {normal}"
            );
        }
    }

    #[test]
    fn trailing_slashes_and_case_are_kept() {
        assert_eq!(normalize_path("/admin/").unwrap(), "/admin/");
        assert_eq!(normalize_path("/admin//").unwrap(), "/admin/");
        assert_eq!(normalize_path("/Admin/X").unwrap(), "/Admin/X");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("//").unwrap(), "/");
        assert_eq!(normalize_path("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize_path("/..").unwrap(), "/");
    }

    #[test]
    fn encodings_that_are_not_unreserved_stay_encoded_in_one_form() {
        assert_eq!(normalize_path("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalize_path("/a b").unwrap(), "/a%20b");
        assert_eq!(normalize_path("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize_path("/a\"b{c}").unwrap(), "/a%22b%7Bc%7D");
        assert_eq!(
            normalize_path("/x%3a@!$&'()*+,=").unwrap(),
            "/x%3A@!$&'()*+,="
        );
        assert_eq!(normalize_path("/100%25").unwrap(), "/100%25");
        assert_eq!(normalize_path("/%7e~").unwrap(), "/~~");
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (raw, expected) in [
            ("admin", TargetError::NotAbsolutePath),
            ("", TargetError::NotAbsolutePath),
            ("/admin%2Fx", TargetError::EncodedSlash),
            ("/%2fadmin", TargetError::EncodedSlash),
            ("/public%2F..%2Fadmin", TargetError::EncodedSlash),
            ("/admin\\x", TargetError::Backslash),
            ("/public/..\\admin", TargetError::Backslash),
            ("/%5cadmin", TargetError::Backslash),
            ("/admin%00", TargetError::ControlCharacter),
            ("/admin\0", TargetError::ControlCharacter),
            ("/admin\t", TargetError::ControlCharacter),
            ("/ad%09min", TargetError::ControlCharacter),
            ("/admin%0d%0aX: y", TargetError::ControlCharacter),
            ("/admin\u{7f}", TargetError::ControlCharacter),
            ("/admin%", TargetError::InvalidPercentEncoding),
            ("/admin%4", TargetError::InvalidPercentEncoding),
            ("/admin%zz", TargetError::InvalidPercentEncoding),
            ("/%%32%65", TargetError::InvalidPercentEncoding),
            ("/%252e%252e/admin", TargetError::DoubleEncoding),
            ("/%25%34%31dmin", TargetError::DoubleEncoding),
            ("/admin;x", TargetError::Semicolon),
            ("/admin%3bx/secret", TargetError::Semicolon),
            ("/ädmin", TargetError::NotAscii),
            ("/public//../admin", TargetError::AmbiguousDotSegment),
            ("/public/.//../admin", TargetError::AmbiguousDotSegment),
        ] {
            assert_eq!(normalize_path(raw), Err(expected), "{raw:?}");
        }
        assert_eq!(
            normalize_path(&format!("/{}", "a".repeat(MAX_PATH))),
            Err(TargetError::PathTooLong)
        );
        // Found by the policy_path fuzz target: short enough as sent, too long once `>` is
        // encoded as `%3E`, so its normal form would be refused.
        assert_eq!(
            normalize_path(&format!("/{}", ">".repeat(MAX_PATH / 2))),
            Err(TargetError::PathTooLong)
        );
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for raw in [
            "/a/./b/../c//d/",
            "/%41%20%7e",
            "/x/%2e%2e/y",
            "/a b/c\"d",
            "/..",
        ] {
            let once = normalize_path(raw).unwrap();
            assert_eq!(normalize_path(&once).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn hosts_are_lower_case_without_port_or_trailing_dot() {
        assert_eq!(normalize_host("Eng.Test").unwrap(), "eng.test");
        assert_eq!(normalize_host("eng.test:8443").unwrap(), "eng.test");
        assert_eq!(normalize_host("eng.test.").unwrap(), "eng.test");
        assert_eq!(normalize_host("eng.test.:443").unwrap(), "eng.test");
        assert_eq!(normalize_host("127.0.0.1:80").unwrap(), "127.0.0.1");
        assert_eq!(normalize_host("[::1]:8080").unwrap(), "[::1]");
        assert_eq!(normalize_host("[FE80::1]").unwrap(), "[fe80::1]");
        assert_eq!(
            normalize_host("under_score.test").unwrap(),
            "under_score.test"
        );
        for bad in [
            "",
            ":443",
            "eng.test:",
            "eng.test:99999",
            "eng.test:44x",
            "eng.test:1:2",
            "eng..test",
            ".eng.test",
            "eng.test..",
            "user@eng.test",
            "eng.test/x",
            "eng.test\\x",
            "eng test",
            "eng%2etest",
            "eng.test\0",
            "ëng.test",
            "[::1",
            "[::1]x",
            "[zz]",
            "[]",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_query_and_fragment_are_not_part_of_the_path() {
        assert_eq!(without_query("/a/b?x=/../c#f"), "/a/b");
        assert_eq!(without_query("/a#f?x"), "/a");
        assert_eq!(without_query("/a"), "/a");
    }
}
