//! Entra ID's group flows (ENTRA.md §4.9) over HTTP.

use rollcall_it::{encode, TestEnv};
use serde_json::{json, Value};

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

async fn users(env: &TestEnv, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push(env.scim().create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("member{n}@x")})).await);
    }
    ids
}

fn member_ids(group: &Value) -> Vec<String> {
    let mut ids: Vec<String> = group["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["value"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test]
async fn entra_group_lifecycle_from_lookup_to_delete() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let ids = users(&env, 3).await;
    let lookup = format!(
        "/Groups?excludedAttributes=members&filter={}",
        encode("displayName eq \"displayName\"")
    );
    assert_eq!(scim.get(&lookup).await.body["totalResults"], 0);
    let created = scim
        .post(
            "/Groups",
            &json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group", "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
                "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159", "displayName": "displayName", "meta": {"resourceType": "Group"}
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let group = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(scim.get(&lookup).await.ids(), vec![group.clone()]);
    let path = format!("/Groups/{group}");

    // Add members, one PATCH each and one with several, "$ref": null as Entra sends it.
    let add = |id: &str| {
        patch(json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": id}]}]))
    };
    let response = scim.patch(&path, &add(&ids[0])).await;
    assert_eq!(response.status, 204);
    assert!(response.body.is_null());
    let several = patch(
        json!([{"op": "Add", "path": "members", "value": [{"value": ids[1]}, {"value": ids[2]}]}]),
    );
    assert_eq!(scim.patch(&path, &several).await.status, 204);
    let mut all = ids.clone();
    all.sort();
    assert_eq!(member_ids(&scim.get(&path).await.body), all);
    // excludedAttributes=members: no members key at all.
    let without = scim
        .get(&format!("{path}?excludedAttributes=members"))
        .await
        .body;
    assert!(without.get("members").is_none() && without["displayName"] == "displayName");
    // Membership check (Microsoft's sample provider shape).
    let check = scim
        .get(&format!(
            "/Groups?filter={}&attributes=id",
            encode(&format!("id eq \"{group}\" and members eq \"{}\"", ids[1]))
        ))
        .await;
    assert_eq!(
        check.body["Resources"],
        json!([{"id": group, "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"]}])
    );

    // Remove, default dialect: only the listed member goes.
    let remove_default = patch(
        json!([{"op": "Remove", "path": "members", "value": [{"$ref": null, "value": ids[0]}]}]),
    );
    assert_eq!(scim.patch(&path, &remove_default).await.status, 204);
    let mut left = vec![ids[1].clone(), ids[2].clone()];
    left.sort();
    assert_eq!(member_ids(&scim.get(&path).await.body), left);
    // Remove, flag dialect.
    let remove_flag =
        patch(json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", ids[1])}]));
    assert_eq!(scim.patch(&path, &remove_flag).await.status, 204);
    assert_eq!(
        member_ids(&scim.get(&path).await.body),
        vec![ids[2].clone()]
    );
    let check = scim
        .get(&format!(
            "/Groups?filter={}&attributes=id",
            encode(&format!("id eq \"{group}\" and members eq \"{}\"", ids[1]))
        ))
        .await;
    assert_eq!(check.body["totalResults"], 0);

    // Rename.
    let rename =
        patch(json!([{"op": "Replace", "path": "displayName", "value": "Finance-Admins"}]));
    assert_eq!(scim.patch(&path, &rename).await.status, 204);
    assert_eq!(
        scim.get(&format!(
            "/Groups?filter={}",
            encode("displayName eq \"finance-admins\"")
        ))
        .await
        .ids(),
        vec![group.clone()]
    );
    // The user's groups show the membership.
    let user = scim.get(&format!("/Users/{}", ids[2])).await.body;
    assert_eq!(user["groups"][0]["value"], group);
    assert_eq!(user["groups"][0]["display"], "Finance-Admins");

    assert_eq!(
        env.event_types("test", &group).await,
        vec![
            "group.created",
            "group.members_added",
            "group.members_added",
            "group.members_removed",
            "group.members_removed",
            "group.renamed"
        ]
    );
    let payloads = env.event_payloads("test", &group).await;
    assert_eq!(payloads[3]["members"], json!([ids[0]]));
    assert_eq!(
        payloads[5],
        json!({"type": "group.renamed", "before": "displayName", "after": "Finance-Admins"})
    );

    assert_eq!(scim.delete(&path).await.status, 204);
    assert_eq!(scim.get(&path).await.status, 404);
    assert_eq!(
        scim.get(&format!("/Users/{}", ids[2]))
            .await
            .body
            .get("groups"),
        None
    );
}

#[tokio::test]
async fn group_display_names_are_unique_without_case() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    scim.create_group(
        &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Ops"}),
    )
    .await;
    let again = scim.post("/Groups", &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "OPS"})).await;
    assert_eq!(
        (again.status, again.body["scimType"].clone()),
        (409, json!("uniqueness"))
    );
}

#[tokio::test]
async fn a_group_patch_that_asks_for_attributes_gets_the_group() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let group = scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Ops"})).await;
    let response = scim
        .patch(
            &format!("/Groups/{group}?attributes=displayName"),
            &patch(json!([{"op": "replace", "path": "displayName", "value": "Ops2"}])),
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body["displayName"], "Ops2");
    assert!(response.body.get("members").is_none());
}

#[tokio::test]
async fn group_pages_count_every_match_also_past_the_end() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let mut ids = Vec::new();
    for name in ["Alpha", "Beta", "Gamma"] {
        ids.push(
            scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name}))
                .await,
        );
    }
    let page = scim.get("/Groups?startIndex=2&count=1").await;
    assert_eq!(page.body["totalResults"], 3);
    assert_eq!(page.ids(), vec![ids[1].clone()]);
    for path in ["/Groups?startIndex=9&count=2", "/Groups?count=0"] {
        let page = scim.get(path).await;
        assert_eq!(
            (page.body["totalResults"].clone(), page.ids().len()),
            (json!(3), 0),
            "{path}"
        );
    }
    let lookup = format!(
        "/Groups?filter={}&startIndex=2",
        encode("displayName eq \"beta\"")
    );
    let page = scim.get(&lookup).await;
    assert_eq!(
        (page.body["totalResults"].clone(), page.ids().len()),
        (json!(1), 0)
    );
}

/// Removals of a few members (by primary key, one by one) and of many (in one statement) leave
/// exactly the others, in the read model and in SCIM's answers; ids are compared without case.
#[tokio::test]
async fn removing_a_few_or_many_members_leaves_exactly_the_others() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let members: Vec<String> = (0..40).map(|n| format!("ext-member-{n:02}")).collect();
    let listed: Vec<Value> = members.iter().map(|m| json!({"value": m})).collect();
    let group = scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Removals", "members": listed})).await;
    let path = format!("/Groups/{group}");
    let remove = |ids: &[String]| {
        let values: Vec<Value> = ids
            .iter()
            .map(|m| json!({"value": m.to_uppercase()}))
            .collect();
        patch(json!([{"op": "Remove", "path": "members", "value": values}]))
    };
    // Two (one by one), then twenty (one statement).
    for (from, to) in [(0, 2), (2, 22)] {
        let status = scim.patch(&path, &remove(&members[from..to])).await.status;
        assert!(matches!(status, 200 | 204), "{status}");
        let mut expected = members[to..].to_vec();
        expected.sort();
        assert_eq!(member_ids(&scim.get(&path).await.body), expected);
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM group_member WHERE group_id = $1")
            .bind(uuid::Uuid::parse_str(&group).unwrap())
            .fetch_one(env.store.pool())
            .await
            .unwrap();
        assert_eq!(rows, expected.len() as i64);
    }
}
