//! Sign-in over HTTP: `/oauth2/start`, `/oauth2/callback` and `/oauth2/sign_out`.
//!
//! - `GET /oauth2/start?rd=<URL>` sends the browser to the provider; the sign-in's `state`,
//!   `nonce`, PKCE verifier and `rd` travel in a signed, `HttpOnly` cookie of its own (ten
//!   minutes, named after the state, so that two tabs can sign in at once).
//! - `GET /oauth2/callback` checks the state against that cookie (each state answers once),
//!   exchanges the code, verifies the ID token, finds the SCIM user the configured claim names,
//!   refuses one who is not provisioned or inactive with a page that says so, and otherwise sets
//!   the session cookie and sends the browser back to `rd`.
//! - `POST /oauth2/sign_out?rd=<URL>` records the session's revocation and clears the cookie,
//!   unless `Sec-Fetch-Site` says `cross-site` or `Origin` names a host that is neither this
//!   one nor an allowed redirect domain. `GET /oauth2/sign_out` does the same only when
//!   `Sec-Fetch-Site` is `same-origin` or `none` (the person's own navigation); otherwise it
//!   answers a page that asks, with a form that POSTs, so that a link on another site signs no
//!   one out.
//!
//! `rd` is checked by [`redirect`]: never an open redirect. Every refusal is a [`Refusal`],
//! which renders its page, so the handlers below only say what happens in which order.

pub mod cookie;
pub mod page;
pub mod redirect;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tracing::{info, warn};
use url::Url;
use uuid::Uuid;

pub use cookie::cookie;
use cookie::{flow_cookie, set_cookie};
pub use page::Refusal;
use page::{page, redirect};
pub use redirect::safe_redirect;

use crate::decision::now;
use crate::oidc::{Attribute, Flow, RelyingParty, SignInError, SignedIn};
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

fn params(query: Result<Query<Params>, QueryRejection>) -> Result<Params, Refusal> {
    query
        .map(|Query(params)| params)
        .map_err(|_| Refusal::BadQuery)
}

/// `GET /oauth2/start?rd=<URL>`
#[tracing::instrument(name = "sign_in.start", skip_all)]
pub async fn start(
    State(access): State<Access>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, Refusal> {
    let params = params(query)?;
    let rp = access.signin.clone().ok_or(Refusal::NotConfigured)?;
    let rd = safe_redirect(params.rd.as_deref(), &rp.allowed_redirects);
    let (url, flow) = rp.begin().await.map_err(Refusal::CannotStart)?;
    let claims = FlowClaims {
        iss: FLOW_ISSUER.into(),
        state: flow.state.clone(),
        nonce: flow.nonce,
        verifier: flow.verifier,
        rd,
        exp: now().unix_timestamp() + FLOW_LIFETIME,
    };
    let token = access.keys.sign(&claims).map_err(|_| Refusal::Internal)?;
    let name = flow_cookie(&access.config.cookie, &flow.state);
    Ok(redirect(
        url.as_str(),
        &[set_cookie(
            &name,
            &token,
            "/oauth2/",
            FLOW_LIFETIME,
            access.config.cookie_domain.as_deref(),
        )],
    ))
}

/// `GET /oauth2/callback`
#[tracing::instrument(name = "sign_in.callback", skip_all)]
pub async fn callback(
    State(access): State<Access>,
    query: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let params = params(query)?;
    let rp = access.signin.clone().ok_or(Refusal::NotConfigured)?;
    if let Some(error) = params.error {
        // What the query says is shown back (escaped), so keep it short.
        let short = |text: String| text.chars().take(500).collect::<String>();
        let error = SignInError::Provider {
            error: short(error),
            description: params.error_description.map(short),
        };
        let advice = error.advice(&rp);
        return Err(Refusal::AtProvider { error, advice });
    }
    let (Some(code), Some(state)) = (params.code, params.state) else {
        return Err(Refusal::NoCodeOrState);
    };
    let flow = cookie(&headers, &flow_cookie(&access.config.cookie, &state))
        .and_then(|token| access.keys.verify_as::<FlowClaims>(token, FLOW_ISSUER).ok())
        .ok_or(Refusal::UnknownState)?;
    if !bool::from(flow.state.as_bytes().ct_eq(state.as_bytes())) {
        return Err(Refusal::OtherState);
    }
    if !access.consume_state(&flow.state, flow.exp) {
        return Err(Refusal::Replayed);
    }
    let started = Flow {
        state: flow.state.clone(),
        nonce: flow.nonce.clone(),
        verifier: flow.verifier.clone(),
    };
    let signed_in = rp
        .finish(&code, &started)
        .await
        .map_err(|error| Refusal::Failed {
            advice: error.advice(&rp),
            error,
        })?;
    let user = provisioned_user(&access, &rp, &signed_in)?;
    let claim = |name: &str| signed_in.claims.get(name).and_then(|v| v.as_str());
    if let (Some(issuer), Some(subject)) = (claim("iss"), claim("sub")) {
        access
            .link_identity(&rp.tenant, user, issuer, subject)
            .await;
    }
    let (token, claims) = access
        .keys
        .issue(&rp.tenant, user, now())
        .map_err(|_| Refusal::Internal)?;
    info!(tenant = %rp.tenant, user.id = %user, session = %claims.sid, "signed in");
    let ttl = access.keys.ttl().as_secs() as i64;
    let domain = access.config.cookie_domain.as_deref();
    Ok(redirect(
        &safe_redirect(Some(&flow.rd), &rp.allowed_redirects),
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
    ))
}

/// The active SCIM user the verified ID token names.
fn provisioned_user(
    access: &Access,
    rp: &RelyingParty,
    signed_in: &SignedIn,
) -> Result<Uuid, Refusal> {
    let mapping = &rp.mapping;
    let value = signed_in
        .claims
        .get(&mapping.claim)
        .and_then(|v| v.as_str())
        .ok_or_else(|| Refusal::MissingClaim(mapping.claim.clone()))?;
    let user = access.find_user(&rp.tenant, |user| match mapping.attribute {
        Attribute::ExternalId => user.external_id_is(value),
        Attribute::UserName => user.user_name().eq_ignore_ascii_case(value),
        Attribute::Email => user.emails().any(|e| e.eq_ignore_ascii_case(value)),
    });
    match user {
        None => Err(Refusal::NotProvisioned {
            tenant: rp.tenant.clone(),
            claim: mapping.claim.clone(),
            shown: if mapping.loggable() {
                value.to_owned()
            } else {
                "<redacted>".to_owned()
            },
        }),
        Some((id, false)) => Err(Refusal::Inactive {
            tenant: rp.tenant.clone(),
            user: id,
        }),
        Some((id, true)) => Ok(id),
    }
}

/// Hosts `rd` and a sign-out's `Origin` may name.
fn allowed_hosts(access: &Access) -> Vec<String> {
    access
        .signin
        .as_ref()
        .map(|rp| rp.allowed_redirects.clone())
        .unwrap_or_default()
}

fn header_value(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether a POST comes from this site: `Sec-Fetch-Site` (when sent) is not `cross-site`, and
/// `Origin` (when sent) names this host or an allowed domain.
fn posted_from_this_site(headers: &HeaderMap, allowed: &[String]) -> bool {
    let site = header_value(headers, header::HeaderName::from_static("sec-fetch-site"));
    if site.is_some_and(|site| !matches!(site, "same-origin" | "same-site" | "none")) {
        return false;
    }
    let Some(origin) = header_value(headers, header::ORIGIN) else {
        return true;
    };
    let Some(origin_host) = Url::parse(origin)
        .ok()
        .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
    else {
        return false;
    };
    let this_host = header_value(headers, header::HOST)
        .and_then(|host| crate::target::normalize_host(host).ok());
    this_host.as_deref() == Some(origin_host.as_str())
        || allowed
            .iter()
            .any(|domain| origin_host == *domain || origin_host.ends_with(&format!(".{domain}")))
}

/// `GET /oauth2/sign_out?rd=<URL>`: signs out the person's own navigation; asks everyone else.
#[tracing::instrument(name = "sign_in.sign_out", skip_all)]
pub async fn sign_out(
    State(access): State<Access>,
    query: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let params = params(query)?;
    let rd = params
        .rd
        .as_deref()
        .map(|rd| safe_redirect(Some(rd), &allowed_hosts(&access)));
    let site = header_value(&headers, header::HeaderName::from_static("sec-fetch-site"));
    if matches!(site, Some("same-origin" | "none")) {
        return Ok(signed_out(&access, &headers, rd).await);
    }
    let action = match &rd {
        Some(rd) => format!(
            "sign_out?rd={}",
            url::form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>()
        ),
        None => "sign_out".to_owned(),
    };
    Ok(page::confirm_sign_out(&action))
}

/// `POST /oauth2/sign_out?rd=<URL>`
#[tracing::instrument(name = "sign_in.sign_out", skip_all)]
pub async fn sign_out_confirmed(
    State(access): State<Access>,
    query: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let params = params(query)?;
    let allowed = allowed_hosts(&access);
    if !posted_from_this_site(&headers, &allowed) {
        return Err(Refusal::CrossSiteSignOut);
    }
    let rd = params
        .rd
        .as_deref()
        .map(|rd| safe_redirect(Some(rd), &allowed));
    Ok(signed_out(&access, &headers, rd).await)
}

/// Records the session's revocation, clears the cookie, and sends the browser to `rd` (or
/// says it is signed out).
async fn signed_out(access: &Access, headers: &HeaderMap, rd: Option<String>) -> Response {
    let clear = set_cookie(
        &access.config.cookie,
        "",
        "/",
        0,
        access.config.cookie_domain.as_deref(),
    );
    let with_clear = |mut response: Response| {
        if let Ok(value) = HeaderValue::from_str(&clear) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        response
    };
    let session =
        cookie(headers, &access.config.cookie).and_then(|token| access.keys.verify(token).ok());
    if let Some(claims) = session {
        let user = claims.sub.parse().unwrap_or_default();
        if let Err(error) = access.revoke(&claims.tid, user, &claims.sid).await {
            warn!(error = %error, user.id = %claims.sub, "sign-out: the session's revocation could not be recorded");
            return with_clear(page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-out incomplete",
                &["The cookie is cleared, but the session's revocation could not be recorded. Try again."],
            ));
        }
        info!(tenant = %claims.tid, user.id = %claims.sub, session = %claims.sid, "signed out");
    }
    match rd {
        Some(rd) => redirect(&rd, std::slice::from_ref(&clear)),
        None => with_clear(page(StatusCode::OK, "Signed out", &["You are signed out."])),
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

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_sign_out_post_from_another_site_is_refused() {
        let allowed = vec!["example.com".to_owned()];
        for (pairs, from_here) in [
            (vec![], true),
            (vec![("sec-fetch-site", "same-origin")], true),
            (vec![("sec-fetch-site", "none")], true),
            (
                vec![
                    ("sec-fetch-site", "same-site"),
                    ("origin", "https://wiki.example.com"),
                ],
                true,
            ),
            (
                vec![
                    ("host", "auth.test:8081"),
                    ("origin", "http://auth.test:8081"),
                ],
                true,
            ),
            (vec![("sec-fetch-site", "cross-site")], false),
            (
                vec![
                    ("sec-fetch-site", "cross-site"),
                    ("origin", "https://wiki.example.com"),
                ],
                false,
            ),
            (vec![("origin", "https://evil.test")], false),
            (vec![("origin", "null")], false),
            (
                vec![
                    ("host", "auth.test"),
                    ("origin", "https://auth.test.evil.test"),
                ],
                false,
            ),
        ] {
            assert_eq!(
                posted_from_this_site(&headers(&pairs), &allowed),
                from_here,
                "{pairs:?}"
            );
        }
    }
}
