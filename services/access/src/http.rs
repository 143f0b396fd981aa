//! Forward-auth for reverse proxies and the decision API.
//!
//! - `GET /auth` (nginx `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`): the
//!   original request from `X-Forwarded-Host`/`X-Forwarded-Uri`/`X-Forwarded-Method` or
//!   `X-Original-URL`; `GET /auth/<path>` (Envoy `ext_authz` with `path_prefix: /auth`): the
//!   original path after `/auth` and the original `Host`. The session comes from the
//!   `rollcall_session` cookie or `Authorization: Bearer`. `200` with identity headers, `401`
//!   without a valid session (or, for a browser behind Traefik or Caddy with sign-in configured,
//!   `302` to `/oauth2/start?rd=<original URL>`), `403` when denied.
//! - `POST /v1/decisions`: the same question as JSON, answered with the reason.
//! - `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::decision::{Decision, Outcome, Request};
use crate::Access;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// The session from the cookie or a bearer token.
fn session<'a>(headers: &'a HeaderMap, cookie: &str) -> Option<&'a str> {
    if let Some(bearer) = header(headers, "authorization").and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    }) {
        return Some(bearer.trim());
    }
    crate::signin::cookie(headers, cookie)
}

/// Where an unauthenticated browser should sign in, when the proxy passes a redirect on: not
/// nginx `auth_request` (it reports the original URL in `X-Original-URL` and only understands
/// 2xx, 401 and 403; its `error_page 401` does the redirect), but Traefik `forwardAuth` and Caddy
/// `forward_auth`, which send `X-Forwarded-Proto`/`-Host`/`-Uri` and return our answer as is.
fn sign_in_redirect(access: &Access, headers: &HeaderMap) -> Option<String> {
    if header(headers, "x-original-url").is_some()
        || !header(headers, "accept").is_some_and(|a| a.contains("text/html"))
    {
        return None;
    }
    let host = header(headers, "x-forwarded-host")?;
    let proto = header(headers, "x-forwarded-proto").unwrap_or("https");
    let uri = header(headers, "x-forwarded-uri").unwrap_or("/");
    crate::signin::start_location(access, &format!("{proto}://{host}{uri}"))
}

/// Host and path of the original request, as the proxy reports them.
fn original(headers: &HeaderMap, envoy_path: Option<&str>) -> (String, String) {
    if let Some(url) = header(headers, "x-original-url") {
        // nginx: X-Original-URL: https://host/path?query
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, String::from("/")), |(h, p)| (h, format!("/{p}")));
        return (
            host.to_owned(),
            path.split('?').next().unwrap_or("/").to_owned(),
        );
    }
    let host = header(headers, "x-forwarded-host")
        .or_else(|| header(headers, "host"))
        .unwrap_or_default()
        .to_owned();
    let path = match envoy_path {
        Some(path) => format!("/{path}"),
        None => header(headers, "x-forwarded-uri").unwrap_or("/").to_owned(),
    };
    (host, path.split('?').next().unwrap_or("/").to_owned())
}

fn record(access: &Access, decision: &Decision) {
    access.metrics.count(decision.outcome);
    if decision.outcome != Outcome::Allow {
        // Ids only: never userNames, emails or tokens.
        info!(
            outcome = ?decision.outcome,
            reason = %decision.reason,
            application = decision.application.as_deref().unwrap_or("-"),
            user.id = %decision.identity.as_ref().map(|i| i.id.to_string()).unwrap_or_default(),
            "access denied"
        );
    }
}

fn forward_auth(access: &Access, headers: &HeaderMap, envoy_path: Option<&str>) -> Response {
    let (host, path) = original(headers, envoy_path);
    let decision = access.decide(Request {
        host: &host,
        path: &path,
        session: session(headers, &access.config.cookie),
    });
    record(access, &decision);
    if decision.outcome == Outcome::Unauthenticated && envoy_path.is_none() {
        if let Some(location) = sign_in_redirect(access, headers) {
            if let Ok(location) = HeaderValue::from_str(&location) {
                return (
                    StatusCode::FOUND,
                    [(header::LOCATION, location)],
                    decision.reason,
                )
                    .into_response();
            }
        }
    }
    let status = StatusCode::from_u16(decision.outcome.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut response = (status, decision.reason.clone()).into_response();
    if let (Outcome::Allow, Some(identity)) = (decision.outcome, &decision.identity) {
        let groups = identity.groups.join(",");
        let email = identity.email.clone().unwrap_or_default();
        for (name, value) in [
            ("x-auth-request-user", identity.user_name.as_str()),
            ("x-auth-request-email", email.as_str()),
            ("x-auth-request-groups", groups.as_str()),
            ("remote-user", identity.user_name.as_str()),
            ("remote-groups", groups.as_str()),
            ("remote-email", email.as_str()),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
    }
    response
}

/// `GET /auth`
pub async fn auth(State(access): State<Access>, headers: HeaderMap) -> Response {
    forward_auth(&access, &headers, None)
}

/// `GET /auth/{*path}` (Envoy)
pub async fn auth_path(
    State(access): State<Access>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    forward_auth(&access, &headers, Some(&path))
}

/// The decision API's question.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// The session token.
    pub session: Option<String>,
    /// The host.
    pub host: String,
    /// The path (default `/`).
    #[serde(default)]
    pub path: Option<String>,
}

/// `POST /v1/decisions`
pub async fn decisions(
    State(access): State<Access>,
    body: Result<Json<Question>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(question) = match body {
        Ok(body) => body,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": error.body_text()})),
            )
                .into_response()
        }
    };
    let path = question.path.as_deref().unwrap_or("/");
    let decision = access.decide(Request {
        host: &question.host,
        path,
        session: question.session.as_deref(),
    });
    record(&access, &decision);
    let allowed = decision.outcome == Outcome::Allow;
    (
        StatusCode::OK,
        Json(json!({"allow": allowed, "status": decision.outcome.status(), "decision": decision})),
    )
        .into_response()
}

/// `GET /healthz`: alive, with the state's freshness.
pub async fn healthz(State(access): State<Access>) -> Response {
    let stale = access.is_stale();
    let body = json!({
        "ready": access.health.is_ready(),
        "stale": stale,
        "fail_open": access.config.fail_open,
        "silence_ms": access.health.silence().as_millis() as u64,
        "applied_sequence": access.applied(),
    });
    let status = if stale && !access.config.fail_open {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// `GET /readyz`: `200` once the whole state is loaded and fresh.
pub async fn readyz(State(access): State<Access>) -> Response {
    if access.health.is_ready() && (access.config.fail_open || !access.is_stale()) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading or stale").into_response()
    }
}

/// `GET /metrics`
pub async fn metrics(State(access): State<Access>) -> Response {
    let (users, groups) = access.size();
    let text = access
        .metrics
        .render(users, groups, access.applied(), access.is_stale());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
