//! The request span and the error log every Rollcall HTTP service shares: one `http.request`
//! span per request, and each error logged once, inside that span, when the response leaves.
//!
//! A service's error type renders its own protocol's body and attaches a [`ResponseError`] to
//! the response's extensions; [`layer`] finds it there. A server fault is logged at `error` with
//! its cause (never shown to the client); a `503` the client should retry at `warn` with its
//! cause; a refusal at `info` with its status and a stable keyword only, because its detail may
//! echo client input (a filter's userName).
//!
//! The same layer counts every request and times it ([`crate::metrics::HTTP_REQUESTS`],
//! [`crate::metrics::HTTP_REQUEST_DURATION`]) by the matched route template, never the path; a
//! SCIM error adds its `scimType` through a [`ScimType`] on the response. [`metrics`] is the
//! `GET /metrics` handler every router mounts.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::MatchedPath;
use axum::response::IntoResponse;
use http::{Method, Request, Response};
use tower::layer::util::Stack;
use tower::{Layer, Service};
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

/// The request span and error log half of [`layer`].
pub type RequestTraceLayer =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), LogErrors, (), (), ()>;

/// The layer type [`layer`] returns: the request span outermost, the request metrics inside it.
pub type RequestLayer = Stack<RequestMetricsLayer, RequestTraceLayer>;

/// The shared request span, error log and request metrics of the service named `service`
/// (`scim`, `audit`, `access`). Apply it as the router's outermost layer, where axum's
/// `MatchedPath` is known. tower-http's own failure log is off: each error is logged once, by
/// [`LogErrors`].
pub fn layer(service: &'static str) -> RequestLayer {
    let trace = TraceLayer::new_for_http()
        .make_span_with(RequestSpan { service })
        .on_request(())
        .on_response(LogErrors)
        .on_body_chunk(())
        .on_eos(())
        .on_failure(());
    Stack::new(RequestMetricsLayer::new(service), trace)
}

/// The SCIM error keyword (RFC 7644 §3.12 `scimType`) of a response, attached by the SCIM
/// API's error type: the `scim_type` label of [`crate::metrics::HTTP_REQUESTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScimType(pub &'static str);

impl ScimType {
    /// Attaches this keyword to `response`.
    pub fn attach<B>(self, response: &mut Response<B>) {
        response.extensions_mut().insert(self);
    }
}

/// `GET /metrics`: every metric of this process, as Prometheus text.
pub async fn metrics() -> axum::response::Response {
    (
        [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(),
    )
        .into_response()
}

/// Counts and times requests by route template, method and status (see [`layer`]).
#[derive(Debug, Clone, Copy)]
pub struct RequestMetricsLayer {
    service: &'static str,
}

impl RequestMetricsLayer {
    /// The request metrics of the service named `service`; installs the recorder.
    pub fn new(service: &'static str) -> Self {
        crate::metrics::install();
        Self { service }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            service: self.service,
        }
    }
}

/// The service [`RequestMetricsLayer`] wraps around a route.
#[derive(Debug, Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    service: &'static str,
}

/// The method as a label: one of the standard methods, or `other` (a client chooses the
/// method, and each label value is a time series of its own).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let service = self.service;
        let method = method_label(request.method());
        // The template (`/scim/v2/Users/{id}`), never the path: no ids in label values.
        let route = request.extensions().get::<MatchedPath>().map_or_else(
            || Arc::from("unmatched"),
            |path| Arc::<str>::from(path.as_str()),
        );
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let status = response.status().as_u16().to_string();
            let scim_type = response.extensions().get::<ScimType>().map(|t| t.0);
            let labels = [
                ("service", service.to_owned()),
                ("method", method.to_owned()),
                ("route", route.to_string()),
                ("status", status),
            ];
            match scim_type {
                Some(scim_type) => {
                    let mut with_type = labels.to_vec();
                    with_type.push(("scim_type", scim_type.to_owned()));
                    ::metrics::counter!(crate::metrics::HTTP_REQUESTS, &with_type).increment(1);
                }
                None => ::metrics::counter!(crate::metrics::HTTP_REQUESTS, &labels).increment(1),
            }
            ::metrics::histogram!(crate::metrics::HTTP_REQUEST_DURATION, &labels)
                .record(started.elapsed().as_secs_f64());
            Ok(response)
        })
    }
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
        request_with(router, Method::GET, path).await;
    }

    async fn request_with(router: Router, method: Method, path: &str) {
        let request = Request::builder()
            .method(method)
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

    async fn conflicts() -> Response<axum::body::Body> {
        let mut response = Response::new(axum::body::Body::from("{}"));
        *response.status_mut() = http::StatusCode::CONFLICT;
        ScimType("uniqueness").attach(&mut response);
        response
    }

    async fn breaks() -> Response<axum::body::Body> {
        let mut response = Response::new(axum::body::Body::from("{}"));
        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        response
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_method_status_and_scim_type() {
        let router = Router::new()
            .route("/things/{id}", get(conflicts).post(breaks))
            .route("/metrics", get(metrics))
            .layer(layer("unit-test-http"));
        request(router.clone(), "/things/7c0a-secret-id").await;
        request(router.clone(), "/things/another-id").await;
        request_with(router.clone(), Method::POST, "/things/x").await;
        request_with(
            router.clone(),
            Method::from_bytes(b"BREW").unwrap(),
            "/nowhere",
        )
        .await;
        let text = crate::metrics::render();
        let count =
            |labels: &str| crate::metrics::sample(&text, crate::metrics::HTTP_REQUESTS, labels);
        assert_eq!(
            count("service=\"unit-test-http\",method=\"GET\",route=\"/things/{id}\",status=\"409\",scim_type=\"uniqueness\""),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            count(
                "service=\"unit-test-http\",method=\"POST\",route=\"/things/{id}\",status=\"500\""
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            count("service=\"unit-test-http\",method=\"other\",route=\"unmatched\",status=\"404\""),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains("secret-id"), "{text}");
        assert_eq!(
            crate::metrics::sample(
                &text,
                "rollcall_http_request_duration_seconds_count",
                "service=\"unit-test-http\",method=\"GET\",route=\"/things/{id}\",status=\"409\""
            ),
            Some(2.0),
            "{text}"
        );
        let response = router
            .oneshot(
                Request::builder()
                    .uri("/metrics")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(response.headers()[http::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
    }
}
