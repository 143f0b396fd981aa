//! The one error type of the SCIM API, answered as an RFC 7644 §3.12 body.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rollcall_domain::{GroupError, UserError};
use rollcall_eventlog::{AppendError, LoadError};
use rollcall_scim::{ScimError, MEDIA_TYPE};
use rollcall_store::StoreError;
use rollcall_telemetry::http::ScimType;
use rollcall_telemetry::metrics;

/// Everything a SCIM request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A protocol error with its own status and keyword.
    #[error("{0}")]
    Scim(#[from] ScimError),
    /// Missing or bad bearer token.
    #[error("a valid bearer token is required: send Authorization: Bearer <token> with a token from `rollcall tokens create`")]
    Unauthorized,
    /// `If-Match` did not match `meta.version`.
    #[error("If-Match {sent} does not match the current version {current}")]
    PreconditionFailed {
        /// What the client sent.
        sent: String,
        /// The current ETag.
        current: String,
    },
    /// The body is larger than allowed.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The write's event would be larger than the event stream takes (NATS `max_payload`, less
    /// room for headers); nothing was appended.
    #[error("this change would be recorded as an event of {size} bytes; the event stream takes at most {limit}: send fewer values or members per request")]
    EventTooLarge {
        /// The encoded event's size.
        size: usize,
        /// The largest event the stream takes.
        limit: usize,
    },
    /// The client sent the body too slowly.
    #[error("the request body was not received in time")]
    RequestTimeout,
    /// The method is not allowed on this endpoint.
    #[error("{method} is not allowed here")]
    MethodNotAllowed {
        /// The method.
        method: String,
    },
    /// Concurrent writes to one resource kept conflicting.
    #[error("the resource is being changed concurrently; retry")]
    Contended,
    /// The write is recorded, but its effect was not applied in the read model and the access
    /// service within the bound: Entra retries a `503`.
    #[error("the write is recorded but not yet in effect everywhere (not applied within {timeout:?}); retry")]
    NotApplied {
        /// The bound.
        timeout: std::time::Duration,
    },
    /// The projector quarantined an event of this resource: it takes no writes until an
    /// operator resolves it.
    #[error("this {resource} is quarantined: the projector could not apply its event at stream sequence {sequence} ({event_type}); an operator must resolve it (`rollcall projector quarantine list`)")]
    Quarantined {
        /// `User` or `Group`.
        resource: &'static str,
        /// The quarantined event's sequence.
        sequence: u64,
        /// Its type.
        event_type: String,
    },
    /// NATS or PostgreSQL is out of reach.
    #[error("{0}")]
    Unavailable(String),
    /// NATS or PostgreSQL failed.
    #[error("{0}")]
    Internal(String),
}

/// `Retry-After` seconds for a server that is out of reach or behind.
const RETRY_AFTER: &str = "5";

impl From<UserError> for ApiError {
    fn from(error: UserError) -> Self {
        match error {
            UserError::NotFound | UserError::Deleted | UserError::Erased => {
                ScimError::not_found("User not found").into()
            }
            UserError::AlreadyProvisioned => {
                ScimError::uniqueness("the User exists already").into()
            }
            UserError::UserNameRequired => ScimError::invalid_value("userName is required").into(),
            UserError::ActivationIsACommand => {
                ApiError::Internal("active changed as an attribute".into())
            }
            UserError::ReasonRequired => ScimError::invalid_value("a reason is required").into(),
        }
    }
}

impl From<GroupError> for ApiError {
    fn from(error: GroupError) -> Self {
        match error {
            GroupError::NotFound | GroupError::Deleted => {
                ScimError::not_found("Group not found").into()
            }
            GroupError::AlreadyCreated => ScimError::uniqueness("the Group exists already").into(),
            GroupError::DisplayNameRequired => {
                ScimError::invalid_value("displayName is required").into()
            }
        }
    }
}

impl From<LoadError> for ApiError {
    fn from(error: LoadError) -> Self {
        match error {
            LoadError::Nats(_) => ApiError::Unavailable(error.to_string()),
            _ => ApiError::Internal(error.to_string()),
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::Publish(_) => ApiError::Unavailable(error.to_string()),
            AppendError::TooLarge { size, limit } => ApiError::EventTooLarge { size, limit },
            _ => ApiError::Internal(error.to_string()),
        }
    }
}

impl From<rollcall_personal::PersonalError> for ApiError {
    fn from(error: rollcall_personal::PersonalError) -> Self {
        match error {
            // Erased since this process last read the user: it is gone.
            rollcall_personal::PersonalError::Store(StoreError::Erased { .. }) => {
                ScimError::not_found("User not found").into()
            }
            rollcall_personal::PersonalError::Store(error) => error.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            // Out of reach, or too busy to answer in time: the client retries.
            StoreError::Database(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed,
            ) => ApiError::Unavailable(error.to_string()),
            StoreError::Database(sqlx::Error::Database(database))
                if database.code().is_some_and(|code| {
                    ["08", "53", "57"]
                        .iter()
                        .any(|class| code.starts_with(class))
                }) =>
            {
                ApiError::Unavailable(error.to_string())
            }
            _ => ApiError::Internal(error.to_string()),
        }
    }
}

impl ApiError {
    /// Whether a write that failed so may still have appended its events (NATS or PostgreSQL
    /// failed on the way): everything else is refused before anything is appended.
    pub fn may_have_appended(&self) -> bool {
        matches!(self, ApiError::Unavailable(_) | ApiError::Internal(_))
    }

    /// The SCIM error a client sees. Server errors say nothing about their cause.
    pub fn to_scim(&self) -> ScimError {
        match self {
            ApiError::Scim(error) => error.clone(),
            ApiError::Unauthorized => ScimError::new(401, None, self.to_string()),
            ApiError::PreconditionFailed { .. } => ScimError::new(412, None, self.to_string()),
            ApiError::RequestTimeout => ScimError::new(408, None, self.to_string()),
            ApiError::PayloadTooLarge { .. } | ApiError::EventTooLarge { .. } => {
                ScimError::new(413, None, self.to_string())
            }
            ApiError::MethodNotAllowed { .. } => ScimError::new(405, None, self.to_string()),
            ApiError::Contended | ApiError::NotApplied { .. } | ApiError::Quarantined { .. } => {
                ScimError::new(503, None, self.to_string())
            }
            ApiError::Unavailable(_) => ScimError::new(
                503,
                None,
                "the event store or the database is out of reach; retry",
            ),
            ApiError::Internal(_) => ScimError::new(500, None, "internal error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let scim = self.to_scim();
        let status = StatusCode::from_u16(scim.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(scim.to_json())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        match &self {
            ApiError::Contended => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unavailable(_) => {
                metrics::counter!(metrics::SCIM_UNAVAILABLE).increment(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
            }
            ApiError::NotApplied { .. } | ApiError::Quarantined { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        if let Some(scim_type) = scim.scim_type {
            ScimType(scim_type.as_str()).attach(&mut response);
        }
        // The trace layer logs the cause inside the request span.
        response.extensions_mut().insert(Arc::new(self));
        response
    }
}
