//! Hostile clients of Rollcall's HTTP house: slow and stalled clients on every listener
//! (header, body and idle timeouts), audit exports left unread (the audit API's own bounded
//! pool and export slots), wrong ids and bad path values at the audit API (JSON errors), floods
//! of wrong tokens (the shared verifier's bounded cache), and what the SCIM request log keeps
//! of hostile requests (NUL, 100 KB filters, unauthenticated bodies). Each test asserts the
//! refusal and that another tenant is unaffected.

use std::time::{Duration, Instant};

use rollcall_http::{HttpConfig, Listener};
use rollcall_it::{eventually, TestEnv};
use rollcall_store::request_log::{RequestQuery, MAX_FILTER_BYTES, MAX_PATH_BYTES};
use rollcall_store::tenant::Scope;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Short timeouts, so that the tests see them act: the header timeout longest, so that an
/// idle keep-alive connection is seen closed by the idle timeout.
fn short_timeouts() -> HttpConfig {
    HttpConfig {
        header_timeout: Duration::from_secs(3),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
    }
}

/// A server of the test's own, stopped when dropped.
struct Server {
    address: String,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bind(http: HttpConfig) -> (Listener, String) {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = tcp.local_addr().unwrap().to_string();
    (Listener::new(tcp, http), address)
}

/// A SCIM API on the test's stream and database.
async fn scim_server(
    env: &TestEnv,
    config: rollcall_scim_api::Config,
    http: HttpConfig,
) -> (Server, rollcall_scim_api::AppState) {
    let (listener, address) = bind(http).await;
    let state = rollcall_scim_api::AppState::new(
        config,
        env.client.clone(),
        env.log.clone(),
        env.store.clone(),
    )
    .await
    .unwrap();
    let serving = state.clone();
    let task = tokio::spawn(async move {
        let _ = rollcall_scim_api::serve(listener, serving, std::future::pending()).await;
    });
    (Server { address, task }, state)
}

/// An audit API on the test's database.
async fn audit_server(
    env: &TestEnv,
    config: rollcall_audit_api::Config,
    http: HttpConfig,
) -> (Server, rollcall_audit_api::AuditState) {
    let (listener, address) = bind(http).await;
    let state = rollcall_audit_api::AuditState::new(&config, env.store.clone()).unwrap();
    let serving = state.clone();
    let task = tokio::spawn(async move {
        let _ = rollcall_audit_api::serve(listener, serving, std::future::pending()).await;
    });
    (Server { address, task }, state)
}

/// An access service on the test's stream.
async fn access_server(env: &TestEnv, http: HttpConfig) -> Server {
    let (listener, address) = bind(http).await;
    let access =
        rollcall_access::Access::new(rollcall_it::access_config(&env.policy_file)).unwrap();
    let (client, namespace) = (env.client.clone(), env.namespace.clone());
    let task = tokio::spawn(async move {
        let _ = rollcall_access::serve(listener, access, client, namespace, std::future::pending())
            .await;
    });
    Server { address, task }
}

/// Creates tenant `name`; returns a SCIM token and an audit token of it.
async fn tenant_tokens(env: &TestEnv, name: &str) -> (String, String) {
    env.store.create_tenant(name).await.unwrap();
    let scim = env
        .store
        .create_token(name, Scope::Scim, None)
        .await
        .unwrap();
    let audit = env
        .store
        .create_token(name, Scope::Audit, None)
        .await
        .unwrap();
    (scim.token, audit.token)
}

/// `count` audit records of about 1 KiB each for `tenant`, written directly (from stream
/// sequence `first` on): the tests are about reading them.
async fn audit_records(env: &TestEnv, tenant: &str, first: i64, count: i64) {
    sqlx::query(
        "INSERT INTO audit_event (sequence, event_id, tenant, aggregate_type, aggregate_id, version, event_type, schema_version,
                                  actor, request_id, trace_id, traceparent, occurred_at, payload, prev_hash, hash)
         SELECT $2 + n, gen_random_uuid(), $1, 'user', gen_random_uuid(), 1, 'user.provisioned', 1,
                '{\"kind\": \"operator\", \"name\": \"bulk\"}', 'bulk-' || n, NULL, NULL, now(),
                jsonb_build_object('type', 'user.provisioned', 'active', true,
                                   'attributes', jsonb_build_object('userName', 'bulk' || n || '@example.com', 'padding', repeat('x', 900))),
                '\\x00', '\\x00'
         FROM generate_series(1, $3) AS n",
    )
    .bind(tenant)
    .bind(first)
    .bind(count)
    .execute(env.store.pool())
    .await
    .unwrap();
}

/// GETs `url` with a bearer token: status, headers and body (JSON, or the text as a string).
async fn get(url: &str, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

/// Reads until `done` holds for what arrived; panics after `deadline`.
async fn read_until(
    stream: &mut (impl AsyncReadExt + Unpin),
    deadline: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let until = tokio::time::Instant::now() + deadline;
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    while !done(&received) {
        match tokio::time::timeout_at(until, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!(
                "nothing more within {deadline:?}; so far: {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    received
}

/// Reads until the server closes the connection (end of stream or reset); returns what arrived
/// and how long after `since` it closed. Panics if it is still open after `deadline`.
async fn read_until_closed(
    stream: &mut (impl AsyncReadExt + Unpin),
    since: Instant,
    deadline: Duration,
) -> (Vec<u8>, Duration) {
    let until = tokio::time::Instant::from_std(since + deadline);
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(until, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, since.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!(
                "the server kept the connection open for {deadline:?}; it sent {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}

fn head_complete(received: &[u8]) -> bool {
    received.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Sends `bytes` one at a time, `pause` apart, until done or the server closes.
fn trickle(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    bytes: Vec<u8>,
    pause: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(pause);
        for byte in bytes {
            pace.tick().await;
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    })
}

/// Opens a connection that sends a request head one byte every 200 ms (fast enough for the
/// idle timeout, too slow for the header timeout); returns when the server closed it, and what
/// it answered.
async fn slow_headers(address: &str, deadline: Duration) -> (String, Duration) {
    let stream = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    let (mut reader, writer) = stream.into_split();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(100)
    );
    let writing = trickle(writer, head.into_bytes(), Duration::from_millis(200));
    let (received, closed) = read_until_closed(&mut reader, started, deadline).await;
    writing.abort();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

#[tokio::test]
async fn headers_sent_slower_than_the_header_timeout_are_cut_off_on_every_listener() {
    let env = TestEnv::start().await;
    let http = short_timeouts();
    let (scim, _) = scim_server(&env, Default::default(), http.clone()).await;
    let (audit, _) = audit_server(&env, Default::default(), http.clone()).await;
    let access = access_server(&env, http.clone()).await;
    // Meanwhile, slow clients hold connections to the test's own SCIM API (default timeouts):
    // they cost the others nothing.
    let address = env
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let loris: Vec<_> = (0..50)
        .map(|_| {
            let address = address.clone();
            tokio::spawn(async move { slow_headers(&address, Duration::from_secs(30)).await })
        })
        .collect();
    let deadline = http.header_timeout + Duration::from_secs(3);
    let (checks, ()) = tokio::join!(
        async {
            tokio::join!(
                slow_headers(&scim.address, deadline),
                slow_headers(&audit.address, deadline),
                slow_headers(&access.address, deadline)
            )
        },
        env.assert_other_tenant_unaffected()
    );
    for (listener, (answer, closed)) in [
        ("scim", checks.0),
        ("audit", checks.1),
        ("access", checks.2),
    ] {
        // Bytes kept arriving, so it was the header timeout, not the idle one, that closed it.
        assert!(
            closed >= http.header_timeout - Duration::from_millis(300),
            "{listener} closed after {closed:?}"
        );
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{listener} answered {answer:?}"
        );
    }
    for task in loris {
        task.abort();
    }
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_body_sent_slower_than_the_body_timeout_is_refused_and_creates_nothing() {
    let env = TestEnv::start().await;
    let http = short_timeouts();
    let (scim_token, _) = tenant_tokens(&env, "evil").await;
    let (scim, _) = scim_server(&env, Default::default(), http.clone()).await;
    let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                      "userName": "slow-body@example.com"})
    .to_string();
    let head = format!(
        "POST /scim/v2/Users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {scim_token}\r\n\
         Content-Type: application/scim+json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = TcpStream::connect(&scim.address).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let writing = trickle(writer, body.into_bytes(), Duration::from_millis(200));
    let deadline = http.body_timeout + Duration::from_secs(3);
    let answer = read_until(&mut reader, deadline, head_complete).await;
    let answered = started.elapsed();
    writing.abort();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "answered {answer:?}");
    assert!(
        answered >= http.body_timeout - Duration::from_millis(300),
        "after {answered:?}"
    );
    // And the connection is not kept for more of that body.
    read_until_closed(&mut reader, started, deadline + http.idle_timeout * 2).await;
    let scim = env.scim().with_token(Some(&scim_token));
    let found = scim
        .get(&format!(
            "/Users?filter={}",
            rollcall_it::encode("userName eq \"slow-body@example.com\"")
        ))
        .await;
    assert_eq!(found.body["totalResults"], 0, "{:?}", found.body);
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let env = TestEnv::start().await;
    let http = short_timeouts();
    let (audit, _) = audit_server(&env, Default::default(), http.clone()).await;
    let mut stream = TcpStream::connect(&audit.address).await.unwrap();
    stream
        .write_all(b"GET /audit/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let received = read_until(&mut stream, Duration::from_secs(5), |r| {
        let text = String::from_utf8_lossy(r);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(usize::MAX);
        body.len() >= length
    })
    .await;
    let answered = Instant::now();
    assert!(received.starts_with(b"HTTP/1.1 200"));
    let (more, closed) = read_until_closed(
        &mut stream,
        answered,
        http.header_timeout - Duration::from_secs(1),
    )
    .await;
    assert!(more.is_empty(), "{:?}", String::from_utf8_lossy(&more));
    assert!(
        closed >= http.idle_timeout - Duration::from_millis(300),
        "closed after {closed:?}"
    );
    env.assert_other_tenant_unaffected().await;
}

/// Starts an export with a small receive window and never reads past its head: the server
/// fills the socket and stalls, as behind a client that stopped reading.
async fn unread_export(address: &str, audit_token: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(address.parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /audit/v1/export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {audit_token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_until(&mut stream, Duration::from_secs(10), head_complete).await;
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_unread_exports_starve_neither_scim_nor_other_audit_queries_and_one_more_is_503() {
    let env = TestEnv::start().await;
    let (_, audit_token) = tenant_tokens(&env, "evil").await;
    audit_records(&env, "evil", 1_000_000, 8_000).await;
    // More unread exports than the audit pool has connections.
    let config = rollcall_audit_api::Config {
        pool_size: 2,
        max_exports: 20,
        ..Default::default()
    };
    let (audit, state) = audit_server(&env, config, HttpConfig::default()).await;
    let unread =
        futures::future::join_all((0..20).map(|_| unread_export(&audit.address, &audit_token)))
            .await;
    // Each export reads until its client's socket is full, then waits holding no connection.
    let pool = state.store.pool().clone();
    eventually(
        "the unread exports hold no connection of the audit pool",
        Duration::from_secs(30),
        || {
            let pool = pool.clone();
            async move { pool.size() as usize == pool.num_idle() }
        },
    )
    .await;
    let started = Instant::now();
    let (status, headers, body) = get(
        &format!("http://{}/audit/v1/export", audit.address),
        &audit_token,
    )
    .await;
    assert_eq!(status, 503, "{body:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at once"
    );
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["status"], 503);
    assert!(body["error"].as_str().unwrap().contains("exports"));
    // The exports hold no connection: the same tenant's queries still answer promptly.
    let started = Instant::now();
    let (status, _, _) = get(
        &format!("http://{}/audit/v1/events?limit=1", audit.address),
        &audit_token,
    )
    .await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(3));
    // Another tenant exports as usual.
    let (status, _, _) = get(
        &format!("{}/audit/v1/export", env.audit_base),
        &env.audit_token,
    )
    .await;
    assert_eq!(status, 200);
    env.assert_other_tenant_unaffected().await;
    drop(unread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_whose_client_stopped_reading_is_closed_and_gives_its_slot_back() {
    let env = TestEnv::start().await;
    let (_, audit_token) = tenant_tokens(&env, "evil").await;
    audit_records(&env, "evil", 1_000_000, 8_000).await;
    let config = rollcall_audit_api::Config {
        max_exports: 1,
        ..Default::default()
    };
    let http = short_timeouts();
    let (audit, _) = audit_server(&env, config, http.clone()).await;
    let url = format!("http://{}/audit/v1/export", audit.address);
    let stalled = unread_export(&audit.address, &audit_token).await;
    let (status, headers, _) = get(&url, &audit_token).await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    // Access as of an instant reads the tenant's history too: it shares the slots.
    let as_of = format!(
        "http://{}/audit/v1/users/{}/access",
        audit.address,
        uuid::Uuid::now_v7()
    );
    let (status, headers, body) = get(&as_of, &audit_token).await;
    assert_eq!(status, 503, "{body:?}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        body.to_string().contains("access reconstructions"),
        "{body:?}"
    );
    // The idle timeout closes the stalled connection; the export ends and its slot is free.
    eventually(
        "the stalled export's slot is given back",
        http.idle_timeout + Duration::from_secs(5),
        || {
            let (url, token) = (url.clone(), audit_token.clone());
            async move {
                let response = reqwest::Client::new()
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                response.status() == 200
            }
        },
    )
    .await;
    drop(stalled);
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn an_exhausted_audit_pool_answers_503_in_bounded_time_while_scim_goes_on() {
    let env = TestEnv::start().await;
    let (_, audit_token) = tenant_tokens(&env, "evil").await;
    let config = rollcall_audit_api::Config {
        pool_size: 1,
        ..Default::default()
    };
    let (audit, state) = audit_server(&env, config, HttpConfig::default()).await;
    let url = format!("http://{}/audit/v1/events?limit=1", audit.address);
    // Something holds every connection of the audit pool (a slow query would).
    let held = state.store.pool().acquire().await.unwrap();
    let started = Instant::now();
    let ((status, headers, body), ()) = tokio::join!(
        get(&url, &audit_token),
        env.assert_other_tenant_unaffected()
    );
    assert_eq!(status, 503, "{body:?}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["status"], 503);
    assert!(
        started.elapsed() < rollcall_audit_api::POOL_WAIT + Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    drop(held);
    assert_eq!(get(&url, &audit_token).await.0, 200);
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn audit_queries_are_cancelled_at_the_statement_timeout_and_answer_503() {
    let env = TestEnv::start().await;
    let config = rollcall_audit_api::Config {
        statement_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let state = rollcall_audit_api::AuditState::new(&config, env.store.clone()).unwrap();
    let setting: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(state.store.pool())
        .await
        .unwrap();
    assert_eq!(setting, "300ms");
    let started = Instant::now();
    let error = sqlx::query("SELECT pg_sleep(5)")
        .execute(state.store.pool())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let error = rollcall_audit_api::error::ApiError::from(rollcall_store::StoreError::from(error));
    assert!(
        matches!(error, rollcall_audit_api::error::ApiError::TooSlow),
        "{error:?}"
    );
    // SCIM's pool has no such bound (the projector's rebuilds may run long).
    let scim_setting: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(scim_setting, "0");
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn wrong_ids_and_bad_values_at_the_audit_api_are_json_refusals_never_500_or_text() {
    let env = TestEnv::start().await;
    let (scim_token, audit_token) = tenant_tokens(&env, "evil").await;
    let scim = env.scim().with_token(Some(&scim_token));
    let user = scim
        .create_user(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "evil-user@example.com"}))
        .await;
    let group = scim
        .create_group(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Evil group"}))
        .await;
    eventually("the group is audited", Duration::from_secs(5), || async {
        !env.event_types("evil", &group).await.is_empty()
    })
    .await;
    let base = format!("{}/audit/v1", env.audit_base);
    for (path, status) in [
        // A group's id on user routes, a user's on group routes.
        (format!("/users/{group}"), 404),
        (format!("/users/{group}/history"), 404),
        (format!("/groups/{user}"), 404),
        (format!("/groups/{user}/members"), 404),
        (format!("/groups/{user}/intervals"), 404),
        (format!("/groups/{user}/history"), 404),
        // Path and query values that do not parse.
        ("/users/not-a-uuid".to_owned(), 400),
        ("/groups/%00/history".to_owned(), 400),
        (format!("/users/{user}?at=yesterday"), 400),
        ("/events?cursor=abc".to_owned(), 400),
        ("/events?aggregate=nope".to_owned(), 400),
        ("/scim-requests?status=x".to_owned(), 400),
        ("/export?format=xml".to_owned(), 400),
        // No such route.
        ("/nothing-here".to_owned(), 404),
    ] {
        let (answered, headers, body) = get(&format!("{base}{path}"), &audit_token).await;
        assert_eq!(answered, status, "{path}: {body:?}");
        assert_eq!(headers["content-type"], "application/json", "{path}");
        assert_eq!(body["status"], status, "{path}: {body:?}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body:?}"
        );
    }
    let refused = reqwest::Client::new()
        .post(format!("{base}/events"))
        .bearer_auth(&audit_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 405);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["status"], 405);
    env.assert_other_tenant_unaffected().await;
}

fn random_token() -> String {
    let hex = |n: usize| {
        (0..n)
            .map(|_| format!("{:x}", uuid::Uuid::new_v4().as_bytes()[0] & 0xf))
            .collect::<String>()
    };
    format!("rc_{}_{}", hex(16), hex(64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_tokens_is_refused_without_growing_either_token_cache() {
    let env = TestEnv::start().await;
    let (scim_token, audit_token) = tenant_tokens(&env, "evil").await;
    let (scim, scim_state) = scim_server(&env, Default::default(), HttpConfig::default()).await;
    let (audit, audit_state) = audit_server(&env, Default::default(), HttpConfig::default()).await;
    let scim_url = format!("http://{}/scim/v2/Users", scim.address);
    let audit_url = format!("http://{}/audit/v1/events", audit.address);
    assert_eq!(get(&scim_url, &scim_token).await.0, 200);
    assert_eq!(get(&audit_url, &audit_token).await.0, 200);
    assert_eq!(
        (scim_state.tokens.cached(), audit_state.tokens.cached()),
        (1, 1)
    );
    let flood = (0..300).map(|n| {
        let url = if n % 2 == 0 {
            scim_url.clone()
        } else {
            audit_url.clone()
        };
        async move {
            let token = if n % 3 == 0 {
                format!("junk-{n}")
            } else {
                random_token()
            };
            get(&url, &token).await.0
        }
    });
    let statuses = futures::future::join_all(flood).await;
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    assert_eq!(
        (scim_state.tokens.cached(), audit_state.tokens.cached()),
        (1, 1)
    );
    env.assert_other_tenant_unaffected().await;
}

async fn logged(env: &TestEnv, tenant: &str) -> Vec<rollcall_store::request_log::RequestRow> {
    env.store
        .requests(
            tenant,
            &RequestQuery {
                limit: 1_000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_nul_is_logged_and_its_batch_neighbours_are_not_lost() {
    let env = TestEnv::start().await;
    let (scim_token, _) = tenant_tokens(&env, "evil").await;
    let scim = env.scim().with_token(Some(&scim_token));
    let requests = (0..20).map(|n| {
        let scim = scim.clone();
        async move {
            let filter = if n == 10 {
                "userName eq \"nul\0here\"".to_owned()
            } else {
                format!("userName eq \"neighbour-{n}\"")
            };
            let response = scim
                .get(&format!("/Users?filter={}", rollcall_it::encode(&filter)))
                .await;
            response.header("x-request-id").unwrap().to_owned()
        }
    });
    let ids = futures::future::join_all(requests).await;
    eventually(
        "every request is logged",
        Duration::from_secs(5),
        || async {
            let rows = logged(&env, "evil").await;
            ids.iter()
                .all(|id| rows.iter().any(|r| &r.request_id == id))
        },
    )
    .await;
    let rows = logged(&env, "evil").await;
    let nul = rows.iter().find(|r| r.request_id == ids[10]).unwrap();
    assert_eq!(
        nul.filter.as_deref(),
        Some("userName eq \"nul\u{FFFD}here\"")
    );
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn a_60_kb_filter_is_stored_within_its_bound_and_not_at_all_before_authentication() {
    let env = TestEnv::start().await;
    let (scim_token, _) = tenant_tokens(&env, "evil").await;
    // A URI holds at most 64 KiB (longer ones are refused before any handler: see below).
    let filter = rollcall_it::encode(&format!("userName eq \"{}\"", "a".repeat(60_000)));
    let path = format!("/Users?filter={filter}");
    let anonymous = env.scim().with_token(None).get(&path).await;
    assert_eq!(anonymous.status, 401);
    let evil = env.scim().with_token(Some(&scim_token)).get(&path).await;
    assert!(
        evil.status >= 400 || evil.status == 200,
        "{:?}",
        evil.status
    );
    let row = |id: String| {
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_as::<_, (Option<String>, String, Option<String>)>(
                "SELECT filter, path, tenant FROM scim_request WHERE request_id = $1",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    let anonymous_id = anonymous.header("x-request-id").unwrap().to_owned();
    let evil_id = evil.header("x-request-id").unwrap().to_owned();
    eventually(
        "both requests are logged",
        Duration::from_secs(5),
        || async {
            row(anonymous_id.clone()).await.is_some() && row(evil_id.clone()).await.is_some()
        },
    )
    .await;
    let (filter, path, tenant) = row(anonymous_id).await.unwrap();
    assert_eq!((filter, tenant), (None, None));
    assert!(path.len() <= MAX_PATH_BYTES);
    let (filter, _, tenant) = row(evil_id).await.unwrap();
    assert_eq!(tenant.as_deref(), Some("evil"));
    let filter = filter.unwrap();
    assert!(filter.len() <= MAX_FILTER_BYTES && filter.starts_with("userName eq \"aaa"));
    // A 100 KB filter does not fit a URI: the HTTP server refuses it before any handler reads
    // or logs anything.
    let address = env
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /scim/v2/Users?filter={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100_000)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let (answer, _) = read_until_closed(&mut stream, Instant::now(), Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    env.assert_other_tenant_unaffected().await;
}

#[tokio::test]
async fn logged_bodies_are_kept_only_after_authentication_and_never_hold_a_nul() {
    let env = TestEnv::start().await;
    let (scim_token, _) = tenant_tokens(&env, "evil").await;
    let config = rollcall_scim_api::Config {
        log_bodies: true,
        ..Default::default()
    };
    let (scim, _) = scim_server(&env, config, HttpConfig::default()).await;
    let url = format!("http://{}/scim/v2/Users", scim.address);
    let post = |token: Option<String>, body: String| {
        let url = url.clone();
        async move {
            let mut request = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/scim+json")
                .body(body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    let nul_body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                          "userName": "body-nul@example.com", "title": "a\u{0}b"})
    .to_string();
    let nul = post(Some(scim_token.clone()), nul_body).await;
    let big = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                     "userName": "x".repeat(100_000)})
    .to_string();
    let anonymous = post(None, big).await;
    let body = |id: String| {
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, Option<Value>>(
                "SELECT body FROM scim_request WHERE request_id = $1",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    eventually(
        "both requests are logged",
        Duration::from_secs(5),
        || async { body(nul.clone()).await.is_some() && body(anonymous.clone()).await.is_some() },
    )
    .await;
    let logged = body(nul)
        .await
        .unwrap()
        .expect("an authenticated body is logged");
    assert_eq!(logged["title"], "a\u{FFFD}b");
    assert_eq!(
        body(anonymous).await.unwrap(),
        None,
        "an unauthenticated body is not"
    );
    env.assert_other_tenant_unaffected().await;
}
