//! Personal data (crypto-shredding): personal fields sealed under each user's data key,
//! erasure that leaves no readable copy while the audit chain still verifies, rebuilds after an
//! erasure, KEK rotation, a wrong KEK at start, and retention.

use std::collections::HashMap;
use std::time::Duration;

use rollcall::instance::Instance;
use rollcall_audit_api::verify::verify;
use rollcall_eventlog::{Actor, Claims};
use rollcall_it::{eventually, loopback, roles, TestEnv};
use rollcall_store::personal_key::{Freshness, KeyState};
use serde_json::{json, Value};
use uuid::Uuid;

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

/// Every value of the person the test erases: none may be readable anywhere after.
const PERSONAL: [&str; 9] = [
    "zelda.qx@example.org",
    "zqx-private@example.net",
    "Zeldaquix",
    "Quixotehall",
    "+1 555 0199 777",
    "17 Quixote Lane",
    "Chief Quixote Officer",
    "ext-zqx-4711",
    "Zeldaquix Quixotehall-Renamed",
];

fn erasable() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "userName": PERSONAL[0],
        "externalId": PERSONAL[7],
        "name": {"givenName": PERSONAL[2], "familyName": PERSONAL[3]},
        "displayName": format!("{} {}", PERSONAL[2], PERSONAL[3]),
        "emails": [{"value": PERSONAL[0], "type": "work", "primary": true},
                   {"value": PERSONAL[1], "type": "home"}],
        "phoneNumbers": [{"value": PERSONAL[4], "type": "work"}],
        "addresses": [{"streetAddress": PERSONAL[5], "type": "work"}],
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Quixote Dept"},
        "active": true
    })
}

/// The texts among `haystacks` that hold any of the person's values (without case).
fn leaks(haystacks: &[String]) -> Vec<String> {
    haystacks
        .iter()
        .filter(|text| {
            let text = text.to_lowercase();
            PERSONAL
                .iter()
                .any(|value| text.contains(&value.to_lowercase()))
        })
        .cloned()
        .collect()
}

/// Every message a JetStream stream holds, as stored (headers and payload, lossily as text).
async fn stored_messages(env: &TestEnv, stream: &str) -> Vec<String> {
    let jetstream = async_nats::jetstream::new(env.client.clone());
    let mut stream = jetstream.get_stream(stream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut texts = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            let headers = format!("{:?}", message.headers);
            texts.push(format!(
                "{} {headers} {}",
                message.subject,
                String::from_utf8_lossy(&message.payload)
            ));
        }
    }
    texts
}

/// Every row of the read models and of the request log, as JSON text.
async fn stored_rows(env: &TestEnv) -> Vec<String> {
    let mut rows = Vec::new();
    for table in [
        "scim_user",
        "scim_group",
        "group_member",
        "audit_event",
        "revocation",
        "access_outbox",
        "projection_quarantine",
        "public.scim_request",
        "public.personal_data_key",
    ] {
        let query = format!("SELECT row_to_json(t)::text FROM {table} t");
        let part: Vec<String> = sqlx::query_scalar(&query)
            .fetch_all(env.store.pool())
            .await
            .unwrap();
        rows.extend(part);
    }
    rows
}

/// Everything stored where the person's data could be: the event stream, the access bucket,
/// the read models and the request log.
async fn everything_stored(env: &TestEnv) -> Vec<String> {
    let mut texts = stored_messages(env, &env.namespace.stream()).await;
    texts.extend(stored_messages(env, &format!("KV_{}", env.namespace.access_bucket())).await);
    texts.extend(stored_rows(env).await);
    texts
}

/// Erases a user of tenant `test` as an operator would.
async fn erase(env: &TestEnv, claims: &Claims, user: Uuid) -> rollcall_scim_api::operator::Erasure {
    rollcall_scim_api::operator::erase_user(
        &env.log,
        &env.store,
        claims,
        "test",
        user,
        "GDPR request 42",
        Actor::Operator { name: "dpo".into() },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_erased_user_leaves_no_readable_personal_data_and_the_record_still_verifies() {
    let mut env = TestEnv::start().await;
    let scim = env.scim();
    // Request bodies are logged by this replica: the request log holds the person's values too.
    let logging = env
        .replica_with(rollcall_scim_api::Config {
            log_bodies: true,
            ..rollcall_it::scim_config()
        })
        .await;
    let id = logging.create_user(&erasable()).await;
    let other = scim
        .create_user(
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "keeper@example.org", "name": {"givenName": "Keeper"}, "title": "Stays"}),
        )
        .await;
    // A long history: attribute changes, a rename, a deactivation and back, memberships,
    // revoked sessions, lookups by name.
    let changed = logging
        .patch(
            &format!("/Users/{id}"),
            &patch(json!([
                {"op": "Replace", "path": "title", "value": PERSONAL[6]},
                {"op": "Replace", "path": "displayName", "value": PERSONAL[8]}
            ])),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    for active in ["False", "True"] {
        let response = scim
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "Replace", "path": "active", "value": active}])),
            )
            .await;
        assert_eq!(response.status, 200);
    }
    let group = scim
        .create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Quill-Team"}))
        .await;
    let added = scim
        .patch(
            &format!("/Groups/{group}"),
            &patch(json!([{"op": "Add", "path": "members", "value": [{"value": id}, {"value": other}]}])),
        )
        .await;
    assert_eq!(added.status, 204, "{}", added.body);
    let user_id = Uuid::parse_str(&id).unwrap();
    rollcall_scim_api::operator::revoke_sessions(
        &env.log,
        &env.store,
        "test",
        user_id,
        None,
        "laptop lost",
        "security desk",
    )
    .await
    .unwrap();
    // A session issued after the revocation: the person is signed in when erased.
    let session = env.session(&id);
    eventually(
        "the signed-in person reaches the wiki",
        Duration::from_secs(10),
        || async { env.forward_auth("wiki.test", Some(&session)).await.status == 200 },
    )
    .await;
    let filter = rollcall_it::encode(&format!("userName eq \"{}\"", PERSONAL[0]));
    let found = scim.get(&format!("/Users?filter={filter}")).await;
    assert_eq!(found.ids(), vec![id.clone()]);
    let head = env.head().await;
    eventually("the history is projected", Duration::from_secs(10), || {
        env.projected(head)
    })
    .await;

    // Sealed from the start: the stream and the audit records never held the values.
    assert_eq!(
        leaks(&stored_messages(&env, &env.namespace.stream()).await),
        Vec::<String>::new()
    );
    let audit_rows: Vec<String> =
        sqlx::query_scalar("SELECT payload::text FROM audit_event WHERE aggregate_id = $1")
            .bind(user_id)
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(leaks(&audit_rows), Vec::<String>::new());
    // … while the read models, the request log and the access state did (the search finds
    // what it looks for).
    // (The request log is written in batches: wait for the last request, the lookup.)
    eventually(
        "the request log holds the person's values",
        Duration::from_secs(10),
        || async {
            let lookups: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM public.scim_request WHERE strpos(filter, $1) > 0",
            )
            .bind(PERSONAL[0])
            .fetch_one(env.store.pool())
            .await
            .unwrap();
            lookups == 1
        },
    )
    .await;
    assert!(!leaks(&stored_rows(&env).await).is_empty());
    assert!(
        !leaks(&stored_messages(&env, &format!("KV_{}", env.namespace.access_bucket())).await)
            .is_empty()
    );
    let before = crate::projector::snapshot(&env).await;
    // A subject access request: the person's data, as JSON.
    let exported = rollcall::commands::users::export(&env.log, &env.store, "test", user_id)
        .await
        .unwrap();
    assert_eq!(exported["status"], "active");
    assert_eq!(exported["attributes"]["userName"], PERSONAL[0]);
    assert_eq!(exported["attributes"]["title"], PERSONAL[6]);
    assert_eq!(exported["groups"][0]["displayName"], "Quill-Team");
    assert_eq!(exported["events"].as_array().unwrap().len(), 5);
    assert!(!exported["scim_requests"].as_array().unwrap().is_empty());

    let claims = Claims::open(env.log.jetstream(), env.log.namespace())
        .await
        .unwrap();
    let erasure = erase(&env, &claims, user_id).await;
    assert!(erasure.sequence.is_some());
    assert_eq!(erasure.clear_events, 0);
    assert!(erasure.request_log_entries >= 3, "{erasure:?}");
    let head = env.head().await;
    eventually("the erasure is projected", Duration::from_secs(10), || {
        env.projected(head)
    })
    .await;

    // Gone from SCIM, and the session ends with the next request.
    assert_eq!(scim.get(&format!("/Users/{id}")).await.status, 404);
    eventually(
        "the erased person's session is refused",
        Duration::from_secs(10),
        || async { env.forward_auth("wiki.test", Some(&session)).await.status != 200 },
    )
    .await;
    // Nothing readable anywhere: stream, access bucket, read models, request log.
    eventually(
        "no copy of the person's data is readable",
        Duration::from_secs(10),
        || async { leaks(&everything_stored(&env).await).is_empty() },
    )
    .await;
    assert_eq!(leaks(&everything_stored(&env).await), Vec::<String>::new());
    // The data key is gone for good; the tombstone says so.
    let state = env
        .store
        .data_keys(&[("test".into(), user_id)], Freshness::Fresh)
        .await
        .unwrap();
    assert_eq!(state[&("test".to_owned(), user_id)], KeyState::Erased);

    // The audit history keeps every event, personal fields as [erased], the rest intact.
    let (status, history) = env.audit(&format!("/audit/v1/users/{id}/history")).await;
    assert_eq!(status, 200, "{history}");
    let events = history["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types
            .iter()
            .filter(|t| t.starts_with("user."))
            .copied()
            .collect::<Vec<_>>(),
        [
            "user.provisioned",
            "user.attributes_changed",
            "user.deactivated",
            "user.reactivated",
            "user.sessions_revoked",
            "user.erased"
        ]
    );
    assert_eq!(events[0]["payload"]["attributes"]["userName"], "[erased]");
    assert_eq!(events[0]["payload"]["attributes"]["emails"], "[erased]");
    assert_eq!(events[0]["payload"]["attributes"]["active"], true);
    let changes = events[1]["payload"]["changes"].as_array().unwrap();
    let title = changes.iter().find(|c| c["path"] == "title").unwrap();
    assert_eq!(title["after"], "[erased]");
    let erased = events.iter().find(|e| e["type"] == "user.erased").unwrap();
    assert_eq!(erased["payload"]["reason"], "GDPR request 42");
    assert_eq!(erased["actor"]["name"], "dpo");
    assert!(leaks(&[history.to_string()]).is_empty());
    // Exports show [erased] too.
    for format in ["ndjson", "csv"] {
        let export = reqwest::Client::new()
            .get(format!(
                "{}/audit/v1/export?format={format}",
                env.audit_base
            ))
            .bearer_auth(&env.audit_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            export.contains("[erased]") && export.contains("user.erased"),
            "{export}"
        );
        assert_eq!(leaks(&[export]), Vec::<String>::new());
    }
    // The chain over the stored bytes still verifies.
    let verified = verify(&env.log, &env.store, None, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(verified.mismatch, None);
    assert_eq!(verified.events, env.head().await);

    // What is left to export of the person: the record, nothing personal.
    let exported = rollcall::commands::users::export(&env.log, &env.store, "test", user_id)
        .await
        .unwrap();
    assert_eq!(exported["status"], "erased");
    assert_eq!(exported["attributes"], Value::Null);
    assert_eq!(
        exported["events"][0]["payload"]["attributes"]["userName"],
        "[erased]"
    );
    assert_eq!(leaks(&[exported.to_string()]), Vec::<String>::new());
    // Everyone else is untouched.
    let kept = scim.get(&format!("/Users/{other}")).await;
    assert_eq!(kept.body["userName"], "keeper@example.org");
    assert_eq!(kept.body["title"], "Stays");
    let members = scim.get(&format!("/Groups/{group}")).await.body["members"].clone();
    let members: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    assert_eq!(members, [other.as_str()]);
    // The read models are what they were, less the person.
    let after = crate::projector::snapshot(&env).await;
    let gone: Vec<&String> = before.iter().filter(|row| !after.contains(row)).collect();
    assert!(
        gone.iter()
            .all(|row| row.contains(&id) || row.contains("\"tenant\":\"test\",\"sequence\"")),
        "{gone:#?}"
    );
    // A rebuild from the stream gives the same read models: the erased person's events open as
    // [erased] and the erasure removes them again.
    rollcall_projector::rebuild::rebuild(env.client.clone(), &env.log, &env.store, 4, |_| {})
        .await
        .unwrap();
    assert_eq!(crate::projector::snapshot(&env).await, after);
    assert_eq!(leaks(&stored_rows(&env).await), Vec::<String>::new());

    // An erasure run again finishes nothing more and records nothing more.
    let again = erase(&env, &claims, user_id).await;
    assert_eq!(again.sequence, None);
    // Findable by nobody (a lookup made now names the person again in the request log, as any
    // request does: the log records what clients send after the erasure).
    assert!(scim
        .get(&format!("/Users?filter={filter}"))
        .await
        .ids()
        .is_empty());
    // The userName is free for a new person.
    let reused = scim
        .post("/Users", &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": PERSONAL[0]}))
        .await;
    assert_eq!(reused.status, 201, "{}", reused.body);
}

#[tokio::test]
async fn a_kek_rotation_wraps_every_data_key_again_and_the_old_kek_alone_then_opens_nothing() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("rot{n}@example.org")})).await);
    }
    // The users' keys alone: the SCIM API's spares go, as when it stops.
    env.store.release_spare_users().await.unwrap();
    let old = rollcall_access::keys::Kek::existing(&Default::default(), Some(&env.store))
        .await
        .unwrap();
    let new = rollcall_access::keys::Kek::generate("the new KEK".into()).unwrap();
    // A process given the new KEK and the old one as previous: rewraps every key.
    let rotating = env
        .store
        .with_schema(rollcall_store::LIVE_SCHEMA, 2)
        .await
        .unwrap();
    rotating.install_keks(*new.expose(), vec![*old.expose()]);
    let mut reported = Vec::new();
    let moved = rotating
        .rewrap_data_keys(2, |moved| reported.push(moved))
        .await
        .unwrap();
    assert_eq!(moved, 3);
    assert_eq!(reported, [2, 3]);
    assert_eq!(rotating.rewrap_data_keys(2, |_| {}).await.unwrap(), 0);
    // The new KEK alone opens every user's history.
    let fresh = env
        .store
        .with_schema(rollcall_store::LIVE_SCHEMA, 2)
        .await
        .unwrap();
    fresh.install_keks(*new.expose(), Vec::new());
    assert_eq!(fresh.check_data_keys().await.unwrap(), 3);
    for id in &ids {
        let mut rows = fresh
            .audit_events("test", Uuid::parse_str(id).unwrap())
            .await
            .unwrap();
        rollcall_personal::open_all(&fresh, &mut rows, Freshness::Fresh)
            .await
            .unwrap();
        assert!(rows[0].payload.0["attributes"]["userName"]
            .as_str()
            .unwrap()
            .starts_with("rot"));
    }
    // The old KEK alone is refused at start, naming both fingerprints.
    let stale = env
        .store
        .with_schema(rollcall_store::LIVE_SCHEMA, 2)
        .await
        .unwrap();
    stale.install_keks(*old.expose(), Vec::new());
    let refused = stale.check_data_keys().await.unwrap_err().to_string();
    assert!(
        refused.contains(&new.fingerprint()) && refused.contains(&old.fingerprint()),
        "{refused}"
    );
}

#[tokio::test]
async fn a_wrong_kek_at_start_is_a_clear_error_and_nothing_is_written() {
    let env = TestEnv::start().await;
    env.scim()
        .create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "kept@example.org"}))
        .await;
    let head = env.head().await;
    let count = |sql: &'static str| {
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let keys = count("SELECT count(*) FROM public.personal_data_key").await;
    let secrets = count("SELECT count(*) FROM public.installation_secret").await;
    let wrong = rollcall_access::keys::Kek::generate("wrong".into()).unwrap();
    let mut access = rollcall_it::access_config(&env.policy_file);
    access.kek.kek = Some(base64_of(wrong.expose()).into());
    access.kek.kek_previous = None;
    let started = Instance::new(roles("scim,projector"))
        .scim(rollcall_it::scim_config())
        .access(access)
        .listener(rollcall::role::Role::Scim, loopback().await)
        .start(env.connect_again().await)
        .await;
    let error = format!("{:#}", started.expect_err("refused"));
    assert!(error.contains("wrapped under KEK"), "{error}");
    assert!(error.contains(&wrong.fingerprint()), "{error}");
    assert!(error.contains("nothing was written"), "{error}");
    assert_eq!(env.head().await, head);
    assert_eq!(
        count("SELECT count(*) FROM public.personal_data_key").await,
        keys
    );
    assert_eq!(
        count("SELECT count(*) FROM public.installation_secret").await,
        secrets
    );
}

fn base64_of(bytes: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn retention_erases_users_deleted_longer_ago_than_the_period_and_no_one_else() {
    let mut env = TestEnv::start().await;
    let scim = env.scim();
    let user = |name: &str| json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name});
    let deleted = scim.create_user(&user("gone@example.org")).await;
    let live = scim.create_user(&user("live@example.org")).await;
    assert_eq!(scim.delete(&format!("/Users/{deleted}")).await.status, 204);
    let head = env.head().await;
    eventually("the deletion is projected", Duration::from_secs(10), || {
        env.projected(head)
    })
    .await;
    let claims = Claims::open(env.log.jetstream(), env.log.namespace())
        .await
        .unwrap();
    // Deleted moments ago: a one-day period keeps it.
    let erased = rollcall_scim_api::retention::erase_expired(&env.log, &env.store, &claims, 1)
        .await
        .unwrap();
    assert_eq!(erased, 0);
    assert_eq!(
        env.event_types("test", &deleted).await.last().unwrap(),
        "user.deleted"
    );
    // A SCIM API with a period of zero days erases it on its own, once.
    env.replica_with(rollcall_scim_api::Config {
        retention_days_after_delete: Some(0),
        retention_interval_seconds: 1,
        ..rollcall_it::scim_config()
    })
    .await;
    eventually(
        "retention erases the deleted user",
        Duration::from_secs(15),
        || async {
            env.event_types("test", &deleted)
                .await
                .last()
                .map(String::as_str)
                == Some("user.erased")
        },
    )
    .await;
    let payloads = env.event_payloads("test", &deleted).await;
    assert_eq!(payloads[0]["attributes"]["userName"], "[erased]");
    assert_eq!(
        payloads.last().unwrap()["reason"],
        "retention: deleted more than 0 days ago"
    );
    let (_, history) = env
        .audit(&format!("/audit/v1/users/{deleted}/history"))
        .await;
    let last = history["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        last["actor"],
        json!({"kind": "system", "name": "retention"})
    );
    // Nobody else: the live user keeps its data, and nothing is erased twice.
    assert_eq!(
        scim.get(&format!("/Users/{live}")).await.body["userName"],
        "live@example.org"
    );
    assert_eq!(
        rollcall_scim_api::retention::erase_expired(&env.log, &env.store, &claims, 0)
            .await
            .unwrap(),
        0
    );
    let types = env.event_types("test", &deleted).await;
    assert_eq!(types.iter().filter(|t| *t == "user.erased").count(), 1);
}

/// An installation with no process running (as a migration needs), its store holding the KEK.
/// An instance of `roles` with the SCIM API on `connections`, and a client of it with `token`.
async fn serve_scim(
    roles_named: &str,
    config: rollcall_scim_api::Config,
    connections: rollcall::connection::Connections,
    token: &str,
) -> (rollcall::instance::InstanceHandle, rollcall_it::Scim) {
    let instance = Instance::new(roles(roles_named))
        .scim(config)
        .listener(rollcall::Role::Scim, loopback().await)
        .start(connections)
        .await
        .unwrap();
    let base = format!(
        "http://{}/scim/v2",
        instance.addr(rollcall::Role::Scim).unwrap()
    );
    (instance, rollcall_it::Scim::new(base, token))
}

async fn stopped_installation() -> rollcall_it::Installation {
    let installation = rollcall_it::Installation::create_on(rollcall_it::nats_url()).await;
    rollcall::connection::install_keks(&installation.store, &Default::default(), true)
        .await
        .unwrap();
    installation
}

/// Appends one write of `events` to an aggregate, expecting its last sequence from `heads`.
async fn write(
    log: &rollcall_eventlog::EventLog,
    heads: &mut HashMap<String, u64>,
    kind: &str,
    id: Uuid,
    events: Vec<rollcall_eventlog::Envelope>,
) {
    let subject = log.namespace().aggregate_subject("test", kind, &id);
    let expected = heads.get(&subject).copied().unwrap_or(0);
    let sequence = log.append(&subject, expected, &events).await.unwrap();
    heads.insert(subject, sequence);
}

/// An event as the releases before sealing wrote it: personal fields in clear, version 1.
fn clear_event(
    aggregate_type: &str,
    id: Uuid,
    version: u64,
    payload: Value,
) -> rollcall_eventlog::Envelope {
    rollcall_eventlog::Envelope {
        event_id: Uuid::now_v7(),
        tenant: "test".into(),
        aggregate_type: aggregate_type.into(),
        aggregate_id: id,
        version,
        event_type: payload["type"].as_str().unwrap().into(),
        schema_version: 1,
        occurred_at: time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap(),
        actor: Actor::ScimToken {
            token_id: "old-release".into(),
        },
        request_id: Some(format!("req-{}", Uuid::now_v7())),
        traceparent: None,
        payload,
    }
}

#[tokio::test]
async fn a_stream_of_clear_events_is_migrated_to_sealed_events_with_the_same_ids_order_and_chain() {
    let installation = stopped_installation().await;
    let (log, store) = (installation.log.clone(), installation.store.clone());
    // A history as the release before wrote it.
    let (ada, bob, group) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let provisioned = |name: &str, given: &str| {
        json!({"type": "user.provisioned", "active": true, "attributes": {
        "userName": name, "name": {"givenName": given}, "emails": [{"value": name, "primary": true}],
        "phoneNumbers": [{"value": PERSONAL[4]}], "active": true}})
    };
    let mut heads = HashMap::new();
    let first = clear_event("user", ada, 1, provisioned(PERSONAL[0], PERSONAL[2]));
    write(&log, &mut heads, "user", ada, vec![first]).await;
    let first = clear_event("user", bob, 1, provisioned("bob@example.org", "Bob"));
    write(&log, &mut heads, "user", bob, vec![first]).await;
    write(&log, &mut heads, "user", ada, vec![clear_event("user", ada, 2, json!({"type": "user.attributes_changed", "changes": [
        {"path": "title", "after": PERSONAL[6]}, {"path": "displayName", "before": null, "after": PERSONAL[8]}]}))]).await;
    // A commit of two events (a group created with a member, then another added).
    write(&log, &mut heads, "group", group, vec![
        clear_event("group", group, 1, json!({"type": "group.created", "attributes": {"displayName": "Old Team"}, "members": [{"value": ada.to_string()}]})),
        clear_event("group", group, 2, json!({"type": "group.members_added", "members": [{"value": bob.to_string()}]})),
    ]).await;
    let link =
        rollcall_domain::identity::identity_id("test", ada, "https://idp.example", "sub-zqx-1");
    write(&log, &mut heads, "identity", link, vec![clear_event("identity", link, 1, json!({"type": "identity.linked", "user_id": ada, "issuer": "https://idp.example", "subject": "sub-zqx-1"}))]).await;
    write(
        &log,
        &mut heads,
        "user",
        bob,
        vec![clear_event("user", bob, 2, json!({"type": "user.deleted"}))],
    )
    .await;
    // This release ran on the clear stream for a while: it erased bob (no key ever made for
    // him: a tombstone) before anyone migrated.
    let erased = clear_event(
        "user",
        bob,
        3,
        json!({"type": "user.erased", "reason": "DSR"}),
    );
    write(&log, &mut heads, "user", bob, vec![erased]).await;
    store.erase_data_key("test", bob).await.unwrap();
    let head = log.head().await.unwrap();
    // Projected as the old release did (clear audit records), then every process stops.
    let projector = Instance::new(roles("projector"))
        .start(installation.connections())
        .await
        .unwrap();
    eventually(
        "the old history is projected",
        Duration::from_secs(10),
        || async {
            store
                .checkpoint(rollcall_projector::DEFAULT_NAME)
                .await
                .unwrap()
                >= head
        },
    )
    .await;
    projector.shutdown().await.unwrap();
    let jetstream = async_nats::jetstream::new(installation.client.clone());
    let raw = |name: String| {
        let jetstream = jetstream.clone();
        async move {
            let mut stream = jetstream.get_stream(&name).await.unwrap();
            let last = stream.info().await.unwrap().state.last_sequence;
            let mut messages = Vec::new();
            for sequence in 1..=last {
                let message = stream.get_raw_message(sequence).await.unwrap();
                messages.push((
                    message.subject.to_string(),
                    String::from_utf8(message.payload.to_vec()).unwrap(),
                ));
            }
            messages
        }
    };
    let old_name = log.namespace().stream();
    let before = raw(old_name.clone()).await;
    assert_eq!(before.len() as u64, head);
    assert!(!leaks(&before.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>()).is_empty());

    let migrated =
        rollcall::migrate::encrypt_pii(&installation.client, log.namespace(), &store, |_, _, _| {})
            .await
            .unwrap();
    assert_eq!(
        (
            migrated.messages,
            migrated.events,
            migrated.sealed,
            migrated.tenants
        ),
        (head, head + 1, 4, 1)
    );
    assert_eq!(migrated.new_stream, format!("{old_name}_SEALED"));

    // Same messages, subjects, sequences and event ids; no personal data in clear.
    let after = raw(migrated.new_stream.clone()).await;
    assert_eq!(after.len(), before.len());
    for ((old_subject, old_payload), (new_subject, new_payload)) in before.iter().zip(&after) {
        assert_eq!(old_subject, new_subject);
        let ids = |payload: &str| -> Vec<Uuid> {
            rollcall_eventlog::envelope::decode_commit(payload.as_bytes())
                .unwrap()
                .iter()
                .map(|e| e.event_id)
                .collect()
        };
        assert_eq!(ids(old_payload), ids(new_payload));
    }
    assert_eq!(
        leaks(&after.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>()),
        Vec::<String>::new()
    );
    assert!(!after.iter().any(|(_, p)| p.contains("sub-zqx-1")));
    assert!(before.iter().any(|(_, p)| p.contains("bob@example.org")));
    assert!(!after.iter().any(|(_, p)| p.contains("bob@example.org")));
    // The old stream is kept, retired: nothing can be appended to it.
    let mut old = jetstream.get_stream(&old_name).await.unwrap();
    assert_eq!(
        old.info().await.unwrap().config.subjects,
        [format!("{}.retired.events.>", log.namespace().as_str())]
    );

    // The installation runs on the new stream: the audit verifies, the users read as before.
    let connections = rollcall::Connections {
        log: rollcall_eventlog::EventLog::open(
            installation.client.clone(),
            log.namespace().clone(),
        )
        .await
        .unwrap(),
        ..installation.connections()
    };
    assert_eq!(connections.log.stream_name(), migrated.new_stream);
    let verified = verify(&connections.log, &store, None, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(verified.mismatch, None);
    assert_eq!(verified.events, head + 1, "every event, two in one commit");
    let audit_payloads: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM audit_event")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(leaks(&audit_payloads), Vec::<String>::new());
    let (apis, scim) = serve_scim(
        "scim,projector",
        rollcall_scim_api::Config::default(),
        connections,
        &installation.token,
    )
    .await;
    let user = scim.get(&format!("/Users/{ada}")).await;
    assert_eq!(user.status, 200, "{}", user.body);
    assert_eq!(user.body["userName"], PERSONAL[0]);
    assert_eq!(user.body["title"], PERSONAL[6]);
    assert_eq!(scim.get(&format!("/Users/{bob}")).await.status, 404);
    // A migrated installation is not migrated again.
    let again =
        rollcall::migrate::encrypt_pii(&installation.client, log.namespace(), &store, |_, _, _| {})
            .await
            .unwrap_err()
            .to_string();
    assert!(again.contains("migrated already"), "{again}");
    apis.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_migration_that_fails_midway_puts_the_old_stream_back_as_it_was() {
    let installation = stopped_installation().await;
    let (log, store) = (installation.log.clone(), installation.store.clone());
    let jetstream = async_nats::jetstream::new(installation.client.clone());
    let old_name = log.namespace().stream();
    let mut heads = HashMap::new();
    let ada = Uuid::now_v7();
    let provisioned = |name: &str| json!({"type": "user.provisioned", "active": true, "attributes": {"userName": name}});
    write(
        &log,
        &mut heads,
        "user",
        ada,
        vec![clear_event("user", ada, 1, provisioned("ada@example.org"))],
    )
    .await;
    // An event that fits the server's max_payload in clear, and not once sealed (a third
    // larger): the copy fails midway.
    let big = Uuid::now_v7();
    let mut huge = provisioned("big@example.org");
    huge["attributes"]["displayName"] = json!("x".repeat(log.max_event_bytes() * 4 / 5));
    write(
        &log,
        &mut heads,
        "user",
        big,
        vec![clear_event("user", big, 1, huge)],
    )
    .await;
    let failed =
        rollcall::migrate::encrypt_pii(&installation.client, log.namespace(), &store, |_, _, _| {})
            .await
            .unwrap_err();
    assert!(format!("{failed:#}").contains("sequence 2"), "{failed:#}");
    // Put back as it was: the old stream takes the events again, the copy is gone.
    let mut old = jetstream.get_stream(&old_name).await.unwrap();
    assert_eq!(
        old.info().await.unwrap().config.subjects,
        [log.namespace().all_events()]
    );
    assert!(jetstream
        .get_stream(format!("{old_name}_SEALED"))
        .await
        .is_err());
    let reopened =
        rollcall_eventlog::EventLog::open(installation.client.clone(), log.namespace().clone())
            .await
            .unwrap();
    assert_eq!(reopened.stream_name(), old_name);
    write(
        &reopened,
        &mut heads,
        "user",
        ada,
        vec![clear_event(
            "user",
            ada,
            2,
            json!({"type": "user.deactivated"}),
        )],
    )
    .await;
}

#[tokio::test]
async fn a_migration_stopped_after_retiring_the_old_stream_keeps_every_process_out_until_run_again()
{
    let installation = stopped_installation().await;
    let (log, store) = (installation.log.clone(), installation.store.clone());
    let jetstream = async_nats::jetstream::new(installation.client.clone());
    let mut heads = HashMap::new();
    let ada = Uuid::now_v7();
    let event = clear_event(
        "user",
        ada,
        1,
        json!({"type": "user.provisioned", "active": true, "attributes": {"userName": PERSONAL[0]}}),
    );
    write(&log, &mut heads, "user", ada, vec![event]).await;
    // Stopped (kill -9) right after the old stream's subjects were retired, and a partial copy
    // already taking the subjects.
    let old_name = log.namespace().stream();
    let mut old = jetstream.get_stream(&old_name).await.unwrap();
    let mut retired = old.info().await.unwrap().config.clone();
    retired.subjects = vec![format!("{}.retired.events.>", log.namespace().as_str())];
    jetstream.update_stream(&retired).await.unwrap();
    let mut partial = retired.clone();
    partial.name = format!("{old_name}_SEALED");
    partial.subjects = vec![log.namespace().all_events()];
    jetstream.create_stream(partial).await.unwrap();
    // No process opens the log meanwhile: an append would land in the partial copy.
    let refused =
        rollcall_eventlog::EventLog::open(installation.client.clone(), log.namespace().clone())
            .await
            .unwrap_err()
            .to_string();
    assert!(refused.contains("stopped midway"), "{refused}");
    // Run again, it starts over and finishes.
    let migrated =
        rollcall::migrate::encrypt_pii(&installation.client, log.namespace(), &store, |_, _, _| {})
            .await
            .unwrap();
    assert_eq!((migrated.messages, migrated.sealed), (1, 1));
    let log =
        rollcall_eventlog::EventLog::open(installation.client.clone(), log.namespace().clone())
            .await
            .unwrap();
    assert_eq!(log.stream_name(), migrated.new_stream);
    let mut events = log
        .load(&log.namespace().aggregate_subject("test", "user", &ada), 0)
        .await
        .unwrap()
        .events;
    assert_eq!(events[0].schema_version, rollcall_personal::SEALED_VERSION);
    rollcall_personal::open_all(&store, &mut events, Freshness::Fresh)
        .await
        .unwrap();
    assert_eq!(events[0].payload["attributes"]["userName"], PERSONAL[0]);
}

#[tokio::test]
async fn concurrent_writers_of_one_new_user_in_two_processes_agree_on_one_data_key() {
    let env = TestEnv::start().await;
    let kek = rollcall_access::keys::Kek::existing(&Default::default(), Some(&env.store))
        .await
        .unwrap();
    // Another process: a keyring, a cache and a key writer of its own.
    let other =
        rollcall_store::Store::connect_with(&env.database_url, rollcall_store::LIVE_SCHEMA, 4)
            .await
            .unwrap();
    other.install_keks(*kek.expose(), Vec::new());
    let shared = Uuid::now_v7();
    let mut asks = tokio::task::JoinSet::new();
    for n in 0..40 {
        let store = if n % 2 == 0 {
            env.store.clone()
        } else {
            other.clone()
        };
        // Every other ask is for a user of its own, so that batches mix new and known users.
        let user = if n % 4 < 2 { shared } else { Uuid::now_v7() };
        asks.spawn(async move {
            (
                user,
                store.data_key_for_writing("test", user).await.unwrap(),
            )
        });
    }
    let answers = asks.join_all().await;
    let stored = env
        .store
        .data_keys(&[("test".into(), shared)], Freshness::Fresh)
        .await
        .unwrap();
    let KeyState::Key(key) = &stored[&("test".to_owned(), shared)] else {
        panic!("no key stored: {stored:?}")
    };
    let of_shared: Vec<_> = answers.iter().filter(|(user, _)| *user == shared).collect();
    assert_eq!(of_shared.len(), 20);
    assert!(of_shared.iter().all(|(_, answered)| answered == key));
    let users: Vec<Uuid> = answers.iter().map(|(user, _)| *user).collect();
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.personal_data_key WHERE user_id = ANY($1)")
            .bind(&users)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(count, 21, "one key per user");
}

#[tokio::test]
async fn a_process_reads_an_erased_users_tombstone_once_and_an_auditor_every_time() {
    let env = TestEnv::start().await;
    let user = (env.tenant.clone(), Uuid::now_v7());
    env.store
        .data_key_for_writing(&user.0, user.1)
        .await
        .unwrap();
    assert!(
        env.store.erase_data_key(&user.0, user.1).await.unwrap(),
        "the live key was destroyed now"
    );
    assert!(
        !env.store.erase_data_key(&user.0, user.1).await.unwrap(),
        "and not again"
    );
    // Another process, which never held the key: every sealed event of the user it opens (as
    // its lookup index or projector replays the history) asks for the key again.
    let other = env.connect_again().await.store;
    rollcall::connection::install_keks(&other, &Default::default(), true)
        .await
        .unwrap();
    let read = |freshness| {
        let (other, user) = (other.clone(), user.clone());
        async move {
            let before = other.data_key_reads();
            let keys = other
                .data_keys(std::slice::from_ref(&user), freshness)
                .await
                .unwrap();
            assert_eq!(keys.get(&user), Some(&KeyState::Erased));
            other.data_key_reads() - before
        }
    };
    assert_eq!(
        read(Freshness::Cached).await,
        1,
        "the first read asks PostgreSQL"
    );
    for _ in 0..3 {
        assert_eq!(read(Freshness::Cached).await, 0, "a tombstone is for good");
    }
    // An auditor's fresh read still asks, and leaves nothing behind.
    assert_eq!(read(Freshness::Fresh).await, 1);
}

#[tokio::test]
async fn a_create_refused_before_anything_was_appended_leaves_no_data_key_behind() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "once@example.org"});
    scim.create_user(&user).await;
    let keys = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM public.personal_data_key WHERE tenant = 'test'",
        )
        .fetch_one(env.store.pool())
        .await
        .unwrap()
    };
    for _ in 0..3 {
        assert_eq!(scim.post("/Users", &user).await.status, 409);
    }
    // The SCIM API keeps spare users with stored keys: they go first, as when it stops.
    env.store.release_spare_users().await.unwrap();
    assert_eq!(keys().await, 1, "the refused creates' keys are gone");
}

#[tokio::test]
async fn new_users_take_spare_ids_whose_keys_were_stored_before_and_a_stopped_api_removes_the_rest()
{
    let env = TestEnv::start().await;
    let connections = env.connect_again().await;
    let api_store = connections.store.clone();
    let (api, scim) = serve_scim("scim", rollcall_it::scim_config(), connections, &env.token).await;
    let pool = env.store.pool().clone();
    let keys = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM public.personal_data_key WHERE tenant = 'test' AND wrapped IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let user = |name: &str| json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name});
    // The tenant's first create stores a key of its own and starts the spares.
    let first = scim.create_user(&user("first.spare@example.org")).await;
    eventually(
        "the SCIM API holds spare users",
        Duration::from_secs(10),
        || async { api_store.spare_users("test") > 0 },
    )
    .await;
    assert_eq!(
        keys().await,
        1 + api_store.spare_users("test") as i64,
        "every spare's key is stored"
    );
    let asked_at: time::OffsetDateTime = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let second = scim.create_user(&user("second.spare@example.org")).await;
    let stored_at: time::OffsetDateTime = sqlx::query_scalar(
        "SELECT created_at FROM public.personal_data_key WHERE tenant = 'test' AND user_id = $1::uuid",
    )
    .bind(&second)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        stored_at < asked_at,
        "the second user's key was stored before it was asked for ({stored_at} vs {asked_at})"
    );
    // Sealed like any other user, and read back.
    let stored = stored_messages(&env, &env.namespace.stream()).await;
    assert!(
        !stored.iter().any(|text| text.contains("second.spare")),
        "the userName is sealed in the stream"
    );
    for (id, name) in [(&first, "first.spare"), (&second, "second.spare")] {
        let read = env.scim().get(&format!("/Users/{id}")).await;
        assert_eq!(read.status, 200);
        assert_eq!(read.body["userName"], format!("{name}@example.org"));
    }
    api.shutdown().await.unwrap();
    assert_eq!(
        keys().await,
        2,
        "the stopped SCIM API removed its spares' keys and kept its users'"
    );
}
