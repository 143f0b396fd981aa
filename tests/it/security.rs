//! Tokens, tenant isolation, request limits and bad input: every refusal is a SCIM error, and
//! nothing refused is ever appended.

use std::time::Duration;

use reqwest::Method;
use rollcall_it::{encode, eventually, TestEnv};
use serde_json::json;

fn user(name: &str) -> serde_json::Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name})
}

#[tokio::test]
async fn one_tenant_can_never_see_or_touch_another_tenants_resources() {
    let env = TestEnv::start().await;
    let a = env.scim();
    let b = env.tenant("other").await;
    let id = a.create_user(&user("shared@example.com")).await;
    let group = a.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "G"})).await;
    assert_eq!(b.get(&format!("/Users/{id}")).await.status, 404);
    assert_eq!(b.get(&format!("/Groups/{group}")).await.status, 404);
    assert_eq!(b.get("/Users").await.body["totalResults"], 0);
    assert_eq!(
        b.get(&format!(
            "/Users?filter={}",
            encode("userName eq \"shared@example.com\"")
        ))
        .await
        .body["totalResults"],
        0
    );
    let disable = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
    assert_eq!(b.patch(&format!("/Users/{id}"), &disable).await.status, 404);
    assert_eq!(b.delete(&format!("/Users/{id}")).await.status, 404);
    assert_eq!(
        b.put(&format!("/Users/{id}"), &user("x@example.com"))
            .await
            .status,
        404
    );
    // userName uniqueness is per tenant.
    assert_eq!(
        b.post("/Users", &user("shared@example.com")).await.status,
        201
    );
    assert_eq!(
        a.get(&format!("/Users/{id}")).await.body["active"],
        serde_json::Value::Null
    );
    assert_eq!(a.get("/Users").await.body["totalResults"], 1);
}

#[tokio::test]
async fn missing_wrong_and_revoked_tokens_are_401_with_a_scim_body() {
    let env = TestEnv::start().await;
    for scim in [
        env.scim().with_token(None),
        env.scim().with_token(Some("rc_0123456789abcdef_")),
        env.scim().with_token(Some("not-a-token")),
    ] {
        let response = scim.get("/Users").await;
        assert_eq!(response.status, 401);
        assert_eq!(
            response.body["schemas"][0],
            "urn:ietf:params:scim:api:messages:2.0:Error"
        );
        assert_eq!(response.body["status"], "401");
    }
    // A token of the right shape with a wrong secret.
    let wrong = format!("{}{}", &env.token[..20], "0".repeat(env.token.len() - 20));
    assert_eq!(
        env.scim()
            .with_token(Some(&wrong))
            .get("/Users")
            .await
            .status,
        401
    );
    // Revocation takes effect within the token cache's lifetime.
    let id = env.token.split('_').nth(1).unwrap().to_owned();
    assert_eq!(env.scim().get("/Users").await.status, 200);
    assert!(env.store.revoke_token(&id).await.unwrap());
    let scim = env.scim();
    eventually(
        "the revoked token is refused",
        Duration::from_secs(10),
        || {
            let scim = scim.clone();
            async move { scim.get("/Users").await.status == 401 }
        },
    )
    .await;
}

#[tokio::test]
async fn bad_input_gets_the_right_scim_error_and_appends_nothing() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&user("valid@example.com")).await;
    let head = env.head().await;
    let path = format!("/Users/{id}");
    let patch = |operations: serde_json::Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations});
    let cases: Vec<(Method, String, String, u16, Option<&str>)> = vec![
        (Method::POST, "/Users".into(), "{not json".into(), 400, Some("invalidSyntax")),
        (Method::POST, "/Users".into(), json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": 7}).to_string(), 400, Some("invalidValue")),
        (Method::POST, "/Users".into(), json!({"schemas": ["urn:example:nope"], "userName": "x"}).to_string(), 400, Some("invalidSyntax")),
        (Method::POST, "/Users".into(), json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]}).to_string(), 400, Some("invalidValue")),
        (Method::PATCH, path.clone(), patch(json!([{"op": "Replace", "path": "emails[type eq", "value": "x"}])).to_string(), 400, Some("invalidPath")),
        (Method::PATCH, path.clone(), patch(json!([{"op": "Replace", "path": "title", "value": "ok"}, {"op": "Replace", "path": "active", "value": "perhaps"}])).to_string(), 400, Some("invalidValue")),
        (Method::PATCH, path.clone(), patch(json!([{"op": "Replace", "path": "id", "value": "x"}])).to_string(), 400, Some("mutability")),
        (Method::PATCH, path.clone(), json!({"Operations": []}).to_string(), 400, Some("invalidSyntax")),
        (Method::PUT, path.clone(), json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "valid@example.com", "active": "maybe"}).to_string(), 400, Some("invalidValue")),
        (Method::GET, format!("/Users?filter={}", encode("userName eq")), String::new(), 400, Some("invalidFilter")),
        (Method::GET, format!("/Users?filter={}", encode("shoeSize gt 40")), String::new(), 400, Some("invalidFilter")),
        (Method::GET, "/Users?count=ten".into(), String::new(), 400, Some("invalidValue")),
        (Method::PATCH, "/Users/00000000-0000-0000-0000-000000000000".into(), patch(json!([{"op": "Replace", "path": "title", "value": "x"}])).to_string(), 404, None),
        (Method::POST, "/Schemas".into(), "{}".into(), 405, None),
        (Method::GET, "/Nowhere".into(), String::new(), 404, None),
    ];
    for (method, path, body, status, scim_type) in cases {
        let body = (!body.is_empty()).then(|| {
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.clone()))
        });
        let response = match &body {
            Some(serde_json::Value::String(raw)) => {
                let http = reqwest::Client::new();
                let r = http
                    .request(method.clone(), format!("{}{path}", env.base))
                    .bearer_auth(&env.token)
                    .header("content-type", "application/scim+json")
                    .body(raw.clone())
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let content_type = r
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(content_type.as_deref(), Some("application/scim+json"));
                (status, body)
            }
            other => {
                let r = scim.send(method.clone(), &path, other.as_ref()).await;
                assert_eq!(
                    r.header("content-type"),
                    Some("application/scim+json"),
                    "{method} {path}"
                );
                (r.status, r.body)
            }
        };
        assert_eq!(response.0, status, "{method} {path}: {}", response.1);
        assert_eq!(response.1["status"], status.to_string(), "{method} {path}");
        assert_eq!(
            response.1["scimType"].as_str(),
            scim_type,
            "{method} {path}: {}",
            response.1
        );
        assert!(response.1["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    assert_eq!(
        env.head().await,
        head,
        "a refused request appended an event"
    );
    assert_eq!(
        scim.get(&format!("/Users/{id}")).await.body.get("title"),
        None
    );
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let env = TestEnv::start().await;
    let huge = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "big", "title": "x".repeat(2 * 1024 * 1024)});
    let response = env.scim().post("/Users", &huge).await;
    assert_eq!(response.status, 413);
    assert_eq!(response.body["status"], "413");
}

#[tokio::test]
async fn if_match_is_honoured_when_sent_and_never_required() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&user("etag@example.com")).await;
    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "title", "value": "Dr"}]});
    let stale = scim
        .send_with(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(&body),
            &[("If-Match", "W/\"7\"")],
        )
        .await;
    assert_eq!(stale.status, 412);
    let fresh = scim
        .send_with(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(&body),
            &[("If-Match", "W/\"1\"")],
        )
        .await;
    assert_eq!((fresh.status, fresh.header("etag")), (200, Some("W/\"2\"")));
    assert_eq!(scim.patch(&format!("/Users/{id}"), &body).await.status, 200);
}

#[tokio::test]
async fn discovery_documents_describe_what_is_stored() {
    let env = TestEnv::start().await;
    let scim = env.scim().with_token(None);
    let schemas = scim.get("/Schemas").await;
    assert_eq!(schemas.body["totalResults"], 3);
    let config = scim.get("/ServiceProviderConfig").await;
    assert_eq!(
        (
            config.body["patch"]["supported"].clone(),
            config.body["bulk"]["supported"].clone()
        ),
        (json!(true), json!(false))
    );
    let user = scim.get("/ResourceTypes/User").await;
    assert_eq!(
        user.body["schemaExtensions"][0]["schema"],
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
    );
    assert_eq!(
        scim.send(Method::DELETE, "/ResourceTypes", None)
            .await
            .status,
        405
    );
}
