//! Poison events and faults behind the SCIM API: a poison event is quarantined and stops only
//! its own resource, a write answers `2xx` only once it is in effect everywhere (also when it
//! changed nothing), and otherwise `503` with `Retry-After`. Each test asserts that another
//! tenant is unaffected.

use std::time::Duration;

use futures::StreamExt;
use rollcall_domain::attributes::AttributeChange;
use rollcall_domain::user::UserEvent;
use rollcall_domain::EventKind;
use rollcall_eventlog::namespace::QUARANTINE_CLEAR_HEADER;
use rollcall_eventlog::quarantine::{Resolution, SKIPPED};
use rollcall_eventlog::Actor;
use rollcall_it::nats::{NatsServer, Settings};
use rollcall_it::{eventually, TestEnv};
use rollcall_projector::DEFAULT_NAME;
use rollcall_scim_api::consistency::{Checkpoint, Consistency};
use rollcall_scim_api::error::ApiError;
use rollcall_telemetry::metrics::sample;
use serde_json::{json, Value};
use uuid::Uuid;

fn user(name: &str) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name})
}

fn deactivate() -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
           "Operations": [{"op": "Replace", "path": "active", "value": "False"}]})
}

/// Appends an event straight to the stream, as a bug in a writer (or a value the edge did not
/// foresee) would; returns its sequence.
async fn append(env: &TestEnv, tenant: &str, id: Uuid, event: &UserEvent) -> u64 {
    let subject = env
        .namespace
        .aggregate_subject(tenant, UserEvent::AGGREGATE, &id);
    let earlier = env.log.load(&subject, 0).await.unwrap();
    let envelope = rollcall_it::user_envelope(tenant, id, earlier.events.len() as u64 + 1, event);
    env.log
        .append(&subject, earlier.last_sequence, &[envelope])
        .await
        .unwrap()
}

fn changed(path: &str, after: Value) -> UserEvent {
    UserEvent::AttributesChanged {
        changes: vec![AttributeChange {
            path: path.into(),
            before: None,
            after: Some(after),
            redacted: false,
        }],
    }
}

/// A userName PostgreSQL's btree index cannot hold (random, so compression cannot shrink it).
fn unindexable() -> String {
    (0..200)
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect::<String>()
}

async fn readyz(env: &TestEnv) -> (u16, Value) {
    let root = env.base.trim_end_matches("/scim/v2");
    let response = reqwest::get(format!("{root}/readyz")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn metrics(env: &TestEnv) -> String {
    let root = env.base.trim_end_matches("/scim/v2");
    reqwest::get(format!("{root}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A counter without labels in `/metrics` text, 0 before it first moves. The recorder is the
/// test process's: other tests' writes count too, so tests compare before and after.
fn counted(text: &str, name: &str) -> f64 {
    sample(text, name, "").unwrap_or(0.0)
}

async fn quarantined(env: &TestEnv) -> Vec<rollcall_store::quarantine::QuarantineRow> {
    env.store.quarantine(false).await.unwrap()
}

/// The projector's checkpoint announcements, from now on.
async fn announcements(env: &TestEnv, projector: &str) -> async_nats::Subscriber {
    let subscriber = env
        .client
        .subscribe(env.namespace.checkpoint_subject(projector))
        .await
        .unwrap();
    env.client.flush().await.unwrap();
    subscriber
}

/// Whether the first of `announcements` at or past `sequence` says nothing is quarantined.
async fn says_clear(announcements: &mut async_nats::Subscriber, sequence: u64) -> bool {
    let first = async {
        while let Some(message) = announcements.next().await {
            let at: u64 = std::str::from_utf8(&message.payload)
                .unwrap()
                .parse()
                .unwrap();
            if at >= sequence {
                return message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(QUARANTINE_CLEAR_HEADER))
                    .is_some_and(|value| value.as_str() == "1");
            }
        }
        panic!("the announcements ended");
    };
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .unwrap_or_else(|_| panic!("no announcement reached {sequence}"))
}

/// Announces checkpoint `sequence` of `projector` as a projector does, saying nothing is
/// quarantined if `clear`.
async fn announce(env: &TestEnv, projector: &str, sequence: u64, clear: bool) {
    let mut headers = async_nats::HeaderMap::new();
    if clear {
        headers.insert(QUARANTINE_CLEAR_HEADER, "1");
    }
    env.client
        .publish_with_headers(
            env.namespace.checkpoint_subject(projector),
            headers,
            sequence.to_string().into(),
        )
        .await
        .unwrap();
}

/// Appends a poison event for a new user of tenant `test` and waits until it is quarantined.
async fn poisoned_user(env: &TestEnv) -> (Uuid, u64) {
    let id = Uuid::now_v7();
    (id, poison(env, id).await)
}

/// Appends, past the edge, a value PostgreSQL cannot store (NUL) for user `id` of tenant
/// `test`, and waits until it is quarantined; its sequence.
async fn poison(env: &TestEnv, id: Uuid) -> u64 {
    let poison = append(
        env,
        "test",
        id,
        &changed("title", json!("chief\u{0}officer")),
    )
    .await;
    until_quarantined(env, poison).await;
    poison
}

/// Waits until the event at `sequence` is in the quarantine.
async fn until_quarantined(env: &TestEnv, sequence: u64) {
    eventually(
        "the event is quarantined",
        Duration::from_secs(10),
        || async {
            quarantined(env)
                .await
                .iter()
                .any(|row| row.sequence as u64 == sequence)
        },
    )
    .await;
}

#[tokio::test]
async fn a_poison_event_is_quarantined_and_stops_only_its_own_resource() {
    let env = TestEnv::start().await;
    let mut announced = announcements(&env, DEFAULT_NAME).await;
    let scim = env.scim();
    let victim = scim.create_user(&user("poisoned@example.com")).await;
    let id = Uuid::parse_str(&victim).unwrap();
    assert!(
        says_clear(&mut announced, env.head().await).await,
        "nothing is quarantined yet"
    );
    let session = env.session(&victim);
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        200
    );

    let poison = poison(&env, id).await;
    assert!(
        !says_clear(&mut announced, poison).await,
        "the projector's checkpoint no longer says nothing is quarantined"
    );
    let row = &quarantined(&env).await[0];
    assert_eq!(row.status, "failed");
    assert_eq!(row.tenant, "test");
    assert_eq!(row.aggregate_id, id);
    assert!(
        !row.audited,
        "jsonb cannot hold NUL: the audit record is refused too"
    );

    // The projector goes on: everyone else is unaffected.
    env.assert_other_tenant_unaffected().await;

    // The user whose state is uncertain is denied, not left as they were.
    eventually(
        "the quarantined user is denied",
        Duration::from_secs(5),
        || async { env.forward_auth("wiki.test", Some(&session)).await.status == 403 },
    )
    .await;

    // Writes to the quarantined resource answer 503 naming the cause, and append nothing.
    let head = env.head().await;
    let before = metrics(&env).await;
    let refused = scim.patch(&format!("/Users/{victim}"), &deactivate()).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.header("retry-after").is_some());
    assert!(refused.body["detail"]
        .as_str()
        .unwrap()
        .contains("quarantined"));
    assert_eq!(env.head().await, head);

    // The SCIM API says so.
    let (status, health) = readyz(&env).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["quarantined"], 1);
    // The gauge is the process's (every test environment's sets it): here, that it exists.
    let text = metrics(&env).await;
    assert!(
        sample(&text, "rollcall_projector_quarantined_events", "").is_some(),
        "{text}"
    );
    assert!(
        counted(&text, "rollcall_scim_writes_refused_quarantined_total")
            >= counted(&before, "rollcall_scim_writes_refused_quarantined_total") + 1.0,
        "{text}"
    );

    // A later event of the same resource is held behind it, in order.
    let held = append(&env, "test", id, &UserEvent::Deactivated).await;
    eventually(
        "the later event is held",
        Duration::from_secs(5),
        || async {
            quarantined(&env)
                .await
                .iter()
                .any(|row| row.sequence as u64 == held && row.status == "held")
        },
    )
    .await;

    // The audit chain still verifies; the unaudited event is named.
    let verified = rollcall_audit_api::verify::verify(&env.log, &env.store, None, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(verified.mismatch, None);
    assert_eq!(verified.unaudited, vec![poison]);

    // An operator skips the poison event: the held deactivation is applied after it.
    rollcall_eventlog::quarantine::append(
        &env.log,
        "test",
        id,
        SKIPPED,
        &Resolution {
            sequence: poison,
            aggregate_type: "user".into(),
            reason: "a NUL from a writer bug".into(),
        },
        Actor::Operator {
            name: "test".into(),
        },
    )
    .await
    .unwrap();
    eventually(
        "the quarantine is resolved",
        Duration::from_secs(5),
        || async { quarantined(&env).await.is_empty() },
    )
    .await;
    assert!(
        says_clear(&mut announced, env.head().await).await,
        "resolved: nothing is quarantined again"
    );
    let all = env.store.quarantine(true).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|row| row.status.as_str())
            .collect::<Vec<_>>(),
        ["skipped", "applied"]
    );
    assert_eq!(
        scim.get(&format!("/Users/{victim}")).await.body["active"],
        false
    );
    assert_eq!(readyz(&env).await.0, 200);
    // The resolution is on the record.
    assert!(env
        .store
        .audit_events("test", id)
        .await
        .unwrap()
        .iter()
        .any(|event| event.event_type == SKIPPED));
}

#[tokio::test]
async fn a_write_asks_postgresql_about_the_quarantine_only_when_its_checkpoint_did_not_say_nothing_is_quarantined(
) {
    let env = TestEnv::start().await;
    let (id, poison) = poisoned_user(&env).await;
    // A SCIM API's view of a projector that only this test announces for.
    let projector = "announced-by-the-test";
    let checkpoint = Checkpoint::follow(
        env.client.clone(),
        &env.namespace,
        env.store.clone(),
        projector,
        rollcall_eventlog::partition::Partition::ONLY,
    )
    .await;
    let consistency = Consistency::new(vec![checkpoint], Some(env.store.clone()));
    let settle = |sequence| consistency.settle("User", "test", id, sequence);

    // Said nothing of the quarantine: PostgreSQL is asked, and the user is quarantined.
    announce(&env, projector, poison, false).await;
    assert!(
        matches!(settle(poison).await, Err(ApiError::Quarantined { .. })),
        "asked PostgreSQL"
    );
    // Said nothing is quarantined as of the write: PostgreSQL is not asked (the row this test
    // left there would refuse the write).
    announce(&env, projector, poison + 1, true).await;
    assert!(
        settle(poison + 1).await.is_ok(),
        "took the projector's word"
    );
    // For an earlier write too, while that announcement is the newest.
    assert!(settle(poison).await.is_ok());
    // A newer announcement that does not say so: asked again.
    announce(&env, projector, poison + 2, false).await;
    assert!(matches!(
        settle(poison + 2).await,
        Err(ApiError::Quarantined { .. })
    ));
    assert!(
        matches!(settle(poison).await, Err(ApiError::Quarantined { .. })),
        "only the newest announcement counts"
    );
}

#[tokio::test]
async fn the_projector_says_nothing_is_quarantined_only_while_postgresql_holds_no_open_quarantine()
{
    let env = TestEnv::start().await;
    let mut announced = announcements(&env, DEFAULT_NAME).await;
    let scim = env.scim();
    scim.create_user(&user("first@example.com")).await;
    assert!(says_clear(&mut announced, env.head().await).await);

    // A quarantine this projector did not make (another process's, as during a lease
    // handover, or a rebuild's): the projector's own memory knows nothing of it.
    let sequence = env.head().await + 1_000;
    let mut connection = env.store.pool().acquire().await.unwrap();
    rollcall_store::quarantine::record(
        &mut connection,
        &rollcall_store::quarantine::NewQuarantine {
            sequence,
            position: 0,
            event_id: Uuid::now_v7(),
            tenant: "test",
            aggregate_type: "user",
            aggregate_id: Uuid::now_v7(),
            event_type: "user.attributes_changed",
            status: rollcall_store::quarantine::Status::Failed,
            error: "recorded by the test",
            envelope: b"{}",
            affected_users: &[],
            audited: false,
            attempts: 1,
        },
    )
    .await
    .unwrap();
    scim.create_user(&user("second@example.com")).await;
    assert!(
        !says_clear(&mut announced, env.head().await).await,
        "PostgreSQL holds an open quarantine"
    );

    rollcall_store::quarantine::resolve(
        &mut connection,
        sequence as i64,
        rollcall_store::quarantine::Status::Skipped,
        sequence,
        "resolved by the test",
    )
    .await
    .unwrap();
    scim.create_user(&user("third@example.com")).await;
    assert!(says_clear(&mut announced, env.head().await).await);
}

#[tokio::test]
async fn every_kind_of_poison_is_quarantined_while_the_stream_goes_on() {
    let env = TestEnv::start().await;
    let cases: Vec<(&str, UserEvent)> = vec![
        (
            "a NUL in a userName",
            UserEvent::Provisioned {
                attributes: serde_json::from_value(json!({"userName": "nul\u{0}@example.com"}))
                    .unwrap(),
                active: true,
            },
        ),
        (
            "a userName the index cannot hold",
            UserEvent::Provisioned {
                attributes: serde_json::from_value(json!({"userName": unindexable()})).unwrap(),
                active: true,
            },
        ),
        (
            "an event for a user that does not exist",
            UserEvent::Deactivated,
        ),
    ];
    for (what, event) in cases {
        let id = Uuid::now_v7();
        let sequence = append(&env, "evil", id, &event).await;
        eventually(what, Duration::from_secs(10), || async {
            quarantined(&env)
                .await
                .iter()
                .any(|row| row.sequence as u64 == sequence && row.status == "failed")
        })
        .await;
        env.assert_other_tenant_unaffected().await;
    }
    let verified = rollcall_audit_api::verify::verify(&env.log, &env.store, None, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(verified.mismatch, None);

    // A retry of an event that still cannot be applied is tried once more, and stays.
    let last = quarantined(&env).await.pop().unwrap();
    rollcall_eventlog::quarantine::append(
        &env.log,
        "evil",
        last.aggregate_id,
        rollcall_eventlog::quarantine::RETRIED,
        &Resolution {
            sequence: last.sequence as u64,
            aggregate_type: "user".into(),
            reason: "try again".into(),
        },
        Actor::Operator {
            name: "test".into(),
        },
    )
    .await
    .unwrap();
    eventually("the retry is recorded", Duration::from_secs(5), || async {
        quarantined(&env)
            .await
            .iter()
            .any(|row| row.sequence == last.sequence && row.attempts == 2 && row.status == "failed")
    })
    .await;
    assert_eq!(quarantined(&env).await.len(), 3);
}

#[tokio::test]
async fn a_resent_deactivation_answers_only_once_the_first_is_in_effect() {
    let mut env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&user("resent@example.com")).await;
    let session = env.session(&id);
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        200
    );
    env.kill_projector().await;
    let head = env.head().await;
    let first = tokio::spawn({
        let scim = scim.clone();
        let path = format!("/Users/{id}");
        async move { scim.patch(&path, &deactivate()).await }
    });
    eventually(
        "the first deactivation is appended",
        Duration::from_secs(5),
        || async { env.head().await > head },
    )
    .await;
    // Entra re-sends it: the user is inactive already, nothing is appended...
    let mut second = tokio::spawn({
        let scim = scim.clone();
        let path = format!("/Users/{id}");
        async move { scim.patch(&path, &deactivate()).await }
    });
    // ...but it must not answer while the first is not in effect.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut second)
            .await
            .is_err(),
        "the re-sent deactivation answered before the first was applied"
    );
    env.start_projector();
    let second = second.await.unwrap();
    assert_eq!(second.status, 200, "{:?}", second.body);
    // The very next decision after a 2xx denies.
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        403
    );
    assert_eq!(first.await.unwrap().status, 200);
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_write_not_in_effect_within_the_bound_answers_503_with_retry_after() {
    let mut env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&user("late@example.com")).await;
    let session = env.session(&id);
    env.kill_projector().await;
    let before = metrics(&env).await;
    let response = scim.patch(&format!("/Users/{id}"), &deactivate()).await;
    assert_eq!(response.status, 503, "{:?}", response.body);
    assert_eq!(response.header("retry-after"), Some("5"));
    assert_eq!(
        response.body["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:Error"
    );
    let (status, health) = readyz(&env).await;
    assert_eq!(status, 503);
    assert_eq!(health["writes_not_applied_in_time"], 1);
    let text = metrics(&env).await;
    assert!(
        counted(&text, "rollcall_scim_writes_not_applied_total")
            >= counted(&before, "rollcall_scim_writes_not_applied_total") + 1.0,
        "{text}"
    );
    // Entra retries: once the pipeline catches up, the retry answers 200 and is in effect.
    env.start_projector();
    let retried = scim.patch(&format!("/Users/{id}"), &deactivate()).await;
    assert_eq!(retried.status, 200, "{:?}", retried.body);
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        403
    );
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn while_nats_is_down_writes_answer_503_with_retry_after_and_continue_after() {
    for binary in rollcall_it::nats::binaries() {
        nats_down_then_back(binary).await;
    }
}

async fn nats_down_then_back(binary: String) {
    let mut nats = NatsServer::start(Settings {
        binary: Some(binary),
        ..Default::default()
    })
    .await;
    let env = TestEnv::start_on(nats.url.clone()).await;
    let scim = env.scim();
    let id = scim.create_user(&user("before@example.com")).await;
    nats.kill().await;
    let refused = scim.post("/Users", &user("during@example.com")).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        refused.body["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:Error"
    );
    let refused = scim.patch(&format!("/Users/{id}"), &deactivate()).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    nats.restart().await;
    eventually(
        "writes are taken again once NATS is back",
        Duration::from_secs(20),
        || async { scim.post("/Users", &user("after@example.com")).await.status == 201 },
    )
    .await;
    let deactivated = scim.patch(&format!("/Users/{id}"), &deactivate()).await;
    assert_eq!(deactivated.status, 200, "{:?}", deactivated.body);
}

#[tokio::test]
async fn an_access_state_past_max_payload_denies_that_user_and_stalls_no_one() {
    // A server with a small max_payload, so that a state outgrows it with few groups.
    let nats = NatsServer::start(Settings {
        max_payload: Some(8 * 1024),
        ..Default::default()
    })
    .await;
    let env = TestEnv::start_on(nats.url.clone()).await;
    let scim = env.scim();
    let id = scim
        .create_user(&user("member-of-everything@example.com"))
        .await;
    let session = env.session(&id);
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        200
    );
    for n in 0..120 {
        let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                           "displayName": format!("group {n}"), "members": [{"value": id}]});
        assert_eq!(scim.post("/Groups", &group).await.status, 201);
    }
    // Its state no longer fits: the user is denied (never left as they were)...
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        403
    );
    // ...and every other user's changes still reach the access service.
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_claim_whose_writer_died_before_appending_is_recovered_as_soon_as_its_process_is_gone() {
    let env = TestEnv::start().await;
    // What a `kill -9` between the claim and the append leaves: a claim for an id that has no
    // event.
    let claims = rollcall_eventlog::Claims::open(env.log.jetstream(), &env.namespace)
        .await
        .unwrap();
    let orphan = Uuid::now_v7();
    assert_eq!(
        claims
            .claim("test", "userName", "orphaned@example.com", orphan)
            .await
            .unwrap(),
        rollcall_eventlog::Claim::Acquired
    );
    // While the process that claimed it lives (it may still append), the name is taken.
    assert_eq!(
        env.scim()
            .post("/Users", &user("orphaned@example.com"))
            .await
            .status,
        409
    );
    // The process dies (its liveness entry is no longer renewed): the claim is recovered, its
    // holder fenced, as soon as the process's lease has run out.
    drop(claims);
    let started = std::time::Instant::now();
    eventually(
        "the orphaned claim is recovered",
        Duration::from_secs(10),
        || async {
            env.scim()
                .post("/Users", &user("orphaned@example.com"))
                .await
                .status
                == 201
        },
    )
    .await;
    assert!(
        started.elapsed() <= rollcall_eventlog::claims::WRITER_LEASE + Duration::from_secs(2),
        "recovered only after {:?}",
        started.elapsed()
    );
    // Entra's lookup finds the one user.
    let found = env
        .scim()
        .get(&format!(
            "/Users?filter={}",
            rollcall_it::encode("userName eq \"orphaned@example.com\"")
        ))
        .await;
    assert_eq!(found.body["totalResults"], 1);
    // The dead writer, should it wake up, can no longer create its user.
    let subject = env
        .namespace
        .aggregate_subject("test", UserEvent::AGGREGATE, &orphan);
    let late = rollcall_it::user_envelope(
        "test",
        orphan,
        1,
        &UserEvent::Provisioned {
            attributes: serde_json::from_value(json!({"userName": "orphaned@example.com"}))
                .unwrap(),
            active: true,
        },
    );
    assert!(matches!(
        env.log.append(&subject, 0, &[late]).await,
        Err(rollcall_eventlog::AppendError::Conflict { .. })
    ));
    assert_eq!(
        env.event_types("test", &orphan.to_string()).await,
        ["user.abandoned"]
    );
    // A claim whose holder exists and uses the name is never taken.
    assert_eq!(
        env.scim()
            .post("/Users", &user("orphaned@example.com"))
            .await
            .status,
        409
    );
    env.assert_other_tenant_unaffected().await;
}

/// A rebuild swapped in at the very checkpoint the live projector left (the stream idle) brings
/// a quarantine of its own: here a projector bug (a trigger of the live schema) quarantined an
/// event that the rebuild, free of it, applied. The live projector reads what is quarantined
/// again (the checkpoint row is not the one it wrote) and applies the user's next event,
/// instead of holding it behind a quarantine that no longer exists.
#[tokio::test]
async fn after_a_rebuild_at_the_same_checkpoint_the_projector_follows_the_rebuilt_quarantine() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let id = Uuid::parse_str(&scim.create_user(&user("rebuilt@example.com")).await).unwrap();
    let schema = rollcall_store::LIVE_SCHEMA;
    for statement in [
        "CREATE FUNCTION public.refuse_version_two() RETURNS trigger LANGUAGE plpgsql
         AS $$ BEGIN RAISE EXCEPTION 'a projector bug'; END $$"
            .to_owned(),
        format!(
            "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON {schema}.scim_user FOR EACH ROW
             WHEN (NEW.id = '{id}' AND NEW.version = 2) EXECUTE FUNCTION public.refuse_version_two()"
        ),
    ] {
        sqlx::query(&statement)
            .execute(env.store.pool())
            .await
            .unwrap();
    }
    let refused = append(&env, "test", id, &changed("title", json!("refused"))).await;
    until_quarantined(&env, refused).await;
    let head = env.head().await;
    eventually(
        "the projector is idle at the head",
        Duration::from_secs(10),
        || env.projected(head),
    )
    .await;

    rollcall_projector::rebuild::rebuild(env.client.clone(), &env.log, &env.store, 10_000, |_| {})
        .await
        .unwrap();
    assert!(quarantined(&env).await.is_empty(), "the rebuild applied it");
    assert_eq!(env.store.checkpoint(DEFAULT_NAME).await.unwrap(), head);

    let next = append(&env, "test", id, &changed("title", json!("next"))).await;
    eventually(
        "the next event is projected",
        Duration::from_secs(10),
        || env.projected(next),
    )
    .await;
    assert!(
        quarantined(&env).await.is_empty(),
        "nothing is held behind the quarantine the rebuild left behind"
    );
    let body = scim.get(&format!("/Users/{id}")).await.body;
    assert_eq!(body["title"], "next", "{body}");
}
