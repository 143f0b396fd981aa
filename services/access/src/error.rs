//! The one error type of the access service's HTTP API, answered as JSON
//! (`{"status": 400, "error": "…"}`, never plain text) and logged once, by the shared layer
//! of `rollcall_telemetry::http`, inside the request's span. Sign-in pages (`/oauth2/*`) answer browsers with HTML instead:
//! see [`crate::signin`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollcall_telemetry::http::ResponseError;
use serde_json::json;

use crate::proxy::ProxyError;
use crate::target::TargetError;

/// Everything an access API request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The proxy's description of the original request is refused (or the trusted proxy is not
    /// configured).
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The host or path asked about is refused.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The body is not the JSON the endpoint takes.
    #[error("{0}")]
    Body(String),
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// The route does not take this method.
    #[error("this endpoint does not take this method")]
    MethodNotAllowed,
    /// A question about a user needs an audit token of the application's tenant.
    #[error("asking about a user (the policy tester) needs an audit token: Authorization: Bearer <rollcall tokens create --scope audit>")]
    Unauthorized,
    /// This access service cannot check audit tokens (it runs without the database).
    #[error("this access service runs without the database, so it cannot check audit tokens for the policy tester")]
    NoTester,
    /// The decision state is not loaded, or stale and failing closed.
    #[error("the access state is not loaded or is stale; try again in a moment")]
    Stale,
    /// The database did not answer (the cause is logged, not answered).
    #[error("the database did not answer")]
    Unavailable(String),
}

impl ApiError {
    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Proxy(error) if error.is_configuration() => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Proxy(_) | ApiError::Target(_) | ApiError::Body(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NoTester => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) | ApiError::Stale => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A JSON answer `{"status": …, "error": …}` (also used for forward-auth's `401` and `403`).
pub fn json_error(status: StatusCode, error: &str) -> Response {
    let mut response = (
        status,
        Json(json!({"status": status.as_u16(), "error": error})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl ApiError {
    /// What the shared error log records: a misconfiguration as a failure with its cause; a
    /// refusal by a fixed keyword only (the message names a header or rule, but a body's parse
    /// error may quote what was sent, a session token).
    fn log_record(&self) -> ResponseError {
        match self {
            ApiError::Proxy(error) if error.is_configuration() => ResponseError::failure(error),
            ApiError::Proxy(_) => ResponseError::refusal("proxyHeaders"),
            ApiError::Target(_) => ResponseError::refusal("invalidTarget"),
            ApiError::Body(_) => ResponseError::refusal("invalidBody"),
            ApiError::NotFound => ResponseError::refusal("notFound"),
            ApiError::MethodNotAllowed => ResponseError::refusal("methodNotAllowed"),
            ApiError::Unauthorized => ResponseError::refusal("unauthorized"),
            ApiError::NoTester => ResponseError::refusal("noTester"),
            ApiError::Unavailable(cause) => ResponseError::failure(cause),
            ApiError::Stale => ResponseError::refusal("staleState"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The messages name the header or rule at fault, never the value sent: safe to answer.
        let mut response = json_error(self.status(), &self.to_string());
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // Logged once, inside the request span, by rollcall_telemetry::http::layer.
        self.log_record().attach(&mut response);
        response
    }
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Known routes, other methods.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_json_with_its_status() {
        for (error, status) in [
            (ApiError::Proxy(ProxyError::NotConfigured), 500),
            (
                ApiError::Proxy(ProxyError::Conflicting {
                    header: "X-Forwarded-Host",
                }),
                400,
            ),
            (ApiError::Target(TargetError::EncodedSlash), 400),
            (ApiError::Body("missing field `host`".into()), 400),
            (ApiError::NotFound, 404),
            (ApiError::MethodNotAllowed, 405),
        ] {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        }
    }
}
