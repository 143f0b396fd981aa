//! Atomic writes: a write of several events (a PATCH with attributes and `active: false`) is one
//! message on the stream, so the stream, the read models, the audit record and access decisions
//! hold all of it or none of it, also when the writer is killed in the middle of the write. The
//! killed writer is a process of its own: this test binary run again as
//! [`writer_child_process`], aborted at a fault point (`ROLLCALL_FAULT`).

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use rollcall_domain::attributes::AttributeChange;
use rollcall_domain::user::UserEvent;
use rollcall_eventlog::envelope::{decode_commit, COMMIT_HEADER};
use rollcall_eventlog::fault;
use rollcall_eventlog::quarantine::{Resolution, SKIPPED};
use rollcall_eventlog::{Actor, Envelope, Namespace};
use rollcall_it::{eventually, Installation, TestEnv};
use serde_json::{json, Value};
use uuid::Uuid;

/// The child test, by its full name in this binary.
const CHILD: &str = "atomic_writes::writer_child_process";
const CHILD_NATS: &str = "ROLLCALL_IT_CHILD_NATS";
const CHILD_NAMESPACE: &str = "ROLLCALL_IT_CHILD_NAMESPACE";
const CHILD_DATABASE: &str = "ROLLCALL_IT_CHILD_DATABASE";
const CHILD_USER: &str = "ROLLCALL_IT_CHILD_USER";
const SIGABRT: i32 = 6;

fn user(name: &str) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name, "title": "Engineer"})
}

/// Entra's deprovisioning PATCH that also changes an attribute: two events, one write.
fn retitle_and_deactivate() -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
           "Operations": [{"op": "Replace", "path": "title", "value": "Director"},
                          {"op": "Replace", "path": "active", "value": "False"}]})
}

fn subject(env: &TestEnv, id: &str) -> String {
    env.namespace
        .aggregate_subject(&env.tenant, "user", &Uuid::parse_str(id).unwrap())
}

/// The events of the aggregate's last message on the stream, with the message's headers.
async fn last_message(env: &TestEnv, id: &str) -> (u64, async_nats::HeaderMap, Vec<Envelope>) {
    let message = env
        .log
        .stream()
        .get_last_raw_message_by_subject(&subject(env, id))
        .await
        .unwrap();
    let events = decode_commit(&message.payload).unwrap();
    (message.sequence, message.headers, events)
}

fn types(events: &[Envelope]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

#[tokio::test]
async fn a_write_of_two_events_is_one_message_applied_audited_and_enforced_whole() {
    let mut env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&user("ada@example.com")).await;
    let session = env.session(&id);
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        200
    );

    let patched = scim
        .patch(&format!("/Users/{id}"), &retitle_and_deactivate())
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(patched.body["meta"]["version"], "W/\"3\"");

    // One message holds both events, in order; the stream's per-subject sequence is that
    // message's, which is what the next write expects.
    let (sequence, headers, events) = last_message(&env, &id).await;
    assert_eq!(
        types(&events),
        ["user.attributes_changed", "user.deactivated"]
    );
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(headers.get(COMMIT_HEADER).map(|v| v.as_str()), Some("2"));
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()),
        Some(events[0].event_id.to_string())
    );
    let loaded = env.log.load(&subject(&env, &id), 0).await.unwrap();
    assert_eq!(loaded.events.len(), 3);
    assert_eq!(loaded.last_sequence, sequence);

    // The read model, the audit record and the revocation hold both, at (sequence, position).
    let uuid = Uuid::parse_str(&id).unwrap();
    let audited: Vec<(i64, i32, String)> = env
        .store
        .audit_events("test", uuid)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.sequence, row.position, row.event_type))
        .collect();
    assert_eq!(
        audited[1..],
        [
            (sequence as i64, 0, "user.attributes_changed".to_owned()),
            (sequence as i64, 1, "user.deactivated".to_owned())
        ]
    );
    let revocations = env.store.revocations("test", uuid).await.unwrap();
    assert_eq!(
        revocations
            .iter()
            .map(|r| (r.sequence, r.position))
            .collect::<Vec<_>>(),
        [(sequence as i64, 1)]
    );
    let read = scim.get(&format!("/Users/{id}")).await;
    assert_eq!(
        (read.body["title"].clone(), read.body["active"].clone()),
        (json!("Director"), json!(false))
    );
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        403
    );

    // The chain covers each event: verification expands the commit.
    let verified = rollcall_audit_api::verify::verify(&env.log, &env.store, None, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(verified.mismatch, None);
    assert_eq!(verified.events, 3 + env.setup_events);

    // Another process loads the aggregate from the stream (commit included) and writes after it.
    let replica = env.replica().await;
    let reactivated = replica
        .patch(
            &format!("/Users/{id}"),
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "Replace", "path": "active", "value": "True"}]}),
        )
        .await;
    assert_eq!(reactivated.status, 200, "{:?}", reactivated.body);
    assert_eq!(reactivated.body["meta"]["version"], "W/\"4\"");
    let (after, _, events) = last_message(&env, &id).await;
    assert_eq!(
        (after > sequence, types(&events)),
        (true, vec!["user.reactivated"])
    );

    // A rebuild from the stream records the same events at the same places, chained alike.
    let before = env.store.audit_events("test", uuid).await.unwrap();
    rollcall_projector::rebuild::rebuild(env.client.clone(), &env.log, &env.store, 2, |_| {})
        .await
        .unwrap();
    assert_eq!(env.store.audit_events("test", uuid).await.unwrap(), before);
}

fn provisioned(name: &str) -> UserEvent {
    let mut attributes = serde_json::Map::new();
    attributes.insert("userName".into(), json!(name));
    UserEvent::Provisioned {
        attributes,
        active: true,
    }
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

#[tokio::test]
async fn audit_pages_and_exports_never_cut_a_write_in_two() {
    let env = TestEnv::start().await;
    // One event first, then 130 writes of two: page boundaries (the export reads 250 events a
    // page; the search below 2) fall in the middle of writes.
    env.scim().create_user(&user("first@example.com")).await;
    for n in 0..130 {
        let id = Uuid::now_v7();
        let subject = env.namespace.aggregate_subject("test", "user", &id);
        let write = [
            rollcall_it::user_envelope("test", id, 1, &provisioned(&format!("u{n}@example.com"))),
            rollcall_it::user_envelope("test", id, 2, &changed("title", json!("Engineer"))),
        ];
        env.log.append(&subject, 0, &write).await.unwrap();
    }
    let head = env.head().await;
    eventually(
        "the projector applies every write",
        Duration::from_secs(10),
        || async { env.store.checkpoint("projector").await.unwrap() >= head },
    )
    .await;
    assert_eq!(
        env.store.audit_count().await.unwrap(),
        261 + env.setup_events
    );

    let response = reqwest::Client::new()
        .get(format!("{}/audit/v1/export?format=ndjson", env.audit_base))
        .bearer_auth(&env.audit_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let exported: Vec<(i64, String)> = response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            (
                event["sequence"].as_i64().unwrap(),
                event["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        exported.len() as u64,
        261 + env.setup_events,
        "every event exported once"
    );

    let mut searched = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = env
            .audit(&format!("/audit/v1/events?limit=2{cursor}"))
            .await;
        assert_eq!(status, 200, "{page}");
        searched.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let ids: Vec<String> = exported.into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        searched, ids,
        "search pages hold every event once, in order"
    );
}

#[tokio::test]
async fn a_write_that_cannot_be_applied_is_quarantined_and_skipped_whole() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&user("frozen@example.com")).await;
    let uuid = Uuid::parse_str(&id).unwrap();
    let subject = subject(&env, &id);
    // The first change applies on its own; the second holds a NUL PostgreSQL cannot store.
    let earlier = env.log.load(&subject, 0).await.unwrap();
    let sequence = env
        .log
        .append(
            &subject,
            earlier.last_sequence,
            &[
                rollcall_it::user_envelope("test", uuid, 2, &changed("title", json!("Director"))),
                rollcall_it::user_envelope(
                    "test",
                    uuid,
                    3,
                    &changed("nickName", json!("nul\u{0}here")),
                ),
            ],
        )
        .await
        .unwrap();
    eventually(
        "the write is quarantined",
        Duration::from_secs(10),
        || async { env.store.quarantine(false).await.unwrap().len() == 2 },
    )
    .await;
    let rows = env.store.quarantine(false).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.sequence, r.position, r.status.as_str()))
            .collect::<Vec<_>>(),
        [
            (sequence as i64, 0, "failed"),
            (sequence as i64, 1, "failed")
        ]
    );
    // Not half of it: the title is still the one before the write.
    let row = env.store.user("test", uuid).await.unwrap().unwrap();
    assert_eq!(row.attributes.0["title"], "Engineer");
    assert_eq!(row.version, 1);
    let verified = rollcall_audit_api::verify::verify(&env.log, &env.store, None, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(verified.mismatch, None);

    // An operator skips the write: both events are passed over and the resource is released.
    rollcall_eventlog::quarantine::append(
        &env.log,
        "test",
        uuid,
        SKIPPED,
        &Resolution {
            sequence,
            aggregate_type: "user".into(),
            reason: "a writer bug".into(),
        },
        Actor::Operator {
            name: "test".into(),
        },
    )
    .await
    .unwrap();
    eventually(
        "the quarantine is resolved",
        Duration::from_secs(10),
        || async { env.store.quarantine_open().await.unwrap() == 0 },
    )
    .await;
    let rows = env.store.quarantine(true).await.unwrap();
    assert!(rows.iter().all(|r| r.status == "skipped"), "{rows:?}");
    assert_eq!(rows.len(), 2);
    let row = env.store.user("test", uuid).await.unwrap().unwrap();
    assert_eq!(row.attributes.0["title"], "Engineer");
    env.assert_other_tenant_unaffected().await;
}

/// The writer the tests below kill: started by them in a process of its own (this binary, run
/// again with `--exact` and `--ignored`), it joins their installation and sends the PATCH, and
/// dies at the fault point `ROLLCALL_FAULT` names. Run any other way it does nothing.
#[tokio::test]
#[ignore = "the writer process of the tests that kill one; they start it"]
async fn writer_child_process() {
    let (Ok(nats), Ok(namespace), Ok(database), Ok(id)) = (
        std::env::var(CHILD_NATS),
        std::env::var(CHILD_NAMESPACE),
        std::env::var(CHILD_DATABASE),
        std::env::var(CHILD_USER),
    ) else {
        eprintln!("not started by a test that kills a writer: nothing to do");
        return;
    };
    let installation = Installation::open(nats, Namespace::new(namespace).unwrap(), database).await;
    // Never dropped: the installation is the parent test's, which inspects what is left.
    let env = std::mem::ManuallyDrop::new(TestEnv::start_in(installation).await);
    let response = env
        .scim()
        .patch(&format!("/Users/{id}"), &retitle_and_deactivate())
        .await;
    println!(
        "the write answered {} without reaching its fault point",
        response.status
    );
}

/// What a killed write left on the stream.
#[derive(Debug, PartialEq)]
enum Left {
    Nothing,
    All,
}

/// Creates a user, has a writer process send the two-event PATCH and die at `point`, then
/// starts Rollcall again on the installation and checks that the stream holds all of the write
/// or none of it, and that the read model, the audit record and access decisions agree with it.
async fn kill_the_writer_at(point: &str) -> Left {
    let mut first = TestEnv::start().await;
    let id = first.scim().create_user(&user("ada@example.com")).await;
    let session = first.session(&id);
    // The writer's own projector projects, as it would in its own process.
    first.kill_projector().await;

    let child = tokio::process::Command::from(rollcall_it::child_test(CHILD))
        .env(CHILD_NATS, &first.nats_url)
        .env(CHILD_NAMESPACE, first.namespace.as_str())
        .env(CHILD_DATABASE, &first.database_url)
        .env(CHILD_USER, &id)
        .env(fault::VARIABLE, point)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the writer process ends within 2 minutes")
        .unwrap();
    assert_eq!(
        output.status.signal(),
        Some(SIGABRT),
        "the writer must die at {point}; it ended {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Rollcall starts again on the same namespace and database.
    let installation = Installation::open(
        first.nats_url.clone(),
        first.namespace.clone(),
        first.database_url.clone(),
    )
    .await;
    let env = TestEnv::start_in(installation).await;
    let loaded = env.log.load(&subject(&env, &id), 0).await.unwrap();
    let left = match types(&loaded.events).as_slice() {
        ["user.provisioned"] => Left::Nothing,
        ["user.provisioned", "user.attributes_changed", "user.deactivated"] => {
            let (sequence, _, events) = last_message(&env, &id).await;
            assert_eq!(
                (sequence, events.len()),
                (loaded.last_sequence, 2),
                "one message"
            );
            Left::All
        }
        other => panic!("half a write is on the stream: {other:?}"),
    };

    let head = env.head().await;
    eventually(
        "the projector catches up with the stream",
        Duration::from_secs(10),
        || async { env.store.checkpoint("projector").await.unwrap() >= head },
    )
    .await;
    let uuid = Uuid::parse_str(&id).unwrap();
    let audited: Vec<Uuid> = env
        .store
        .audit_events("test", uuid)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.event_id)
        .collect();
    let streamed: Vec<Uuid> = loaded.events.iter().map(|e| e.event_id).collect();
    assert_eq!(
        audited, streamed,
        "the audit record holds what the stream holds"
    );
    let verified = rollcall_audit_api::verify::verify(&env.log, &env.store, None, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(verified.mismatch, None);
    let read = env.scim().get(&format!("/Users/{id}")).await;
    let revocations = env.store.revocations("test", uuid).await.unwrap().len();
    let expected_access = match left {
        Left::Nothing => {
            assert_eq!(
                (
                    read.body["title"].clone(),
                    read.body["active"].clone(),
                    revocations
                ),
                // Created without `active`: unassigned, which means active.
                (json!("Engineer"), Value::Null, 0)
            );
            200
        }
        Left::All => {
            assert_eq!(
                (
                    read.body["title"].clone(),
                    read.body["active"].clone(),
                    revocations
                ),
                (json!("Director"), json!(false), 1)
            );
            403
        }
    };
    eventually(
        "the access service decides as the stream says",
        Duration::from_secs(5),
        || async { env.forward_auth("wiki.test", Some(&session)).await.status == expected_access },
    )
    .await;

    // Writes go on after it, expecting the stream's sequence.
    let renamed = env
        .scim()
        .patch(
            &format!("/Users/{id}"),
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "Replace", "path": "displayName", "value": "Ada"}]}),
        )
        .await;
    assert_eq!(renamed.status, 200, "{:?}", renamed.body);
    let version = loaded.events.len() + 1;
    assert_eq!(renamed.body["meta"]["version"], format!("W/\"{version}\""));
    drop(env);
    drop(first);
    left
}

#[tokio::test]
async fn a_writer_killed_before_it_sends_the_write_leaves_none_of_it() {
    if cfg!(debug_assertions) {
        assert_eq!(
            kill_the_writer_at(fault::APPEND_ENCODED).await,
            Left::Nothing
        );
    }
}

#[tokio::test]
async fn a_writer_killed_after_sending_the_write_leaves_all_of_it_or_none() {
    if cfg!(debug_assertions) {
        kill_the_writer_at(fault::APPEND_SENT).await;
    }
}

#[tokio::test]
async fn a_writer_killed_after_the_stream_took_the_write_leaves_all_of_it() {
    if cfg!(debug_assertions) {
        assert_eq!(kill_the_writer_at(fault::WRITE_APPENDED).await, Left::All);
    }
}

#[tokio::test]
async fn an_append_that_reaches_no_stream_is_sent_again_until_the_stream_answers() {
    let id = Uuid::new_v4().simple().to_string();
    let namespace = Namespace::new(format!("t{}", &id[..16])).unwrap();
    let client = rollcall_eventlog::connect(&rollcall_it::nats_url(), "rollcall-test")
        .await
        .unwrap();
    let log = rollcall_eventlog::EventLog::open(client, namespace.clone())
        .await
        .unwrap();
    // The stream is gone for a moment, as a stream just created on a cluster, or one whose
    // leader is being elected, is to the server the writer is connected to: no one answers.
    let jetstream = log.jetstream().clone();
    let config = jetstream
        .get_stream(namespace.stream())
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    jetstream.delete_stream(namespace.stream()).await.unwrap();
    let user = Uuid::now_v7();
    let subject = namespace.aggregate_subject("test", "user", &user);
    let event = UserEvent::Deactivated;
    let envelope = rollcall_it::user_envelope("test", user, 1, &event);
    let writer = log.clone();
    let append = tokio::spawn(async move { writer.append(&subject, 0, &[envelope]).await });
    eventually(
        "the append was sent again",
        Duration::from_secs(5),
        || async { log.appends_sent_again() > 0 },
    )
    .await;
    jetstream.create_stream(config).await.unwrap();
    let sequence = append.await.unwrap().unwrap();
    assert_eq!(sequence, 1, "stored once, in the stream that answered");
    jetstream.delete_stream(namespace.stream()).await.unwrap();
}
