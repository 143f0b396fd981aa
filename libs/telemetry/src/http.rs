//! The request span and the error log every Rollcall HTTP service shares: one `http.request`
//! span per request, and each error logged once, inside that span, when the response leaves.
//!
//! A service's error type renders its own protocol's body and attaches a [`ResponseError`] to
//! the response's extensions; [`layer`] finds it there. A server fault is logged at `error` with
//! its cause (never shown to the client); a `503` the client should retry at `warn` with its
//! cause; a refusal at `info` with its status and a stable keyword only, because its detail may
//! echo client input (a filter's userName).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::MatchedPath;
use http::{Request, Response};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::field::Empty;
use tracing::{error, info, info_span, warn, Span};

/// What a failed request tells the log, attached to its response by the service's error type.
#[derive(Debug, Clone)]
pub struct ResponseError(Arc<Logged>);

#[derive(Debug)]
enum Logged {
    Failure(String),
    Degraded(String),
    Refusal(Cow<'static, str>),
}

impl ResponseError {
    /// A server-side fault (PostgreSQL, NATS, a bug): logged at `error` with `cause`, which must
    /// hold no secret and no personal data (ids only).
    pub fn failure(cause: impl std::fmt::Display) -> Self {
        Self(Arc::new(Logged::Failure(cause.to_string())))
    }

    /// A failure that is handled and that the client is told to retry (`503` with
    /// `Retry-After`: a server behind the service is out of reach or busy): logged at `warn`
    /// with `cause`, under the same rules as [`ResponseError::failure`].
    pub fn degraded(cause: impl std::fmt::Display) -> Self {
        Self(Arc::new(Logged::Degraded(cause.to_string())))
    }

    /// A refusal of the client's request: logged at `info` with the status and `keyword` (a
    /// fixed word such as `invalidFilter` or `unauthorized`, never client input).
    pub fn refusal(keyword: impl Into<Cow<'static, str>>) -> Self {
        Self(Arc::new(Logged::Refusal(keyword.into())))
    }

    /// Attaches this record to `response`, for [`layer`] to log.
    pub fn attach<B>(self, response: &mut Response<B>) {
        response.extensions_mut().insert(self);
    }
}

/// Opens the `http.request` span of a request (STYLE §5): `otel.name = "{method} {route}"`,
/// `http.request.method`, `http.route`, and, recorded later, `http.response.status_code`,
/// `request.id` and `tenant`. Continues the caller's trace from `traceparent`.
#[derive(Debug, Clone, Copy)]
pub struct RequestSpan {
    service: &'static str,
}

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        let span = info_span!(
            "http.request",
            otel.name = %format!("{} {route}", request.method()),
            otel.kind = "server",
            service = self.service,
            http.request.method = %request.method(),
            http.route = %route,
            http.response.status_code = Empty,
            request.id = Empty,
            tenant = Empty,
        );
        crate::set_parent_from_http(&span, request.headers());
        span
    }
}

/// Records the status on the span and logs the response's [`ResponseError`], if any, once.
#[derive(Debug, Clone, Copy)]
pub struct LogErrors;

impl<B> OnResponse<B> for LogErrors {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        let status = response.status().as_u16();
        span.record("http.response.status_code", status);
        let Some(ResponseError(logged)) = response.extensions().get::<ResponseError>() else {
            return;
        };
        match logged.as_ref() {
            Logged::Failure(cause) => error!(
                status,
                cause = %cause,
                latency_ms = latency.as_millis() as u64,
                "request failed"
            ),
            Logged::Degraded(cause) => warn!(
                status,
                cause = %cause,
                latency_ms = latency.as_millis() as u64,
                "request not served; the client may retry"
            ),
            Logged::Refusal(keyword) => info!(status, keyword = %keyword, "request refused"),
        }
    }
}

/// The layer type [`layer`] returns.
pub type RequestTraceLayer =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), LogErrors, (), (), ()>;

/// The shared request span and error log of the service named `service` (`scim`, `audit`,
/// `access`). Apply it as the router's outermost layer, where axum's `MatchedPath` is known.
/// tower-http's own failure log is off: each error is logged once, by [`LogErrors`].
pub fn layer(service: &'static str) -> RequestTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan { service })
        .on_request(())
        .on_response(LogErrors)
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    async fn fails() -> Response<axum::body::Body> {
        let mut response = Response::new(axum::body::Body::from("{}"));
        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        ResponseError::failure("marker-cause-7f3a").attach(&mut response);
        response
    }

    async fn degrades() -> Response<axum::body::Body> {
        let mut response = Response::new(axum::body::Body::from("{}"));
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        ResponseError::degraded("marker-degraded-2b4d").attach(&mut response);
        response
    }

    async fn refuses() -> Response<axum::body::Body> {
        let mut response = Response::new(axum::body::Body::from("secret@example.com"));
        *response.status_mut() = http::StatusCode::BAD_REQUEST;
        ResponseError::refusal("marker-keyword-9c1e").attach(&mut response);
        response
    }

    async fn request(router: Router, path: &str) {
        let request = Request::builder()
            .uri(path)
            .body(axum::body::Body::empty())
            .expect("request");
        let _ = router.oneshot(request).await;
    }

    #[tokio::test]
    async fn failures_are_logged_once_with_their_cause_and_refusals_never_as_warnings() {
        crate::init_for_tests();
        let router = Router::new()
            .route("/fails", get(fails))
            .route("/degrades", get(degrades))
            .route("/refuses", get(refuses))
            .layer(layer("test"));
        request(router.clone(), "/fails").await;
        request(router.clone(), "/degrades").await;
        request(router, "/refuses").await;
        let logs = crate::captured_logs();
        let failures: Vec<_> = logs
            .iter()
            .filter(|l| l.contains("marker-cause-7f3a"))
            .collect();
        assert_eq!(failures.len(), 1, "{logs:?}");
        assert!(failures[0].contains("request failed"));
        let degraded: Vec<_> = logs
            .iter()
            .filter(|l| l.contains("marker-degraded-2b4d"))
            .collect();
        assert_eq!(degraded.len(), 1, "{logs:?}");
        assert!(degraded[0].contains("status=503"), "{logs:?}");
        // tower-http's own failure log would say it a second time.
        assert!(
            !logs.iter().any(|l| l.contains("response failed")),
            "{logs:?}"
        );
        // Refusals are `info`: below what the capture keeps, and never the response body.
        assert!(!logs.iter().any(|l| l.contains("marker-keyword-9c1e")));
        assert!(!logs.iter().any(|l| l.contains("secret@example.com")));
    }
}
