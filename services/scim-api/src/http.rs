//! HTTP plumbing shared by the handlers: who asked (request id, base URL, `If-Match`), the
//! query string read without case, and SCIM responses with `ETag` and `Location`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rollcall_scim::{Projection, QueryParams, ResourceType, ScimError, MEDIA_TYPE};
use serde_json::Value;

use crate::error::ApiError;
use crate::mapping::etag;
use crate::AppState;

/// The request id, set by the request-id middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What handlers need to know about a request besides its body.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The request id (also in `X-Request-Id` and every event it causes).
    pub request_id: String,
    /// The SCIM base URL for `location` and `$ref` (`http://host/scim/v2`).
    pub base: String,
    /// `If-Match`, if sent.
    pub if_match: Option<String>,
    /// Query parameters, names as sent.
    pub query: Vec<(String, String)>,
}

impl RequestInfo {
    /// A query parameter, its name compared without case.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The list parameters (RFC 7644 §3.4.2).
    pub fn list_params(&self) -> Result<QueryParams, ApiError> {
        let number = |name: &str| -> Result<Option<i64>, ApiError> {
            match self.param(name) {
                None | Some("") => Ok(None),
                Some(text) => text.trim().parse::<i64>().map(Some).map_err(|_| {
                    ScimError::invalid_value(format!("{name} must be an integer, not {text:?}"))
                        .into()
                }),
            }
        };
        let text = |name: &str| self.param(name).map(str::to_owned);
        Ok(QueryParams {
            filter: text("filter"),
            sort_by: text("sortBy"),
            sort_order: text("sortOrder"),
            start_index: number("startIndex")?,
            count: number("count")?,
            attributes: text("attributes"),
            excluded_attributes: text("excludedAttributes"),
        })
    }

    /// Checks `If-Match` against the current version, when the client sent one. Never required
    /// (Entra sends none; ENTRA.md §9).
    pub fn check_if_match(&self, current: &str) -> Result<(), ApiError> {
        match &self.if_match {
            Some(sent)
                if sent.trim() != "*" && !sent.split(',').any(|tag| tag.trim() == current) =>
            {
                Err(ApiError::PreconditionFailed {
                    sent: sent.clone(),
                    current: current.to_owned(),
                })
            }
            _ => Ok(()),
        }
    }
}

fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(public) = &state.config.public_url {
        return public.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http");
    format!("{scheme}://{host}/scim/v2")
}

impl FromRequestParts<AppState> for RequestInfo {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        let query = parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let if_match = parts
            .headers
            .get(header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self {
            request_id,
            base: base_url(state, &parts.headers),
            if_match,
            query,
        })
    }
}

/// `404` for a resource of type `rt` with this id.
pub(crate) fn not_found(rt: &ResourceType, id: &str) -> ApiError {
    ScimError::not_found(format!("{} {id} not found", rt.name)).into()
}

/// The id in a resource path; an id that is no UUID names nothing (`404`).
pub(crate) fn parse_id(rt: &ResourceType, id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id).map_err(|_| not_found(rt, id))
}

/// The request's `attributes`/`excludedAttributes` for resources of type `rt`.
pub(crate) fn projection(rt: &ResourceType, info: &RequestInfo) -> Result<Projection, ApiError> {
    Ok(Projection::parse(
        rt,
        info.param("attributes"),
        info.param("excludedAttributes"),
    )?)
}

/// One resource's response: its document, projected, with its `ETag` and `Location`.
pub fn resource(
    status: StatusCode,
    resource_type: &ResourceType,
    projection: &Projection,
    document: &Value,
    version: u64,
    base: &str,
    id: &impl std::fmt::Display,
) -> Response {
    let location = format!("{base}{}/{id}", resource_type.endpoint);
    scim(
        status,
        &projection.apply(resource_type, document),
        Some(&etag(version)),
        Some(&location),
    )
}

/// A SCIM JSON response.
pub fn scim(
    status: StatusCode,
    body: &Value,
    etag: Option<&str>,
    location: Option<&str>,
) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    response
}

/// `204 No Content` with an ETag.
pub fn no_content(etag: Option<&str>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}
