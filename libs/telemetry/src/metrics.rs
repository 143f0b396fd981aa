//! Prometheus metrics for operators: one process-wide recorder behind the `metrics` facade
//! (installed once, by whichever part of the process needs it first), rendered as Prometheus
//! text by every role's `GET /metrics` ([`render`]).
//!
//! Every metric Rollcall records is named here, with its help text ([`install`] describes them
//! all), so that the dashboard in `docs/grafana-dashboard.json` and the README's list have one
//! source. Label values are bounded sets: route templates, methods, status codes, SCIM
//! keywords, decision reasons, partition numbers. Never a tenant, an id or a path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The facade's macros and handles, for the services to record with (after [`install`]).
pub use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests answered, by `service`, `method`, `route` (the matched route template),
/// `status` and, on SCIM errors that carry one, `scim_type`.
pub const HTTP_REQUESTS: &str = "rollcall_http_requests_total";
/// Time from a request's arrival to its response's head, by `service`, `method`, `route` and
/// `status`.
pub const HTTP_REQUEST_DURATION: &str = "rollcall_http_request_duration_seconds";

/// SCIM writes answered `503` because their effect was not applied everywhere in time.
pub const SCIM_WRITES_NOT_APPLIED: &str = "rollcall_scim_writes_not_applied_total";
/// SCIM writes answered `503` because their resource is quarantined.
pub const SCIM_WRITES_REFUSED_QUARANTINED: &str = "rollcall_scim_writes_refused_quarantined_total";
/// SCIM requests answered `503` because NATS or PostgreSQL was out of reach.
pub const SCIM_UNAVAILABLE: &str = "rollcall_scim_unavailable_total";
/// Users erased by the retention rule (`ROLLCALL_RETENTION_DAYS_AFTER_DELETE`).
pub const RETENTION_ERASURES: &str = "rollcall_retention_erasures_total";

/// Whether this process is the active projector of a `partition` (1) or stands by (0).
pub const PROJECTOR_ACTIVE: &str = "rollcall_projector_active";
/// Events of a `partition` on the stream that its projector has not applied yet.
pub const PROJECTOR_LAG: &str = "rollcall_projector_lag_events";
/// A `partition`'s checkpoint: the stream sequence of the last event applied.
pub const PROJECTOR_CHECKPOINT: &str = "rollcall_projector_checkpoint";
/// Events per applied batch, by `partition`.
pub const PROJECTOR_BATCH_EVENTS: &str = "rollcall_projector_batch_events";
/// Time to apply a batch (decode, apply, commit, publish), by `partition`.
pub const PROJECTOR_BATCH_DURATION: &str = "rollcall_projector_batch_duration_seconds";
/// Events applied (or quarantined) by this process, by `partition`.
pub const PROJECTOR_EVENTS_APPLIED: &str = "rollcall_projector_events_applied_total";
/// Resources a `partition`'s projector holds quarantined, as it last committed.
pub const PROJECTOR_QUARANTINED_AGGREGATES: &str = "rollcall_projector_quarantined_aggregates";
/// Events held in the quarantine, unresolved, in the whole installation (-1: PostgreSQL out of
/// reach).
pub const PROJECTOR_QUARANTINED_EVENTS: &str = "rollcall_projector_quarantined_events";

/// Access decisions, by `outcome` (`allow`, `unauthenticated`, `deny`) and `reason` (a keyword).
pub const ACCESS_DECISIONS: &str = "rollcall_access_decisions_total";
/// Whether the access service loaded its whole state (1) or not yet (0).
pub const ACCESS_READY: &str = "rollcall_access_ready";
/// Whether NATS was lost for longer than the staleness bound (1).
pub const ACCESS_STALE: &str = "rollcall_access_stale";
/// Seconds since NATS last answered the access service: how old its state may be.
pub const ACCESS_STATE_AGE: &str = "rollcall_access_state_age_seconds";
/// The staleness bound, in seconds: past it the state is stale.
pub const ACCESS_STALENESS_BOUND: &str = "rollcall_access_staleness_bound_seconds";
/// Users held in memory.
pub const ACCESS_USERS: &str = "rollcall_access_users";
/// Groups held in memory.
pub const ACCESS_GROUPS: &str = "rollcall_access_groups";
/// The last access-state sequence applied.
pub const ACCESS_APPLIED_SEQUENCE: &str = "rollcall_access_applied_sequence";

/// Connection events of this process's NATS clients, by `event`.
pub const NATS_EVENTS: &str = "rollcall_nats_events_total";
/// Connections to NATS re-established after a disconnection.
pub const NATS_RECONNECTS: &str = "rollcall_nats_reconnects_total";

/// Histogram buckets for latencies, in seconds: 1 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Histogram buckets for batch sizes, in events.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder, once; later calls do nothing. Everything
/// that records a metric calls it first (a metric recorded before it is lost), so a process
/// need not; many test environments in one process share the one recorder.
pub fn install() {
    handle();
}

fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = builder().unwrap_or_else(|error| {
            tracing::warn!(error = %error, "metrics buckets refused; histograms render as summaries");
            PrometheusBuilder::new()
        });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => describe(),
            // Another recorder was installed first: `render` shows nothing of ours.
            Err(error) => tracing::warn!(error = %error, "a metrics recorder is installed already; /metrics stays empty"),
        }
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("rollcall-metrics".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            });
        if let Err(error) = spawned {
            // `render` drains histograms too; only memory between scrapes grows.
            tracing::warn!(error = %error, "starting the metrics upkeep thread failed");
        }
        handle
    })
}

fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(PROJECTOR_BATCH_EVENTS.to_owned()),
            BATCH_BUCKETS,
        )
}

/// Every metric of this process in the Prometheus text format (version 0.0.4), for `GET
/// /metrics`.
pub fn render() -> String {
    handle().render()
}

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by service, method, route template, status and SCIM scimType."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to its response's head, by service, method, route template and status."
    );
    describe_counter!(
        RETENTION_ERASURES,
        "Users erased because they were deleted longer ago than ROLLCALL_RETENTION_DAYS_AFTER_DELETE."
    );
    describe_counter!(
        SCIM_WRITES_NOT_APPLIED,
        "Writes answered 503 because their effect was not applied everywhere within the bound."
    );
    describe_counter!(
        SCIM_WRITES_REFUSED_QUARANTINED,
        "Writes answered 503 because their resource is quarantined."
    );
    describe_counter!(
        SCIM_UNAVAILABLE,
        "Requests answered 503 because NATS or PostgreSQL was out of reach."
    );
    describe_gauge!(
        PROJECTOR_ACTIVE,
        "1 while this process is the active projector of the partition, 0 while it stands by."
    );
    describe_gauge!(
        PROJECTOR_LAG,
        "Events of the partition on the stream not yet applied by its projector."
    );
    describe_gauge!(
        PROJECTOR_CHECKPOINT,
        "The partition's checkpoint: stream sequence of the last event applied."
    );
    describe_histogram!(
        PROJECTOR_BATCH_EVENTS,
        Unit::Count,
        "Events per batch applied by the projector, by partition."
    );
    describe_histogram!(
        PROJECTOR_BATCH_DURATION,
        Unit::Seconds,
        "Time to apply one batch (decode, apply, commit, publish), by partition."
    );
    describe_counter!(
        PROJECTOR_EVENTS_APPLIED,
        "Events applied or quarantined by this process's projector, by partition."
    );
    describe_gauge!(
        PROJECTOR_QUARANTINED_AGGREGATES,
        "Resources the partition's projector holds quarantined, as it last committed."
    );
    describe_gauge!(
        PROJECTOR_QUARANTINED_EVENTS,
        "Events held in the quarantine, unresolved, in the whole installation (-1: PostgreSQL out of reach)."
    );
    describe_counter!(ACCESS_DECISIONS, "Access decisions, by outcome and reason.");
    describe_gauge!(
        ACCESS_READY,
        "1 once the access service has loaded its whole state."
    );
    describe_gauge!(
        ACCESS_STALE,
        "1 while NATS has been lost for longer than the staleness bound."
    );
    describe_gauge!(
        ACCESS_STATE_AGE,
        Unit::Seconds,
        "Seconds since NATS last answered the access service: how old its state may be."
    );
    describe_gauge!(
        ACCESS_STALENESS_BOUND,
        Unit::Seconds,
        "The staleness bound: past this state age, decisions fail closed (or open, if so configured)."
    );
    describe_gauge!(ACCESS_USERS, "Users held in memory.");
    describe_gauge!(ACCESS_GROUPS, "Groups held in memory.");
    describe_gauge!(
        ACCESS_APPLIED_SEQUENCE,
        "Last access-state sequence applied."
    );
    describe_counter!(
        NATS_EVENTS,
        "Connection events of this process's NATS clients, by event."
    );
    describe_counter!(
        NATS_RECONNECTS,
        "Connections to NATS re-established after a disconnection."
    );
}

/// Counts one NATS client event in [`NATS_EVENTS`] by its kind. [`NatsEvents`] also counts
/// reconnections.
pub fn nats_event(event: &async_nats::Event) {
    install();
    let kind = match event {
        async_nats::Event::Connected => "connected",
        async_nats::Event::Disconnected => "disconnected",
        async_nats::Event::LameDuckMode => "lame_duck_mode",
        async_nats::Event::Draining => "draining",
        async_nats::Event::Closed => "closed",
        async_nats::Event::SlowConsumer(_) => "slow_consumer",
        async_nats::Event::ServerError(_) => "server_error",
        async_nats::Event::ClientError(_) => "client_error",
    };
    metrics::counter!(NATS_EVENTS, "event" => kind).increment(1);
}

/// The metrics of one NATS client's connection events: every event by kind, and each
/// connection after the client's first as a reconnection. One per client.
#[derive(Debug, Clone, Default)]
pub struct NatsEvents {
    connected_before: Arc<AtomicBool>,
}

impl NatsEvents {
    /// Records `event` of this client.
    pub fn record(&self, event: &async_nats::Event) {
        nats_event(event);
        if matches!(event, async_nats::Event::Connected)
            && self.connected_before.swap(true, Ordering::Relaxed)
        {
            metrics::counter!(NATS_RECONNECTS).increment(1);
        }
    }
}

/// `options` with an event callback that records the client's connection events
/// ([`NatsEvents`]). It replaces any callback set before; a caller with a callback of its own
/// calls [`NatsEvents::record`] from it instead.
pub fn observe_nats(options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
    install();
    let events = NatsEvents::default();
    options.event_callback(move |event| {
        events.record(&event);
        async {}
    })
}

/// The value of the sample `name{labels}` in Prometheus text (as [`render`] writes it), if the
/// text holds it. `labels` is the exact label set, in order (`method="GET",route="/x"`), or
/// empty for a metric without labels. For tests and tools that read `/metrics`.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let wanted = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|line| line.strip_prefix(&wanted))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_has_help_type_and_the_recorded_values() {
        install();
        metrics::counter!(SCIM_UNAVAILABLE).increment(0);
        let before = sample(&render(), SCIM_UNAVAILABLE, "").unwrap_or(0.0);
        metrics::counter!(SCIM_UNAVAILABLE).increment(2);
        let text = render();
        assert_eq!(sample(&text, SCIM_UNAVAILABLE, ""), Some(before + 2.0));
        assert!(
            text.contains("# TYPE rollcall_scim_unavailable_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP rollcall_scim_unavailable_total Requests answered 503"),
            "{text}"
        );
    }

    #[test]
    fn latencies_are_histograms_with_buckets_from_milliseconds_to_seconds() {
        install();
        let labels = [("partition", "unit-test-latency")];
        metrics::histogram!(PROJECTOR_BATCH_DURATION, &labels).record(0.003);
        metrics::histogram!(PROJECTOR_BATCH_DURATION, &labels).record(2.0);
        let text = render();
        let bucket = |le: &str| {
            sample(
                &text,
                "rollcall_projector_batch_duration_seconds_bucket",
                &format!("partition=\"unit-test-latency\",le=\"{le}\""),
            )
        };
        assert_eq!(bucket("0.001"), Some(0.0), "{text}");
        assert_eq!(bucket("0.005"), Some(1.0), "{text}");
        assert_eq!(bucket("1"), Some(1.0), "{text}");
        assert_eq!(bucket("2.5"), Some(2.0), "{text}");
        assert_eq!(bucket("+Inf"), Some(2.0), "{text}");
        assert_eq!(
            sample(
                &text,
                "rollcall_projector_batch_duration_seconds_count",
                "partition=\"unit-test-latency\""
            ),
            Some(2.0)
        );
        assert!(text.contains("# TYPE rollcall_projector_batch_duration_seconds histogram"));
    }

    #[test]
    fn batch_sizes_have_buckets_of_their_own() {
        install();
        metrics::histogram!(PROJECTOR_BATCH_EVENTS, "partition" => "unit-test-batch").record(300.0);
        let text = render();
        let bucket = |le: &str| {
            sample(
                &text,
                "rollcall_projector_batch_events_bucket",
                &format!("partition=\"unit-test-batch\",le=\"{le}\""),
            )
        };
        assert_eq!(bucket("250"), Some(0.0), "{text}");
        assert_eq!(bucket("500"), Some(1.0), "{text}");
    }

    #[test]
    fn installing_twice_keeps_one_recorder_and_its_values() {
        install();
        metrics::counter!(SCIM_WRITES_NOT_APPLIED).increment(1);
        let before = sample(&render(), SCIM_WRITES_NOT_APPLIED, "");
        install();
        assert!(before.is_some_and(|value| value >= 1.0));
        assert!(sample(&render(), SCIM_WRITES_NOT_APPLIED, "") >= before);
    }

    #[test]
    fn a_client_s_first_connection_is_no_reconnection() {
        // The one test here that records NATS events: exact counts.
        let events = NatsEvents::default();
        let reconnects = || sample(&render(), NATS_RECONNECTS, "").unwrap_or(0.0);
        let connected = || sample(&render(), NATS_EVENTS, "event=\"connected\"").unwrap_or(0.0);
        let before = (reconnects(), connected());
        events.record(&async_nats::Event::Connected);
        assert_eq!((reconnects(), connected()), (before.0, before.1 + 1.0));
        events.record(&async_nats::Event::Disconnected);
        events.record(&async_nats::Event::Connected);
        assert_eq!(
            (reconnects(), connected()),
            (before.0 + 1.0, before.1 + 2.0)
        );
        assert_eq!(
            sample(&render(), NATS_EVENTS, "event=\"disconnected\""),
            Some(1.0)
        );
    }

    #[test]
    fn a_sample_is_read_by_its_exact_label_set() {
        let text = "# TYPE x counter\nx{a=\"1\"} 3\nx{a=\"1\",b=\"2\"} 5\ny 7\n";
        assert_eq!(sample(text, "x", "a=\"1\""), Some(3.0));
        assert_eq!(sample(text, "x", "a=\"1\",b=\"2\""), Some(5.0));
        assert_eq!(sample(text, "y", ""), Some(7.0));
        assert_eq!(sample(text, "x", ""), None);
    }

    /// Every metric named above.
    const NAMES: &[&str] = &[
        HTTP_REQUESTS,
        HTTP_REQUEST_DURATION,
        SCIM_WRITES_NOT_APPLIED,
        SCIM_WRITES_REFUSED_QUARANTINED,
        SCIM_UNAVAILABLE,
        PROJECTOR_ACTIVE,
        PROJECTOR_LAG,
        PROJECTOR_CHECKPOINT,
        PROJECTOR_BATCH_EVENTS,
        PROJECTOR_BATCH_DURATION,
        PROJECTOR_EVENTS_APPLIED,
        PROJECTOR_QUARANTINED_AGGREGATES,
        PROJECTOR_QUARANTINED_EVENTS,
        ACCESS_DECISIONS,
        ACCESS_READY,
        ACCESS_STALE,
        ACCESS_STATE_AGE,
        ACCESS_STALENESS_BOUND,
        ACCESS_USERS,
        ACCESS_GROUPS,
        ACCESS_APPLIED_SEQUENCE,
        NATS_EVENTS,
        NATS_RECONNECTS,
    ];

    #[test]
    fn the_grafana_dashboard_is_importable_and_uses_only_these_metrics() {
        let text = include_str!("../../../docs/grafana-dashboard.json");
        let dashboard: serde_json::Value = serde_json::from_str(text).unwrap();
        assert!(dashboard["schemaVersion"].as_u64().is_some());
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        assert!(variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
        let mut used = 0;
        for (at, _) in text.match_indices("rollcall_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                NAMES.contains(&base),
                "the dashboard uses {name}, which Rollcall does not record"
            );
            used += 1;
        }
        assert!(used > 20);
        // What issue 12 asks the dashboard to show.
        for name in [
            HTTP_REQUESTS,
            HTTP_REQUEST_DURATION,
            PROJECTOR_LAG,
            PROJECTOR_BATCH_DURATION,
            PROJECTOR_ACTIVE,
            ACCESS_DECISIONS,
            ACCESS_STATE_AGE,
            ACCESS_STALE,
            NATS_RECONNECTS,
        ] {
            assert!(text.contains(name), "the dashboard does not show {name}");
        }
    }
}
