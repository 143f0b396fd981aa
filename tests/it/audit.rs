//! Audit: tamper evidence, history, as-of state, membership intervals, exports, the SCIM request
//! log, the OpenAPI document and the auditors' page.

use rollcall_audit_api::checkpoint;
use rollcall_audit_api::verify::verify;
use rollcall_it::TestEnv;
use serde_json::{json, Value};

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

async fn some_history(env: &TestEnv) -> Vec<String> {
    let scim = env.scim();
    let mut users = Vec::new();
    for n in 0..4 {
        users.push(scim.create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("h{n}@x"), "title": "t"})).await);
    }
    scim.patch(
        &format!("/Users/{}", users[0]),
        &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
    )
    .await;
    scim.patch(
        &format!("/Users/{}", users[1]),
        &patch(json!([{"op": "Replace", "path": "title", "value": "Dr"}])),
    )
    .await;
    let other = env.tenant("other").await;
    other
        .create_user(
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "o@x"}),
        )
        .await;
    users
}

#[tokio::test]
async fn verify_finds_exactly_the_row_altered_with_plain_sql() {
    let env = TestEnv::start().await;
    some_history(&env).await;
    let clean = verify(&env.log, &env.store, None, None, |_, _| {})
        .await
        .unwrap();
    assert_eq!(clean.mismatch, None);
    assert_eq!(clean.events, env.head().await);
    assert_eq!(clean.heads.len(), 2, "one chain per tenant");
    // An insider edits one record: the title change becomes something else.
    let altered: i64 = sqlx::query_scalar(
        "UPDATE audit_event SET payload = jsonb_set(payload, '{changes,0,after}', '\"Janitor\"')
         WHERE event_type = 'user.attributes_changed' RETURNING sequence",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    let found = verify(&env.log, &env.store, None, None, |_, _| {})
        .await
        .unwrap();
    let mismatch = found.mismatch.expect("the alteration is found");
    assert_eq!(mismatch.sequence, altered as u64);
    assert!(mismatch.reason.contains("altered"), "{}", mismatch.reason);
    // Rewriting the hash too does not hide it: the record now differs from the stream.
    sqlx::query("UPDATE audit_event SET hash = sha256(prev_hash || convert_to('x', 'UTF8')) WHERE sequence = $1")
        .bind(altered)
        .execute(env.store.pool())
        .await
        .unwrap();
    let found = verify(&env.log, &env.store, Some("test"), None, |_, _| {})
        .await
        .unwrap()
        .mismatch
        .unwrap();
    assert_eq!(found.sequence, altered as u64);
    // A deleted row is missing.
    let last: i64 = sqlx::query_scalar("DELETE FROM audit_event WHERE sequence = (SELECT max(sequence) FROM audit_event WHERE tenant = 'other') RETURNING sequence")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    let found = verify(&env.log, &env.store, Some("other"), None, |_, _| {})
        .await
        .unwrap()
        .mismatch
        .unwrap();
    assert_eq!(
        (found.sequence, found.reason.as_str()),
        (last as u64, "missing from the audit table")
    );
}

#[tokio::test]
async fn a_signed_checkpoint_vouches_for_the_history_up_to_it() {
    let env = TestEnv::start().await;
    some_history(&env).await;
    let (seed, public) = checkpoint::generate();
    let key = checkpoint::signing_key(&seed).unwrap();
    let (sequence, hash) = env.store.chain_head("test").await.unwrap().unwrap();
    let signed = checkpoint::sign(&key, "test", sequence as u64, &hash);
    signed.check_signature(Some(&public)).unwrap();
    // More history after the checkpoint is fine.
    env.scim().create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "later@x"})).await;
    let ok = verify(&env.log, &env.store, Some("test"), Some(&signed), |_, _| {})
        .await
        .unwrap();
    assert_eq!(ok.mismatch, None);
    // A checkpoint that does not match this history is reported.
    let foreign = checkpoint::sign(&key, "test", sequence as u64, &[9; 32]);
    let found = verify(
        &env.log,
        &env.store,
        Some("test"),
        Some(&foreign),
        |_, _| {},
    )
    .await
    .unwrap()
    .mismatch
    .unwrap();
    assert_eq!(found.sequence, sequence as u64);
    assert!(found.reason.contains("signed checkpoint"));
}

fn user_body(name: &str) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name, "title": "Engineer"})
}

#[tokio::test]
async fn history_as_of_and_intervals_answer_the_auditors_questions() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let ada = scim.create_user(&user_body("ada@example.com")).await;
    let bob = scim.create_user(&user_body("bob@example.com")).await;
    scim.patch(
        &format!("/Users/{ada}"),
        &patch(json!([{"op": "Replace", "path": "title", "value": "Director"}])),
    )
    .await;
    scim.patch(
        &format!("/Users/{ada}"),
        &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
    )
    .await;

    // Who is ada, whatever her name is now.
    let (status, found) = env
        .audit("/audit/v1/users?userName=ADA%40example.com")
        .await;
    assert_eq!((status, found["users"].clone()), (200, json!([ada])));
    let (_, history) = env.audit(&format!("/audit/v1/users/{ada}/history")).await;
    let events = history["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "user.provisioned",
            "user.attributes_changed",
            "user.deactivated"
        ]
    );
    assert_eq!(
        events[1]["payload"]["changes"],
        json!([{"path": "title", "before": "Engineer", "after": "Director"}])
    );
    let token_id = env.token.split('_').nth(1).unwrap();
    assert_eq!(
        events[2]["actor"],
        json!({"kind": "scim_token", "token_id": token_id})
    );
    assert!(events.iter().all(|e| e["request_id"].is_string()
        && e["trace_id"].is_string()
        && e["hash"].as_str().unwrap().len() == 64));

    // What did ada look like when she was provisioned, and now?
    let provisioned_at = events[0]["occurred_at"].as_str().unwrap();
    let (_, then) = env
        .audit(&format!("/audit/v1/users/{ada}?at={provisioned_at}"))
        .await;
    assert_eq!(
        (then["title"].clone(), then.get("active").cloned()),
        (json!("Engineer"), None)
    );
    assert_eq!(then["meta"]["version"], "W/\"1\"");
    let (_, now) = env.audit(&format!("/audit/v1/users/{ada}")).await;
    assert_eq!(
        (now["title"].clone(), now["active"].clone()),
        (json!("Director"), json!(false))
    );
    let (status, before) = env
        .audit(&format!("/audit/v1/users/{ada}?at=2001-01-01T00:00:00Z"))
        .await;
    assert_eq!(status, 404);
    assert!(before["error"].as_str().unwrap().contains("did not exist"));
    assert_eq!(
        env.audit(&format!("/audit/v1/users/{ada}?at=yesterday"))
            .await
            .0,
        400
    );

    // Who was in Finance-Admins, from when to when, added and removed by which requests?
    let group = scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Finance-Admins"})).await;
    let add = scim.patch(&format!("/Groups/{group}"), &patch(json!([{"op": "Add", "path": "members", "value": [{"value": ada}, {"value": bob}]}]))).await;
    let remove = scim
        .patch(
            &format!("/Groups/{group}"),
            &patch(json!([{"op": "Remove", "path": "members", "value": [{"value": ada}]}])),
        )
        .await;
    let (_, intervals) = env
        .audit(&format!(
            "/audit/v1/groups/{group}/intervals?from=2000-01-01T00:00:00Z"
        ))
        .await;
    let members = intervals["members"].as_array().unwrap();
    let of = |id: &str| {
        members.iter().find(|m| m["member"] == id).unwrap()["intervals"]
            .as_array()
            .unwrap()
            .clone()
    };
    let ada_intervals = of(&ada);
    assert_eq!(ada_intervals.len(), 1);
    assert_eq!(
        ada_intervals[0]["added_by"]["request_id"].as_str(),
        add.header("x-request-id")
    );
    assert_eq!(
        ada_intervals[0]["removed_by"]["request_id"].as_str(),
        remove.header("x-request-id")
    );
    assert!(ada_intervals[0]["to"].is_string());
    let bob_intervals = of(&bob);
    assert!(
        bob_intervals[0]["to"].is_null() && bob_intervals[0]["removed_by"].is_null(),
        "bob is still a member"
    );
    let added_at = ada_intervals[0]["from"].as_str().unwrap();
    let (_, then) = env
        .audit(&format!("/audit/v1/groups/{group}/members?at={added_at}"))
        .await;
    assert_eq!(then["members"].as_array().unwrap().len(), 2);
    let (_, now) = env
        .audit(&format!("/audit/v1/groups/{group}/members"))
        .await;
    assert_eq!(now["members"], json!([{"value": bob, "type": "User"}]));
    // Ada's own timeline shows her joining and leaving the group, by name.
    let (_, ada_history) = env.audit(&format!("/audit/v1/users/{ada}/history")).await;
    let memberships: Vec<(String, String)> = ada_history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["group"].is_object())
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["group"]["display_name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        memberships,
        [
            (
                "group.members_added".to_owned(),
                "Finance-Admins".to_owned()
            ),
            (
                "group.members_removed".to_owned(),
                "Finance-Admins".to_owned()
            )
        ]
    );
    let (_, by_name) = env
        .audit("/audit/v1/groups?displayName=finance-admins")
        .await;
    assert_eq!(by_name["groups"], json!([group]));

    // Search, page by page.
    let (_, deactivations) = env.audit("/audit/v1/events?type=user.deactivated").await;
    assert_eq!(deactivations["events"].as_array().unwrap().len(), 1);
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = env
            .audit(&format!("/audit/v1/events?limit=2{cursor}"))
            .await;
        seen.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["sequence"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_i64() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len() as u64, env.head().await);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let (_, by_actor) = env
        .audit(&format!(
            "/audit/v1/events?actor={token_id}&aggregate={ada}"
        ))
        .await;
    assert_eq!(by_actor["events"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn audit_tokens_are_separate_and_see_only_their_tenant() {
    let env = TestEnv::start().await;
    let ada = env.scim().create_user(&user_body("ada@example.com")).await;
    let http = reqwest::Client::new();
    let path = format!("{}/audit/v1/users/{ada}/history", env.audit_base);
    assert_eq!(http.get(&path).send().await.unwrap().status(), 401);
    assert_eq!(
        http.get(&path)
            .bearer_auth(&env.token)
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "a SCIM token is not an audit token"
    );
    env.store.create_tenant("other").await.unwrap();
    let other = env
        .store
        .create_token("other", rollcall_store::tenant::Scope::Audit, None)
        .await
        .unwrap()
        .token;
    assert_eq!(
        http.get(&path)
            .bearer_auth(&other)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn the_scim_request_log_shows_what_the_client_sent_and_what_was_refused() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let refused = scim.post("/Users", &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "displayName": "no userName", "password": "hunter2"})).await;
    assert_eq!(refused.status, 400);
    let created = scim.post("/Users", &user_body("logged@example.com")).await;
    scim.get("/Users?filter=userName%20eq%20%22logged%40example.com%22")
        .await;
    let env_store = env.store.clone();
    rollcall_it::eventually(
        "the log is written",
        std::time::Duration::from_secs(5),
        || {
            let store = env_store.clone();
            async move {
                store
                    .requests(
                        "test",
                        &rollcall_store::request_log::RequestQuery {
                            limit: 10,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap()
                    .len()
                    >= 3
            }
        },
    )
    .await;
    let (_, bad) = env.audit("/audit/v1/scim-requests?status=400").await;
    let bad = &bad["requests"][0];
    assert_eq!(
        (
            bad["method"].as_str(),
            bad["path"].as_str(),
            bad["scim_type"].as_str()
        ),
        (Some("POST"), Some("/scim/v2/Users"), Some("invalidValue"))
    );
    assert!(bad["detail"].as_str().unwrap().contains("userName"));
    assert!(
        bad["body"].is_null(),
        "bodies are logged only when an operator opts in"
    );
    assert_eq!(bad["request_id"].as_str(), refused.header("x-request-id"));
    let (_, all) = env.audit("/audit/v1/scim-requests").await;
    let all = all["requests"].as_array().unwrap();
    let lookup = all.iter().find(|r| r["method"] == "GET").unwrap();
    assert_eq!(lookup["filter"], "userName eq \"logged@example.com\"");
    // The accepted request links to the event it produced.
    let id = created.body["id"].as_str().unwrap();
    let (_, history) = env.audit(&format!("/audit/v1/users/{id}/history")).await;
    let post = all.iter().find(|r| r["status"] == 201).unwrap();
    assert_eq!(history["events"][0]["request_id"], post["request_id"]);
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let env = TestEnv::start().await;
    let (status, document) = env.audit("/audit/v1/openapi.json").await;
    assert_eq!(status, 200);
    let paths = document["paths"].as_object().unwrap();
    for route in [
        "/audit/v1/users",
        "/audit/v1/users/{id}",
        "/audit/v1/users/{id}/history",
        "/audit/v1/groups",
        "/audit/v1/groups/{id}",
        "/audit/v1/groups/{id}/history",
        "/audit/v1/groups/{id}/members",
        "/audit/v1/groups/{id}/intervals",
        "/audit/v1/events",
        "/audit/v1/export",
        "/audit/v1/scim-requests",
        "/audit/v1/checkpoint",
        "/audit/v1/openapi.json",
    ] {
        assert!(
            paths.contains_key(route),
            "{route} is missing from the OpenAPI document"
        );
    }
    // And every documented path is served (an unauthenticated call reaches a handler).
    let http = reqwest::Client::new();
    for path in paths.keys() {
        let url = format!(
            "{}{}",
            env.audit_base,
            path.replace("{id}", &uuid::Uuid::nil().to_string())
        );
        let status = http.get(&url).send().await.unwrap().status().as_u16();
        assert!(status == 401 || status == 200, "{path} answered {status}");
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Set in the process [`an_export_of_200000_events_streams_in_flat_memory`] starts.
const EXPORT_CHILD: &str = "ROLLCALL_TEST_EXPORT_CHILD";

#[tokio::test]
async fn an_export_of_200000_events_streams_in_flat_memory() {
    // Measured in a process of its own: the resident memory of this one grows with whatever
    // the tests running beside it allocate.
    let name = "audit::export_memory_child";
    let output = tokio::process::Command::from(rollcall_it::child_test(name))
        .env(EXPORT_CHILD, "1")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the measuring process did not run the test: {stdout}"
    );
}

/// The export measured by [`an_export_of_200000_events_streams_in_flat_memory`], in a process
/// of its own. Run any other way it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the process of the export memory test; it starts it"]
async fn export_memory_child() {
    if std::env::var(EXPORT_CHILD).is_err() {
        eprintln!("not started by the export memory test: nothing to do");
        return;
    }
    let env = TestEnv::start().await;
    // 200,000 audit records of about 1 KiB each, written directly: this test is about reading.
    sqlx::query(
        "INSERT INTO audit_event (sequence, event_id, tenant, aggregate_type, aggregate_id, version, event_type, schema_version,
                                  actor, request_id, trace_id, traceparent, occurred_at, payload, prev_hash, hash)
         SELECT 1000000 + n, gen_random_uuid(), 'test', 'user', gen_random_uuid(), 1, 'user.provisioned', 1,
                '{\"kind\": \"operator\", \"name\": \"bulk\"}', 'bulk-' || n, NULL, NULL, now(),
                jsonb_build_object('type', 'user.provisioned', 'active', true,
                                   'attributes', jsonb_build_object('userName', 'bulk' || n || '@example.com', 'padding', repeat('x', 900))),
                '\\x00', '\\x00'
         FROM generate_series(1, 200000) AS n",
    )
    .execute(env.store.pool())
    .await
    .unwrap();
    let baseline = rss_bytes();
    let response = reqwest::Client::new()
        .get(format!("{}/audit/v1/export?format=ndjson", env.audit_base))
        .bearer_auth(&env.audit_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut response = response;
    let (mut bytes, mut lines, mut peak) = (0u64, 0u64, baseline);
    while let Some(chunk) = response.chunk().await.unwrap() {
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        peak = peak.max(rss_bytes());
    }
    assert_eq!(lines, 200_000 + env.setup_events);
    assert!(bytes > 200_000_000, "the export is {bytes} bytes");
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 64 * 1024 * 1024,
        "memory grew by {} MiB while streaming {} MiB",
        growth >> 20,
        bytes >> 20
    );
    // CSV, with the payload quoted.
    let csv = reqwest::Client::new()
        .get(format!(
            "{}/audit/v1/export?format=csv&from=2000-01-01T00:00:00Z",
            env.audit_base
        ))
        .bearer_auth(&env.audit_token)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let mut csv = csv;
    let first = csv.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("sequence,event_id,tenant,"));
}

fn chromium() -> String {
    std::env::var("ROLLCALL_CHROMIUM").ok().or_else(|| {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().find(|p| std::path::Path::new(p).exists()).map(|p| p.to_string())
    })
    .expect("Chromium is needed for the page test: apt-get install chromium (scripts/test.sh installs it)")
}

#[tokio::test]
async fn the_auditors_page_shows_a_users_lifecycle_in_a_real_browser() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let id = scim.create_user(&user_body("timeline@example.com")).await;
    scim.patch(
        &format!("/Users/{id}"),
        &patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
    )
    .await;
    let enabled = scim
        .patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "True"}])),
        )
        .await;
    let group = scim.create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Payroll"})).await;
    let added = scim
        .patch(
            &format!("/Groups/{group}"),
            &patch(json!([{"op": "Add", "path": "members", "value": [{"value": id}]}])),
        )
        .await;
    assert_eq!(added.status, 204);
    let refused = scim
        .patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "Replace", "path": "active", "value": "Perhaps"}])),
        )
        .await;
    assert_eq!(refused.status, 400);
    let store = env.store.clone();
    rollcall_it::eventually(
        "the request log is written",
        std::time::Duration::from_secs(5),
        || {
            let store = store.clone();
            async move {
                store
                    .requests(
                        "test",
                        &rollcall_store::request_log::RequestQuery {
                            status: Some(400),
                            limit: 1,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap()
                    .len()
                    == 1
            }
        },
    )
    .await;
    let url = format!(
        "{}/audit/#by=userName&query=timeline%40example.com&token={}",
        env.audit_base, env.audit_token
    );
    let (dom, stderr) = dump_dom(&url).await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load the history: {stderr}"
    );
    let provisioned = dom
        .find("data-type=\"user.provisioned\"")
        .expect("provisioned entry");
    let disabled = dom
        .find("data-type=\"user.deactivated\"")
        .expect("disabled entry");
    let reenabled = dom
        .find("data-type=\"user.reactivated\"")
        .expect("re-enabled entry");
    assert!(
        provisioned < disabled && disabled < reenabled,
        "the timeline is in order"
    );
    assert!(dom.contains("Disabled (deprovisioned)") && dom.contains("Re-enabled"));
    assert!(
        dom.contains("Added to group Payroll"),
        "group membership is on the user's timeline: {}",
        &dom[dom.find("<ol id=\"timeline\"").unwrap_or(0)..]
    );
    assert!(
        dom.contains(enabled.header("x-request-id").unwrap()),
        "entries expand to their request id"
    );
    // The SCIM request log is on the page too, refusals included.
    assert!(
        dom.contains("data-status=\"400\""),
        "the refused request is listed"
    );
    assert!(dom.contains(refused.header("x-request-id").unwrap()));
}

/// The DOM headless Chromium has after loading `url` and running its scripts (within 15 s of
/// virtual time), and what it printed to standard error.
pub(crate) async fn dump_dom(url: &str) -> (String, String) {
    let profile = tempdir();
    let output = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=15000", "--dump-dom"])
        .arg(url)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rollcall-chromium-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_password_never_enters_an_event_and_the_audit_shows_only_that_it_was_set() {
    let env = TestEnv::start().await;
    let mut body = user_body("secret@example.com");
    body["password"] = json!("hunter2-correct-horse");
    let id = env.scim().create_user(&body).await;
    env.scim()
        .patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "replace", "path": "password", "value": "another-secret"}])),
        )
        .await;
    let (_, history) = env.audit(&format!("/audit/v1/users/{id}/history")).await;
    let text = history.to_string();
    assert!(!text.contains("hunter2") && !text.contains("another-secret"));
    let changes: Vec<Value> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["payload"]["changes"].get(0).cloned())
        .collect();
    assert_eq!(
        changes,
        vec![json!({"path": "password", "after": "[redacted]", "redacted": true}); 2]
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM scim_user WHERE attributes::text LIKE '%hunter2%' OR attributes ? 'password'")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0);
    assert!(env
        .scim()
        .get(&format!("/Users/{id}"))
        .await
        .body
        .get("password")
        .is_none());
}

#[tokio::test]
async fn the_request_log_keeps_requests_for_the_configured_period() {
    let env = TestEnv::start().await;
    let row = |days_ago: i64| rollcall_store::request_log::RequestRow {
        id: 0,
        at: time::OffsetDateTime::now_utc() - time::Duration::days(days_ago),
        tenant: Some("test".into()),
        token_id: None,
        method: "GET".into(),
        path: "/scim/v2/Users".into(),
        filter: None,
        status: 200,
        scim_type: None,
        detail: None,
        duration_ms: 1.0,
        request_id: format!("old-{days_ago}"),
        body: None,
    };
    env.store.log_requests(&[row(40), row(2)]).await.unwrap();
    let pruned = env
        .store
        .prune_requests(time::OffsetDateTime::now_utc() - time::Duration::days(30))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left = env
        .store
        .requests(
            "test",
            &rollcall_store::request_log::RequestQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        left.iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        ["old-2"]
    );
}
