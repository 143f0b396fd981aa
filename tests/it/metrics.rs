//! Every role's `GET /metrics`: SCIM requests by route template, status and scimType with
//! latency histograms, access decisions by outcome and reason and the state's gauges, the
//! projector's per-partition gauges and batch figures, and NATS reconnections.
//!
//! The recorder is one per process and the tests run in parallel in this one: a test reads a
//! counter before and after its own requests and asserts that it moved by at least what they
//! add (others may add more); a metric that is not recorded at all has no sample and fails.

use std::time::Duration;

use rollcall_it::nats::{NatsServer, Settings};
use rollcall_it::{eventually, TestEnv};
use rollcall_telemetry::metrics::{self, sample};
use serde_json::{json, Value};

fn user(name: &str) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name})
}

async fn scrape(base: &str) -> String {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

fn scim_root(env: &TestEnv) -> String {
    env.base.trim_end_matches("/scim/v2").to_owned()
}

/// The sample `name{labels}`, 0 when absent (a counter not yet moved).
fn value(text: &str, name: &str, labels: &str) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}

const CREATED: &str = r#"service="scim",method="POST",route="/scim/v2/Users",status="201""#;
const CONFLICT: &str =
    r#"service="scim",method="POST",route="/scim/v2/Users",status="409",scim_type="uniqueness""#;
const NOT_FOUND: &str = r#"service="scim",method="GET",route="/scim/v2/Users/{id}",status="404""#;

#[tokio::test]
async fn scim_requests_are_counted_by_route_template_status_and_scim_type_with_latencies() {
    let env = TestEnv::start().await;
    let root = scim_root(&env);
    let before = scrape(&root).await;
    let scim = env.scim();

    let id = scim.create_user(&user("metrics.ada@example.com")).await;
    let conflict = scim.post("/Users", &user("metrics.ada@example.com")).await;
    assert_eq!(conflict.status, 409, "{:?}", conflict.body);
    assert_eq!(conflict.body["scimType"], "uniqueness");
    let missing = uuid::Uuid::now_v7();
    assert_eq!(scim.get(&format!("/Users/{missing}")).await.status, 404);

    let after = scrape(&root).await;
    for (labels, added) in [(CREATED, 1.0), (CONFLICT, 1.0), (NOT_FOUND, 1.0)] {
        let moved = value(&after, metrics::HTTP_REQUESTS, labels)
            - value(&before, metrics::HTTP_REQUESTS, labels);
        assert!(moved >= added, "{labels} moved by {moved}:\n{after}");
    }
    // Latency histograms with buckets, per route and status.
    let count = "rollcall_http_request_duration_seconds_count";
    assert!(value(&after, count, CREATED) >= value(&before, count, CREATED) + 1.0);
    let all = sample(
        &after,
        "rollcall_http_request_duration_seconds_bucket",
        &format!("{CREATED},le=\"+Inf\""),
    );
    assert_eq!(all, sample(&after, count, CREATED), "{after}");
    assert!(
        sample(
            &after,
            "rollcall_http_request_duration_seconds_bucket",
            &format!("{CREATED},le=\"30\"")
        )
        .is_some(),
        "{after}"
    );
    // Route templates only: no id, no tenant.
    assert!(!after.contains(&id), "{after}");
    assert!(!after.contains(&missing.to_string()), "{after}");
    assert!(!after.contains("tenant="), "{after}");

    // The projector applied the write before it was answered: its batch is counted.
    let partition = r#"partition="0""#;
    for name in [
        metrics::PROJECTOR_EVENTS_APPLIED,
        "rollcall_projector_batch_duration_seconds_count",
        "rollcall_projector_batch_events_count",
    ] {
        assert!(
            value(&after, name, partition) >= value(&before, name, partition) + 1.0,
            "{name}:\n{after}"
        );
    }
    for gauge in [
        metrics::PROJECTOR_ACTIVE,
        metrics::PROJECTOR_LAG,
        metrics::PROJECTOR_CHECKPOINT,
    ] {
        assert!(
            sample(&after, gauge, partition).is_some(),
            "{gauge}:\n{after}"
        );
    }
    assert!(
        sample(&after, metrics::PROJECTOR_QUARANTINED_EVENTS, "").is_some(),
        "{after}"
    );

    // The audit API serves the same process's metrics, and counts its own requests.
    let (status, _) = env.audit("/audit/v1/openapi.json").await;
    assert_eq!(status, 200);
    let audit = scrape(&env.audit_base).await;
    assert!(
        value(
            &audit,
            metrics::HTTP_REQUESTS,
            r#"service="audit",method="GET",route="/audit/v1/openapi.json",status="200""#
        ) >= 1.0,
        "{audit}"
    );
}

#[tokio::test]
async fn access_decisions_are_counted_by_outcome_and_reason_and_the_state_has_an_age() {
    let env = TestEnv::start().await;
    let id = env
        .scim()
        .create_user(&user("metrics.grace@example.com"))
        .await;
    let session = env.session(&id);
    let allowed = r#"outcome="allow",reason="policy_allows""#;
    let no_session = r#"outcome="unauthenticated",reason="no_session""#;
    let no_application = r#"outcome="deny",reason="no_application""#;
    let before = scrape(&env.access_base).await;

    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        200
    );
    let http = reqwest::Client::new();
    let answer: Value = http
        .post(format!("{}/v1/decisions", env.access_base))
        .json(&json!({"host": "wiki.test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["decision"]["code"], "no_session", "{answer}");
    assert_eq!(
        env.forward_auth("nowhere.test", Some(&session))
            .await
            .status,
        403
    );

    let after = scrape(&env.access_base).await;
    for labels in [allowed, no_session, no_application] {
        let moved = value(&after, metrics::ACCESS_DECISIONS, labels)
            - value(&before, metrics::ACCESS_DECISIONS, labels);
        assert!(moved >= 1.0, "{labels} moved by {moved}:\n{after}");
    }
    let auth = r#"service="access",method="GET",route="/auth",status="200""#;
    assert!(
        value(&after, metrics::HTTP_REQUESTS, auth)
            >= value(&before, metrics::HTTP_REQUESTS, auth) + 1.0,
        "{after}"
    );
    // The state's freshness: its age, the bound, and whether it is stale.
    for gauge in [
        metrics::ACCESS_STATE_AGE,
        metrics::ACCESS_STALE,
        metrics::ACCESS_READY,
        metrics::ACCESS_USERS,
        metrics::ACCESS_APPLIED_SEQUENCE,
    ] {
        assert!(sample(&after, gauge, "").is_some(), "{gauge}:\n{after}");
    }
    // Every access service of this process sets it; each test environment's has a bound.
    assert!(
        sample(&after, metrics::ACCESS_STALENESS_BOUND, "").is_some_and(|bound| bound > 0.0),
        "{after}"
    );
    // No user id, session or host beyond the route template in any label.
    assert!(!after.contains(&id), "{after}");
    assert!(!after.contains("nowhere.test"), "{after}");
}

#[tokio::test]
async fn a_nats_client_that_reconnects_is_counted() {
    let mut server = NatsServer::start(Settings::default()).await;
    let options = metrics::observe_nats(async_nats::ConnectOptions::new());
    let client = options.connect(server.url.as_str()).await.unwrap();
    let reconnects = || value(&metrics::render(), metrics::NATS_RECONNECTS, "");
    let disconnects = || {
        value(
            &metrics::render(),
            metrics::NATS_EVENTS,
            r#"event="disconnected""#,
        )
    };
    let before = (reconnects(), disconnects());

    server.restart().await;
    eventually(
        "the client reconnected",
        Duration::from_secs(10),
        || async { client.flush().await.is_ok() && reconnects() >= before.0 + 1.0 },
    )
    .await;
    assert!(disconnects() >= before.1 + 1.0);
    let text = metrics::render();
    assert!(
        text.contains("# HELP rollcall_nats_reconnects_total"),
        "{text}"
    );
}
