//! The cookies of sign-in: the session cookie and one signed cookie per started sign-in, each
//! `Secure`, `HttpOnly` and `SameSite=Lax`.

use axum::http::{header, HeaderMap};

/// The name of the cookie that carries the sign-in with `state`.
pub fn flow_cookie(session_cookie: &str, state: &str) -> String {
    let tag: String = state
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(16)
        .collect();
    format!("{session_cookie}_signin_{tag}")
}

/// A `Set-Cookie` value: `Secure`, `HttpOnly`, `SameSite=Lax`.
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    domain: Option<&str>,
) -> String {
    let domain = domain.map(|d| format!("; Domain={d}")).unwrap_or_default();
    format!(
        "{name}={value}; Path={path}{domain}; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"
    )
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookies_are_secure_httponly_lax_and_named_per_sign_in() {
        let set = set_cookie("s", "v", "/", 60, Some(".example.com"));
        assert_eq!(
            set,
            "s=v; Path=/; Domain=.example.com; Max-Age=60; Secure; HttpOnly; SameSite=Lax"
        );
        assert_ne!(
            flow_cookie("s", "abcdefghijklmnopA"),
            flow_cookie("s", "bbcdefghijklmnopA")
        );
        assert_eq!(flow_cookie("s", "a;b=c d"), "s_signin_abcd");
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; s=two; b=3"));
        assert_eq!(cookie(&headers, "s"), Some("two"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
