//! Roles: Rollcall split over processes by role, each started through `rollcall::Instance` as
//! `rollcall serve --roles …` starts it, on one namespace and database.

use std::time::Duration;

use rollcall::{Instance, Role};
use rollcall_it::nats::{NatsServer, Settings};
use rollcall_it::{access_config, eventually, loopback, roles, Installation};
use serde_json::{json, Value};

async fn forward_auth(access: &str, host: &str, session: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{access}/auth"))
        .header("X-Original-URL", format!("https://{host}/"))
        .header("Cookie", format!("rollcall_session={session}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn get(url: &str, token: Option<&str>) -> (u16, Option<String>, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, content_type, body)
}

#[tokio::test]
async fn a_write_answered_by_a_scim_process_is_in_effect_at_an_access_process_and_in_the_audit_api()
{
    let installation = Installation::create_on(rollcall_it::nats_url()).await;
    // Process B: the projector and the access service, on connections of their own.
    let mut pipeline = Instance::new(roles("projector,access"))
        .access(access_config(&installation.policy_file))
        .listener(Role::Access, loopback().await)
        .start(installation.connect_again().await)
        .await
        .unwrap();
    assert_eq!(pipeline.addr(Role::Scim), None, "B runs no SCIM API");
    let access_base = format!("http://{}", pipeline.addr(Role::Access).unwrap());
    eventually(
        "B's access service is ready",
        Duration::from_secs(10),
        || {
            let ready = format!("{access_base}/readyz");
            async move { get(&ready, None).await.0 == 200 }
        },
    )
    .await;
    // Process A: the SCIM API and the audit API. The access service runs elsewhere, so the
    // operator tells writes to wait for it (ROLLCALL_SCIM_WAIT_FOR_ACCESS).
    let apis = Instance::new(roles("scim,audit"))
        .scim(rollcall_scim_api::Config {
            wait_for_access: true,
            ..Default::default()
        })
        .listener(Role::Scim, loopback().await)
        .listener(Role::Audit, loopback().await)
        .start(installation.connect_again().await)
        .await
        .unwrap();
    assert_eq!(apis.addr(Role::Access), None, "A runs no access service");
    let scim = format!("http://{}/scim/v2", apis.addr(Role::Scim).unwrap());
    let audit = format!("http://{}", apis.addr(Role::Audit).unwrap());
    let http = reqwest::Client::new();

    let created = http
        .post(format!("{scim}/Users"))
        .bearer_auth(&installation.token)
        .header("content-type", "application/scim+json")
        .body(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "ada@example.com"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = pipeline
        .access()
        .unwrap()
        .issue_session("test", uuid::Uuid::parse_str(&id).unwrap())
        .unwrap();
    // The 2xx promise across processes: the very next decision at B reflects the write.
    assert_eq!(forward_auth(&access_base, "wiki.test", &session).await, 200);
    let deactivated = http
        .patch(format!("{scim}/Users/{id}"))
        .bearer_auth(&installation.token)
        .header("content-type", "application/scim+json")
        .body(
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "Replace", "path": "active", "value": "False"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deactivated.status(), 200);
    assert_eq!(forward_auth(&access_base, "wiki.test", &session).await, 403);

    // B's projector wrote the audit history that A's audit API serves.
    let (status, _, history) = get(
        &format!("{audit}/audit/v1/users/{id}/history"),
        Some(&installation.audit_token),
    )
    .await;
    assert_eq!(status, 200, "{history}");
    let text = history.to_string();
    assert!(
        text.contains("user.provisioned") && text.contains("user.deactivated"),
        "{history}"
    );

    // Neither process saw a role fail; both stop cleanly.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), pipeline.failed())
            .await
            .is_err(),
        "a role of B stopped"
    );
    apis.shutdown().await.unwrap();
    pipeline.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_projector_only_process_serves_metrics_and_readiness_on_its_ops_listener() {
    let mut nats = NatsServer::start(Settings::default()).await;
    let installation = Installation::create_on(nats.url.clone()).await;
    let projector = Instance::new(roles("projector"))
        .ops_listener(loopback().await)
        .start(installation.connections())
        .await
        .unwrap();
    assert_eq!(projector.addr(Role::Scim), None);
    let ops = format!("http://{}", projector.ops_addr().unwrap());

    let (status, _, ready) = get(&format!("{ops}/readyz"), None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["roles"], json!(["projector"]));
    let (status, content_type, _) = get(&format!("{ops}/metrics"), None).await;
    assert_eq!(status, 200);
    assert!(
        content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{content_type:?}"
    );
    let (status, _, health) = get(&format!("{ops}/healthz"), None).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    // Readiness follows NATS: not ready while the server is gone, ready again once it is back.
    nats.kill().await;
    eventually(
        "/readyz says NATS is not connected",
        Duration::from_secs(10),
        || async {
            let (status, _, body) = get(&format!("{ops}/readyz"), None).await;
            status == 503 && body.to_string().contains("NATS is not connected")
        },
    )
    .await;
    nats.restart().await;
    eventually(
        "/readyz is ready again",
        Duration::from_secs(15),
        || async { get(&format!("{ops}/readyz"), None).await.0 == 200 },
    )
    .await;
    projector.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_projector_started_while_nats_is_down_waits_for_it_instead_of_stopping() {
    let mut nats = NatsServer::start(Settings::default()).await;
    let installation = Installation::create_on(nats.url.clone()).await;
    nats.kill().await;
    let mut projector = Instance::new(roles("projector"))
        .ops_listener(loopback().await)
        .start(installation.connections())
        .await
        .unwrap();
    let ops = format!("http://{}", projector.ops_addr().unwrap());
    // Longer than a JetStream request's timeout (5 s): the projector's first attempt to open
    // the access bucket fails while the server is down. It must wait, not stop.
    let outage = tokio::time::timeout(Duration::from_secs(7), projector.failed()).await;
    assert!(
        outage.is_err(),
        "a role stopped while NATS was down: {outage:?}"
    );
    let (status, _, ready) = get(&format!("{ops}/readyz"), None).await;
    assert_eq!(status, 503, "{ready}");
    assert!(!ready.to_string().contains("stopped"), "{ready}");

    nats.restart().await;
    eventually(
        "/readyz is ready once NATS is back",
        Duration::from_secs(15),
        || async { get(&format!("{ops}/readyz"), None).await.0 == 200 },
    )
    .await;
    projector.shutdown().await.unwrap();
}
