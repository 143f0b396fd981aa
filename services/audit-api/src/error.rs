//! The one error type of the audit API, answered as JSON (`{"status": 404, "error": "…"}`,
//! never plain text, the shape the access service answers too) and logged once by the shared
//! layer ([`rollcall_telemetry::http::layer`]). Path and query values that do not parse are
//! refused through [`PathValue`] and [`Params`], so axum's plain-text rejections never reach a
//! client.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollcall_store::StoreError;
use rollcall_telemetry::http::ResponseError;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::AuditError;

/// `Retry-After` seconds of a `503`.
const RETRY_AFTER: &str = "2";

/// Everything an audit request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No audit token, or not a live one.
    #[error("an audit token is required: Authorization: Bearer <token from `rollcall tokens create --scope audit`>")]
    Unauthorized,
    /// A parameter is refused; the message says which and why.
    #[error("{0}")]
    BadRequest(String),
    /// No such resource, route, or nothing at that instant.
    #[error("{0}")]
    NotFound(String),
    /// The route takes `GET` only.
    #[error("this endpoint takes GET only")]
    MethodNotAllowed,
    /// The tenant runs as many exports (and access reconstructions, which read its whole
    /// history too) as it may at once.
    #[error("this tenant already runs {limit} exports or access reconstructions at once (ROLLCALL_AUDIT_MAX_EXPORTS); retry when one has finished")]
    ExportsBusy {
        /// Exports per tenant at once.
        limit: usize,
    },
    /// Every connection of the audit pool stayed busy, or PostgreSQL is out of reach.
    #[error("the audit database is busy or out of reach: {0}")]
    Busy(String),
    /// A query ran longer than the audit statement timeout and PostgreSQL cancelled it.
    #[error("the query ran longer than the audit statement timeout (ROLLCALL_AUDIT_STATEMENT_TIMEOUT); narrow it with from, to or type")]
    TooSlow,
    /// Anything else: stored data unreadable, a bug.
    #[error(transparent)]
    Internal(AuditError),
}

impl ApiError {
    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ExportsBusy { .. } | ApiError::Busy(_) | ApiError::TooSlow => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the shared error log says of it: causes of server faults, keywords of refusals
    /// (a refusal's message can quote what the client sent).
    fn log_record(&self) -> ResponseError {
        match self {
            ApiError::Internal(cause) => ResponseError::failure(cause),
            ApiError::Busy(_) => ResponseError::degraded(self),
            ApiError::TooSlow => ResponseError::degraded("statement timeout"),
            ApiError::Unauthorized => ResponseError::refusal("unauthorized"),
            ApiError::BadRequest(_) => ResponseError::refusal("bad_request"),
            ApiError::NotFound(_) => ResponseError::refusal("not_found"),
            ApiError::MethodNotAllowed => ResponseError::refusal("method_not_allowed"),
            ApiError::ExportsBusy { .. } => ResponseError::refusal("exports_busy"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(_) => "internal error".to_owned(),
            ApiError::Busy(_) => "the audit database is busy or out of reach; retry".to_owned(),
            other => other.to_string(),
        };
        let mut response = (
            status,
            Json(json!({"status": status.as_u16(), "error": message})),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::ExportsBusy { .. } | ApiError::Busy(_) | ApiError::TooSlow => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
            }
            _ => {}
        }
        self.log_record().attach(&mut response);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::Database(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed,
            ) => ApiError::Busy(error.to_string()),
            // 57014 query_canceled: the statement timeout of the audit pool.
            StoreError::Database(sqlx::Error::Database(database))
                if database.code().as_deref() == Some("57014") =>
            {
                ApiError::TooSlow
            }
            _ => ApiError::Internal(AuditError::Store(error)),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::Store(error) => error.into(),
            other => ApiError::Internal(other),
        }
    }
}

/// A path parameter; a value that does not parse (an id that is not a UUID) is a JSON `400`.
#[derive(Debug)]
pub struct PathValue<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathValue<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PathValue(value))
            .map_err(|rejection| {
                ApiError::BadRequest(format!(
                    "the path is not valid here: {}",
                    rejection.body_text()
                ))
            })
    }
}

/// Query parameters; values that do not parse are a JSON `400`.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Params(value))
            .map_err(|rejection| {
                ApiError::BadRequest(format!(
                    "the query parameters are not valid: {}",
                    rejection.body_text()
                ))
            })
    }
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound(
        "no such endpoint; the audit API is under /audit/v1 (see /audit/v1/openapi.json)".into(),
    )
}

/// Known routes, other methods.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_json_with_its_status_and_server_faults_say_nothing_of_their_cause() {
        for (error, status) in [
            (ApiError::Unauthorized, 401),
            (ApiError::BadRequest("from must be …".into()), 400),
            (ApiError::NotFound("no user".into()), 404),
            (ApiError::MethodNotAllowed, 405),
            (ApiError::ExportsBusy { limit: 2 }, 503),
            (ApiError::Busy("pool timed out".into()), 503),
            (ApiError::TooSlow, 503),
            (
                ApiError::Internal(AuditError::Corrupt("secret-cause".into())),
                500,
            ),
        ] {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                status == 503
            );
            assert!(response.extensions().get::<ResponseError>().is_some());
        }
    }

    #[tokio::test]
    async fn an_internal_error_answers_without_its_cause() {
        let response =
            ApiError::Internal(AuditError::Corrupt("secret-cause".into())).into_response();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, json!({"status": 500, "error": "internal error"}));
    }
}
