//! Entra's lookups answered from each SCIM API's in-memory index: read-your-writes across
//! replicas, the same documents as the read model, and PostgreSQL when the index is behind.

use std::time::Duration;

use rollcall_it::{encode, eventually, scim_config, Scim, TestEnv};
use rollcall_scim_api::index::{LookupIndex, Page};
use rollcall_store::user::UserCondition;
use serde_json::{json, Value};

fn user(name: &str, external_id: &str) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
        "externalId": external_id, "active": true, "displayName": name})
}

fn group(name: &str, members: &[&str]) -> Value {
    let members: Vec<Value> = members.iter().map(|m| json!({"value": m})).collect();
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name,
        "members": members})
}

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

const PAGE: Page = Page {
    offset: 0,
    limit: 100,
    joined: true,
};

fn found(index: &LookupIndex, tenant: &str, name: &str) -> usize {
    index
        .users(
            tenant,
            &[UserCondition::UserName(name.to_owned())],
            PAGE,
            "http://rollcall.test/scim/v2",
        )
        .unwrap()
        .total
}

#[tokio::test]
async fn the_index_answers_only_once_it_holds_every_write_answered_before() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let index = LookupIndex::start(env.log.clone(), env.store.clone());
    eventually("the index caught up", Duration::from_secs(10), || async {
        index.current().await
    })
    .await;
    for n in 0..10 {
        let name = format!("ada{n}@example.com");
        scim.create_user(&user(&name, &format!("e{n}"))).await;
        // No waiting beyond what `current` does: a write answered is in the index it vouches for.
        assert!(index.current().await);
        assert_eq!(found(&index, &env.tenant, &name.to_uppercase()), 1);
    }
    // The index falls behind: it does not vouch for itself, so lookups go to PostgreSQL.
    index.hold_feed(true);
    scim.create_user(&user("held@example.com", "held")).await;
    assert!(
        !index.current().await,
        "an index behind the stream answered"
    );
    assert_eq!(found(&index, &env.tenant, "held@example.com"), 0);
    // Later lookups do not wait for it either, until it caught up.
    assert!(!index.current().await);
    index.hold_feed(false);
    eventually(
        "the index caught up again",
        Duration::from_secs(5),
        || async { index.current().await },
    )
    .await;
    assert_eq!(found(&index, &env.tenant, "held@example.com"), 1);
    // Another tenant's users are not this tenant's.
    assert_eq!(found(&index, "another", "held@example.com"), 0);
}

#[tokio::test]
async fn the_benchmark_switch_turns_the_probe_off_for_one_index_and_its_clones_only() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let index = LookupIndex::start(env.log.clone(), env.store.clone());
    let other = LookupIndex::start(env.log.clone(), env.store.clone());
    for index in [&index, &other] {
        eventually("the index caught up", Duration::from_secs(10), || async {
            index.current().await
        })
        .await;
    }
    // Each lookup that vouches for the index waits for a probe that started after it.
    let before = index.probes_started();
    assert!(index.current().await);
    assert!(index.probes_started() > before);
    index.clone().set_probing_for_benchmark(false);
    let before = (index.probes_started(), other.probes_started());
    index.hold_feed(true);
    other.hold_feed(true);
    scim.create_user(&user("unprobed@example.com", "unprobed"))
        .await;
    // Without the probe the index vouches for itself though it misses an answered write:
    // what the switch gives up, and why only the benchmark reaches it.
    assert!(index.current().await);
    assert_eq!(found(&index, &env.tenant, "unprobed@example.com"), 0);
    assert_eq!(index.probes_started(), before.0, "a lookup probed");
    // Another index still probes, and finds itself behind.
    assert!(!other.current().await);
    assert!(other.probes_started() > before.1);
    // Switched on again, the index probes and finds itself behind too.
    index.set_probing_for_benchmark(true);
    assert!(!index.current().await);
    assert!(index.probes_started() > before.0);
    index.hold_feed(false);
    eventually("the index caught up", Duration::from_secs(10), || async {
        index.current().await
    })
    .await;
    assert_eq!(found(&index, &env.tenant, "unprobed@example.com"), 1);
}

#[tokio::test]
async fn an_index_reads_the_keys_of_users_another_replica_created_a_burst_at_a_time() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    // The index of another process: its key cache holds none of the keys the writer stored.
    let replica = env.connect_again().await;
    rollcall::connection::install_keks(&replica.store, &Default::default(), true)
        .await
        .unwrap();
    let index = LookupIndex::start(replica.log.clone(), replica.store.clone());
    eventually("the index caught up", Duration::from_secs(10), || async {
        index.current().await
    })
    .await;
    // A burst of creates arrives while the index is busy.
    index.hold_feed(true);
    let names: Vec<String> = (0..40).map(|n| format!("burst{n}@example.com")).collect();
    for name in &names {
        scim.create_user(&user(name, name)).await;
    }
    let before = replica.store.data_key_reads();
    index.hold_feed(false);
    eventually("the index caught up", Duration::from_secs(10), || async {
        index.current().await
    })
    .await;
    let reads = replica.store.data_key_reads() - before;
    // Opened (their names are sealed in the events), with one query a burst, not one a user.
    for name in &names {
        assert_eq!(found(&index, &env.tenant, name), 1, "{name}");
    }
    assert!(
        (1..=8).contains(&reads),
        "{reads} queries read the keys of 40 new users"
    );
}

/// Two more SCIM API replicas: one answering lookups from its index, one from PostgreSQL
/// only, under one public URL (so that their documents say the same `meta.location`).
async fn two_replicas(env: &mut TestEnv) -> (Scim, Scim) {
    let config = rollcall_scim_api::Config {
        public_url: Some("https://rollcall.example.com/scim/v2".to_owned()),
        ..scim_config()
    };
    let indexed = env.replica_with(config.clone()).await;
    let database = env
        .replica_with(rollcall_scim_api::Config {
            lookup_index: false,
            ..config
        })
        .await;
    (indexed, database)
}

/// Deletes a user's read-model row behind the API's back: only an index still finds it.
async fn take_row(env: &TestEnv, user: &str) {
    sqlx::query("DELETE FROM scim_user WHERE tenant = $1 AND id = $2::uuid")
        .bind(&env.tenant)
        .bind(user)
        .execute(env.store.pool())
        .await
        .unwrap();
}

async fn lookup(scim: &Scim, path: &str) -> Value {
    let response = scim.get(path).await;
    assert_eq!(response.status, 200, "{path}: {:?}", response.body);
    response.body
}

#[tokio::test]
async fn lookups_on_one_replica_see_every_write_another_answered_as_the_read_model_would() {
    let mut env = TestEnv::start().await;
    let writer = env.scim();
    let (indexed, database) = two_replicas(&mut env).await;
    // Both replicas answer every lookup alike: the index as the read model does.
    let both = |path: String| {
        let (indexed, database) = (indexed.clone(), database.clone());
        async move {
            let from_index = lookup(&indexed, &path).await;
            assert_eq!(from_index, lookup(&database, &path).await, "{path}");
            from_index
        }
    };
    let mut users = Vec::new();
    for n in 0..20 {
        let name = format!("Grace{n}@Example.com");
        let id = writer.create_user(&user(&name, &format!("ext-{n}"))).await;
        let found = both(format!(
            "/Users?filter={}",
            encode(&format!("userName eq \"{}\"", name.to_lowercase()))
        ))
        .await;
        assert_eq!(found["totalResults"], 1, "{found}");
        assert_eq!(found["Resources"][0]["id"], id.as_str());
        let found = both(format!(
            "/Users?filter={}",
            encode(&format!("externalId eq \"ext-{n}\" and id eq \"{id}\""))
        ))
        .await;
        assert_eq!(found["totalResults"], 1, "{found}");
        users.push(id);
    }
    let group_id = writer
        .create_group(&group("Engineering", &[&users[0], &users[1]]))
        .await;
    writer.create_group(&group("Alpha", &[&users[0]])).await;
    let member_check = |user: &str| {
        format!(
            "/Groups?excludedAttributes=members&filter={}",
            encode(&format!(
                "id eq \"{group_id}\" and members[value eq \"{user}\"]"
            ))
        )
    };
    assert_eq!(both(member_check(&users[1])).await["totalResults"], 1);
    assert_eq!(both(member_check(&users[2])).await["totalResults"], 0);
    let by_name = format!(
        "/Groups?excludedAttributes=members&filter={}",
        encode("displayName eq \"engineering\"")
    );
    assert_eq!(
        both(by_name.clone()).await["Resources"][0]["id"],
        group_id.as_str()
    );
    // A user's groups, in the read model's order.
    let groups = both(format!(
        "/Users?filter={}",
        encode(&format!("id eq \"{}\"", users[0]))
    ))
    .await;
    assert_eq!(
        groups["Resources"][0]["groups"].as_array().unwrap().len(),
        2
    );

    // Entra's reads by id: the same document and ETag from both.
    let found = both(format!("/Users/{}", users[5])).await;
    assert_eq!(found["id"], users[5].as_str());
    let path = format!("/Groups/{group_id}?excludedAttributes=members");
    assert_eq!(both(path.clone()).await["displayName"], "Engineering");
    assert_eq!(
        indexed.get(&path).await.header("etag"),
        database.get(&path).await.header("etag")
    );

    // Membership removed, a user renamed, a group renamed, a user deleted: seen at once.
    let removed =
        patch(json!([{"op": "Remove", "path": format!("members[value eq \"{}\"]", users[1])}]));
    assert_eq!(
        writer
            .patch(&format!("/Groups/{group_id}"), &removed)
            .await
            .status,
        204
    );
    assert_eq!(both(member_check(&users[1])).await["totalResults"], 0);
    let renamed =
        patch(json!([{"op": "Replace", "path": "userName", "value": "renamed@example.com"}]));
    assert_eq!(
        writer
            .patch(&format!("/Users/{}", users[2]), &renamed)
            .await
            .status,
        200
    );
    let old = format!(
        "/Users?filter={}",
        encode("userName eq \"grace2@example.com\"")
    );
    assert_eq!(both(old).await["totalResults"], 0);
    let new = format!(
        "/Users?filter={}",
        encode("userName eq \"RENAMED@example.com\"")
    );
    assert_eq!(both(new).await["totalResults"], 1);
    let renamed = patch(json!([{"op": "Replace", "path": "displayName", "value": "Platform"}]));
    assert_eq!(
        writer
            .patch(&format!("/Groups/{group_id}"), &renamed)
            .await
            .status,
        204
    );
    assert_eq!(both(by_name).await["totalResults"], 0);
    assert_eq!(
        writer.delete(&format!("/Users/{}", users[0])).await.status,
        204
    );
    let gone = format!(
        "/Users?filter={}",
        encode("userName eq \"grace0@example.com\"")
    );
    assert_eq!(both(gone).await["totalResults"], 0);
    let gone = format!("/Users/{}", users[0]);
    assert_eq!(indexed.get(&gone).await.status, 404);
    assert_eq!(database.get(&gone).await.status, 404);
    // The deleted user left every group, as in the read model.
    let alpha = format!(
        "/Groups?excludedAttributes=members&filter={}",
        encode(&format!("members[value eq \"{}\"]", users[0]))
    );
    assert_eq!(both(alpha).await["totalResults"], 0);
    let deactivated = patch(json!([{"op": "Replace", "path": "active", "value": "False"}]));
    assert_eq!(
        writer
            .patch(&format!("/Users/{}", users[3]), &deactivated)
            .await
            .status,
        200
    );
    let found = both(format!(
        "/Users?filter={}",
        encode("userName eq \"grace3@example.com\"")
    ))
    .await;
    assert_eq!(found["Resources"][0]["active"], false);

    // The index, not PostgreSQL, answered: a row taken from the read model behind its back is
    // still found by the indexed replica, and no longer by the other.
    take_row(&env, &users[4]).await;
    let path = format!(
        "/Users?filter={}",
        encode("userName eq \"grace4@example.com\"")
    );
    assert_eq!(lookup(&indexed, &path).await["totalResults"], 1);
    assert_eq!(lookup(&database, &path).await["totalResults"], 0);
    let path = format!("/Users/{}", users[4]);
    assert_eq!(indexed.get(&path).await.status, 200);
    assert_eq!(database.get(&path).await.status, 404);
}

#[tokio::test]
async fn a_tenant_whose_read_model_is_behind_the_stream_is_answered_from_the_read_model() {
    use rollcall_domain::user::UserEvent;
    use rollcall_domain::{AttributeChange, EventKind};
    let mut env = TestEnv::start().await;
    let (indexed, database) = two_replicas(&mut env).await;
    let id = env
        .scim()
        .create_user(&user("kept@example.com", "kept"))
        .await;
    let id = uuid::Uuid::parse_str(&id).unwrap();
    // A witness: its read-model row taken away behind the API's back, so that only the index
    // finds it. Until the quarantine, the index answers.
    let witness = env
        .scim()
        .create_user(&user("witness@example.com", "witness"))
        .await;
    take_row(&env, &witness).await;
    let witnessed = format!(
        "/Users?filter={}",
        encode("userName eq \"witness@example.com\"")
    );
    eventually(
        "the indexed replica answers from its index",
        Duration::from_secs(5),
        || async { lookup(&indexed, &witnessed).await["totalResults"] == 1 },
    )
    .await;
    // A rename PostgreSQL's index cannot hold, put on the stream past SCIM's checks: the
    // projector quarantines it, the index (which folds it fine) would show it.
    let unindexable: String = (0..200)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let subject = env
        .namespace
        .aggregate_subject(&env.tenant, UserEvent::AGGREGATE, &id);
    let earlier = env.log.load(&subject, 0).await.unwrap();
    let renamed = UserEvent::AttributesChanged {
        changes: vec![AttributeChange {
            path: "userName".into(),
            before: Some(json!("kept@example.com")),
            after: Some(json!(unindexable)),
            redacted: false,
        }],
    };
    let envelope = rollcall_it::user_envelope(&env.tenant, id, 2, &renamed);
    env.log
        .append(&subject, earlier.last_sequence, &[envelope])
        .await
        .unwrap();
    eventually(
        "the event is quarantined",
        Duration::from_secs(10),
        || async { env.store.quarantine_open().await.unwrap() > 0 },
    )
    .await;
    // Both replicas answer as the read model, which still has the old name.
    let old = format!(
        "/Users?filter={}",
        encode("userName eq \"kept@example.com\"")
    );
    let new = format!(
        "/Users?filter={}",
        encode(&format!("userName eq \"{unindexable}\""))
    );
    eventually(
        "the indexed replica answers the tenant from the read model",
        Duration::from_secs(5),
        || async {
            lookup(&indexed, &old).await["totalResults"] == 1
                && lookup(&indexed, &new).await["totalResults"] == 0
        },
    )
    .await;
    assert_eq!(lookup(&indexed, &old).await, lookup(&database, &old).await);
    assert_eq!(lookup(&indexed, &witnessed).await["totalResults"], 0);
}
