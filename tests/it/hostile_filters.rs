//! Hostile filters and quadratic inputs: long and/or chains, deep nesting, huge multi-valued attributes. Each test asserts the refusal and that another tenant is unaffected.

use std::time::{Duration, Instant};

use rollcall_it::{encode, Response, TestEnv};
use rollcall_scim::limits::{
    MAX_FILTER_DEPTH, MAX_FILTER_LENGTH, MAX_FILTER_TERMS, MAX_MEMBERS_PER_REQUEST,
};
use serde_json::{json, Value};

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const SEARCH: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

/// `count` comparisons of userName joined by `joiner`.
fn chain(count: usize, joiner: &str) -> String {
    (0..count)
        .map(|i| format!("userName eq \"u{i}@x.test\""))
        .collect::<Vec<_>>()
        .join(joiner)
}

/// Asserts a SCIM `400` with `scim_type` whose detail says `says` and does not carry the
/// refused input back.
fn refused(what: &str, response: &Response, scim_type: &str, says: &str) {
    assert_eq!(response.status, 400, "{what}: {:?}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("application/scim+json"),
        "{what}"
    );
    assert_eq!(
        response.body["scimType"], scim_type,
        "{what}: {:?}",
        response.body
    );
    let detail = response.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(says), "{what}: {detail}");
    assert!(
        detail.len() < 1_000,
        "{what}: the detail echoes the input ({} bytes)",
        detail.len()
    );
}

fn search(filter: &str) -> Value {
    json!({"schemas": [SEARCH], "filter": filter})
}

#[tokio::test]
async fn a_search_of_30000_anded_terms_is_refused_and_every_service_lives_on() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    // The request of issue 11 that overflowed the stack and killed every service: 480 KB.
    let filter = chain(30_000, " and ");
    assert!(filter.len() > 400_000);
    let too_long = format!("at most {MAX_FILTER_LENGTH}");
    for path in ["/Users/.search", "/Groups/.search", "/.search"] {
        let response = evil.post(path, &search(&filter)).await;
        refused(path, &response, "invalidFilter", &too_long);
    }
    // In a URL too, over the length limit.
    let url_filter = chain(1_000, " or ");
    assert!(url_filter.len() > MAX_FILTER_LENGTH);
    let response = evil
        .get(&format!("/Users?filter={}", encode(&url_filter)))
        .await;
    refused("GET /Users", &response, "invalidFilter", &too_long);
    // The process is alive and still answers the same tenant.
    let response = evil.post("/Users/.search", &search("userName pr")).await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_filter_with_one_term_too_many_or_nested_too_deeply_is_refused() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    let over = chain(MAX_FILTER_TERMS + 1, " or ");
    assert!(over.len() <= MAX_FILTER_LENGTH);
    let response = evil.post("/Users/.search", &search(&over)).await;
    refused(
        "terms",
        &response,
        "invalidFilter",
        &format!("more than {MAX_FILTER_TERMS} attribute expressions"),
    );
    let mut nested = "userName pr".to_owned();
    for _ in 0..=MAX_FILTER_DEPTH {
        nested = format!("not (title pr and {nested})");
    }
    let response = evil
        .get(&format!("/Users?filter={}", encode(&nested)))
        .await;
    refused("depth", &response, "invalidFilter", "nested deeper");
    // The same limits hold for a PATCH path's value filter.
    let group = evil
        .create_group(&json!({"schemas": [GROUP_SCHEMA], "displayName": "g"}))
        .await;
    let path = format!(
        "members[{}]",
        (0..=MAX_FILTER_TERMS)
            .map(|i| format!("value eq \"m{i}\""))
            .collect::<Vec<_>>()
            .join(" or ")
    );
    let response = evil
        .patch(
            &format!("/Groups/{group}"),
            &patch(json!([{"op": "remove", "path": path}])),
        )
        .await;
    refused(
        "PATCH path",
        &response,
        "invalidPath",
        "attribute expressions",
    );
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_control_character_in_a_filter_value_is_an_invalid_filter_not_a_server_error() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    // Entra's indexed lookup: the value would reach PostgreSQL, which refuses NUL.
    for filter in [
        "userName eq \"ada\\u0000@x.test\"",
        "externalId eq ada\u{0}",
    ] {
        let response = evil.get(&format!("/Users?filter={}", encode(filter))).await;
        refused(
            filter,
            &response,
            "invalidFilter",
            "control character U+0000",
        );
    }
    let response = evil
        .post("/Groups/.search", &search("displayName eq \"\\u001b[2J\""))
        .await;
    refused(
        "search",
        &response,
        "invalidFilter",
        "control character U+001B",
    );
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_chain_at_the_term_limit_is_answered() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    let ada = evil
        .create_user(&json!({"schemas": [USER_SCHEMA], "userName": "ada@x.test"}))
        .await;
    let mut terms: Vec<String> = (1..MAX_FILTER_TERMS)
        .map(|i| format!("userName eq \"nobody{i}@x.test\""))
        .collect();
    terms.push("userName eq \"ADA@x.test\"".to_owned());
    let response = evil
        .post("/Users/.search", &search(&terms.join(" or ")))
        .await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert_eq!(response.ids(), vec![ada.clone()]);
    let response = evil
        .post("/Users/.search", &search(&terms.join(" and ")))
        .await;
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert!(response.ids().is_empty());
    env.assert_other_tenant_unaffected().await;
}

/// `count` member references, each a new random id.
fn random_members(count: usize) -> Vec<Value> {
    (0..count)
        .map(|_| json!({"value": uuid::Uuid::new_v4().to_string()}))
        .collect()
}

#[tokio::test]
async fn groups_of_the_most_members_a_request_may_list_are_written_promptly_and_each_member_once() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    // Generous: a request whose de-duplication compared every member with every other took
    // 15.6 s for 20,000 members (issue 11).
    let bound = Duration::from_secs(10);
    let first = random_members(MAX_MEMBERS_PER_REQUEST);
    let started = Instant::now();
    let created = evil
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "big", "members": first}),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert!(
        started.elapsed() < bound,
        "POST took {:?}",
        started.elapsed()
    );
    let group = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/Groups/{group}");
    // Grow it, a full request at a time, then add every member again in other case along
    // with a rename (the general PATCH path, which compares with every member held).
    for round in 0..4 {
        let started = Instant::now();
        let response = evil
            .patch(
                &path,
                &patch(json!([{"op": "Add", "path": "members", "value": random_members(MAX_MEMBERS_PER_REQUEST)}])),
            )
            .await;
        assert_eq!(response.status, 204, "round {round}: {:?}", response.body);
        assert!(
            started.elapsed() < bound,
            "round {round} took {:?}",
            started.elapsed()
        );
    }
    let again: Vec<Value> = first
        .iter()
        .map(|m| json!({"value": m["value"].as_str().unwrap().to_uppercase()}))
        .collect();
    let started = Instant::now();
    let response = evil
        .patch(
            &path,
            &patch(json!([
                {"op": "Replace", "path": "displayName", "value": "bigger"},
                {"op": "Add", "path": "members", "value": again}
            ])),
        )
        .await;
    assert!(matches!(response.status, 200 | 204), "{:?}", response.body);
    assert!(
        started.elapsed() < bound,
        "the general PATCH took {:?}",
        started.elapsed()
    );
    let read = evil.get(&path).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["displayName"], "bigger");
    assert_eq!(
        read.body["members"].as_array().map(Vec::len),
        Some(5 * MAX_MEMBERS_PER_REQUEST)
    );
    env.assert_other_tenant_unaffected().await;
}
