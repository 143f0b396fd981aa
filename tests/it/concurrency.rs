//! Set-wide rules and concurrent writes: no race creates a duplicate, none loses a member.

use futures::future::join_all;
use rollcall_it::TestEnv;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_creates_of_one_user_name_give_one_201_and_nineteen_409s() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let requests = (0..20).map(|n| {
        let scim = scim.clone();
        // The same userName in different letter cases.
        let user_name: String = "race.condition@example.com"
            .chars()
            .enumerate()
            .map(|(i, c)| if (i + n) % 3 == 0 { c.to_ascii_uppercase() } else { c })
            .collect();
        async move { scim.post("/Users", &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": user_name})).await }
    });
    let responses = join_all(requests).await;
    let created = responses.iter().filter(|r| r.status == 201).count();
    let conflicts = responses
        .iter()
        .filter(|r| r.status == 409 && r.body["scimType"] == "uniqueness")
        .count();
    assert_eq!(
        (created, conflicts),
        (1, 19),
        "{:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let all = scim.get("/Users").await;
    assert_eq!(all.body["totalResults"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_member_adds_to_one_group_lose_no_member() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let group = scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Everyone"})).await;
    let requests = (0..50).map(|n| {
        let scim = scim.clone();
        let path = format!("/Groups/{group}");
        async move {
            let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                              "Operations": [{"op": "Add", "path": "members", "value": [{"value": format!("user-{n}")}]}]});
            scim.patch(&path, &body).await.status
        }
    });
    let statuses = join_all(requests).await;
    assert!(statuses.iter().all(|&s| s == 204), "{statuses:?}");
    let read = scim.get(&format!("/Groups/{group}")).await;
    assert_eq!(read.body["members"].as_array().unwrap().len(), 50);
    assert_eq!(read.body["meta"]["version"], "W/\"51\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_writing_one_group_lose_no_member() {
    let mut env = TestEnv::start().await;
    let first = env.scim();
    let second = env.replica().await;
    let group = first.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Shared"})).await;
    // Each replica caches the group; their appends conflict on the stream's sequence check,
    // and the loser reloads and retries.
    let requests = (0..12).map(|n| {
        let scim = if n % 2 == 0 { first.clone() } else { second.clone() };
        let path = format!("/Groups/{group}");
        async move {
            let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                              "Operations": [{"op": "Add", "path": "members", "value": [{"value": format!("user-{n}")}]}]});
            scim.patch(&path, &body).await.status
        }
    });
    let statuses = join_all(requests).await;
    assert!(statuses.iter().all(|&s| s == 204), "{statuses:?}");
    for scim in [&first, &second] {
        let read = scim.get(&format!("/Groups/{group}")).await;
        assert_eq!(read.body["members"].as_array().unwrap().len(), 12);
        assert_eq!(read.body["meta"]["version"], "W/\"13\"");
    }
}
