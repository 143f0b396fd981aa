//! Sign-in over HTTP: `/oauth2/start`, `/oauth2/callback` and `/oauth2/sign_out`.
//!
//! - `GET /oauth2/start?rd=<URL>` sends the browser to the provider; the sign-in's `state`,
//!   `nonce`, PKCE verifier and `rd` travel in a signed, `HttpOnly` cookie of its own (ten
//!   minutes, named after the state, so that two tabs can sign in at once).
//! - `GET /oauth2/callback` checks the state against that cookie (each state answers once),
//!   exchanges the code, verifies the ID token, finds the SCIM user the configured claim names,
//!   refuses one who is not provisioned or inactive with a page that says so, and otherwise sets
//!   the session cookie and sends the browser back to `rd`.
//! - `GET|POST /oauth2/sign_out?rd=<URL>` records the session's revocation and clears the cookie.
//!
//! `rd` must be a relative path or a URL on an allowed host: never an open redirect.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tracing::{info, warn};
use url::Url;

use crate::decision::now;
use crate::oidc::{Attribute, Flow, SignInError};
use crate::Access;

/// The issuer claim of sign-in state cookies.
const FLOW_ISSUER: &str = "rollcall-signin";

/// How long a started sign-in may take, in seconds.
const FLOW_LIFETIME: i64 = 600;

/// What a sign-in state cookie says.
#[derive(Debug, Serialize, Deserialize)]
struct FlowClaims {
    iss: String,
    state: String,
    nonce: String,
    verifier: String,
    rd: String,
    exp: i64,
}

/// The query of the sign-in endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    rd: Option<String>,
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Where to send the browser back to: `rd` when it is a relative path or a URL on an allowed
/// host (a domain allows its subdomains), otherwise `/`.
pub fn safe_redirect(rd: Option<&str>, allowed: &[String]) -> String {
    let Some(rd) = rd.map(str::trim).filter(|rd| !rd.is_empty()) else {
        return "/".into();
    };
    if rd.starts_with('/') && !rd.starts_with("//") && !rd.starts_with("/\\") {
        if !rd.contains(['\r', '\n']) {
            return rd.to_owned();
        }
    } else if let Ok(url) = Url::parse(rd) {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let allowed_host = allowed
            .iter()
            .any(|domain| host == *domain || host.ends_with(&format!(".{domain}")));
        if matches!(url.scheme(), "https" | "http") && allowed_host && url.username().is_empty() {
            return url.to_string();
        }
    }
    warn!("sign-in: refused a redirect target outside the allowed domains; using /");
    "/".into()
}

/// The name of the cookie that carries the sign-in with `state`.
fn flow_cookie(session_cookie: &str, state: &str) -> String {
    let tag: String = state
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(16)
        .collect();
    format!("{session_cookie}_signin_{tag}")
}

/// A `Set-Cookie` value: `Secure`, `HttpOnly`, `SameSite=Lax`.
fn set_cookie(name: &str, value: &str, path: &str, max_age: i64, domain: Option<&str>) -> String {
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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A plain page that says what happened and what to do.
fn page(status: StatusCode, title: &str, lines: &[&str]) -> Response {
    let body: String = lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| format!("<p>{}</p>", escape(l)))
        .collect();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

fn redirect(location: &str, cookies: &[String]) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

fn not_configured() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Sign-in is not configured",
        &["This Rollcall has no identity provider: set ROLLCALL_OIDC_ISSUER, ROLLCALL_OIDC_CLIENT_ID, ROLLCALL_OIDC_CLIENT_SECRET and ROLLCALL_OIDC_REDIRECT_URL."],
    )
}

/// `GET /oauth2/start?rd=<URL>`
#[tracing::instrument(name = "sign_in.start", skip_all)]
pub async fn start(State(access): State<Access>, Query(params): Query<Params>) -> Response {
    let Some(rp) = access.signin.clone() else {
        return not_configured();
    };
    let rd = safe_redirect(params.rd.as_deref(), &rp.allowed_redirects);
    let (url, flow) = match rp.begin().await {
        Ok(started) => started,
        Err(error) => {
            warn!(error = %error, "sign-in could not start");
            return page(
                StatusCode::BAD_GATEWAY,
                "The identity provider could not be reached",
                &[
                    &error.to_string(),
                    "Try again in a moment; if this persists, run `rollcall oidc check`.",
                ],
            );
        }
    };
    let claims = FlowClaims {
        iss: FLOW_ISSUER.into(),
        state: flow.state.clone(),
        nonce: flow.nonce,
        verifier: flow.verifier,
        rd,
        exp: now().unix_timestamp() + FLOW_LIFETIME,
    };
    let Ok(token) = access.keys.sign(&claims) else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sign-in failed",
            &["internal error"],
        );
    };
    let name = flow_cookie(&access.config.cookie, &flow.state);
    redirect(
        url.as_str(),
        &[set_cookie(
            &name,
            &token,
            "/oauth2/",
            FLOW_LIFETIME,
            access.config.cookie_domain.as_deref(),
        )],
    )
}

/// Logs a refused sign-in with its reason and answers with a page that explains it.
fn refuse(status: StatusCode, title: &str, reason: &str, advice: Option<&str>) -> Response {
    warn!(reason = %reason, advice = advice.unwrap_or("-"), "sign-in refused");
    page(status, title, &[reason, advice.unwrap_or_default()])
}

/// `GET /oauth2/callback`
#[tracing::instrument(name = "sign_in.callback", skip_all)]
pub async fn callback(
    State(access): State<Access>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let Some(rp) = access.signin.clone() else {
        return not_configured();
    };
    if let Some(error) = params.error {
        // What the query says is shown back (escaped), so keep it short.
        let short = |text: String| text.chars().take(500).collect::<String>();
        let error = SignInError::Provider {
            error: short(error),
            description: params.error_description.map(short),
        };
        let advice = error.advice(&rp);
        return refuse(
            StatusCode::BAD_REQUEST,
            "Sign-in failed at the identity provider",
            &error.to_string(),
            advice.as_deref(),
        );
    }
    let (Some(code), Some(state)) = (params.code, params.state) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "the provider's answer has no code or no state",
            None,
        );
    };
    let start_again = "Go back to the page you wanted and sign in again.";
    let Some(flow) = cookie(&headers, &flow_cookie(&access.config.cookie, &state))
        .and_then(|token| access.keys.verify_as::<FlowClaims>(token, FLOW_ISSUER).ok())
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "wrong state: no sign-in with this state was started in this browser in the last ten minutes",
            Some(start_again),
        );
    };
    if !bool::from(flow.state.as_bytes().ct_eq(state.as_bytes())) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "wrong state: the provider's answer belongs to another sign-in",
            Some(start_again),
        );
    }
    if !access.consume_state(&flow.state, flow.exp) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "this sign-in answer was already used (a replayed code)",
            Some(start_again),
        );
    }
    let signed_in = match rp
        .finish(
            &code,
            &Flow {
                state: flow.state.clone(),
                nonce: flow.nonce.clone(),
                verifier: flow.verifier.clone(),
            },
        )
        .await
    {
        Ok(signed_in) => signed_in,
        Err(error) => {
            let advice = error.advice(&rp);
            let status = match error {
                SignInError::Unreachable(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::UNAUTHORIZED,
            };
            return refuse(
                status,
                "Sign-in failed",
                &error.to_string(),
                advice.as_deref(),
            );
        }
    };
    let mapping = &rp.mapping;
    let Some(value) = signed_in
        .claims
        .get(&mapping.claim)
        .and_then(|v| v.as_str())
    else {
        return refuse(
            StatusCode::FORBIDDEN,
            "Sign-in refused",
            &SignInError::MissingClaim(mapping.claim.clone()).to_string(),
            Some("Ask the administrator to check ROLLCALL_OIDC_CLAIM and the token configuration at the provider."),
        );
    };
    let shown = if mapping.loggable() {
        value
    } else {
        "<redacted>"
    };
    let user = access.find_user(&rp.tenant, |user| match mapping.attribute {
        Attribute::ExternalId => user.external_id.as_deref() == Some(value),
        Attribute::UserName => user.user_name.eq_ignore_ascii_case(value),
        Attribute::Email => user.emails.iter().any(|e| e.eq_ignore_ascii_case(value)),
    });
    let user = match user {
        None => {
            warn!(tenant = %rp.tenant, claim = %mapping.claim, value = %shown, reason = "not provisioned", "sign-in refused");
            return page(
                StatusCode::FORBIDDEN,
                "You do not have access",
                &["Your account is not provisioned to this service.", "Ask your administrator to assign you to the application in Entra ID; provisioning may take a while."],
            );
        }
        Some((id, false)) => {
            warn!(tenant = %rp.tenant, user.id = %id, reason = "inactive", "sign-in refused");
            return page(
                StatusCode::FORBIDDEN,
                "You do not have access",
                &[
                    "Your account is disabled in this service.",
                    "Ask your administrator.",
                ],
            );
        }
        Some((id, true)) => id,
    };
    let (token, claims) = match access.keys.issue(&rp.tenant, user, now()) {
        Ok(issued) => issued,
        Err(_) => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in failed",
                &["internal error"],
            );
        }
    };
    info!(tenant = %rp.tenant, user.id = %user, session = %claims.sid, "signed in");
    let ttl = access.keys.ttl().as_secs() as i64;
    let domain = access.config.cookie_domain.as_deref();
    redirect(
        &flow.rd,
        &[
            set_cookie(&access.config.cookie, &token, "/", ttl, domain),
            set_cookie(
                &flow_cookie(&access.config.cookie, &state),
                "",
                "/oauth2/",
                0,
                domain,
            ),
        ],
    )
}

/// `GET|POST /oauth2/sign_out?rd=<URL>`
#[tracing::instrument(name = "sign_in.sign_out", skip_all)]
pub async fn sign_out(
    State(access): State<Access>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let allowed = access
        .signin
        .as_ref()
        .map(|rp| rp.allowed_redirects.clone())
        .unwrap_or_default();
    let rd = params
        .rd
        .as_deref()
        .map(|rd| safe_redirect(Some(rd), &allowed));
    let clear = set_cookie(
        &access.config.cookie,
        "",
        "/",
        0,
        access.config.cookie_domain.as_deref(),
    );
    let session =
        cookie(&headers, &access.config.cookie).and_then(|token| access.keys.verify(token).ok());
    if let Some(claims) = session {
        let user = claims.sub.parse().unwrap_or_default();
        if let Err(error) = access.revoke(&claims.tid, user, &claims.sid).await {
            warn!(error = %error, user.id = %claims.sub, "sign-out: the session's revocation could not be recorded");
            let mut response = page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-out incomplete",
                &["The cookie is cleared, but the session's revocation could not be recorded. Try again."],
            );
            if let Ok(value) = HeaderValue::from_str(&clear) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            return response;
        }
        info!(tenant = %claims.tid, user.id = %claims.sub, session = %claims.sid, "signed out");
    }
    match rd {
        Some(rd) => redirect(&rd, &[clear]),
        None => {
            let mut response = page(StatusCode::OK, "Signed out", &["You are signed out."]);
            if let Ok(value) = HeaderValue::from_str(&clear) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
    }
}

/// Where `/auth` sends an unauthenticated browser: `/oauth2/start` next to the redirect URL,
/// with the original URL as `rd`.
pub fn start_location(access: &Access, original: &str) -> Option<String> {
    let rp = access.signin.as_ref()?;
    let mut start = Url::parse(rp.redirect_url()).ok()?;
    start.set_path("/oauth2/start");
    start.set_query(None);
    start.query_pairs_mut().append_pair("rd", original);
    Some(start.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_allowed_hosts() {
        let allowed = vec!["example.com".to_owned(), "auth.corp.test".to_owned()];
        assert_eq!(safe_redirect(None, &allowed), "/");
        assert_eq!(safe_redirect(Some("/app?x=1"), &allowed), "/app?x=1");
        assert_eq!(
            safe_redirect(Some("https://wiki.example.com/page"), &allowed),
            "https://wiki.example.com/page"
        );
        assert_eq!(
            safe_redirect(Some("https://example.com/"), &allowed),
            "https://example.com/"
        );
        for evil in [
            "https://evil.test/",
            "//evil.test/",
            "/\\evil.test/",
            "https://example.com.evil.test/",
            "https://evilexample.com/",
            "javascript:alert(1)",
            "https://user@example.com/",
            "https://evil.test\\@example.com/",
            "ftp://example.com/",
            "/x\r\nSet-Cookie: a=b",
        ] {
            assert_eq!(safe_redirect(Some(evil), &allowed), "/", "{evil}");
        }
    }

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

    #[test]
    fn pages_escape_what_they_show() {
        let response = page(
            StatusCode::BAD_REQUEST,
            "<t>",
            &["<script>alert('x')</script>"],
        );
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
