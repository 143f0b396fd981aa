//! Several projectors on one namespace and database: exactly one projects (it holds the
//! lease), the others stand by, and one of them takes over when the active one dies.

use std::time::Duration;

use rollcall_it::{eventually, TestEnv};
use serde_json::json;

fn user(name: &str) -> serde_json::Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name})
}

#[tokio::test]
async fn a_standby_projector_takes_over_within_seconds_when_the_active_one_dies() {
    let mut env = TestEnv::start().await;
    let scim = env.scim();
    // The environment's projector is active once a write is answered.
    assert_eq!(
        scim.post("/Users", &user("first@example.com")).await.status,
        201
    );
    // A second projector process (its own leases) on the same installation.
    let standby = rollcall_projector::start(
        rollcall_projector::Config::default(),
        env.client.clone(),
        env.log.clone(),
        env.store.clone(),
    )
    .await
    .unwrap();
    for n in 0..20 {
        assert_eq!(
            scim.post("/Users", &user(&format!("u{n}@example.com")))
                .await
                .status,
            201
        );
    }
    assert!(
        standby.active().is_empty(),
        "the second projector must stand by"
    );

    // The active projector dies (its lease connection with it).
    env.kill_projector().await;
    let started = std::time::Instant::now();
    eventually(
        "the standby holds the lease",
        Duration::from_secs(5),
        || async { standby.active() == [0] },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // Writes go on, read-your-writes and deprovisioning included.
    for n in 20..30 {
        assert_eq!(
            scim.post("/Users", &user(&format!("u{n}@example.com")))
                .await
                .status,
            201
        );
    }
    env.assert_other_tenant_unaffected().await;
    // Nothing lost, nothing applied twice: the audit record holds every event once.
    let head = env.head().await;
    eventually(
        "the checkpoint reaches the head",
        Duration::from_secs(5),
        || async { env.store.checkpoint("projector").await.unwrap() == head },
    )
    .await;
    assert_eq!(env.store.audit_count().await.unwrap(), head);
    assert_eq!(scim.get("/Users").await.body["totalResults"], 32);
    standby.stop().await;
}
