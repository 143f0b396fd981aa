//! Where a browser may be sent back to after signing in or out (`rd`): parsed with a URL parser
//! and re-serialized from what it parsed, never echoed.
//!
//! - A relative target (`/path?query#fragment`) stays on the origin that answered: it is
//!   resolved against a placeholder origin, refused if it leaves it, and answered as the
//!   parsed path, query and fragment (so `/ a` is sent as `/%20a`); one that would be read as
//!   scheme-relative (`//host`, also after dot segments: `/.//host`) is refused.
//! - An absolute target must be `http` or `https`, carry no user information, and name an
//!   allowed host (or a subdomain of an allowed domain), at any port.
//! - Refused anywhere in `rd`: control characters (TAB, CR, LF, NUL, …), backslashes (browsers
//!   read `\` as `/`), and whitespace at either end. A refused target is `/`.

use tracing::warn;
use url::{Position, Url};

/// The placeholder origin relative targets are resolved against.
const PLACEHOLDER: &str = "https://rollcall.invalid/";

/// Why a redirect target was refused (logged, never shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    /// A control character.
    #[error("the target holds a control character")]
    ControlCharacter,
    /// A backslash.
    #[error("the target holds a backslash")]
    Backslash,
    /// Whitespace at either end.
    #[error("the target starts or ends with whitespace")]
    Whitespace,
    /// `//host` or what resolves to it.
    #[error("the target is scheme-relative (//host)")]
    SchemeRelative,
    /// Not a URL, or a relative one that is not a path.
    #[error("the target is not a URL or an absolute path")]
    Unparsable,
    /// Not `http` or `https`.
    #[error("the target's scheme is not http or https")]
    Scheme,
    /// `user@host`.
    #[error("the target holds user information")]
    UserInformation,
    /// A host outside the allowed domains.
    #[error("the target's host is not an allowed domain")]
    Host,
}

/// The target, checked and re-serialized.
pub fn check(rd: &str, allowed: &[String]) -> Result<String, RedirectError> {
    if rd.chars().any(char::is_control) {
        return Err(RedirectError::ControlCharacter);
    }
    if rd.contains('\\') {
        return Err(RedirectError::Backslash);
    }
    if rd.starts_with(char::is_whitespace) || rd.ends_with(char::is_whitespace) {
        return Err(RedirectError::Whitespace);
    }
    if rd.starts_with('/') {
        if rd.starts_with("//") {
            return Err(RedirectError::SchemeRelative);
        }
        let base = Url::parse(PLACEHOLDER).map_err(|_| RedirectError::Unparsable)?;
        let url = base.join(rd).map_err(|_| RedirectError::Unparsable)?;
        if url.origin() != base.origin() {
            return Err(RedirectError::SchemeRelative);
        }
        let relative = &url[Position::BeforePath..];
        if !relative.starts_with('/') || relative.starts_with("//") {
            return Err(RedirectError::SchemeRelative);
        }
        return Ok(relative.to_owned());
    }
    let url = Url::parse(rd).map_err(|_| RedirectError::Unparsable)?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(RedirectError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(RedirectError::UserInformation);
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let allowed_host = !host.is_empty()
        && allowed
            .iter()
            .any(|domain| host == *domain || host.ends_with(&format!(".{domain}")));
    if !allowed_host {
        return Err(RedirectError::Host);
    }
    Ok(url.to_string())
}

/// Where to send the browser back to: `rd` when [`check`] accepts it, otherwise `/`.
pub fn safe_redirect(rd: Option<&str>, allowed: &[String]) -> String {
    let Some(rd) = rd.filter(|rd| !rd.is_empty()) else {
        return "/".into();
    };
    match check(rd, allowed) {
        Ok(target) => target,
        Err(reason) => {
            warn!(reason = %reason, "sign-in: refused a redirect target; using /");
            "/".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["example.com".to_owned(), "auth.corp.test".to_owned()]
    }

    #[test]
    fn targets_on_allowed_hosts_and_paths_come_back_re_serialized() {
        let allowed = allowed();
        for (rd, expected) in [
            ("/app?x=1", "/app?x=1"),
            ("/", "/"),
            ("/app#part", "/app#part"),
            ("/a b", "/a%20b"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a/../b", "/b"),
            ("/%09/evil.test", "/%09/evil.test"),
            ("/%2F%2Fevil.test", "/%2F%2Fevil.test"),
            ("/app?next=//evil.test", "/app?next=//evil.test"),
            (
                "https://wiki.example.com/page",
                "https://wiki.example.com/page",
            ),
            ("https://example.com/", "https://example.com/"),
            ("https://EXAMPLE.com:8443/x", "https://example.com:8443/x"),
            ("http://auth.corp.test", "http://auth.corp.test/"),
            ("https://ex%61mple.com/", "https://example.com/"),
        ] {
            assert_eq!(check(rd, &allowed), Ok(expected.to_owned()), "{rd:?}");
            assert_eq!(safe_redirect(Some(rd), &allowed), expected, "{rd:?}");
        }
        assert_eq!(safe_redirect(None, &allowed), "/");
        assert_eq!(safe_redirect(Some(""), &allowed), "/");
    }

    #[test]
    fn no_variant_leaves_the_allowed_origins() {
        let allowed = allowed();
        for (rd, reason) in [
            ("/\t/evil.test", RedirectError::ControlCharacter),
            ("/\n/evil.test", RedirectError::ControlCharacter),
            ("/\r\n/evil.test", RedirectError::ControlCharacter),
            ("/\0/evil.test", RedirectError::ControlCharacter),
            ("/x\r\nSet-Cookie: a=b", RedirectError::ControlCharacter),
            ("/\u{85}/evil.test", RedirectError::ControlCharacter),
            ("java\tscript:alert(1)", RedirectError::ControlCharacter),
            ("/\\evil.test/", RedirectError::Backslash),
            ("\\\\evil.test", RedirectError::Backslash),
            ("/\\/evil.test", RedirectError::Backslash),
            ("https://evil.test\\@example.com/", RedirectError::Backslash),
            (" //evil.test", RedirectError::Whitespace),
            ("/app ", RedirectError::Whitespace),
            ("\u{a0}//evil.test", RedirectError::Whitespace),
            ("//evil.test/", RedirectError::SchemeRelative),
            ("///evil.test", RedirectError::SchemeRelative),
            ("/.//evil.test", RedirectError::SchemeRelative),
            ("/a/..//evil.test", RedirectError::SchemeRelative),
            ("/%2e//evil.test", RedirectError::SchemeRelative),
            ("evil.test", RedirectError::Unparsable),
            ("https:evil.test", RedirectError::Host),
            ("https:/evil.test", RedirectError::Host),
            ("javascript:alert(1)", RedirectError::Scheme),
            ("data:text/html,<script>", RedirectError::Scheme),
            ("ftp://example.com/", RedirectError::Scheme),
            ("https://user@example.com/", RedirectError::UserInformation),
            (
                "https://example.com:pw@evil.test/",
                RedirectError::UserInformation,
            ),
            ("https://evil.test/", RedirectError::Host),
            ("https://example.com.evil.test/", RedirectError::Host),
            ("https://evilexample.com/", RedirectError::Host),
            ("https://evil.test#@example.com", RedirectError::Host),
            ("https://evil.test?.example.com", RedirectError::Host),
            ("https://[::1]/", RedirectError::Host),
        ] {
            assert_eq!(check(rd, &allowed), Err(reason), "{rd:?}");
            assert_eq!(safe_redirect(Some(rd), &allowed), "/", "{rd:?}");
        }
    }

    #[test]
    fn without_allowed_hosts_only_paths_are_accepted() {
        assert_eq!(safe_redirect(Some("/x"), &[]), "/x");
        assert_eq!(safe_redirect(Some("https://example.com/"), &[]), "/");
    }
}
