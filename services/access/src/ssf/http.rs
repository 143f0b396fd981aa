//! The transmitter's HTTP API (SSF 1.0 §7–8, RFC 8936), on the access service's listener.
//!
//! | Method and path | What |
//! | --- | --- |
//! | `GET /.well-known/ssf-configuration/<tenant>` | transmitter metadata (no token) |
//! | `GET /ssf/<tenant>/jwks.json` | the signing keys (no token) |
//! | `POST`/`GET`/`PATCH`/`PUT`/`DELETE /ssf/<tenant>/streams` | stream configuration (`?stream_id=`) |
//! | `GET`/`POST /ssf/<tenant>/status` | stream status |
//! | `POST /ssf/<tenant>/subjects/add`, `/subjects/remove` | subjects |
//! | `POST /ssf/<tenant>/verify` | verification |
//! | `POST /ssf/<tenant>/poll/<stream_id>` | poll delivery |
//!
//! Everything but discovery and keys takes `Authorization: Bearer <token of scope ssf>` of the
//! tenant (RFC 6750). Errors are JSON `{"error": <code>, "description": <text>}`; bad input is
//! a `400` naming the field, and nothing is stored.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollcall_domain::ssf::{Delivery, Initiator, Status, StreamCommand, StreamSpec};
use rollcall_eventlog::Actor;
use rollcall_store::tenant::TokenInfo;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tracing::{info, warn};
use uuid::Uuid;

use super::deliver::{self, audience, delivered_events, PollRequest};
use super::signals::{self, normalize_subject};
use super::streams::{self, ChangeError, Entry};
use super::Transmitter;
use crate::Access;

/// How many subjects one stream may leave out.
pub const MAX_REMOVED_SUBJECTS: usize = 1000;
/// How many live streams a tenant may have.
pub const MAX_STREAMS: usize = 50;
const MAX_URL: usize = 2048;
const MAX_TEXT: usize = 1024;
const MAX_AUTHORIZATION: usize = 4096;
const MAX_EVENTS_REQUESTED: usize = 64;
const MAX_AUD: usize = 16;

/// An error of the SSF API.
#[derive(Debug)]
pub struct SsfError {
    status: StatusCode,
    code: &'static str,
    description: String,
    retry_after: Option<u64>,
}

impl SsfError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    fn bad(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such stream")
    }

    fn unavailable(cause: impl std::fmt::Display) -> Self {
        warn!(error = %cause, "the Shared Signals API could not answer");
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the event stream or the database did not answer; retry",
            )
        }
    }
}

impl IntoResponse for SsfError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.code, "description": self.description})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<ChangeError> for SsfError {
    fn from(error: ChangeError) -> Self {
        match error {
            ChangeError::Refused(rollcall_domain::ssf::StreamError::NotFound) => Self::not_found(),
            ChangeError::Refused(other) => {
                Self::new(StatusCode::CONFLICT, "conflict", other.to_string())
            }
            ChangeError::Conflict => Self::new(StatusCode::CONFLICT, "conflict", error.to_string()),
            ChangeError::Unavailable(cause) => Self::unavailable(cause),
        }
    }
}

fn transmitter(access: &Access) -> Result<&Transmitter, SsfError> {
    access.ssf.get().ok_or_else(|| {
        SsfError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this access service does not transmit Shared Signals (ROLLCALL_SSF_PUBLIC_URL is not set)",
        )
    })
}

/// The receiver's token, of scope `ssf` and of `tenant`.
async fn receiver(
    transmitter: &Transmitter,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<TokenInfo, SsfError> {
    valid_tenant(tenant)?;
    let unauthorized = || {
        SsfError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "Authorization: Bearer <a token of scope ssf> is required (rollcall tokens create --tenant T --scope ssf)",
        )
    };
    let presented = rollcall_http::bearer_token(headers).ok_or_else(unauthorized)?;
    let token = transmitter
        .tokens
        .verify(&transmitter.store, presented)
        .await
        .map_err(SsfError::unavailable)?
        .ok_or_else(unauthorized)?;
    if token.tenant != tenant {
        return Err(SsfError::new(
            StatusCode::FORBIDDEN,
            "access_denied",
            "this token belongs to another tenant",
        ));
    }
    Ok(token)
}

fn actor(token: &TokenInfo) -> Actor {
    Actor::SsfReceiver {
        token_id: token.id.clone(),
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| format!("ssf-{}", Uuid::now_v7()), str::to_owned)
}

/// The stream configuration as SSF §8.1.1 shows it (never the authorization header).
pub fn configuration(transmitter: &Transmitter, id: Uuid, entry: &Entry) -> Option<Value> {
    let live = entry.state.live()?;
    let spec = &live.spec;
    let endpoint_url = match &spec.delivery {
        Delivery::Push { endpoint_url, .. } => endpoint_url.clone(),
        Delivery::Poll => format!("{}/poll/{id}", transmitter.endpoints(&entry.tenant)),
    };
    let mut config = json!({
        "stream_id": id.to_string(),
        "iss": transmitter.issuer(&entry.tenant),
        "aud": audience(spec),
        "events_supported": signals::SUPPORTED,
        "events_requested": spec.events_requested,
        "events_delivered": delivered_events(spec),
        "delivery": {"method": spec.delivery.method(), "endpoint_url": endpoint_url},
        "min_verification_interval": transmitter.config.min_verification_interval,
    });
    if let Some(description) = &spec.description {
        config["description"] = json!(description);
    }
    Some(config)
}

/// `GET /.well-known/ssf-configuration/<tenant>`
pub async fn discovery(
    State(access): State<Access>,
    Path(tenant): Path<String>,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    known_tenant(transmitter, &tenant).await?;
    let endpoints = transmitter.endpoints(&tenant);
    Ok(Json(json!({
        "spec_version": "1_0",
        "issuer": transmitter.issuer(&tenant),
        "jwks_uri": format!("{endpoints}/jwks.json"),
        "delivery_methods_supported": [rollcall_domain::ssf::PUSH, rollcall_domain::ssf::POLL],
        "configuration_endpoint": format!("{endpoints}/streams"),
        "status_endpoint": format!("{endpoints}/status"),
        "add_subject_endpoint": format!("{endpoints}/subjects/add"),
        "remove_subject_endpoint": format!("{endpoints}/subjects/remove"),
        "verification_endpoint": format!("{endpoints}/verify"),
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}, {"spec_urn": "urn:ietf:rfc:6749"}],
        "default_subjects": "ALL",
    }))
    .into_response())
}

/// A tenant name as Rollcall names tenants; anything else is not one (`404`, without asking
/// the database).
fn valid_tenant(tenant: &str) -> Result<(), SsfError> {
    let plausible = !tenant.is_empty()
        && tenant.len() <= 128
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plausible {
        Ok(())
    } else {
        Err(SsfError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such tenant",
        ))
    }
}

async fn known_tenant(transmitter: &Transmitter, tenant: &str) -> Result<(), SsfError> {
    valid_tenant(tenant)?;
    let known = transmitter
        .store
        .tenant_exists(tenant)
        .await
        .map_err(SsfError::unavailable)?;
    if known {
        Ok(())
    } else {
        Err(SsfError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such tenant",
        ))
    }
}

/// `GET /ssf/<tenant>/jwks.json`
pub async fn jwks(
    State(access): State<Access>,
    Path(tenant): Path<String>,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    known_tenant(transmitter, &tenant).await?;
    let mut response = Json(transmitter.keys().signer().jwks().clone()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(response)
}

/// The `?stream_id=` of a request.
#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    stream_id: Option<String>,
}

fn stream_id(text: Option<&str>) -> Result<Uuid, SsfError> {
    let text = text.ok_or_else(|| SsfError::bad("stream_id is required"))?;
    Uuid::parse_str(text).map_err(|_| SsfError::not_found())
}

/// The tenant's live stream `id`, or `404` (also for another tenant's stream).
fn own_stream(transmitter: &Transmitter, tenant: &str, id: Uuid) -> Result<Entry, SsfError> {
    transmitter
        .stream(id)
        .filter(|entry| entry.tenant == tenant && entry.state.live().is_some())
        .ok_or_else(SsfError::not_found)
}

fn body_object(body: &Bytes) -> Result<Map<String, Value>, SsfError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(SsfError::bad("the body must be a JSON object")),
        Err(error) => Err(SsfError::bad(format!("the body is not JSON: {error}"))),
    }
}

/// A string field: no control characters, at most `max` bytes.
fn text(value: &Value, field: &str, max: usize) -> Result<String, SsfError> {
    let text = value
        .as_str()
        .ok_or_else(|| SsfError::bad(format!("{field} must be a string")))?;
    if text.len() > max {
        return Err(SsfError::bad(format!("{field} is longer than {max} bytes")));
    }
    if text.chars().any(char::is_control) {
        return Err(SsfError::bad(format!("{field} holds a control character")));
    }
    Ok(text.to_owned())
}

fn texts(value: &Value, field: &str, max_items: usize) -> Result<Vec<String>, SsfError> {
    let items = match value {
        Value::String(_) => vec![value.clone()],
        Value::Array(items) => items.clone(),
        _ => {
            return Err(SsfError::bad(format!(
                "{field} must be a string or an array of strings"
            )))
        }
    };
    if items.len() > max_items {
        return Err(SsfError::bad(format!(
            "{field} holds more than {max_items} entries"
        )));
    }
    items
        .iter()
        .map(|item| text(item, field, MAX_TEXT))
        .collect()
}

/// Refuses an object with a member not in `allowed` (`what` names such members).
fn only(object: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), SsfError> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(unknown) => Err(SsfError::bad(format!("unknown {what} {unknown:?}"))),
        None => Ok(()),
    }
}

/// Checks a push endpoint: an absolute `https` URL (`http` only on loopback).
fn endpoint(transmitter: &Transmitter, value: &Value) -> Result<String, SsfError> {
    let text = text(value, "delivery.endpoint_url", MAX_URL)?;
    let url = url::Url::parse(&text)
        .map_err(|_| SsfError::bad("delivery.endpoint_url must be an absolute URL"))?;
    let internal = match url.host() {
        Some(url::Host::Ipv4(ip)) => super::is_internal(ip.into()),
        Some(url::Host::Ipv6(ip)) => super::is_internal(ip.into()),
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost") || name.ends_with(".localhost")
        }
        None => true,
    };
    let allowed = transmitter.config.allow_internal_endpoints;
    if internal && !allowed {
        return Err(SsfError::bad(
            "delivery.endpoint_url names a loopback, private or link-local address; receivers are reached on public addresses (ROLLCALL_SSF_ALLOW_INTERNAL_ENDPOINTS allows others)",
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if internal && allowed => {}
        _ => {
            return Err(SsfError::bad(
                "delivery.endpoint_url must be https (http only to internal addresses, where they are allowed)",
            ))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SsfError::bad(
            "delivery.endpoint_url must not carry credentials; send authorization_header",
        ));
    }
    Ok(text)
}

/// Whether two URLs have the same scheme, host and port.
fn same_origin(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// The fields a receiver sends; transmitter-supplied ones are accepted and ignored.
const FIELDS: [&str; 10] = [
    "stream_id",
    "iss",
    "aud",
    "events_supported",
    "events_requested",
    "events_delivered",
    "delivery",
    "description",
    "min_verification_interval",
    "inactivity_timeout",
];

/// Reads a receiver's configuration over `base` (a new stream's defaults, or the current
/// configuration for PATCH); `replace` resets what the body leaves out (PUT).
fn read_spec(
    transmitter: &Transmitter,
    id: Uuid,
    body: &Map<String, Value>,
    base: &StreamSpec,
    replace: bool,
    creating: bool,
) -> Result<StreamSpec, SsfError> {
    only(body, &FIELDS, "stream property")?;
    let mut spec = base.clone();
    if replace {
        spec.events_requested = Vec::new();
        spec.description = None;
        spec.delivery = Delivery::Poll;
    }
    if let Some(aud) = body.get("aud") {
        let aud = texts(aud, "aud", MAX_AUD)?;
        if aud.is_empty() {
            return Err(SsfError::bad("aud must name at least one audience"));
        }
        if !creating && aud != base.aud {
            return Err(SsfError::bad("aud cannot be changed; create a new stream"));
        }
        spec.aud = aud;
    }
    if let Some(events) = body.get("events_requested") {
        if !events.is_array() {
            return Err(SsfError::bad(
                "events_requested must be an array of event type URIs",
            ));
        }
        spec.events_requested = texts(events, "events_requested", MAX_EVENTS_REQUESTED)?;
    }
    match body.get("description") {
        Some(Value::Null) => spec.description = None,
        Some(value) => spec.description = Some(text(value, "description", MAX_TEXT)?),
        None => {}
    }
    if let Some(delivery) = body.get("delivery") {
        let delivery = delivery
            .as_object()
            .ok_or_else(|| SsfError::bad("delivery must be an object"))?;
        only(
            delivery,
            &["method", "endpoint_url", "authorization_header"],
            "delivery property",
        )?;
        let method = delivery
            .get("method")
            .map(|m| text(m, "delivery.method", MAX_TEXT))
            .transpose()?
            .unwrap_or_else(|| rollcall_domain::ssf::POLL.to_owned());
        spec.delivery = match method.as_str() {
            rollcall_domain::ssf::PUSH => {
                let endpoint_url = endpoint(
                    transmitter,
                    delivery.get("endpoint_url").ok_or_else(|| {
                        SsfError::bad("push delivery needs delivery.endpoint_url")
                    })?,
                )?;
                // The header is kept only for the same receiver: never sent to another origin.
                let kept = match &base.delivery {
                    Delivery::Push {
                        authorization_sealed,
                        endpoint_url: before,
                    } if !replace && same_origin(before, &endpoint_url) => {
                        authorization_sealed.clone()
                    }
                    _ => None,
                };
                let authorization_sealed = match delivery.get("authorization_header") {
                    Some(Value::Null) => None,
                    Some(value) => {
                        let header =
                            text(value, "delivery.authorization_header", MAX_AUTHORIZATION)?;
                        HeaderValue::from_str(&header).map_err(|_| {
                            SsfError::bad(
                                "delivery.authorization_header is not a valid header value",
                            )
                        })?;
                        Some(
                            deliver::seal_authorization(transmitter, id, &header)
                                .map_err(SsfError::unavailable)?,
                        )
                    }
                    None => kept,
                };
                Delivery::Push {
                    endpoint_url,
                    authorization_sealed,
                }
            }
            rollcall_domain::ssf::POLL => {
                if delivery.contains_key("authorization_header") {
                    return Err(SsfError::bad(
                        "authorization_header is for push delivery only",
                    ));
                }
                Delivery::Poll
            }
            other => {
                return Err(SsfError::bad(format!(
                    "delivery.method {other:?} is not supported: use {} (push) or {} (poll)",
                    rollcall_domain::ssf::PUSH,
                    rollcall_domain::ssf::POLL
                )))
            }
        };
    }
    Ok(spec)
}

/// Appends a change and waits until this replica's catalog holds it.
async fn write(
    transmitter: &Transmitter,
    tenant: &str,
    id: Uuid,
    entry: Option<&Entry>,
    command: StreamCommand,
    token: &TokenInfo,
    headers: &HeaderMap,
) -> Result<(), SsfError> {
    let (events, sequence) = streams::change(
        &transmitter.log,
        tenant,
        id,
        entry,
        command,
        &actor(token),
        &request_id(headers),
    )
    .await?;
    if !events.is_empty() {
        info!(tenant = %tenant, stream = %id, token = %token.id, event = rollcall_domain::EventKind::event_type(&events[0]), "SSF stream changed");
    }
    if !transmitter.caught_up(sequence).await {
        return Err(SsfError::unavailable(
            "the change is written but not yet read back here",
        ));
    }
    Ok(())
}

/// `POST /ssf/<tenant>/streams`
pub async fn create(
    State(access): State<Access>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    let token = receiver(transmitter, &headers, &tenant).await?;
    let body = body_object(&body)?;
    if body.contains_key("stream_id") {
        return Err(SsfError::bad(
            "stream_id is chosen by Rollcall; leave it out",
        ));
    }
    if transmitter.streams(Some(&tenant)).len() >= MAX_STREAMS {
        return Err(SsfError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "the tenant has {MAX_STREAMS} streams, the most Rollcall keeps; delete one first"
            ),
        ));
    }
    let id = Uuid::new_v4();
    let default_aud = format!("{}/receivers/{}", transmitter.issuer(&tenant), token.id);
    let base = StreamSpec {
        aud: vec![default_aud],
        events_requested: Vec::new(),
        delivery: Delivery::Poll,
        description: None,
    };
    let spec = read_spec(transmitter, id, &body, &base, false, true)?;
    write(
        transmitter,
        &tenant,
        id,
        None,
        StreamCommand::Create(spec),
        &token,
        &headers,
    )
    .await?;
    let entry = own_stream(transmitter, &tenant, id)?;
    let config = configuration(transmitter, id, &entry).ok_or_else(SsfError::not_found)?;
    Ok((StatusCode::CREATED, Json(config)).into_response())
}

/// `GET /ssf/<tenant>/streams[?stream_id=]`
pub async fn read(
    State(access): State<Access>,
    Path(tenant): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    receiver(transmitter, &headers, &tenant).await?;
    match query.stream_id.as_deref() {
        Some(text) => {
            let id = stream_id(Some(text))?;
            let entry = own_stream(transmitter, &tenant, id)?;
            Ok(Json(configuration(transmitter, id, &entry)).into_response())
        }
        None => {
            let all: Vec<Value> = transmitter
                .streams(Some(&tenant))
                .iter()
                .filter_map(|(id, entry)| configuration(transmitter, *id, entry))
                .collect();
            Ok(Json(all).into_response())
        }
    }
}

async fn configure(
    access: Access,
    tenant: String,
    headers: HeaderMap,
    body: Bytes,
    replace: bool,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    let token = receiver(transmitter, &headers, &tenant).await?;
    let body = body_object(&body)?;
    let id = stream_id(body.get("stream_id").and_then(Value::as_str))?;
    let entry = own_stream(transmitter, &tenant, id)?;
    let live = entry.state.live().ok_or_else(SsfError::not_found)?;
    let spec = read_spec(transmitter, id, &body, &live.spec, replace, false)?;
    write(
        transmitter,
        &tenant,
        id,
        Some(&entry),
        StreamCommand::Configure(spec),
        &token,
        &headers,
    )
    .await?;
    let entry = own_stream(transmitter, &tenant, id)?;
    Ok(Json(configuration(transmitter, id, &entry)).into_response())
}

/// `PATCH /ssf/<tenant>/streams`
pub async fn update(
    State(access): State<Access>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    configure(access, tenant, headers, body, false).await
}

/// `PUT /ssf/<tenant>/streams`
pub async fn replace(
    State(access): State<Access>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    configure(access, tenant, headers, body, true).await
}

/// `DELETE /ssf/<tenant>/streams?stream_id=`
pub async fn delete(
    State(access): State<Access>,
    Path(tenant): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    let token = receiver(transmitter, &headers, &tenant).await?;
    let id = stream_id(query.stream_id.as_deref())?;
    let entry = own_stream(transmitter, &tenant, id)?;
    write(
        transmitter,
        &tenant,
        id,
        Some(&entry),
        StreamCommand::Delete,
        &token,
        &headers,
    )
    .await?;
    transmitter.forget_poll(id);
    // Its position becomes a tombstone now (the delivery would do it too, once it reads the
    // deletion; a delivery held by a pause never would).
    if let Err(error) = transmitter.store.forget_ssf_stream(id).await {
        warn!(stream = %id, error = %error, "the deleted stream's delivery state is kept; it delivers nothing");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn status_json(id: Uuid, entry: &Entry) -> Option<Value> {
    let live = entry.state.live()?;
    let mut status = json!({"stream_id": id.to_string(), "status": live.status.as_str()});
    if let Some(reason) = &live.reason {
        status["reason"] = json!(reason);
    }
    Some(status)
}

/// `GET /ssf/<tenant>/status?stream_id=`
pub async fn status(
    State(access): State<Access>,
    Path(tenant): Path<String>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    receiver(transmitter, &headers, &tenant).await?;
    let id = stream_id(query.stream_id.as_deref())?;
    let entry = own_stream(transmitter, &tenant, id)?;
    Ok(Json(status_json(id, &entry)).into_response())
}

/// `POST /ssf/<tenant>/status`
pub async fn set_status(
    State(access): State<Access>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    let token = receiver(transmitter, &headers, &tenant).await?;
    let body = body_object(&body)?;
    only(&body, &["stream_id", "status", "reason"], "property")?;
    let id = stream_id(body.get("stream_id").and_then(Value::as_str))?;
    let wanted = body
        .get("status")
        .and_then(Value::as_str)
        .and_then(Status::parse)
        .ok_or_else(|| SsfError::bad("status must be enabled, paused or disabled"))?;
    let reason = body
        .get("reason")
        .filter(|r| !r.is_null())
        .map(|r| text(r, "reason", MAX_TEXT))
        .transpose()?;
    let entry = own_stream(transmitter, &tenant, id)?;
    let command = StreamCommand::SetStatus {
        status: wanted,
        reason,
        by: Initiator::Receiver,
    };
    write(
        transmitter,
        &tenant,
        id,
        Some(&entry),
        command,
        &token,
        &headers,
    )
    .await?;
    let entry = own_stream(transmitter, &tenant, id)?;
    Ok(Json(status_json(id, &entry)).into_response())
}

/// Checks a subject (RFC 9493 or SSF complex): an object with a `format`, strings without
/// control characters, small.
fn subject(value: Option<&Value>) -> Result<Value, SsfError> {
    let subject = value
        .filter(|s| s.is_object())
        .ok_or_else(|| SsfError::bad("subject must be an object with a format"))?;
    match subject["format"].as_str() {
        Some("email" | "iss_sub") => {}
        Some(other) => {
            return Err(SsfError::bad(format!(
                "subject format {other:?} is not one Rollcall names people by: use email or iss_sub"
            )))
        }
        None => return Err(SsfError::bad("subject.format is required")),
    }
    fn clean(value: &Value) -> bool {
        match value {
            Value::String(s) => !s.chars().any(char::is_control),
            Value::Array(items) => items.iter().all(clean),
            Value::Object(map) => map
                .iter()
                .all(|(k, v)| !k.chars().any(char::is_control) && clean(v)),
            _ => true,
        }
    }
    if !clean(subject) {
        return Err(SsfError::bad("subject holds a control character"));
    }
    if subject.to_string().len() > 2048 {
        return Err(SsfError::bad("subject is larger than 2048 bytes"));
    }
    Ok(normalize_subject(subject))
}

async fn subjects(
    access: Access,
    tenant: String,
    headers: HeaderMap,
    body: Bytes,
    add: bool,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    let token = receiver(transmitter, &headers, &tenant).await?;
    let body = body_object(&body)?;
    only(&body, &["stream_id", "subject", "verified"], "property")?;
    if body.get("verified").is_some_and(|v| !v.is_boolean()) {
        return Err(SsfError::bad("verified must be true or false"));
    }
    let id = stream_id(body.get("stream_id").and_then(Value::as_str))?;
    let subject = subject(body.get("subject"))?;
    let entry = own_stream(transmitter, &tenant, id)?;
    let removed = entry.state.live().map_or(0, |live| live.removed.len());
    if !add && removed >= MAX_REMOVED_SUBJECTS {
        return Err(SsfError::bad(format!(
            "the stream leaves out {removed} subjects already, the most Rollcall keeps"
        )));
    }
    let command = if add {
        StreamCommand::AddSubject(subject)
    } else {
        StreamCommand::RemoveSubject(subject)
    };
    write(
        transmitter,
        &tenant,
        id,
        Some(&entry),
        command,
        &token,
        &headers,
    )
    .await?;
    Ok(if add {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    })
}

/// `POST /ssf/<tenant>/subjects/add`
pub async fn add_subject(
    State(access): State<Access>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    subjects(access, tenant, headers, body, true).await
}

/// `POST /ssf/<tenant>/subjects/remove`
pub async fn remove_subject(
    State(access): State<Access>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    subjects(access, tenant, headers, body, false).await
}

/// `POST /ssf/<tenant>/verify`
pub async fn verify(
    State(access): State<Access>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    let token = receiver(transmitter, &headers, &tenant).await?;
    let body = body_object(&body)?;
    only(&body, &["stream_id", "state"], "property")?;
    let id = stream_id(body.get("stream_id").and_then(Value::as_str))?;
    let state = body
        .get("state")
        .filter(|s| !s.is_null())
        .map(|s| text(s, "state", MAX_TEXT))
        .transpose()?;
    let entry = own_stream(transmitter, &tenant, id)?;
    let interval = transmitter.config.min_verification_interval as i64;
    if let Some(at) = entry.verified_at {
        let since = (OffsetDateTime::now_utc() - at).whole_seconds();
        if since < interval {
            return Err(SsfError {
                retry_after: Some((interval - since).max(1) as u64),
                ..SsfError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    format!("verification was asked for {since} s ago; the stream's min_verification_interval is {interval} s"),
                )
            });
        }
    }
    write(
        transmitter,
        &tenant,
        id,
        Some(&entry),
        StreamCommand::Verify(state),
        &token,
        &headers,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /ssf/<tenant>/poll/<stream_id>` (RFC 8936)
pub async fn poll(
    State(access): State<Access>,
    Path((tenant, stream)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, SsfError> {
    let transmitter = transmitter(&access)?;
    receiver(transmitter, &headers, &tenant).await?;
    let id = stream_id(Some(&stream))?;
    let entry = own_stream(transmitter, &tenant, id)?;
    if !matches!(
        entry.state.live().map(|l| &l.spec.delivery),
        Some(Delivery::Poll)
    ) {
        return Err(SsfError::bad("this stream is delivered by push, not poll"));
    }
    let request: PollRequest = if body.is_empty() {
        PollRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| SsfError::bad(format!("the poll request: {e}")))?
    };
    if request.ack.len() + request.set_errs.len() > 10_000 {
        return Err(SsfError::bad("acknowledge at most 10000 SETs per poll"));
    }
    if let Some(jti) = request
        .ack
        .iter()
        .chain(request.set_errs.keys())
        .find(|jti| jti.len() != 32 || !jti.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(SsfError::bad(format!(
            "{:?} is not the jti of a SET Rollcall sent",
            jti.chars().take(64).collect::<String>()
        )));
    }
    let (sets, more) = deliver::poll(transmitter, id, &tenant, request, deliver::LONG_POLL)
        .await
        .map_err(SsfError::unavailable)?;
    let sets: Map<String, Value> = sets
        .into_iter()
        .map(|(jti, token)| (jti, Value::String(token)))
        .collect();
    Ok(Json(json!({"sets": sets, "moreAvailable": more})).into_response())
}
