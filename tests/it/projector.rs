//! The projector: killed at any point and restarted it loses and duplicates nothing; a rebuild
//! from the stream gives the same state as the live projection; traces continue across NATS.

use std::time::Duration;

use reqwest::Method;
use rollcall_domain::user::UserEvent;
use rollcall_eventlog::{fault, Namespace};
use rollcall_it::{eventually, Installation, TestEnv};
use serde_json::json;
use uuid::Uuid;

async fn counts(env: &TestEnv) -> (u64, i64, i64) {
    let checkpoint = env.store.checkpoint("projector").await.unwrap();
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM scim_user")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    (checkpoint, audited, users)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut env = TestEnv::start().await;
    env.kill_projector().await;
    let total = 3_000u64;
    for n in 0..total {
        let id = Uuid::now_v7();
        let event = UserEvent::Provisioned {
            attributes: json!({"userName": format!("bulk{n}")})
                .as_object()
                .unwrap()
                .clone(),
            active: true,
        };
        let envelope = rollcall_it::user_envelope("test", id, 1, &event);
        env.log
            .append(
                &env.namespace.aggregate_subject("test", "user", &id),
                0,
                &[envelope],
            )
            .await
            .unwrap();
    }
    // One event per message, the set-up's first.
    let setup = env.setup_events;
    let end = setup + total;
    let mut kills = 0;
    let mut mid_stream = 0;
    while kills < 3 {
        env.start_projector();
        // Kill it as soon as it has made progress but before it is done.
        let before = env.store.checkpoint("projector").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = env.store.checkpoint("projector").await.unwrap();
            if now > before || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        env.kill_projector().await;
        kills += 1;
        // Whatever was committed is whole: the checkpoint, the audit log and the read model agree
        // (the set-up's application events are audited and have no row).
        let (checkpoint, audited, users) = counts(&env).await;
        assert_eq!(
            (audited, users + setup as i64),
            (checkpoint as i64, checkpoint as i64),
            "after kill {kills}"
        );
        if checkpoint > setup && checkpoint < end {
            mid_stream += 1;
        }
        if checkpoint >= end {
            break;
        }
    }
    assert!(mid_stream > 0, "no kill landed mid-stream");
    env.start_projector();
    let store = env.store.clone();
    eventually("the projector catches up", Duration::from_secs(60), || {
        let store = store.clone();
        async move { store.checkpoint("projector").await.unwrap() == end }
    })
    .await;
    assert_eq!(counts(&env).await, (end, end as i64, total as i64));
}

pub(crate) async fn snapshot(env: &TestEnv) -> Vec<String> {
    let mut rows = Vec::new();
    for query in [
        "SELECT row_to_json(u)::text FROM (SELECT * FROM scim_user ORDER BY tenant, id) u",
        "SELECT row_to_json(g)::text FROM (SELECT * FROM scim_group ORDER BY tenant, id) g",
        "SELECT row_to_json(m)::text FROM (SELECT * FROM group_member ORDER BY tenant, group_id, member_key) m",
        "SELECT row_to_json(a)::text FROM (SELECT * FROM audit_event ORDER BY sequence, position) a",
        "SELECT row_to_json(c)::text FROM (SELECT * FROM audit_chain ORDER BY tenant) c",
        "SELECT row_to_json(r)::text FROM (SELECT * FROM revocation ORDER BY sequence, position) r",
        "SELECT row_to_json(q)::text FROM (SELECT sequence, position, status, error, audited FROM projection_quarantine ORDER BY sequence, position) q",
    ] {
        let part: Vec<String> = sqlx::query_scalar(query).fetch_all(env.store.pool()).await.unwrap();
        rows.extend(part);
    }
    rows
}

#[tokio::test]
async fn a_rebuild_from_the_stream_equals_the_live_read_models() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let patch = |operations: serde_json::Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations});
    let mut users = Vec::new();
    for n in 0..5 {
        users.push(scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("r{n}@x"), "title": "t"})).await);
    }
    scim.patch(
        &format!("/Users/{}", users[0]),
        &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
    )
    .await;
    scim.patch(
        &format!("/Users/{}", users[1]),
        &patch(json!([{"op": "Replace", "path": "name.givenName", "value": "G"}])),
    )
    .await;
    scim.delete(&format!("/Users/{}", users[4])).await;
    let group = scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "G"})).await;
    scim.patch(&format!("/Groups/{group}"), &patch(json!([{"op": "Add", "path": "members", "value": [{"value": users[1]}, {"value": users[2]}, {"value": users[3]}]}]))).await;
    scim.patch(
        &format!("/Groups/{group}"),
        &patch(json!([{"op": "Remove", "path": "members", "value": [{"value": users[2]}]}])),
    )
    .await;
    scim.patch(
        &format!("/Groups/{group}"),
        &patch(json!([{"op": "Replace", "path": "displayName", "value": "H"}])),
    )
    .await;
    let live = snapshot(&env).await;
    assert!(live.len() > 15);
    let rebuilt =
        rollcall_projector::rebuild::rebuild(env.client.clone(), &env.log, &env.store, 3, |_| {})
            .await
            .unwrap();
    assert_eq!(rebuilt.applied, env.head().await);
    assert_eq!(rebuilt.folded, rebuilt.applied, "every batch was folded");
    assert_eq!(snapshot(&env).await, live);
    // The live services read the rebuilt tables.
    assert_eq!(
        scim.get(&format!("/Groups/{group}")).await.body["displayName"],
        "H"
    );
    let created = scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "after@x"})).await;
    assert_eq!(scim.get(&format!("/Users/{created}")).await.status, 200);
}

/// An operator's event for `id`, appended as a writer would (expecting `after`).
async fn append_user_event(env: &TestEnv, id: Uuid, version: u64, after: u64, event: &UserEvent) {
    let envelope = rollcall_it::user_envelope("test", id, version, event);
    env.log
        .append(
            &env.namespace.aggregate_subject("test", "user", &id),
            after,
            &[envelope],
        )
        .await
        .unwrap();
}

/// The rebuild folds each batch per resource in memory and writes it in bulk: the orders in
/// which folding could go wrong (a member removed and added again, added twice, a user deleted
/// after being added to a group and a group deleted after members came, a user deleted and its
/// memberships with it, revocations) give exactly the rows the live projector wrote event by
/// event, whether the whole stream is one batch, every event a batch of its own, or anything between.
/// The stream's head once the live projector has applied it, and the read models then.
async fn live_snapshot(env: &TestEnv, what: &str) -> (u64, Vec<String>) {
    let head = env.head().await;
    let store = env.store.clone();
    eventually(what, Duration::from_secs(20), || {
        let store = store.clone();
        async move { store.checkpoint("projector").await.unwrap() >= head }
    })
    .await;
    (head, snapshot(env).await)
}

#[tokio::test]
async fn a_bulk_rebuild_folds_every_order_of_events_as_the_live_projector_applies_them() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let patch = |operations: serde_json::Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations});
    let user = |name: &str| json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name, "externalId": name.to_uppercase()});
    let (a, b, c, d) = (
        scim.create_user(&user("a@x")).await,
        scim.create_user(&user("b@x")).await,
        scim.create_user(&user("c@x")).await,
        scim.create_user(&user("d@x")).await,
    );
    let member = |id: &str| json!({"value": id});
    let group = scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "One", "externalId": "ONE", "members": [member(&a), member(&b)]})).await;
    let other = scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Two", "members": [member(&a)]})).await;
    let path = format!("/Groups/{group}");
    // Removed and added again: a new row, added later; added twice: the first row stays.
    for operations in [
        json!([{"op": "Remove", "path": "members", "value": [member(&a)]}]),
        json!([{"op": "Add", "path": "members", "value": [member(&a)]}]),
        json!([{"op": "Add", "path": "members", "value": [member(&b), member(&c), member(&d)]}]),
        json!([{"op": "Replace", "path": "displayName", "value": "One renamed"}]),
    ] {
        let status = scim.patch(&path, &patch(operations)).await.status;
        assert!(matches!(status, 200 | 204), "{status}");
    }
    // A user deleted after joining: its memberships go with it, in every group.
    assert_eq!(scim.delete(&format!("/Users/{c}")).await.status, 204);
    // A group deleted after its members came.
    assert_eq!(scim.delete(&format!("/Groups/{other}")).await.status, 204);
    // Deactivated (a revocation) and active again; renamed.
    for (id, operations) in [
        (
            &d,
            json!([{"op": "Replace", "path": "active", "value": false}]),
        ),
        (
            &d,
            json!([{"op": "Replace", "path": "active", "value": true}]),
        ),
        (
            &b,
            json!([{"op": "Replace", "path": "userName", "value": "B2@x"}]),
        ),
    ] {
        let response = scim
            .patch(&format!("/Users/{id}"), &patch(operations))
            .await;
        assert_eq!(response.status, 200);
    }
    let live = snapshot(&env).await;
    let rows = |table: &str| {
        let needle = format!("\"{table}\"");
        live.iter().filter(move |row| row.contains(&needle)).count()
    };
    assert!(
        rows("member_key") >= 3 && rows("not_before") == 2,
        "{live:#?}"
    );
    for batch in [10_000, 1, 2, 3, 5] {
        let rebuilt = rollcall_projector::rebuild::rebuild(
            env.client.clone(),
            &env.log,
            &env.store,
            batch,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(rebuilt.applied, env.head().await);
        assert_eq!(
            rebuilt.folded, rebuilt.applied,
            "batch {batch}: every batch was folded"
        );
        assert_eq!(snapshot(&env).await, live, "batch {batch}");
    }
}

/// A batch holding an event that cannot be applied is not folded: it is applied event by
/// event, which quarantines that event (as the live projector did) and applies the others.
#[tokio::test]
async fn a_rebuild_batch_with_an_event_that_does_not_apply_is_applied_event_by_event() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let before = scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "before@x"})).await;
    // A deactivation of a user that was never provisioned cannot be applied.
    append_user_event(&env, Uuid::now_v7(), 2, 0, &UserEvent::Deactivated).await;
    let after = scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "after@x"})).await;
    // A second provisioning of `before` (an operator's, past SCIM): the live projector finds
    // the user and changes nothing but its version. A bulk batch after the one applied event by
    // event must find the row that batch wrote, not take the user for new.
    let id = Uuid::parse_str(&before).unwrap();
    let subject = env.namespace.aggregate_subject("test", "user", &id);
    let (last, _) = env.log.last_sequence(&subject).await.unwrap();
    let again = UserEvent::Provisioned {
        attributes: serde_json::from_value(json!({"userName": "again@x"})).unwrap(),
        active: true,
    };
    append_user_event(&env, id, 2, last, &again).await;
    let (head, live) = live_snapshot(&env, "the live projector passed the poison").await;
    assert!(
        live.iter().any(|row| row.contains("\"failed\"")),
        "{live:#?}"
    );
    let rebuilt = rollcall_projector::rebuild::rebuild(
        env.client.clone(),
        &env.log,
        &env.store,
        10_000,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((rebuilt.applied, rebuilt.folded), (head, 0));
    assert_eq!(snapshot(&env).await, live);
    // In batches of two, the poison's batch is applied event by event and the last is folded.
    let rebuilt =
        rollcall_projector::rebuild::rebuild(env.client.clone(), &env.log, &env.store, 2, |_| {})
            .await
            .unwrap();
    assert!(rebuilt.folded > 0, "a later batch was folded");
    assert_eq!(snapshot(&env).await, live);
    for id in [before, after] {
        assert_eq!(scim.get(&format!("/Users/{id}")).await.status, 200);
    }
}

/// The rebuild builds its lookup indexes at the end, as long as every key it writes is sure to
/// fit an index entry. A userName too long for a btree entry (which SCIM's limits refuse, but an
/// older version or an operator may have appended) was quarantined by the live projector; the
/// rebuild builds the lookup indexes at that batch and applies it event by event, so that it is
/// quarantined alike, and goes on in bulk after it.
#[tokio::test]
async fn a_rebuild_quarantines_a_key_no_index_can_hold_as_the_live_projector_did() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let user = |name: &str| json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name});
    let before = scim.create_user(&user("before@x")).await;
    // Incompressible (PostgreSQL compresses long index entries before refusing them).
    let long: String = (0..125)
        .flat_map(|_| {
            Uuid::new_v4()
                .into_bytes()
                .chunks(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect::<Vec<_>>()
        })
        .map(|n| char::from_u32(0x4E00 + u32::from(n) % 20_000).unwrap())
        .collect();
    assert!(long.len() >= 3_000);
    let event = UserEvent::Provisioned {
        attributes: json!({"userName": long}).as_object().unwrap().clone(),
        active: true,
    };
    append_user_event(&env, Uuid::now_v7(), 1, 0, &event).await;
    let after = scim.create_user(&user("after@x")).await;
    let (head, live) = live_snapshot(&env, "the live projector passed the long key").await;
    assert!(
        live.iter().any(|row| row.contains("\"failed\"")),
        "{live:#?}"
    );
    for (batch, folded) in [(10_000, 0), (1, head - 1)] {
        let rebuilt = rollcall_projector::rebuild::rebuild(
            env.client.clone(),
            &env.log,
            &env.store,
            batch,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(
            (rebuilt.applied, rebuilt.folded),
            (head, folded),
            "batch {batch}"
        );
        assert_eq!(snapshot(&env).await, live, "batch {batch}");
    }
    for id in [before, after] {
        assert_eq!(scim.get(&format!("/Users/{id}")).await.status, 200);
    }
    let found = scim
        .get("/Users?filter=userName%20eq%20%22after@x%22")
        .await;
    assert_eq!(found.body["totalResults"], 1);
}

#[tokio::test]
async fn the_request_trace_continues_through_the_event_into_the_audit_record() {
    let env = TestEnv::start().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let body =
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "traced@x"});
    let response = env
        .scim()
        .send_with(
            Method::POST,
            "/Users",
            Some(&body),
            &[("traceparent", traceparent.as_str())],
        )
        .await;
    assert_eq!(response.status, 201);
    let id = Uuid::parse_str(response.body["id"].as_str().unwrap()).unwrap();
    let request_id = response.header("x-request-id").unwrap().to_owned();
    let events = env.store.audit_events("test", id).await.unwrap();
    assert_eq!(events[0].trace_id.as_deref(), Some(trace_id));
    assert_eq!(events[0].request_id.as_deref(), Some(request_id.as_str()));
    assert_eq!(events[0].actor.0["kind"], "scim_token");
    assert!(
        !events[0].actor.0.to_string().contains(&env.token),
        "the secret never enters an event"
    );
}

/// The rebuild the test below kills: started by it in a process of its own (this binary, run
/// again with `--exact` and `--ignored`), it rebuilds the test's installation and dies at the
/// fault point `ROLLCALL_FAULT` names. Run any other way it does nothing.
#[tokio::test]
#[ignore = "the rebuild process of the test that kills one; it starts it"]
async fn rebuild_child_process() {
    let (Ok(nats), Ok(namespace), Ok(database)) = (
        std::env::var(CHILD_NATS),
        std::env::var(CHILD_NAMESPACE),
        std::env::var(CHILD_DATABASE),
    ) else {
        eprintln!("not started by the test that kills a rebuild: nothing to do");
        return;
    };
    let installation = Installation::open(nats, Namespace::new(namespace).unwrap(), database).await;
    // Never dropped: the installation is the parent test's, which inspects what is left.
    let installation = std::mem::ManuallyDrop::new(installation);
    // As `rollcall projector rebuild` does: the users' data keys open under the KEK.
    rollcall::connection::install_keks(&installation.store, &Default::default(), false)
        .await
        .unwrap();
    let rebuilt = rollcall_projector::rebuild::rebuild(
        installation.client.clone(),
        &installation.log,
        &installation.store,
        2,
        |_| {},
    )
    .await;
    println!("the rebuild ended without reaching its fault point: {rebuilt:?}");
}

const CHILD_NATS: &str = "ROLLCALL_IT_REBUILD_NATS";
const CHILD_NAMESPACE: &str = "ROLLCALL_IT_REBUILD_NAMESPACE";
const CHILD_DATABASE: &str = "ROLLCALL_IT_REBUILD_DATABASE";
const SIGABRT: i32 = 6;

/// A bulk batch commits its audit records and its other rows in two transactions (PostgreSQL
/// writes them on two cores). A rebuild killed between the two (`kill -9`: no destructor, no
/// rollback sent) has left a torn batch in its own schema only: the live read models, which
/// the services read, are untouched, and the rebuild run again starts from nothing and gives
/// exactly the live tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_killed_between_a_batch_s_two_commits_changes_nothing_live_and_runs_again() {
    use std::os::unix::process::ExitStatusExt;
    let env = TestEnv::start().await;
    let scim = env.scim();
    let mut users = Vec::new();
    for n in 0..4 {
        users.push(scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("k{n}@x")})).await);
    }
    let members: Vec<_> = users.iter().map(|id| json!({"value": id})).collect();
    let group = scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Killed", "members": members})).await;
    let (head, live) = live_snapshot(&env, "the live projector applied every event").await;

    let output = run_rebuild_child(&env, fault::REBUILD_JOURNAL_COMMITTED).await;
    assert_eq!(
        output.status.signal(),
        Some(SIGABRT),
        "the rebuild must die at its fault point; it ended {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    // The torn batch: audit records past the rebuild schema's checkpoint.
    let schema = rollcall_store::rebuild::REBUILD_SCHEMA;
    let torn: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.audit_event
         WHERE sequence > coalesce((SELECT sequence FROM {schema}.projection_checkpoint WHERE name = 'projector'), 0)"
    ))
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert!(
        torn > 0,
        "the rebuild died after committing a batch's audit records"
    );
    assert_eq!(
        snapshot(&env).await,
        live,
        "the live read models are untouched"
    );
    assert_eq!(scim.get(&format!("/Groups/{group}")).await.status, 200);

    rebuilds_again_as_live(&env, head, &live).await;
}

/// A rebuild run after one that failed: it starts from nothing, folds every event and gives
/// exactly the live tables.
async fn rebuilds_again_as_live(env: &TestEnv, head: u64, live: &[String]) {
    let rebuilt =
        rollcall_projector::rebuild::rebuild(env.client.clone(), &env.log, &env.store, 2, |_| {})
            .await
            .unwrap();
    assert_eq!((rebuilt.applied, rebuilt.folded), (head, head));
    assert_eq!(snapshot(env).await, live);
}

/// Runs [`rebuild_child_process`] on `env`'s installation with `ROLLCALL_FAULT` set to `point`.
async fn run_rebuild_child(env: &TestEnv, point: &str) -> std::process::Output {
    let child =
        tokio::process::Command::from(rollcall_it::child_test("projector::rebuild_child_process"))
            .env(CHILD_NATS, &env.nats_url)
            .env(CHILD_NAMESPACE, env.namespace.as_str())
            .env(CHILD_DATABASE, &env.database_url)
            .env(fault::VARIABLE, point)
            .kill_on_drop(true)
            .output();
    tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the rebuild process ends within 2 minutes")
        .unwrap()
}

/// A commit that fails after a batch's audit records were committed (the connection may have
/// been lost after PostgreSQL committed) stops the rebuild with an error: it does not apply the
/// batch again event by event, which would insert its audit records twice and quarantine the
/// batch as poison. Run again, the rebuild gives exactly the live tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_batch_whose_second_commit_fails_stops_the_rebuild_without_quarantine() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    for n in 0..3 {
        scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("f{n}@x")})).await;
    }
    let (head, live) = live_snapshot(&env, "the live projector applied every event").await;
    let output = run_rebuild_child(&env, fault::REBUILD_ROWS_COMMIT_FAILS).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("Err(Torn("),
        "the rebuild must stop with Torn; it ended {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
    );
    let schema = rollcall_store::rebuild::REBUILD_SCHEMA;
    let quarantined: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.projection_quarantine"
    ))
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(quarantined, 0, "nothing was applied again event by event");
    assert_eq!(snapshot(&env).await, live);
    rebuilds_again_as_live(&env, head, &live).await;
}

#[tokio::test]
async fn a_rebuild_keeps_the_access_state_the_live_projector_has_not_published_yet() {
    use rollcall_store::access::{enqueue, OutboxKind};
    // No projector runs: an entry committed by the live projector, not yet published.
    let installation = Installation::create_on(rollcall_it::nats_url()).await;
    let store = &installation.store;
    let (user, tenant) = (Uuid::now_v7(), installation.tenant.as_str());
    let enqueue_at = |sequence: u64| async move {
        let mut connection = store.pool().acquire().await.unwrap();
        enqueue(
            &mut connection,
            sequence,
            OutboxKind::User,
            tenant,
            user,
            None,
        )
        .await
        .unwrap();
    };
    // (id, sequence, subject) of every entry, oldest first.
    let entries = || async {
        let (rows, _) = store.outbox_and_quarantine(0, 1, 100).await.unwrap();
        rows.into_iter()
            .map(|row| (row.id, row.sequence, row.subject_id))
            .collect::<Vec<_>>()
    };
    enqueue_at(7).await;
    let before = entries().await;
    assert_eq!(before.len(), 1);

    rollcall_projector::rebuild::rebuild(
        installation.client.clone(),
        &installation.log,
        store,
        10,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        entries().await,
        before,
        "the entry is still to be published, under its id"
    );
    // Entries written after the swap are numbered after it.
    enqueue_at(8).await;
    let now = entries().await;
    assert_eq!(now.len(), 2);
    assert!(now[1].0 > before[0].0, "{now:?}");
}

/// A projector of `installation` (of one partition, within a process's share, when given)
/// whose background publisher publishes nothing ([`Projector::hold_publication`]).
async fn held_projector(
    installation: &Installation,
    partition: Option<(
        rollcall_eventlog::partition::Partition,
        rollcall_projector::lease::Share,
    )>,
) -> rollcall_projector::Projector {
    let publisher = rollcall_projector::publish::Publisher::open(
        installation.client.clone(),
        installation.namespace.clone(),
        installation.store.clone(),
    )
    .await
    .unwrap();
    let projector = rollcall_projector::Projector::new(
        installation.client.clone(),
        installation.log.clone(),
        installation.store.clone(),
        rollcall_projector::DEFAULT_NAME,
        10,
    );
    let projector = match partition {
        Some((partition, share)) => projector
            .in_partition(partition, share)
            .with_publisher(publisher.for_partition(partition)),
        None => projector.with_publisher(publisher),
    };
    projector.hold_publication(true);
    projector
}

/// Runs `projector` on a task of its own until the returned sender is used (or dropped).
fn run_until_stopped(
    projector: &rollcall_projector::Projector,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), rollcall_projector::ProjectorError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let projector = projector.clone();
    let running = tokio::spawn(async move {
        projector
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    (stop, running)
}

/// Appends a new user of `tenant` straight to the stream (as a SCIM write would) and waits
/// until projector `name` has applied it; returns its stream sequence.
async fn provision_and_project(installation: &Installation, tenant: &str, name: &str) -> u64 {
    let id = Uuid::now_v7();
    let event = UserEvent::Provisioned {
        attributes: serde_json::from_value(json!({"userName": format!("{id}@x")})).unwrap(),
        active: true,
    };
    let envelope = rollcall_it::user_envelope(tenant, id, 1, &event);
    let sequence = installation
        .log
        .append(
            &installation
                .namespace
                .aggregate_subject(tenant, "user", &id),
            0,
            &[envelope],
        )
        .await
        .unwrap();
    eventually(
        "the event is projected",
        Duration::from_secs(20),
        || async { installation.store.checkpoint(name).await.unwrap() >= sequence },
    )
    .await;
    sequence
}

/// Waits up to `deadline` for the next checkpoint announcement, which must be `sequence`.
async fn expect_announced(
    announcements: &mut async_nats::Subscriber,
    sequence: u64,
    deadline: Duration,
) {
    use futures::StreamExt;
    let announced = tokio::time::timeout(deadline, announcements.next())
        .await
        .expect("the checkpoint is announced")
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&announced.payload).unwrap(),
        sequence.to_string()
    );
}

/// How many access-state entries of partition `index` of `partitions` wait in the outbox.
async fn outbox_len(store: &rollcall_store::Store, index: u16, partitions: u16) -> usize {
    store
        .outbox_and_quarantine(index, partitions, 100)
        .await
        .unwrap()
        .0
        .len()
}

/// A projector that stops publishes what its committed batches left in the outbox and
/// announces their checkpoint before it gives its lease up: no write waits for the next
/// projector's publication. Its background publisher is held, so only the last publication
/// can empty the outbox.
#[tokio::test]
async fn a_stopping_projector_publishes_what_its_batches_left_and_announces_it() {
    let installation = Installation::create_on(rollcall_it::nats_url()).await;
    let store = &installation.store;
    let projector = held_projector(&installation, None).await;
    let mut announcements = installation
        .client
        .subscribe(
            installation
                .namespace
                .checkpoint_subject(rollcall_projector::DEFAULT_NAME),
        )
        .await
        .unwrap();
    let (stop, running) = run_until_stopped(&projector);

    let sequence =
        provision_and_project(&installation, "test", rollcall_projector::DEFAULT_NAME).await;
    let outbox = || outbox_len(store, 0, 1);
    assert_eq!(outbox().await, 1, "the held publisher published nothing");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the projector stops")
        .unwrap()
        .unwrap();
    assert_eq!(outbox().await, 0, "the user's access state was published");
    expect_announced(&mut announcements, sequence, Duration::from_secs(5)).await;
}

/// A projector that gives its partition to a process with fewer partitions (it goes on running)
/// also publishes what its committed batches left in the outbox and announces their checkpoint
/// before it releases the partition's lease. Both publishers are held, so only that last
/// publication can empty the partition's outbox.
#[tokio::test]
async fn a_projector_giving_its_partition_back_publishes_what_its_batches_left_and_announces_it() {
    let installation = Installation::create_on(rollcall_it::nats_url()).await;
    let store = &installation.store;
    let partitioning = rollcall_projector::choose_partitions(store, Some(2))
        .await
        .unwrap();
    assert_eq!(partitioning.count(), 2);
    let share = rollcall_projector::lease::Share::new(store.clone(), 2);
    let mut projectors = Vec::new();
    let mut stops = Vec::new();
    let mut running = Vec::new();
    for partition in partitioning.all() {
        let projector = held_projector(&installation, Some((partition, share.clone()))).await;
        let (stop, run) = run_until_stopped(&projector);
        running.push(run);
        projectors.push(projector);
        stops.push(stop);
    }
    eventually(
        "the one process holds both partitions",
        Duration::from_secs(20),
        || async { projectors.iter().all(|p| p.is_active()) },
    )
    .await;

    // A user of a tenant of partition 1: the partition a process holding both gives back first.
    let given = partitioning.all().nth(1).unwrap();
    let tenant = (0..)
        .map(|n| format!("tenant-{n}"))
        .find(|tenant| partitioning.of(tenant).index() == given.index())
        .unwrap();
    let name = given.name(rollcall_projector::DEFAULT_NAME);
    let mut announcements = installation
        .client
        .subscribe(installation.namespace.checkpoint_subject(&name))
        .await
        .unwrap();
    let sequence = provision_and_project(&installation, &tenant, &name).await;
    let outbox = || outbox_len(store, given.index(), 2);
    assert_eq!(outbox().await, 1, "the held publisher published nothing");

    // A second projector process joins: the first's fair share is now one partition.
    let second = rollcall_projector::lease::Share::new(store.clone(), 2);
    assert_eq!(second.processes().await.unwrap(), 2);
    expect_announced(&mut announcements, sequence, Duration::from_secs(20)).await;
    assert_eq!(outbox().await, 0, "the user's access state was published");
    eventually(
        "the first process keeps partition 0 only",
        Duration::from_secs(20),
        || async { projectors[0].is_active() && !projectors[1].is_active() },
    )
    .await;

    for stop in stops {
        let _ = stop.send(());
    }
    for task in running {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the projector stops")
            .unwrap()
            .unwrap();
    }
}

/// A transaction abandoned while it begins (its task aborted, as the projectors killed in
/// `a_projector_killed_mid_stream_loses_and_duplicates_nothing` are, or a client gone
/// mid-request) leaves no pooled connection inside a transaction: sqlx's own `begin`, dropped after it sent `BEGIN`, pools the connection in a
/// transaction nothing ends, whose locks the next statements on it then hold for good.
#[tokio::test]
async fn a_transaction_abandoned_while_it_begins_leaves_no_connection_inside_it() {
    let installation = rollcall_it::Installation::create_on(rollcall_it::nats_url()).await;
    // One connection, so that every attempt begins on the one whose state is watched.
    let store = installation
        .store
        .with_schema(rollcall_store::LIVE_SCHEMA, 1)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let state = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(installation.store.pool())
            .await
            .unwrap()
    };
    let mut abandoned = 0;
    for attempt in 0..5 {
        // Polled until PostgreSQL has begun the transaction, then dropped (at the end of this
        // block) before its caller got it. After each poll the state is read a few times
        // before the next, so that a `BEGIN` sent is seen before its answer could be read.
        let begun = {
            let mut begin = std::pin::pin!(store.begin());
            'attempt: loop {
                if futures::poll!(begin.as_mut()).is_ready() {
                    break false;
                }
                for _ in 0..20 {
                    if state().await == "idle in transaction" {
                        break 'attempt true;
                    }
                }
            }
        };
        abandoned += usize::from(begun);
        // The connection is pooled again once whatever the attempt left is done.
        let mut connection = store.pool().acquire().await.unwrap();
        assert_eq!(
            state().await,
            "idle",
            "attempt {attempt} (abandoned once begun: {begun})"
        );
        let same: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *connection)
            .await
            .unwrap();
        assert_eq!(same, pid, "the attempts used the watched connection");
    }
    assert!(abandoned > 0, "no attempt was abandoned once begun");
}
