//! `ScimJson`: the request body as JSON, size-limited, with every failure a SCIM error
//! (never axum's plain-text 4xx).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use rollcall_scim::ScimError;
use serde_json::Value;

use crate::error::ApiError;
use crate::AppState;

/// A JSON body of at most the configured size.
#[derive(Debug)]
pub struct ScimJson(pub Value);

impl FromRequest<AppState> for ScimJson {
    type Rejection = ApiError;

    async fn from_request(
        request: Request<Body>,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let limit = state.config.max_body_bytes;
        let bytes = axum::body::to_bytes(request.into_body(), limit)
            .await
            .map_err(|error| {
                let error = error.into_inner();
                if rollcall_http::is_body_timeout(error.as_ref()) {
                    ApiError::RequestTimeout
                } else if is_length_limit(error.as_ref()) {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ScimError::invalid_syntax("the request body could not be read").into()
                }
            })?;
        if bytes.is_empty() {
            return Err(
                ScimError::invalid_syntax("the request body is empty; send a JSON object").into(),
            );
        }
        serde_json::from_slice(&bytes)
            .map(ScimJson)
            .map_err(|error| {
                ScimError::invalid_syntax(format!("the request body is not valid JSON: {error}"))
                    .into()
            })
    }
}

/// Whether reading the body stopped at the size limit.
fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = error.source();
    }
    false
}
