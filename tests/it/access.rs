//! Deprovisioning denies the next request: through the real SCIM API, NATS, PostgreSQL and the
//! access service over HTTP. No waiting after a SCIM response: the very next decision must
//! already see the change.

use futures::StreamExt;
use rollcall_it::TestEnv;
use serde_json::{json, Value};

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

/// A user in group Engineering, and a live session for them.
async fn engineer(env: &TestEnv, name: &str) -> (String, String, String) {
    let scim = env.scim();
    let user = scim
        .create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
                             "emails": [{"value": name, "type": "work", "primary": true}], "active": true}))
        .await;
    let lookup = scim
        .get("/Groups?filter=displayName%20eq%20%22Engineering%22")
        .await;
    let group = match lookup.ids().first() {
        Some(id) => id.clone(),
        None => scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Engineering"})).await,
    };
    let add = patch(json!([{"op": "Add", "path": "members", "value": [{"value": user}]}]));
    assert_eq!(
        scim.patch(&format!("/Groups/{group}"), &add).await.status,
        204
    );
    let session = env.session(&user);
    let allowed = env.forward_auth("eng.test", Some(&session)).await;
    assert_eq!(allowed.status, 200, "{:?}", allowed.body);
    (user, group, session)
}

#[tokio::test]
async fn patch_active_string_false_denies_the_very_next_request() {
    let env = TestEnv::start().await;
    let (user, _, session) = engineer(&env, "ada@example.com").await;
    let allowed = env.forward_auth("eng.test", Some(&session)).await;
    assert_eq!(
        allowed.header("x-auth-request-user"),
        Some("ada@example.com")
    );
    assert_eq!(
        allowed.header("x-auth-request-email"),
        Some("ada@example.com")
    );
    assert_eq!(allowed.header("x-auth-request-groups"), Some("Engineering"));
    assert_eq!(allowed.header("remote-user"), Some("ada@example.com"));
    let response = env
        .scim()
        .patch(
            &format!("/Users/{user}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    assert_eq!(response.status, 200);
    let denied = env.forward_auth("eng.test", Some(&session)).await;
    assert_eq!(denied.status, 403, "{:?}", denied.body);
    assert!(denied.body.as_str().unwrap().contains("deactivated"));
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        403
    );
    let revocations = env
        .store
        .revocations("test", uuid::Uuid::parse_str(&user).unwrap())
        .await
        .unwrap();
    assert_eq!(revocations.len(), 1);
    assert_eq!(revocations[0].reason, "deactivated");
}

#[tokio::test]
async fn the_flag_dialects_boolean_false_and_delete_deny_too() {
    let env = TestEnv::start().await;
    let (first, _, first_session) = engineer(&env, "one@example.com").await;
    let (second, _, second_session) = engineer(&env, "two@example.com").await;
    env.scim()
        .patch(
            &format!("/Users/{first}"),
            &patch(json!([{"op": "replace", "value": {"active": false}}])),
        )
        .await;
    assert_eq!(
        env.forward_auth("eng.test", Some(&first_session))
            .await
            .status,
        403
    );
    assert_eq!(
        env.scim().delete(&format!("/Users/{second}")).await.status,
        204
    );
    let denied = env.forward_auth("eng.test", Some(&second_session)).await;
    assert_eq!(denied.status, 403);
    assert!(
        denied.body.as_str().unwrap().contains("not provisioned"),
        "{:?}",
        denied.body
    );
}

#[tokio::test]
async fn removal_from_the_group_denies_that_application_only() {
    let env = TestEnv::start().await;
    let (user, group, session) = engineer(&env, "grace@example.com").await;
    let remove = patch(json!([{"op": "Remove", "path": "members", "value": [{"value": user}]}]));
    assert_eq!(
        env.scim()
            .patch(&format!("/Groups/{group}"), &remove)
            .await
            .status,
        204
    );
    assert_eq!(
        env.forward_auth("eng.test", Some(&session)).await.status,
        403
    );
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        200
    );
    // Deleting the group has the same effect as removing everyone from it.
    let add = patch(json!([{"op": "Add", "path": "members", "value": [{"value": user}]}]));
    env.scim().patch(&format!("/Groups/{group}"), &add).await;
    assert_eq!(
        env.forward_auth("eng.test", Some(&session)).await.status,
        200
    );
    env.scim().delete(&format!("/Groups/{group}")).await;
    assert_eq!(
        env.forward_auth("eng.test", Some(&session)).await.status,
        403
    );
}

/// An operator revokes one session of `user` ("laptop stolen"); the event's stream sequence.
async fn revoke_one_session(env: &TestEnv, user: uuid::Uuid, session: &str) -> u64 {
    rollcall_scim_api::operator::revoke_sessions(
        &env.log,
        &env.store,
        "test",
        user,
        Some(session.to_owned()),
        "laptop stolen",
        "ops",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_operator_revocation_of_one_session_leaves_the_others() {
    let env = TestEnv::start().await;
    let (user, _, stolen) = engineer(&env, "linus@example.com").await;
    let kept = env.session(&user);
    let sid = {
        let decision: Value = reqwest::Client::new()
            .post(format!("{}/v1/decisions", env.access_base))
            .json(&json!({"session": stolen, "host": "wiki.test"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        decision["decision"]["identity"]["session"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let user_id = uuid::Uuid::parse_str(&user).unwrap();
    let sequence = revoke_one_session(&env, user_id, &sid).await;
    // An operator's write does not wait for projections; the access service applies it within
    // its deadline.
    let access = env.access.clone();
    rollcall_it::eventually(
        "the revocation is applied",
        std::time::Duration::from_secs(5),
        || {
            let access = access.clone();
            async move { access.applied() >= sequence }
        },
    )
    .await;
    let denied = env.forward_auth("wiki.test", Some(&stolen)).await;
    assert_eq!(denied.status, 401, "{:?}", denied.body);
    assert_eq!(env.forward_auth("wiki.test", Some(&kept)).await.status, 200);
    assert_eq!(
        env.event_types("test", &user).await.last().unwrap(),
        "user.sessions_revoked"
    );
    let revocations = env.store.revocations("test", user_id).await.unwrap();
    assert_eq!(
        (
            revocations[0].session_id.as_deref(),
            revocations[0].reason.as_str()
        ),
        (Some(sid.as_str()), "operator: laptop stolen")
    );
}

#[tokio::test]
async fn reenabling_lets_the_user_in_again_but_never_revives_an_old_session() {
    let env = TestEnv::start().await;
    let (user, _, old) = engineer(&env, "barbara@example.com").await;
    env.scim()
        .patch(
            &format!("/Users/{user}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    env.scim()
        .patch(
            &format!("/Users/{user}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "True"}])),
        )
        .await;
    let still = env.forward_auth("eng.test", Some(&old)).await;
    assert_eq!(still.status, 401, "{:?}", still.body);
    assert!(still.body.as_str().unwrap().contains("revoked"));
    let fresh = env.session(&user);
    assert_eq!(env.forward_auth("eng.test", Some(&fresh)).await.status, 200);
}

#[tokio::test]
async fn a_restarted_access_service_comes_back_with_the_same_decisions() {
    let mut env = TestEnv::start().await;
    let (_, group, stays) = engineer(&env, "stays@example.com").await;
    let (gone, _, leaves) = engineer(&env, "leaves@example.com").await;
    let (moved, _, moves) = engineer(&env, "moves@example.com").await;
    env.scim()
        .patch(
            &format!("/Users/{gone}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    let remove = patch(json!([{"op": "Remove", "path": "members", "value": [{"value": moved}]}]));
    env.scim().patch(&format!("/Groups/{group}"), &remove).await;
    let ask = |env: &TestEnv| {
        let (stays, leaves, moves) = (stays.clone(), leaves.clone(), moves.clone());
        let env_access = env.access_base.clone();
        async move {
            let mut statuses = Vec::new();
            for (host, session) in [
                ("eng.test", &stays),
                ("eng.test", &leaves),
                ("eng.test", &moves),
                ("wiki.test", &moves),
            ] {
                let status = reqwest::Client::new()
                    .get(format!("{env_access}/auth"))
                    .header("X-Original-URL", format!("https://{host}/"))
                    .bearer_auth(session)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                statuses.push(status);
            }
            statuses
        }
    };
    let before = ask(&env).await;
    assert_eq!(before, vec![200, 403, 403, 200]);
    env.restart_access().await;
    assert_eq!(
        ask(&env).await,
        before,
        "the same sessions get the same answers after a restart"
    );
}

#[tokio::test]
async fn other_components_load_the_state_from_nats_and_follow_revocations_live() {
    let env = TestEnv::start().await;
    let (user, group, _) = engineer(&env, "watcher@example.com").await;
    let user_id = uuid::Uuid::parse_str(&user).unwrap();
    // (a) The complete current state, from NATS alone.
    let jetstream = async_nats::jetstream::new(env.client.clone());
    let bucket = jetstream
        .get_key_value(env.namespace.access_bucket())
        .await
        .unwrap();
    let state: rollcall_eventlog::access::UserAccess = serde_json::from_slice(
        &bucket
            .get(rollcall_eventlog::access::user_key("test", &user_id))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (state.active, state.groups.len(), state.schema.as_str()),
        (true, 1, "rollcall.access.user.v1")
    );
    assert_eq!(state.groups[0].to_string(), group);
    // (b) Then changes as they happen.
    let mut revocations = env
        .client
        .subscribe(env.namespace.all_revocations())
        .await
        .unwrap();
    env.scim()
        .patch(
            &format!("/Users/{user}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
        )
        .await;
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), revocations.next())
        .await
        .unwrap()
        .unwrap();
    let revocation: rollcall_eventlog::access::Revocation =
        serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(
        (
            revocation.user_id,
            revocation.reason.as_str(),
            revocation.session_id
        ),
        (user_id, "deactivated", None)
    );
    assert!(revocation.not_before.is_some());
    assert_eq!(
        message.subject.as_str(),
        env.namespace.revocation_subject("test", &user_id)
    );
    let state: rollcall_eventlog::access::UserAccess = serde_json::from_slice(
        &bucket
            .get(rollcall_eventlog::access::user_key("test", &user_id))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (state.active, state.not_before),
        (false, revocation.not_before)
    );
}

/// Replaces the access service with one trusting `proxy`'s headers.
async fn behind(env: &mut TestEnv, proxy: rollcall_access::proxy::TrustedProxy) {
    let config = rollcall_access::Config {
        trusted_proxy: Some(proxy),
        ..rollcall_it::access_config(&env.policy_file)
    };
    env.start_access(rollcall_access::Access::new(config).unwrap())
        .await;
}

#[tokio::test]
async fn traefik_envoy_bearer_and_the_decision_api_ask_the_same_question() {
    let mut env = TestEnv::start().await;
    let (_, _, session) = engineer(&env, "proxy@example.com").await;
    let http = reqwest::Client::new();
    let unknown_app = env.forward_auth("nowhere.test", Some(&session)).await;
    assert_eq!(unknown_app.status, 403);
    let decision: Value = http
        .post(format!("{}/v1/decisions", env.access_base))
        .json(&json!({"session": format!("{session}x"), "host": "eng.test", "path": "/"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (decision["allow"].clone(), decision["status"].clone()),
        (json!(false), json!(401))
    );
    assert!(decision["decision"]["reason"]
        .as_str()
        .unwrap()
        .contains("invalid session"));

    behind(&mut env, rollcall_access::proxy::TrustedProxy::Traefik).await;
    let traefik = http
        .get(format!("{}/auth", env.access_base))
        .header("X-Forwarded-Host", "eng.test")
        .header("X-Forwarded-Uri", "/dashboards?x=1")
        .header("X-Forwarded-Method", "GET")
        .header("Cookie", format!("other=1; rollcall_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(traefik.status(), 200);
    let anonymous = http
        .get(format!("{}/auth", env.access_base))
        .header("X-Forwarded-Host", "eng.test")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    behind(&mut env, rollcall_access::proxy::TrustedProxy::Envoy).await;
    let envoy = http
        .get(format!("{}/auth/reports/q3", env.access_base))
        .header("Host", "eng.test")
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(envoy.status(), 200);
    // Envoy asks with the original request's method.
    let envoy_post = http
        .post(format!("{}/auth/reports/q3", env.access_base))
        .header("Host", "eng.test")
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(envoy_post.status(), 200);
    let metrics = http
        .get(format!("{}/metrics", env.access_base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Counted by outcome and reason (the recorder is the process's: at least these).
    assert!(
        rollcall_telemetry::metrics::sample(
            &metrics,
            "rollcall_access_decisions_total",
            "outcome=\"allow\",reason=\"policy_allows\""
        )
        .is_some_and(|allowed| allowed >= 2.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn reloading_policies_changes_decisions_and_keeps_state_while_a_bad_file_changes_nothing() {
    let env = TestEnv::start().await;
    let (_, _, session) = engineer(&env, "reload@example.com").await;
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        200
    );
    let policy_file =
        std::env::temp_dir().join(format!("rollcall-{}.toml", env.namespace.as_str()));
    let closed = rollcall_it::POLICIES.replace(
        "include = [{ everyone = true }]",
        "include = [{ group = \"Auditors\" }]",
    );
    std::fs::write(&policy_file, closed).unwrap();
    env.access.reload_policies().await.unwrap();
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        403
    );
    assert_eq!(
        env.forward_auth("eng.test", Some(&session)).await.status,
        200,
        "state survives the reload"
    );
    std::fs::write(&policy_file, "[[application]]\nname = \"broken\"\n").unwrap();
    let error = env.access.reload_policies().await.unwrap_err().to_string();
    assert!(error.contains("missing field"), "{error}");
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        403,
        "the previous policies stay"
    );
}

/// Replaces the access service with one whose staleness bound is zero, and waits until it has
/// loaded the state and counts as stale.
async fn stale_access(env: &mut TestEnv, fail_open: bool) {
    let config = rollcall_access::Config {
        staleness_seconds: 0,
        fail_open,
        ..rollcall_it::access_config(&env.policy_file)
    };
    env.start_access_unready(rollcall_access::Access::new(config).unwrap())
        .await;
    let access = env.access.clone();
    rollcall_it::eventually(
        "the state is loaded",
        std::time::Duration::from_secs(10),
        || {
            let access = access.clone();
            async move { access.health.is_ready() && access.is_stale() }
        },
    )
    .await;
}

#[tokio::test]
async fn past_the_staleness_bound_it_fails_closed_and_says_so_unless_configured_open() {
    let mut env = TestEnv::start().await;
    let (_, _, session) = engineer(&env, "stale@example.com").await;
    // A zero bound: any silence at all counts as having lost NATS.
    stale_access(&mut env, false).await;
    let denied = env.forward_auth("wiki.test", Some(&session)).await;
    assert_eq!(denied.status, 403);
    assert!(
        denied.body.as_str().unwrap().contains("stale"),
        "{:?}",
        denied.body
    );
    let health = reqwest::get(format!("{}/healthz", env.access_base))
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["stale"], true);
    assert_eq!(
        reqwest::get(format!("{}/readyz", env.access_base))
            .await
            .unwrap()
            .status(),
        503
    );
    stale_access(&mut env, true).await;
    assert_eq!(
        env.forward_auth("wiki.test", Some(&session)).await.status,
        200,
        "fail-open decides from what it knows"
    );
}

/// The access publisher reads a round's users in three statements: each user gets its own
/// groups and revocations, a user that does not exist (or exists in another tenant only) gets
/// nothing.
#[tokio::test]
async fn a_round_of_users_is_read_at_once_and_each_gets_its_own_facts() {
    let env = TestEnv::start().await;
    let (ada, engineering, _) = engineer(&env, "ada@example.com").await;
    let (bob, _, _) = engineer(&env, "bob@example.com").await;
    let scim = env.scim();
    let carol = scim
        .create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "carol@example.com"}))
        .await;
    let wiki = scim
        .create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Wiki"}))
        .await;
    let add = patch(json!([{"op": "Add", "path": "members", "value": [{"value": ada}]}]));
    assert_eq!(
        scim.patch(&format!("/Groups/{wiki}"), &add).await.status,
        204
    );
    let deactivate = patch(json!([{"op": "Replace", "path": "active", "value": "False"}]));
    assert_eq!(
        scim.patch(&format!("/Users/{bob}"), &deactivate)
            .await
            .status,
        200
    );
    let id = |text: &str| uuid::Uuid::parse_str(text).unwrap();
    let (ada, bob, carol) = (id(&ada), id(&bob), id(&carol));
    let sequence = revoke_one_session(&env, ada, "session-1").await;
    rollcall_it::eventually(
        "the revocation is projected",
        std::time::Duration::from_secs(5),
        || env.projected(sequence),
    )
    .await;
    let missing = uuid::Uuid::now_v7();
    let facts = env
        .store
        .users_access(&[
            ("test", ada),
            ("test", bob),
            ("test", carol),
            ("test", missing),
            ("elsewhere", ada),
        ])
        .await
        .unwrap();
    assert_eq!(facts.len(), 3, "{:?}", facts.keys());
    let of = |user| &facts[&("test".to_owned(), user)];
    let mut groups = vec![id(&engineering), id(&wiki)];
    groups.sort();
    assert_eq!(of(ada).groups, groups);
    assert_eq!(of(bob).groups, vec![id(&engineering)]);
    assert!(of(carol).groups.is_empty());
    assert_eq!(of(ada).not_before, None);
    let sessions: Vec<&str> = of(ada)
        .revoked_sessions
        .iter()
        .map(|(s, _)| s.as_str())
        .collect();
    assert_eq!(sessions, ["session-1"]);
    assert!(of(bob).revoked_sessions.is_empty());
    assert!(
        of(bob).not_before.is_some(),
        "bob's deactivation revokes every session"
    );
    assert_eq!(of(carol).not_before, None);
    assert!(!facts.contains_key(&("elsewhere".to_owned(), ada)));
}

#[tokio::test]
async fn a_scim_api_that_does_not_wait_for_access_services_answers_once_the_state_is_in_the_bucket()
{
    let mut env = TestEnv::start().await;
    // Answers on the projector's checkpoint alone (`ROLLCALL_SCIM_WAIT_FOR_ACCESS` unset): the
    // README promises the user's access state is in the bucket by then.
    let scim = env
        .replica_with(rollcall_scim_api::Config {
            wait_for_access: false,
            ..rollcall_it::scim_config()
        })
        .await;
    let bucket = async_nats::jetstream::new(env.client.clone())
        .get_key_value(env.namespace.access_bucket())
        .await
        .unwrap();
    let state = |id: String| {
        let bucket = bucket.clone();
        let tenant = env.tenant.clone();
        async move {
            let key = rollcall_eventlog::access::user_key(&tenant, &id.parse().unwrap());
            let entry = bucket.get(key).await.unwrap();
            entry.map(|bytes| serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };
    for n in 0..20 {
        let name = format!("bucket{n}@example.com");
        let user = scim
            .create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name}))
            .await;
        let published = state(user.clone()).await;
        assert_eq!(
            published.as_ref().map(|state| &state["active"]),
            Some(&json!(true)),
            "created user {n}: {published:?}"
        );
        let deactivate = patch(json!([{"op": "Replace", "path": "active", "value": "False"}]));
        assert_eq!(
            scim.patch(&format!("/Users/{user}"), &deactivate)
                .await
                .status,
            200
        );
        let published = state(user).await;
        assert_eq!(
            published.as_ref().map(|state| &state["active"]),
            Some(&json!(false)),
            "deactivated user {n}: {published:?}"
        );
    }
}
