//! Forward-auth for reverse proxies and the decision API.
//!
//! - `GET /auth` (nginx `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`) and
//!   `/auth/<path>` (Envoy `ext_authz` with `path_prefix: /auth`; any method): the original
//!   request from the headers of the proxy named by `ROLLCALL_TRUSTED_PROXY` only
//!   ([`crate::proxy`]), host and path normalized ([`crate::target`]). The session comes from
//!   the `rollcall_session` cookie or `Authorization: Bearer`. `200` with identity headers
//!   ([`crate::identity`]), `401` without a valid session (or, for a browser behind Traefik or
//!   Caddy with sign-in configured, `302` to `/oauth2/start?rd=<original URL>`), `403` when
//!   denied, `400` when the proxy's headers are refused, `500` when no proxy is configured.
//!   Every answer's body is JSON (`{"status": …, "error": <reason>}` on `401`/`403`); proxies
//!   read only the status and headers.
//! - `POST /v1/decisions`: the same question as JSON, answered with the reason.
//! - `GET /healthz`, `GET /readyz`, `GET /metrics` (the process's Prometheus text; decisions by
//!   outcome and reason, and the state's age and freshness, kept current by [`report_state`]).

use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollcall_telemetry::metrics;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::decision::{Decision, Outcome, Request};
use crate::error::{json_error, ApiError};
use crate::proxy;
use crate::target::{self, Target};
use crate::Access;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// The session from the cookie or a bearer token.
fn session<'a>(headers: &'a HeaderMap, cookie: &str) -> Option<&'a str> {
    if let Some(bearer) = rollcall_http::bearer_token(headers) {
        return Some(bearer);
    }
    crate::signin::cookie(headers, cookie)
}

fn record(decision: &Decision) {
    let outcome = match decision.outcome {
        Outcome::Allow => "allow",
        Outcome::Unauthenticated => "unauthenticated",
        Outcome::Deny => "deny",
    };
    metrics::counter!(
        metrics::ACCESS_DECISIONS,
        "outcome" => outcome,
        "reason" => decision.code.as_str()
    )
    .increment(1);
    if decision.outcome != Outcome::Allow {
        // Ids only: never userNames, emails or tokens.
        info!(
            outcome = ?decision.outcome,
            reason = %decision.reason,
            application = decision.application.as_deref().unwrap_or("-"),
            policy_version = decision.policy_version,
            user.id = %decision.identity.as_ref().map(|i| i.id.to_string()).unwrap_or_default(),
            "access denied"
        );
    }
}

fn forward_auth(
    access: &Access,
    headers: &HeaderMap,
    envoy_path: Option<&str>,
) -> Result<Response, ApiError> {
    let trusted = access.config.trusted_proxy;
    let original = proxy::original(trusted, headers, envoy_path)?;
    let decision = access.decide(Request {
        target: &original.target,
        session: session(headers, &access.config.cookie),
    });
    record(&decision);
    // Where an unauthenticated browser should sign in, when the proxy passes a redirect on.
    let browser = header(headers, "accept").is_some_and(|a| a.contains("text/html"));
    if decision.outcome == Outcome::Unauthenticated
        && browser
        && trusted.is_some_and(proxy::TrustedProxy::passes_redirects)
    {
        if let Some(location) = crate::signin::start_location(access, &original.url())
            .and_then(|l| HeaderValue::from_str(&l).ok())
        {
            let mut response = json_error(StatusCode::FOUND, &decision.reason);
            response.headers_mut().insert(header::LOCATION, location);
            return Ok(response);
        }
    }
    let status = StatusCode::from_u16(decision.outcome.status()).unwrap_or(StatusCode::FORBIDDEN);
    let (Outcome::Allow, Some(identity)) = (decision.outcome, &decision.identity) else {
        return Ok(json_error(status, &decision.reason));
    };
    let mut response = Json(json!({"status": 200, "reason": decision.reason})).into_response();
    for (name, value) in crate::identity::headers(identity) {
        // Encoded values are visible ASCII: always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    Ok(response)
}

/// `GET /auth`
pub async fn auth(State(access): State<Access>, headers: HeaderMap) -> Result<Response, ApiError> {
    forward_auth(&access, &headers, None)
}

/// `/auth/{*path}` (Envoy, any method): the path is taken raw from the request line, never
/// percent-decoded by the router first.
pub async fn auth_path(
    State(access): State<Access>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = uri.path().strip_prefix("/auth").unwrap_or("/");
    let path = if path.is_empty() { "/" } else { path };
    forward_auth(&access, &headers, Some(path))
}

/// The decision API's question: a session's, or (the policy tester, with an audit token) a
/// user's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// The session token.
    pub session: Option<String>,
    /// A user of the audit token's tenant, by id, userName or externalId, instead of a
    /// session: the decision a session of theirs would get now, with every policy tried.
    pub user: Option<String>,
    /// The host.
    pub host: String,
    /// The path (default `/`; a query is ignored), normalized as forward-auth's is.
    #[serde(default)]
    pub path: Option<String>,
}

/// `POST /v1/decisions`
pub async fn decisions(
    State(access): State<Access>,
    headers: HeaderMap,
    body: Result<Json<Question>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(question) = body.map_err(|error| ApiError::Body(error.body_text()))?;
    let path = question.path.as_deref().unwrap_or("/");
    let target = Target::new(&question.host, target::without_query(path))?;
    if let Some(user) = &question.user {
        if question.session.is_some() {
            return Err(ApiError::Body(
                "ask about a session or a user, not both".into(),
            ));
        }
        let token = rollcall_http::bearer_token(&headers).ok_or(ApiError::Unauthorized)?;
        let tenant = access.tester_tenant(token).await?;
        if !access.is_fresh() {
            return Err(ApiError::Stale);
        }
        let (decision, trials) = access.decide_for_user(&target, &tenant, user);
        let allowed = decision.outcome == Outcome::Allow;
        return Ok((
            StatusCode::OK,
            Json(json!({"allow": allowed, "status": decision.outcome.status(), "decision": decision, "policies": trials})),
        )
            .into_response());
    }
    let decision = access.decide(Request {
        target: &target,
        session: question.session.as_deref(),
    });
    record(&decision);
    let allowed = decision.outcome == Outcome::Allow;
    Ok((
        StatusCode::OK,
        Json(json!({"allow": allowed, "status": decision.outcome.status(), "decision": decision})),
    )
        .into_response())
}

/// `GET /`: the app launcher. A signed-in person (the session cookie) sees the applications
/// they may reach now, linked; others are told to sign in through an application.
pub async fn launcher(State(access): State<Access>, headers: HeaderMap) -> Response {
    let Some(token) = session(&headers, &access.config.cookie) else {
        return crate::signin::page::page(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            &["Sign in through one of your applications, then come back to this page."],
        );
    };
    if !access.is_fresh() {
        let mut response = crate::signin::page::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not available now",
            &["Who may reach what is not known here right now. Try again in a moment."],
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    match access.launcher(token) {
        Ok((identity, applications)) => {
            crate::signin::page::launcher(&identity.user_name, &applications)
        }
        Err(refused) => {
            let status =
                StatusCode::from_u16(refused.outcome.status()).unwrap_or(StatusCode::FORBIDDEN);
            crate::signin::page::page(
                status,
                "No applications",
                &[
                    &refused.reason,
                    "Sign in again through one of your applications.",
                ],
            )
        }
    }
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
    let ready = access.health.is_ready() && (access.config.fail_open || !access.is_stale());
    let body = Json(json!({"ready": ready, "stale": access.is_stale()}));
    if ready {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// `GET /metrics`: every metric of this process, the state's gauges brought up to date first.
pub async fn metrics(State(access): State<Access>) -> Response {
    state_gauges(&access);
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(),
    )
        .into_response()
}

/// Sets the gauges of the decision state: loaded, stale, its age (time since NATS last
/// answered), the staleness bound, what it holds.
fn state_gauges(access: &Access) {
    let (users, groups) = access.size();
    let flag = |set: bool| if set { 1.0 } else { 0.0 };
    metrics::gauge!(metrics::ACCESS_READY).set(flag(access.health.is_ready()));
    metrics::gauge!(metrics::ACCESS_STALE).set(flag(access.is_stale()));
    metrics::gauge!(metrics::ACCESS_STATE_AGE).set(access.health.silence().as_secs_f64());
    metrics::gauge!(metrics::ACCESS_STALENESS_BOUND).set(access.config.staleness_seconds as f64);
    metrics::gauge!(metrics::ACCESS_USERS).set(users as f64);
    metrics::gauge!(metrics::ACCESS_GROUPS).set(groups as f64);
    metrics::gauge!(metrics::ACCESS_APPLIED_SEQUENCE).set(access.applied() as f64);
}

/// Keeps the state's gauges current every second while the service runs, so that a scrape of
/// another role's `/metrics` in the same process sees them too.
pub async fn report_state(access: Access) {
    metrics::install();
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        interval.tick().await;
        state_gauges(&access);
    }
}
