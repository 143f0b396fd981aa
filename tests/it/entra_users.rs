//! Entra ID's user flows (ENTRA.md §4.1–§4.8) replayed over HTTP: the responses it expects and
//! the events they leave.

use rollcall_it::{encode, TestEnv};
use serde_json::{json, Value};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

fn entra_user(user_name: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": user_name,
        "active": true,
        "emails": [{"primary": true, "type": "work", "value": "Test_User_11bb11bb@testuser.com"}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
        "roles": []
    })
}

#[tokio::test]
async fn test_connection_gets_an_empty_list_response_not_404() {
    let env = TestEnv::start().await;
    let filter = encode(r#"userName eq "7f9d3a5e-1c52-4b1e-9a0e-2f3b6c8d9e10""#);
    let response = env.scim().get(&format!("/Users?filter={filter}")).await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/scim+json")
    );
    assert_eq!(response.body["totalResults"], 0);
    assert_eq!(response.body["Resources"], json!([]));
    // Entra's other encoding: + for spaces (ENTRA.md §4).
    let response = env
        .scim()
        .get("/Users?filter=externalId+eq+%22johnwong%22")
        .await;
    assert_eq!(
        (response.status, response.body["totalResults"].clone()),
        (200, json!(0))
    );
}

#[tokio::test]
async fn lookup_then_create_then_lookup_finds_the_user_at_once() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let user_name = "Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee";
    let lookup = format!(
        "/Users?filter={}",
        encode(&format!("userName eq \"{user_name}\""))
    );
    assert_eq!(scim.get(&lookup).await.body["totalResults"], 0);
    let created = scim.post("/Users", &entra_user(user_name)).await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("{}/Users/{id}", env.base).as_str())
    );
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    assert_eq!(created.body["meta"]["version"], "W/\"1\"");
    assert_eq!(created.body["active"], true);
    assert!(created.body.get("roles").is_none() && created.body["meta"]["resourceType"] == "User");
    // Read-your-writes: the very next lookup, in another case, finds it.
    let found = scim
        .get(&format!(
            "/Users?filter={}",
            encode(&format!("userName eq \"{}\"", user_name.to_uppercase()))
        ))
        .await;
    assert_eq!(found.ids(), vec![id.clone()]);
    let by_external_id = scim
        .get(&format!(
            "/Users?filter={}",
            encode("externalId eq \"0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef\"")
        ))
        .await;
    assert_eq!(by_external_id.ids(), vec![id.clone()]);
    assert_eq!(env.event_types("test", &id).await, vec!["user.provisioned"]);
    // A second POST of the same userName is a uniqueness conflict.
    let again = scim
        .post("/Users", &entra_user(&user_name.to_lowercase()))
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["scimType"], "uniqueness");
}

#[tokio::test]
async fn attribute_updates_in_both_dialects_record_each_change() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&entra_user("dialects@testuser.com")).await;
    let default_dialect = patch(json!([
        {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "updatedEmail@microsoft.com"},
        {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
        {"op": "Replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber", "value": "Eqpj"}
    ]));
    let response = scim.patch(&format!("/Users/{id}"), &default_dialect).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.body["emails"][0]["value"],
        "updatedEmail@microsoft.com"
    );
    assert_eq!(response.body["name"]["familyName"], "updatedFamilyName");
    assert_eq!(response.body[ENTERPRISE]["employeeNumber"], "Eqpj");
    assert_eq!(response.body["meta"]["version"], "W/\"2\"");
    let flag_dialect = patch(json!([
        {"op": "replace", "value": {"displayName": "Bjfe", "name.givenName": "Kkom",
                                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "Aklq"}}
    ]));
    let response = scim.patch(&format!("/Users/{id}"), &flag_dialect).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let read = scim.get(&format!("/Users/{id}")).await.body;
    assert_eq!(
        (
            read["displayName"].clone(),
            read["name"]["givenName"].clone()
        ),
        (json!("Bjfe"), json!("Kkom"))
    );
    assert_eq!(read[ENTERPRISE]["employeeNumber"], "Aklq");
    let payloads = env.event_payloads("test", &id).await;
    assert_eq!(payloads.len(), 3);
    let changes = &payloads[2]["changes"];
    assert!(
        changes
            .as_array()
            .unwrap()
            .contains(&json!({"path": "name.givenName", "before": "givenName", "after": "Kkom"})),
        "{changes}"
    );
    assert!(changes.as_array().unwrap().contains(
        &json!({"path": format!("{ENTERPRISE}:employeeNumber"), "before": "Eqpj", "after": "Aklq"})
    ));
    // Entra repeats itself: the same PATCH again records nothing and still answers 200.
    let again = scim.patch(&format!("/Users/{id}"), &flag_dialect).await;
    assert_eq!(again.status, 200);
    assert_eq!(env.event_types("test", &id).await.len(), 3);
}

#[tokio::test]
async fn disable_with_the_string_false_then_reenable_are_their_own_events() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&entra_user("disable@testuser.com")).await;
    let disable = patch(json!([{"op": "Replace", "path": "active", "value": "False"}]));
    let response = scim.patch(&format!("/Users/{id}"), &disable).await;
    assert_eq!(
        (response.status, response.body["active"].clone()),
        (200, json!(false))
    );
    // Disabled users stay readable and findable (ENTRA.md §0.13).
    assert_eq!(
        scim.get(&format!("/Users/{id}")).await.body["active"],
        false
    );
    let inactive = scim
        .get(&format!("/Users?filter={}", encode("active eq false")))
        .await;
    assert_eq!(inactive.ids(), vec![id.clone()]);
    // Repeated disable: nothing new.
    assert_eq!(
        scim.patch(&format!("/Users/{id}"), &disable).await.status,
        200
    );
    let enable = patch(json!([{"op": "replace", "path": "active", "value": true}]));
    assert_eq!(
        scim.patch(&format!("/Users/{id}"), &enable).await.body["active"],
        true
    );
    let flag_disable = patch(json!([{"op": "replace", "value": {"active": false}}]));
    assert_eq!(
        scim.patch(&format!("/Users/{id}"), &flag_disable)
            .await
            .body["active"],
        false
    );
    assert_eq!(
        env.event_types("test", &id).await,
        vec![
            "user.provisioned",
            "user.deactivated",
            "user.reactivated",
            "user.deactivated"
        ]
    );
}

#[tokio::test]
async fn a_put_with_active_false_is_a_deactivation() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&entra_user("put@testuser.com")).await;
    let mut body = entra_user("put@testuser.com");
    body["active"] = json!(false);
    body["title"] = json!("Engineer");
    let response = scim.put(&format!("/Users/{id}"), &body).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        env.event_types("test", &id).await,
        vec![
            "user.provisioned",
            "user.attributes_changed",
            "user.deactivated"
        ]
    );
}

#[tokio::test]
async fn the_manager_arrives_as_a_bare_id_and_returns_as_a_complex_value() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let manager = scim.create_user(&entra_user("manager@testuser.com")).await;
    let report = scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "report@testuser.com"})).await;
    let add = patch(
        json!([{"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": manager}]),
    );
    let response = scim.patch(&format!("/Users/{report}"), &add).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let read = scim.get(&format!("/Users/{report}")).await.body;
    assert_eq!(read[ENTERPRISE]["manager"], json!({"value": manager}));
    assert!(read["schemas"]
        .as_array()
        .unwrap()
        .contains(&json!(ENTERPRISE)));
    // Entra's reference check: id eq … and manager eq …, unquoted, attributes=id.
    let check = scim
        .get(&format!(
            "/Users?filter={}&attributes=id",
            encode(&format!("id eq {report} and manager eq {manager}"))
        ))
        .await;
    assert_eq!(
        check.body["Resources"],
        json!([{"id": report, "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]}])
    );
    let remove = patch(
        json!([{"op": "Replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": ""}]),
    );
    assert_eq!(
        scim.patch(&format!("/Users/{report}"), &remove)
            .await
            .status,
        200
    );
    assert!(scim
        .get(&format!("/Users/{report}"))
        .await
        .body
        .get(ENTERPRISE)
        .is_none());
}

#[tokio::test]
async fn pages_echo_start_index_and_count_over_the_whole_tenant() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("page{n}@x")})).await);
    }
    let first = scim.get("/Users?startIndex=1&count=5").await;
    assert_eq!(
        (
            first.body["totalResults"].clone(),
            first.body["itemsPerPage"].clone(),
            first.body["startIndex"].clone()
        ),
        (json!(7), json!(5), json!(1))
    );
    let second = scim.get("/Users?startIndex=6&count=5").await;
    assert_eq!(
        (
            second.body["itemsPerPage"].clone(),
            second.body["startIndex"].clone()
        ),
        (json!(2), json!(6))
    );
    let mut seen = first.ids();
    seen.extend(second.ids());
    assert_eq!(seen, ids);
    // Past the end, and with count=0, the total is still the whole tenant's.
    for path in ["/Users?startIndex=20&count=5", "/Users?count=0"] {
        let page = scim.get(path).await;
        assert_eq!(
            (page.body["totalResults"].clone(), page.ids().len()),
            (json!(7), 0),
            "{path}"
        );
    }
    let sorted = scim
        .get("/Users?sortBy=userName&sortOrder=descending&count=2")
        .await;
    assert_eq!(sorted.body["Resources"][0]["userName"], "page6@x");
}

#[tokio::test]
async fn delete_answers_204_then_the_user_is_gone() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&entra_user("gone@testuser.com")).await;
    let deleted = scim.delete(&format!("/Users/{id}")).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(scim.get(&format!("/Users/{id}")).await.status, 404);
    assert_eq!(scim.delete(&format!("/Users/{id}")).await.status, 404);
    let lookup = scim
        .get(&format!(
            "/Users?filter={}",
            encode("userName eq \"gone@testuser.com\"")
        ))
        .await;
    assert_eq!(lookup.body["totalResults"], 0);
    assert_eq!(
        env.event_types("test", &id).await,
        vec!["user.provisioned", "user.deleted"]
    );
    // The userName is free again.
    assert_eq!(
        scim.post("/Users", &entra_user("Gone@testuser.com"))
            .await
            .status,
        201
    );
}
