//! Hostile SCIM values: control characters, oversize values and counts, events past NATS's
//! max_payload, case folding. Each test sends its values as tenant `evil`, asserts the SCIM
//! refusal and that nothing was appended (the stream's head did not move), and ends with
//! tenant `test` unaffected.

use rollcall_it::{encode, Scim, TestEnv};
use rollcall_store::tenant::Scope;
use serde_json::{json, Value};

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn user(user_name: &str) -> Value {
    json!({"schemas": [USER_SCHEMA], "userName": user_name})
}

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

/// Asserts that `response` is a SCIM error with `status` and `scim_type` (none when empty)
/// whose detail names `attribute`, and that the stream's head is still `head`: nothing was
/// appended.
async fn refused(
    env: &TestEnv,
    head: u64,
    what: &str,
    response: &rollcall_it::Response,
    status: u16,
    scim_type: &str,
    attribute: &str,
) {
    assert_eq!(response.status, status, "{what}: {:?}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("application/scim+json"),
        "{what}"
    );
    assert_eq!(response.body["status"], status.to_string(), "{what}");
    if scim_type.is_empty() {
        assert!(
            response.body.get("scimType").is_none(),
            "{what}: {:?}",
            response.body
        );
    } else {
        assert_eq!(
            response.body["scimType"], scim_type,
            "{what}: {:?}",
            response.body
        );
    }
    let detail = response.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(attribute), "{what}: {detail}");
    assert_eq!(env.head().await, head, "{what}: something was appended");
}

async fn lookup(scim: &Scim, resource: &str, filter: &str) -> Vec<String> {
    let response = scim
        .get(&format!("/{resource}?filter={}", encode(filter)))
        .await;
    assert_eq!(response.status, 200, "{filter}: {:?}", response.body);
    response.ids()
}

#[tokio::test]
async fn nul_in_a_user_name_is_refused_on_post_and_patch() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    let head = env.head().await;
    let response = evil.post("/Users", &user("ada\u{0}@x.test")).await;
    refused(
        &env,
        head,
        "POST",
        &response,
        400,
        "invalidValue",
        "userName",
    )
    .await;
    let id = evil.create_user(&user("ada@x.test")).await;
    let path = format!("/Users/{id}");
    let head = env.head().await;
    let response = evil
        .patch(
            &path,
            &patch(json!([{"op": "Replace", "path": "userName", "value": "ada\u{0}"}])),
        )
        .await;
    refused(
        &env,
        head,
        "PATCH with a path",
        &response,
        400,
        "invalidValue",
        "userName",
    )
    .await;
    let head = env.head().await;
    let response = evil
        .patch(
            &path,
            &patch(json!([{"op": "replace", "value": {"userName": "\u{0}"}}])),
        )
        .await;
    refused(
        &env,
        head,
        "path-less PATCH",
        &response,
        400,
        "invalidValue",
        "userName",
    )
    .await;
    let head = env.head().await;
    let response = evil.put(&path, &user("ada\u{0}@x.test")).await;
    refused(
        &env,
        head,
        "PUT",
        &response,
        400,
        "invalidValue",
        "userName",
    )
    .await;
    assert_eq!(evil.get(&path).await.body["userName"], "ada@x.test");
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn nul_nested_in_an_extension_attribute_or_an_email_is_refused() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    let mut body = user("ada@x.test");
    body[ENTERPRISE] = json!({"department": "R&D\u{0}"});
    let head = env.head().await;
    let response = evil.post("/Users", &body).await;
    refused(
        &env,
        head,
        "extension in POST",
        &response,
        400,
        "invalidValue",
        "department",
    )
    .await;
    let mut body = user("ada@x.test");
    body["emails"] = json!([{"type": "work", "value": "ada\u{0}@x.test"}]);
    let head = env.head().await;
    let response = evil.post("/Users", &body).await;
    refused(
        &env,
        head,
        "email in POST",
        &response,
        400,
        "invalidValue",
        "emails.value",
    )
    .await;
    let id = evil.create_user(&user("ada@x.test")).await;
    let path = format!("/Users/{id}");
    for (what, operations, attribute) in [
        (
            "email through a type filter",
            json!([{"op": "Add", "path": "emails[type eq \"work\"].value", "value": "a\u{0}@x.test"}]),
            "emails.value",
        ),
        (
            "URN-qualified extension path",
            json!([{"op": "Add", "path": format!("{ENTERPRISE}:department"), "value": "\u{0}"}]),
            "department",
        ),
        (
            "manager id",
            json!([{"op": "Add", "path": format!("{ENTERPRISE}:manager"), "value": "27\u{0}1"}]),
            "manager.value",
        ),
        (
            "nested in a complex value",
            json!([{"op": "replace", "value": {"name.givenName": "A\u{0}"}}]),
            "name.givenName",
        ),
    ] {
        let head = env.head().await;
        let response = evil.patch(&path, &patch(operations)).await;
        refused(&env, head, what, &response, 400, "invalidValue", attribute).await;
    }
    let group =
        json!({"schemas": [GROUP_SCHEMA], "displayName": "g", "members": [{"value": "a\u{0}"}]});
    let head = env.head().await;
    let response = evil.post("/Groups", &group).await;
    refused(
        &env,
        head,
        "member value",
        &response,
        400,
        "invalidValue",
        "members.value",
    )
    .await;
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn other_control_characters_are_refused_and_line_breaks_only_in_a_formatted_address() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    for (what, value) in [
        ("ESC", "A\u{1b}[31mda"),
        ("DEL", "Ada\u{7f}"),
        ("C1 NEL", "Ada\u{85}"),
        ("TAB", "A\tda"),
        ("CR LF", "Ada\r\nX-Auth-Request-Groups: admins"),
    ] {
        let mut body = user("ada@x.test");
        body["displayName"] = json!(value);
        let head = env.head().await;
        let response = evil.post("/Users", &body).await;
        refused(
            &env,
            head,
            what,
            &response,
            400,
            "invalidValue",
            "displayName",
        )
        .await;
    }
    let group = json!({"schemas": [GROUP_SCHEMA], "displayName": "Eng\r\nineering"});
    let head = env.head().await;
    let response = evil.post("/Groups", &group).await;
    refused(
        &env,
        head,
        "group displayName",
        &response,
        400,
        "invalidValue",
        "displayName",
    )
    .await;
    let mut body = user("ada@x.test");
    body["addresses"] = json!([{"type": "work", "formatted": "1 Main St\r\nSpringfield\tUSA"}]);
    let created = evil.post("/Users", &body).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(
        created.body["addresses"][0]["formatted"],
        "1 Main St\r\nSpringfield\tUSA"
    );
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_six_thousand_character_user_name_is_refused_before_it_reaches_an_index() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    // Random text does not compress: in an index it takes all its bytes.
    let random: String = (0..6_000)
        .map(|_| char::from(b'a' + (uuid::Uuid::new_v4().as_bytes()[0] % 26)))
        .collect();
    let head = env.head().await;
    let response = evil.post("/Users", &user(&random)).await;
    refused(
        &env,
        head,
        "userName",
        &response,
        400,
        "invalidValue",
        "at most 256",
    )
    .await;
    let mut body = user("ada@x.test");
    body["externalId"] = json!(random);
    let head = env.head().await;
    let response = evil.post("/Users", &body).await;
    refused(
        &env,
        head,
        "externalId",
        &response,
        400,
        "invalidValue",
        "externalId",
    )
    .await;
    let group = json!({"schemas": [GROUP_SCHEMA], "displayName": random});
    let head = env.head().await;
    let response = evil.post("/Groups", &group).await;
    refused(
        &env,
        head,
        "group displayName",
        &response,
        400,
        "invalidValue",
        "displayName",
    )
    .await;
    let id = evil.create_user(&user("ada@x.test")).await;
    let head = env.head().await;
    let response = evil
        .patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "Replace", "path": "userName", "value": random}])),
        )
        .await;
    refused(
        &env,
        head,
        "rename",
        &response,
        400,
        "invalidValue",
        "userName",
    )
    .await;
    // The longest name the limits allow is stored and found.
    let longest = "ß".repeat(256);
    evil.create_user(&user(&longest)).await;
    let found = lookup(
        &evil,
        "Users",
        &format!("userName eq \"{}\"", "SS".repeat(256)),
    )
    .await;
    assert_eq!(found.len(), 1);
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn too_many_emails_are_refused() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    let emails: Vec<Value> = (0..21)
        .map(|i| json!({"type": format!("t{i}"), "value": format!("a{i}@x.test")}))
        .collect();
    let mut body = user("ada@x.test");
    body["emails"] = json!(emails);
    let head = env.head().await;
    let response = evil.post("/Users", &body).await;
    refused(
        &env,
        head,
        "POST",
        &response,
        400,
        "invalidValue",
        "emails has 21 values",
    )
    .await;
    let id = evil.create_user(&user("ada@x.test")).await;
    let head = env.head().await;
    let response = evil
        .patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "Add", "path": "emails", "value": emails}])),
        )
        .await;
    refused(
        &env,
        head,
        "PATCH",
        &response,
        400,
        "invalidValue",
        "emails",
    )
    .await;
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn too_many_members_in_one_request_are_refused() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    let members: Vec<Value> = (0..1_001)
        .map(|_| json!({"value": uuid::Uuid::new_v4().to_string()}))
        .collect();
    let group = json!({"schemas": [GROUP_SCHEMA], "displayName": "g", "members": members});
    let head = env.head().await;
    let response = evil.post("/Groups", &group).await;
    refused(
        &env,
        head,
        "POST",
        &response,
        400,
        "invalidValue",
        "1001 members",
    )
    .await;
    let id = evil
        .create_group(&json!({"schemas": [GROUP_SCHEMA], "displayName": "g"}))
        .await;
    let path = format!("/Groups/{id}");
    let head = env.head().await;
    let response = evil
        .patch(
            &path,
            &patch(json!([{"op": "Add", "path": "members", "value": members}])),
        )
        .await;
    refused(
        &env,
        head,
        "PATCH add",
        &response,
        400,
        "invalidValue",
        "1001 members",
    )
    .await;
    let head = env.head().await;
    let response = evil
        .patch(
            &path,
            &patch(json!([
                {"op": "Add", "path": "members", "value": members[..500]},
                {"op": "Remove", "path": "members", "value": members[500..]}
            ])),
        )
        .await;
    refused(
        &env,
        head,
        "PATCH add and remove",
        &response,
        400,
        "invalidValue",
        "1001 members",
    )
    .await;
    let body = json!({"schemas": [GROUP_SCHEMA], "displayName": "g", "members": members});
    let head = env.head().await;
    let response = evil.put(&path, &body).await;
    refused(
        &env,
        head,
        "PUT",
        &response,
        400,
        "invalidValue",
        "1001 members",
    )
    .await;
    // A thousand is fine.
    let added = evil
        .patch(
            &path,
            &patch(json!([{"op": "Add", "path": "members", "value": members[..1_000]}])),
        )
        .await;
    assert_eq!(added.status, 204, "{:?}", added.body);
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_body_over_the_size_limit_is_refused_with_a_scim_413() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    let mut body = user("ada@x.test");
    body["title"] = json!("x".repeat(1_100_000));
    let head = env.head().await;
    let response = evil.post("/Users", &body).await;
    refused(&env, head, "POST", &response, 413, "", "larger than").await;
    env.assert_other_tenant_unaffected().await;
}

/// A SCIM API of its own on the test's stream and database, appending events of at most
/// `max_event_bytes`; returns its base URL and a SCIM token of tenant `evil`.
async fn scim_api_with_max_event_bytes(
    env: &TestEnv,
    max_event_bytes: usize,
) -> (String, String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/scim/v2", listener.local_addr().unwrap());
    let log = env.log.clone().with_max_event_bytes(max_event_bytes);
    let state = rollcall_scim_api::AppState::new(
        rollcall_scim_api::Config::default(),
        env.client.clone(),
        log,
        env.store.clone(),
    )
    .await
    .unwrap();
    let server = tokio::spawn(async move {
        let _ = rollcall_scim_api::serve(listener, state, std::future::pending()).await;
    });
    let token = env
        .store
        .create_token("evil", Scope::Scim, None)
        .await
        .unwrap()
        .token;
    (base, token, server)
}

#[tokio::test]
async fn an_event_larger_than_the_stream_takes_is_refused_with_413_before_anything_is_appended() {
    let env = TestEnv::start().await;
    // The stream takes what the server's max_payload allows, read from the server.
    assert_eq!(env.log.max_payload(), env.client.server_info().max_payload);
    assert_eq!(
        env.log.max_event_bytes(),
        rollcall_scim::limits::max_event_bytes(env.client.server_info().max_payload)
    );
    env.tenant("evil").await;
    // The limits keep every document's events below the default max_payload (a unit test of
    // scim-api's mapping shows it), so a lower cap stands in for a server with a smaller one.
    let (base, token, server) = scim_api_with_max_event_bytes(&env, 16 * 1024).await;
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: String, body: Value| {
        let request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(body.to_string());
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.json().await.unwrap_or(Value::Null);
            rollcall_it::Response {
                status,
                headers,
                body,
            }
        }
    };
    // 24 KB of roles: within every limit and far under the body limit, over the cap.
    let roles: Vec<Value> = (0..24)
        .map(|i| json!({"value": format!("{i}{}", "r".repeat(1_000))}))
        .collect();
    let mut body = user("ada@x.test");
    body["roles"] = json!(roles);
    let head = env.head().await;
    let response = send(reqwest::Method::POST, "/Users".into(), body.clone()).await;
    refused(
        &env,
        head,
        "POST",
        &response,
        413,
        "",
        "event stream takes at most 16384",
    )
    .await;
    // The claim taken for the refused create was given back: the name can be used.
    let created = send(reqwest::Method::POST, "/Users".into(), user("ada@x.test")).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let head = env.head().await;
    let response = send(
        reqwest::Method::PATCH,
        format!("/Users/{id}"),
        patch(json!([{"op": "Add", "path": "roles", "value": roles}])),
    )
    .await;
    refused(&env, head, "PATCH", &response, 413, "", "bytes").await;
    server.abort();
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_turkish_dotted_capital_i_is_found_by_entras_lookup_and_created_once() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    let id = evil.create_user(&user("İlker@x.test")).await;
    for filter in [
        r#"userName eq "İlker@x.test""#,
        r#"userName eq "İLKER@X.TEST""#,
        "userName eq \"i\u{307}lker@x.test\"",
    ] {
        assert_eq!(
            lookup(&evil, "Users", filter).await,
            vec![id.clone()],
            "{filter}"
        );
    }
    // Another letter is another name.
    assert!(lookup(&evil, "Users", r#"userName eq "ilker@x.test""#)
        .await
        .is_empty());
    assert!(lookup(&evil, "Users", r#"userName eq "ılker@x.test""#)
        .await
        .is_empty());
    for again in ["İlker@x.test", "İLKER@X.TEST"] {
        let head = env.head().await;
        let response = evil.post("/Users", &user(again)).await;
        refused(
            &env,
            head,
            again,
            &response,
            409,
            "uniqueness",
            "exists already",
        )
        .await;
    }
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn german_sharp_s_and_double_s_are_one_name_to_the_claim_and_the_lookup() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    let id = evil.create_user(&user("straße@x.test")).await;
    let head = env.head().await;
    let response = evil.post("/Users", &user("STRASSE@x.test")).await;
    refused(
        &env,
        head,
        "STRASSE",
        &response,
        409,
        "uniqueness",
        "exists already",
    )
    .await;
    for name in [
        "straße@x.test",
        "STRASSE@x.test",
        "STRAẞE@X.TEST",
        "strasse@x.test",
    ] {
        let found = lookup(&evil, "Users", &format!("userName eq \"{name}\"")).await;
        assert_eq!(found, vec![id.clone()], "{name}");
    }
    // Filters no index answers fold the same way.
    let found = lookup(&evil, "Users", r#"userName sw "STRASS""#).await;
    assert_eq!(found, vec![id.clone()]);
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn greek_sigmas_and_title_case_letters_fold_alike_in_claims_and_lookups() {
    let env = TestEnv::start().await;
    let evil = env.tenant("evil").await;
    let group = evil
        .create_group(&json!({"schemas": [GROUP_SCHEMA], "displayName": "ΟΔΟΣ"}))
        .await;
    for name in ["οδος", "οδοσ", "ΟΔΟΣ"] {
        let found = lookup(&evil, "Groups", &format!("displayName eq \"{name}\"")).await;
        assert_eq!(found, vec![group.clone()], "{name}");
    }
    let head = env.head().await;
    let response = evil
        .post(
            "/Groups",
            &json!({"schemas": [GROUP_SCHEMA], "displayName": "οδος"}),
        )
        .await;
    refused(
        &env,
        head,
        "final sigma",
        &response,
        409,
        "uniqueness",
        "exists already",
    )
    .await;
    // ǅ (title case) with Ǆ and ǆ, in an externalId.
    let mut body = user("dzemal@x.test");
    body["externalId"] = json!("\u{1C5}emal");
    let id = evil.create_user(&body).await;
    for external_id in ["\u{1C4}EMAL", "\u{1C6}emal"] {
        let found = lookup(&evil, "Users", &format!("externalId eq \"{external_id}\"")).await;
        assert_eq!(found, vec![id.clone()], "{external_id}");
    }
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn rows_and_claims_keyed_the_old_way_are_found_and_held_the_new_way_after_the_migration_step()
{
    let mut env = TestEnv::start().await;
    let scim = env.scim();
    // Lookups from the read model's keys (the SCIM APIs' in-memory index folds names itself).
    let database = env
        .replica_with(rollcall_scim_api::Config {
            lookup_index: false,
            ..rollcall_it::scim_config()
        })
        .await;
    let user_id = scim.create_user(&user("straße@x.test")).await;
    // Names whose old keys differ from their folds whatever the database's locale.
    let mut body = user("ilker@x.test");
    body["externalId"] = json!("İD-7");
    let other_id = scim.create_user(&body).await;
    let group_id = scim
        .create_group(&json!({"schemas": [GROUP_SCHEMA], "displayName": "Straßenbau"}))
        .await;
    // What an installation holds from before: keys made by PostgreSQL's lower(), claims keyed
    // by str::to_lowercase(), and no folding recorded.
    for statement in [
        "UPDATE scim_user SET user_name_lower = lower(user_name), external_id_lower = lower(external_id)",
        "UPDATE scim_group SET display_name_lower = lower(display_name), external_id_lower = lower(external_id)",
        "DELETE FROM lookup_key_folding",
    ] {
        sqlx::query(statement).execute(env.store.pool()).await.unwrap();
    }
    let claims = async_nats::jetstream::new(env.client.clone())
        .get_key_value(env.namespace.claims_bucket())
        .await
        .unwrap();
    for (kind, name, id) in [
        ("userName", "straße@x.test", &user_id),
        ("displayName", "Straßenbau", &group_id),
    ] {
        claims
            .delete(rollcall_eventlog::claims::key(&env.tenant, kind, name))
            .await
            .unwrap();
        claims
            .put(
                rollcall_eventlog::claims::legacy_key(&env.tenant, kind, name),
                id.clone().into(),
            )
            .await
            .unwrap();
    }
    // Before the migration step, lookups in the read model miss them.
    assert!(
        lookup(&database, "Users", r#"userName eq "STRASSE@x.test""#)
            .await
            .is_empty()
    );
    assert!(lookup(&database, "Users", r#"externalId eq "İd-7""#)
        .await
        .is_empty());
    assert!(
        lookup(&database, "Groups", r#"displayName eq "STRASSENBAU""#)
            .await
            .is_empty()
    );

    // The migration step: the projector keys the rows again when it starts, and a SCIM API
    // claims the folded keys of existing names when it starts.
    env.kill_projector().await;
    env.start_projector();
    let replica = env.replica().await;
    for (resource, filter, id) in [
        ("Users", r#"userName eq "STRASSE@x.test""#, &user_id),
        ("Users", r#"userName eq "straße@x.test""#, &user_id),
        ("Users", r#"externalId eq "İd-7""#, &other_id),
        ("Groups", r#"displayName eq "STRASSENBAU""#, &group_id),
    ] {
        let expected = vec![id.clone()];
        rollcall_it::eventually(filter, std::time::Duration::from_secs(5), || {
            let (database, expected) = (database.clone(), expected.clone());
            async move { lookup(&database, resource, filter).await == expected }
        })
        .await;
        assert_eq!(lookup(&scim, resource, filter).await, expected, "{filter}");
    }
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM lookup_key_folding")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(recorded, 1);
    for client in [&replica, &scim] {
        let head = env.head().await;
        let response = client.post("/Users", &user("STRASSE@x.test")).await;
        refused(
            &env,
            head,
            "STRASSE",
            &response,
            409,
            "uniqueness",
            "exists already",
        )
        .await;
        let head = env.head().await;
        let response = client
            .post(
                "/Groups",
                &json!({"schemas": [GROUP_SCHEMA], "displayName": "STRASSENBAU"}),
            )
            .await;
        refused(
            &env,
            head,
            "STRASSENBAU",
            &response,
            409,
            "uniqueness",
            "exists already",
        )
        .await;
    }
    // Deleting the user gives back its claims under both keys.
    assert_eq!(scim.delete(&format!("/Users/{user_id}")).await.status, 204);
    for key in [
        rollcall_eventlog::claims::key(&env.tenant, "userName", "straße@x.test"),
        rollcall_eventlog::claims::legacy_key(&env.tenant, "userName", "straße@x.test"),
    ] {
        assert!(claims.get(&key).await.unwrap().is_none(), "{key}");
    }
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn the_audit_lookups_fold_case_as_the_scim_lookups_do() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let mut body = user("straße@x.test");
    body["externalId"] = json!("İD-7");
    let id = scim.create_user(&body).await;
    let renamed = scim.create_user(&user("ada@x.test")).await;
    let rename = patch(json!([{"op": "Replace", "path": "userName", "value": "ΟΔΟΣ@x.test"}]));
    assert_eq!(
        scim.patch(&format!("/Users/{renamed}"), &rename)
            .await
            .status,
        200
    );
    let group = scim
        .create_group(&json!({"schemas": [GROUP_SCHEMA], "displayName": "Straßenbau"}))
        .await;
    for (query, expected) in [
        (
            format!("/audit/v1/users?userName={}", encode("STRASSE@X.TEST")),
            json!({"users": [id]}),
        ),
        (
            format!("/audit/v1/users?externalId={}", encode("i\u{307}d-7")),
            json!({"users": [id]}),
        ),
        (
            format!("/audit/v1/users?userName={}", encode("οδος@x.test")),
            json!({"users": [renamed]}),
        ),
        (
            format!("/audit/v1/users?userName={}", encode("ilker@x.test")),
            json!({"users": []}),
        ),
        (
            format!("/audit/v1/groups?displayName={}", encode("STRASSENBAU")),
            json!({"groups": [group]}),
        ),
    ] {
        let (status, found) = env.audit(&query).await;
        assert_eq!((status, found), (200, expected), "{query}");
    }
    env.assert_other_tenant_unaffected().await;
}
