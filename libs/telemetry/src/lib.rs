//! rollcall-telemetry: tracing for every Rollcall process (JSON logs filtered by `RUST_LOG`),
//! OpenTelemetry export over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace
//! context carried over HTTP and NATS headers; [`http::layer`] is the request span and error log
//! every HTTP service shares, with its request metrics; [`metrics`] is the process's Prometheus
//! recorder that every role's `/metrics` renders.
//!
//! Spans always get trace ids (the OpenTelemetry layer is installed even without an exporter),
//! so that logs, event envelopes and audit records name the trace of the request that caused them.
#![warn(missing_docs)]

pub mod http;
pub mod metrics;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from the `OTEL_*` settings.
    #[error("building the OTLP exporter: {0}")]
    Exporter(String),
    /// A global subscriber was installed already.
    #[error("installing the tracing subscriber: {0}")]
    Subscriber(String),
}

/// Keeps the tracer provider alive; flushes and shuts it down on drop.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Flushes spans still buffered for the exporter.
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber: `RUST_LOG` filter (default `info`), JSON logs on stderr, and
/// the OpenTelemetry layer (exporting to `OTEL_EXPORTER_OTLP_ENDPOINT` when it is set); and the
/// metrics recorder ([`metrics::install`]).
pub fn init(service: &'static str) -> Result<Telemetry, TelemetryError> {
    metrics::install();
    let exporting = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|v| !v.is_empty());
    let provider = provider(service, exporting)?;
    let tracer = provider.tracer(service);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Each layer has its own filter: `RUST_LOG` chooses what is logged, never which spans
    // carry trace context.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(LevelFilter::INFO),
        )
        .try_init()
        .map_err(|error| TelemetryError::Subscriber(error.to_string()))?;
    Ok(Telemetry { provider })
}

/// A subscriber for tests: the OpenTelemetry layer (no exporter) plus logs captured by the test
/// harness at `RUST_LOG` (default `warn`). Safe to call from many tests; only the first installs.
pub fn init_for_tests() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(provider) = provider("rollcall-test", false) else {
            return;
        };
        let tracer = provider.tracer("rollcall-test");
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(filter),
            )
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(LevelFilter::INFO),
            )
            .with(Capture.with_filter(LevelFilter::WARN))
            .try_init();
        // The provider must outlive every test in the process.
        std::mem::forget(provider);
    });
}

/// Warnings and errors logged in this test process, as `target: message field=value …`, newest
/// last (at most [`CAPTURED_LINES`]): tests check what Rollcall logs.
static CAPTURED: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// How many captured lines are kept.
pub const CAPTURED_LINES: usize = 10_000;

/// The warnings and errors logged so far in this test process (after [`init_for_tests`]).
pub fn captured_logs() -> Vec<String> {
    CAPTURED
        .lock()
        .map(|lines| lines.iter().cloned().collect())
        .unwrap_or_default()
}

struct Capture;

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!(" {value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = Line(format!("{}:", event.metadata().target()));
        event.record(&mut line);
        if let Ok(mut lines) = CAPTURED.lock() {
            if lines.len() >= CAPTURED_LINES {
                lines.pop_front();
            }
            lines.push_back(line.0);
        }
    }
}

fn provider(service: &'static str, exporting: bool) -> Result<SdkTracerProvider, TelemetryError> {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// The W3C `traceparent` of the current span, if it has a trace.
pub fn traceparent() -> Option<String> {
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&Span::current().context(), &mut carrier);
    carrier.traceparent
}

/// The trace id in a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    parts.next().filter(|id| id.len() == 32)
}

/// Adds the current span's trace context to NATS message headers.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    if let Some(traceparent) = traceparent() {
        headers.insert("traceparent", traceparent.as_str());
    }
}

/// Makes `span` a child of the trace context in a `traceparent` value, if it is valid.
pub fn set_parent(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = Carrier {
        traceparent: Some(traceparent.to_owned()),
    };
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// Makes `span` a child of the trace context in NATS message headers.
pub fn set_parent_from_nats(span: &Span, headers: Option<&async_nats::HeaderMap>) {
    let traceparent = headers
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str());
    set_parent(span, traceparent);
}

/// Makes `span` a child of the trace context in HTTP request headers.
pub fn set_parent_from_http(span: &Span, headers: &::http::HeaderMap) {
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    set_parent(span, traceparent);
}

/// The current context (for spawning work that continues the trace).
pub fn current_context() -> Context {
    Span::current().context()
}

#[derive(Default)]
struct Carrier {
    traceparent: Option<String>,
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key.eq_ignore_ascii_case("traceparent") {
            self.traceparent = Some(value);
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        if key.eq_ignore_ascii_case("traceparent") {
            self.traceparent.as_deref()
        } else {
            None
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_continues_the_trace_it_is_given() {
        init_for_tests();
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = tracing::info_span!("work");
        set_parent(&span, Some(incoming));
        let outgoing = span.in_scope(traceparent).unwrap();
        assert_eq!(
            trace_id(&outgoing),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_ne!(outgoing, incoming, "a child has its own span id");
    }

    #[test]
    fn garbage_trace_context_is_ignored() {
        init_for_tests();
        let span = tracing::info_span!("work");
        set_parent(&span, Some("not-a-traceparent"));
        assert_eq!(trace_id("garbage"), None);
    }
}
