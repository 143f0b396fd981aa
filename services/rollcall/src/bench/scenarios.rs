//! Rollcall driven over HTTP exactly as a client would: Entra's requests on keep-alive
//! connections, forward-auth decisions, a rebuild, and Entra's first provisioning cycle.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use super::env::{envelope, BenchEnv};
use super::load::{drive, summarize, Measured};

fn patch(operations: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

fn client(env: &BenchEnv) -> (reqwest::Client, String, String) {
    (reqwest::Client::new(), env.scim.clone(), env.token.clone())
}

/// `create`: POST /Users with unique userNames (read-your-writes included).
pub async fn create(env: &BenchEnv, concurrency: usize, duration: Duration) -> Measured {
    let (http, base, token) = client(env);
    let run = Uuid::new_v4().simple().to_string();
    drive(concurrency, u64::MAX, duration, move |_, n| {
        let (http, base, token, run) = (http.clone(), base.clone(), token.clone(), run.clone());
        async move {
            let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("create{n}.{run}@bench.test"), "active": "True"});
            http.post(format!("{base}/Users")).bearer_auth(token).json(&body).send().await.is_ok_and(|r| r.status() == 201)
        }
    })
    .await
}

/// `lookup`: GET /Users?filter=userName eq "…" over the preloaded tenant.
pub async fn lookup(
    env: &BenchEnv,
    users: usize,
    concurrency: usize,
    duration: Duration,
) -> Measured {
    let (http, base, token) = client(env);
    drive(concurrency, u64::MAX, duration, move |_, n| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let name = format!("pre{}@bench.test", (n as usize * 7919) % users);
            let url = format!(
                "{base}/Users?filter=userName%20eq%20%22{}%22",
                name.replace('@', "%40")
            );
            match http.get(url).bearer_auth(token).send().await {
                Ok(response) if response.status() == 200 => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|b| b["totalResults"] == 1),
                _ => false,
            }
        }
    })
    .await
}

/// `patch`: PATCH active and attribute replaces in Entra's default dialect.
pub async fn patches(
    env: &BenchEnv,
    users: Arc<Vec<Uuid>>,
    concurrency: usize,
    duration: Duration,
) -> Measured {
    let (http, base, token) = client(env);
    drive(concurrency, u64::MAX, duration, move |_, n| {
        let (http, base, token, users) = (http.clone(), base.clone(), token.clone(), users.clone());
        async move {
            let user = users[(n as usize / 3) % users.len()];
            let body = match n % 3 {
                0 => patch(json!([{"op": "Replace", "path": "active", "value": "False"}])),
                1 => patch(json!([{"op": "Replace", "path": "active", "value": "True"}])),
                _ => patch(json!([
                    {"op": "Replace", "path": "title", "value": format!("Title {n}")},
                    {"op": "Replace", "path": "name.familyName", "value": format!("Family {n}")}
                ])),
            };
            http.patch(format!("{base}/Users/{user}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await
}

/// Preloads a group of `members` members; returns its id.
pub async fn preload_group(env: &BenchEnv, members: usize) -> anyhow::Result<Uuid> {
    let id = Uuid::now_v7();
    let subject = env.namespace.aggregate_subject("bench", "group", &id);
    let ids: Vec<Value> = (0..members)
        .map(|n| json!({"value": format!("member-{n}")}))
        .collect();
    // As a client would send them: at most 1,000 members per request (and per event).
    let mut chunks = ids.chunks(1_000);
    let first = chunks.next().unwrap_or_default();
    let created = json!({"type": "group.created", "attributes": {"displayName": format!("big-{id}")}, "members": first});
    let mut last = env
        .log
        .append(
            &subject,
            0,
            &[envelope("group", id, "group.created", created)],
        )
        .await?;
    for (n, chunk) in chunks.enumerate() {
        let payload = json!({"type": "group.members_added", "members": chunk});
        let mut event = envelope("group", id, "group.members_added", payload);
        event.version = n as u64 + 2;
        last = env.log.append(&subject, last, &[event]).await?;
    }
    Ok(id)
}

/// `members`: PATCH add and remove members on a group of `size` members.
pub async fn members(
    env: &BenchEnv,
    group: Uuid,
    concurrency: usize,
    duration: Duration,
) -> Measured {
    let (http, base, token) = client(env);
    drive(concurrency, u64::MAX, duration, move |_, n| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let member = format!("new-member-{}", n / 2);
            let body = if n % 2 == 0 {
                patch(json!([{"op": "Add", "path": "members", "value": [{"value": member}]}]))
            } else {
                patch(json!([{"op": "Remove", "path": "members", "value": [{"value": member}]}]))
            };
            http.patch(format!("{base}/Groups/{group}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .is_ok_and(|r| r.status() == 204)
        }
    })
    .await
}

async fn decision(http: &reqwest::Client, access: &str, session: &str) -> u16 {
    http.get(format!("{access}/auth"))
        .header("X-Forwarded-Host", "bench.test")
        .bearer_auth(session)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// `deprovision`: from receiving the SCIM response to `PATCH active "False"` to the first denying
/// decision for that user's live session, sampled per user while a background load of writes
/// runs. Also counts decisions after the response that still allowed (must be none).
pub async fn deprovision(
    env: &BenchEnv,
    victims: &[Uuid],
    background: Arc<Vec<Uuid>>,
) -> (Measured, u64) {
    let (http, base, token) = client(env);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (http, base, token, users, stop) = (
            http.clone(),
            base.clone(),
            token.clone(),
            background.clone(),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = worker;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let user = users[n % users.len()];
                let body = patch(
                    json!([{"op": "Replace", "path": "title", "value": format!("Load {n}")}]),
                );
                let _ = http
                    .patch(format!("{base}/Users/{user}"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                n += 4;
            }
        }));
    }
    let started = Instant::now();
    let (mut latencies, mut allowed_after, mut errors) = (Vec::new(), 0u64, 0u64);
    for victim in victims {
        let Ok(session) = env.access.issue_session("bench", *victim) else {
            errors += 1;
            continue;
        };
        if decision(&http, &env.access_base, &session).await != 200 {
            errors += 1;
            continue;
        }
        let body = patch(json!([{"op": "Replace", "path": "active", "value": "False"}]));
        let response = http
            .patch(format!("{base}/Users/{victim}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await;
        let received = Instant::now();
        if !response.is_ok_and(|r| r.status() == 200) {
            errors += 1;
            continue;
        }
        loop {
            let status = decision(&http, &env.access_base, &session).await;
            if status == 403 || status == 401 {
                latencies.push(received.elapsed().as_secs_f64() * 1_000.0);
                break;
            }
            allowed_after += 1;
            if received.elapsed() > Duration::from_secs(5) {
                errors += 1;
                break;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    (
        summarize(latencies, errors, started.elapsed().as_secs_f64()),
        allowed_after,
    )
}

/// `decide`: forward-auth decisions for valid sessions.
pub async fn decide(
    env: &BenchEnv,
    users: &[Uuid],
    concurrency: usize,
    duration: Duration,
) -> Measured {
    let sessions: Arc<Vec<String>> = Arc::new(
        users
            .iter()
            .filter_map(|u| env.access.issue_session("bench", *u).ok())
            .collect(),
    );
    let (http, access) = (reqwest::Client::new(), env.access_base.clone());
    drive(concurrency, u64::MAX, duration, move |_, n| {
        let (http, access, sessions) = (http.clone(), access.clone(), sessions.clone());
        async move { decision(&http, &access, &sessions[n as usize % sessions.len()]).await == 200 }
    })
    .await
}

/// `rebuild`: `rollcall projector rebuild` over `events` events, in a namespace and database of
/// its own. `sealed`: the events' personal fields are sealed under each user's data key, as
/// today's SCIM API writes them (the rebuild reads every key from PostgreSQL, as a fresh process
/// does); otherwise they are in clear, as before sealing existed.
pub async fn rebuild(
    env: &BenchEnv,
    common: &crate::cli::Common,
    events: usize,
    sealed: bool,
) -> anyhow::Result<Measured> {
    let suffix = if sealed { "rbs" } else { "rb" };
    let namespace = rollcall_eventlog::Namespace::new(format!("{}{suffix}", env.namespace))?;
    let log = rollcall_eventlog::EventLog::open(env.client.clone(), namespace.clone()).await?;
    let database =
        super::env::database_named(&common.database_url, &format!("{}_{suffix}", env.namespace));
    let store =
        rollcall_store::Store::connect_with(&database, rollcall_store::LIVE_SCHEMA, 8).await?;
    let kek = rollcall_access::keys::Kek::generate("the benchmark's KEK".into())?;
    store.install_keks(*kek.expose(), Vec::new());
    let jetstream = log.jetstream().clone();
    let sealing = sealed.then_some(&store);
    append_provisioned(&log, events, |_| "bench".to_owned(), "rb", sealing).await?;
    store.clear_data_key_cache();
    let started = Instant::now();
    let applied = rollcall_projector::rebuild::rebuild(
        env.client.clone(),
        &log,
        &store,
        rollcall_projector::rebuild::DEFAULT_BATCH,
        |_| {},
    )
    .await?
    .applied;
    let seconds = started.elapsed().as_secs_f64();
    let _ = jetstream.delete_stream(namespace.stream()).await;
    store.pool().close().await;
    let _ = rollcall_store::drop_database(&database).await;
    Ok(Measured {
        throughput_per_s: applied as f64 / seconds,
        operations: applied,
        seconds,
        ..Default::default()
    })
}

/// Entra's provisioning step: look the resource up (`lookup`, relative to the base URL); when
/// nothing is found, create it at `endpoint`. The new id, or `None` when a step failed or the
/// resource existed. The lookup's own latency (milliseconds) goes to `lookups`.
async fn lookup_then_create(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    lookup: &str,
    lookups: &Mutex<Vec<f64>>,
    endpoint: &str,
    body: &Value,
) -> Option<String> {
    let begun = Instant::now();
    let found = http
        .get(format!("{base}/{lookup}"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    if !found
        .json::<Value>()
        .await
        .is_ok_and(|b| b["totalResults"] == 0)
    {
        return None;
    }
    if let Ok(mut lookups) = lookups.lock() {
        lookups.push(begun.elapsed().as_secs_f64() * 1_000.0);
    }
    let created = http
        .post(format!("{base}/{endpoint}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .ok()?;
    if created.status() != 201 {
        return None;
    }
    let created = created.json::<Value>().await.ok();
    Some(
        created
            .and_then(|b| b["id"].as_str().map(str::to_owned))
            .unwrap_or_default(),
    )
}

/// A lookup-then-create phase of the initial cycle: as many resources as `ids` has places,
/// the `n`th looked up and created at `endpoint` as `resource(n)` says (the lookup, relative to
/// the base URL, and the body); the `n`th id goes to the `n`th place. Returns the lookups alone
/// (over the phase's wall time) and the phase.
async fn provision(
    env: &BenchEnv,
    ids: &Arc<Mutex<Vec<String>>>,
    concurrency: usize,
    endpoint: &'static str,
    resource: impl Fn(u64) -> (String, Value) + Send + Sync + 'static,
) -> (Measured, Measured) {
    let (http, base, token) = client(env);
    let count = ids.lock().map(|ids| ids.len()).unwrap_or(0);
    let lookups = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let (l, ids) = (lookups.clone(), ids.clone());
    let phase = drive(
        concurrency,
        count as u64,
        Duration::from_secs(86_400),
        move |_, n| {
            let (lookup, body) = resource(n);
            let (http, base, token, ids, lookups) = (
                http.clone(),
                base.clone(),
                token.clone(),
                ids.clone(),
                l.clone(),
            );
            async move {
                let id =
                    lookup_then_create(&http, &base, &token, &lookup, &lookups, endpoint, &body)
                        .await;
                record(&ids, n, id)
            }
        },
    )
    .await;
    let latencies = lookups.lock().map(|l| l.clone()).unwrap_or_default();
    (summarize(latencies, 0, phase.seconds), phase)
}

/// Keeps the `n`th id; whether there was one.
fn record(ids: &Mutex<Vec<String>>, n: u64, id: Option<String>) -> bool {
    let Some(id) = id else { return false };
    if let Ok(mut ids) = ids.lock() {
        ids[n as usize] = id;
    }
    true
}

/// `initial-cycle`: Entra's first cycle: for each user a lookup then a create, then each group,
/// then one member PATCH per membership. Returns the phases and the whole.
pub async fn initial_cycle(
    env: &BenchEnv,
    users: usize,
    groups: usize,
    memberships: usize,
    concurrency: usize,
) -> Vec<(String, Measured)> {
    let (http, base, token) = client(env);
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let user_ids = Arc::new(Mutex::new(vec![String::new(); users]));
    let group_ids = Arc::new(Mutex::new(vec![String::new(); groups]));
    let mut phases = Vec::new();
    let started = Instant::now();
    let r = run.clone();
    let (lookups, provisioned) = provision(env, &user_ids, concurrency, "Users", move |n| {
        let name = format!("cycle{n}.{r}@bench.test");
        let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
                          "externalId": Uuid::new_v4().to_string(), "userName": name, "active": "True",
                          "emails": [{"primary": true, "type": "work", "value": name}], "name": {"givenName": "Given", "familyName": "Family"}});
        (format!("Users?filter=userName%20eq%20%22{}%22", name.replace('@', "%40")), body)
    })
    .await;
    phases.push(("users: the lookup alone".to_owned(), lookups));
    phases.push(("users (lookup + create)".to_owned(), provisioned));
    let (lookups, provisioned) = provision(env, &group_ids, concurrency, "Groups", move |n| {
        let name = format!("cycle-group-{n}-{run}");
        let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group", "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
                          "externalId": Uuid::new_v4().to_string(), "displayName": name});
        (format!("Groups?excludedAttributes=members&filter=displayName%20eq%20%22{name}%22"), body)
    })
    .await;
    phases.push(("groups: the lookup alone".to_owned(), lookups));
    phases.push(("groups (lookup + create)".to_owned(), provisioned));
    let users_done: Arc<Vec<String>> =
        Arc::new(user_ids.lock().map(|v| v.clone()).unwrap_or_default());
    let groups_done: Arc<Vec<String>> =
        Arc::new(group_ids.lock().map(|v| v.clone()).unwrap_or_default());
    phases.push((
        "memberships (one PATCH each)".to_owned(),
        drive(
            concurrency,
            memberships as u64,
            Duration::from_secs(86_400),
            move |_, n| {
                let (http, base, token, users, groups) = (
                    http.clone(),
                    base.clone(),
                    token.clone(),
                    users_done.clone(),
                    groups_done.clone(),
                );
                async move {
                    let group = &groups[n as usize % groups.len()];
                    let user = &users[(n as usize / groups.len()) % users.len()];
                    if group.is_empty() || user.is_empty() {
                        return false;
                    }
                    let body = patch(
                        json!([{"op": "Add", "path": "members", "value": [{"value": user}]}]),
                    );
                    http.patch(format!("{base}/Groups/{group}"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 204)
                }
            },
        )
        .await,
    ));
    let seconds = started.elapsed().as_secs_f64();
    // The lookups alone are part of their phases, not operations of their own.
    let whole = || phases.iter().filter(|(phase, _)| !phase.ends_with("alone"));
    let operations: u64 = whole().map(|(_, m)| m.operations).sum();
    let errors: u64 = whole().map(|(_, m)| m.errors).sum();
    phases.push((
        "whole cycle".to_owned(),
        Measured {
            throughput_per_s: operations as f64 / seconds,
            operations,
            errors,
            seconds,
            ..Default::default()
        },
    ));
    phases
}

/// Peak memory of the access service's state: `users` users with five groups each, applied
/// through the same path the NATS feed uses. Returns bytes per user.
pub fn memory(users: usize) -> (f64, f64) {
    let before = rss();
    let started = Instant::now();
    let mut directory = rollcall_access::directory::Directory::default();
    let groups: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
    for n in 0..users {
        let id = Uuid::now_v7();
        let state = rollcall_eventlog::access::UserAccess {
            schema: rollcall_eventlog::access::USER_SCHEMA.into(),
            tenant: "bench".into(),
            id,
            user_name: format!("user{n}@bench.example.com"),
            external_id: Some(Uuid::new_v4().to_string()),
            emails: vec![format!("user{n}@bench.example.com")],
            active: true,
            not_before: None,
            revoked_sessions: vec![],
            groups: (0..5).map(|g| groups[(n * 5 + g) % groups.len()]).collect(),
            sequence: n as u64,
            withheld: None,
        };
        let bytes = serde_json::to_vec(&state).unwrap_or_default();
        let _ = directory.apply(
            &rollcall_eventlog::access::user_key("bench", &id),
            Some(&bytes),
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let grown = rss().saturating_sub(before) as f64;
    drop(directory);
    (grown / users.max(1) as f64, seconds)
}

/// Memory of a SCIM API's lookup index: `users` users as Entra provisions them (names, emails,
/// title, department, externalId) in 1,000 groups, five groups each, applied through the path
/// the index's feed takes. Returns bytes per user.
pub fn index_memory(users: usize) -> f64 {
    use rollcall_eventlog::consumer::Delivered;
    let before = rss();
    let index = rollcall_scim_api::index::LookupIndex::detached();
    let mut sequence = 0;
    let mut apply = |envelope| {
        sequence += 1;
        index.apply(&[Delivered {
            sequence,
            position: 0,
            envelope,
        }]);
    };
    let ids: Vec<Uuid> = (0..users).map(|_| Uuid::now_v7()).collect();
    for (n, id) in ids.iter().enumerate() {
        let payload = serde_json::json!({"type": "user.provisioned", "active": true, "attributes": {
            "userName": format!("user{n}@bench.example.com"), "externalId": Uuid::new_v4().to_string(),
            "displayName": format!("User {n}"), "name": {"givenName": "User", "familyName": format!("Number {n}")},
            "emails": [{"value": format!("user{n}@bench.example.com"), "type": "work", "primary": true}],
            "title": "Engineer", "department": "Research"}});
        apply(super::env::envelope(
            "user",
            *id,
            "user.provisioned",
            payload,
        ));
    }
    let groups = 1000.min(users.max(1));
    let mut members: Vec<Vec<String>> = vec![Vec::new(); groups];
    for (n, id) in ids.iter().enumerate() {
        for g in 0..5 {
            members[(n * 5 + g) % groups].push(id.to_string());
        }
    }
    for (g, members) in members.into_iter().enumerate() {
        let members: Vec<serde_json::Value> = members
            .into_iter()
            .map(|value| serde_json::json!({"value": value}))
            .collect();
        let payload = serde_json::json!({"type": "group.created",
            "attributes": {"displayName": format!("Group {g}")}, "members": members});
        apply(super::env::envelope(
            "group",
            Uuid::now_v7(),
            "group.created",
            payload,
        ));
    }
    let grown = rss().saturating_sub(before) as f64;
    drop(index);
    grown / users.max(1) as f64
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 4096
}

/// Projection across many tenants with `partitions` partitions and as many projector
/// processes (each with connections of its own, as separate processes have): `events`
/// provisioned users over 16 tenants are appended first, then the projectors start and the
/// clock runs until every partition's checkpoint reaches the stream's head.
pub async fn partitions(
    env: &BenchEnv,
    common: &crate::cli::Common,
    events: usize,
    partitions: u16,
) -> anyhow::Result<Measured> {
    let namespace = rollcall_eventlog::Namespace::new(format!("{}p{partitions}", env.namespace))?
        .with_replicas(common.replicas)?;
    let log = rollcall_eventlog::EventLog::open(env.client.clone(), namespace.clone()).await?;
    let database = super::env::database_named(
        &common.database_url,
        &format!("{}_p{partitions}", env.namespace),
    );
    let store =
        rollcall_store::Store::connect_with(&database, rollcall_store::LIVE_SCHEMA, 4).await?;
    let jetstream = log.jetstream().clone();
    append_provisioned(&log, events, |n| format!("tenant{}", n % 16), "p", None).await?;
    let head = log.head().await?;
    let partitioning = rollcall_projector::choose_partitions(&store, Some(partitions)).await?;
    let names: Vec<String> = partitioning
        .all()
        .map(|p| p.name(rollcall_projector::DEFAULT_NAME))
        .collect();
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..partitions {
        // A process of its own: its own NATS connection and PostgreSQL pool.
        let client = rollcall_eventlog::connect(&common.nats_url, "rollcall-bench").await?;
        let log = rollcall_eventlog::EventLog::open(client.clone(), namespace.clone()).await?;
        let store = store.with_schema(rollcall_store::LIVE_SCHEMA, 4).await?;
        running.push(
            rollcall_projector::start(rollcall_projector::Config::default(), client, log, store)
                .await?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let mut done = true;
        for name in &names {
            done &= store.checkpoint(name).await? >= head;
        }
        if done {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "projection did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let active: usize = running.iter().map(|r| r.active().len()).sum();
    for projectors in running {
        projectors.stop().await;
    }
    let _ = jetstream.delete_stream(namespace.stream()).await;
    let _ = jetstream
        .delete_stream(format!("KV_{}", namespace.access_bucket()))
        .await;
    store.pool().close().await;
    let _ = rollcall_store::drop_database(&database).await;
    anyhow::ensure!(
        active == usize::from(partitions),
        "{active} partitions active at the end, not {partitions}"
    );
    Ok(Measured {
        throughput_per_s: events as f64 / seconds,
        operations: events as u64,
        seconds,
        ..Default::default()
    })
}

/// Appends `events` provisioned users straight to `log`, pipelined (a preload, not a
/// measurement): user `n` belongs to `tenant(n)` and is named `<prefix><n>@bench.test`.
async fn append_provisioned(
    log: &rollcall_eventlog::EventLog,
    events: usize,
    tenant: impl Fn(usize) -> String,
    prefix: &str,
    sealed_with: Option<&rollcall_store::Store>,
) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let users: Vec<(Uuid, String)> = (0..events).map(|n| (Uuid::now_v7(), tenant(n))).collect();
    // Each user's data key stored first, as the SCIM API does before it appends.
    let keys = match sealed_with {
        Some(store) => Some(
            futures::stream::iter(&users)
                .map(|(id, tenant)| store.data_key_for_writing(tenant, *id))
                .buffered(16)
                .try_collect::<Vec<_>>()
                .await?,
        ),
        None => None,
    };
    let messages = users.iter().enumerate().map(|(n, (id, tenant))| {
        let id = *id;
        let payload = json!({"type": "user.provisioned", "active": true, "attributes": {"userName": format!("{prefix}{n}@bench.test"), "title": "Engineer",
            "emails": [{"value": format!("{prefix}{n}@bench.test"), "type": "work", "primary": true}]}});
        let mut event = envelope("user", id, "user.provisioned", payload);
        event.tenant = tenant.clone();
        if let Some(keys) = &keys {
            // Sealing fails only without randomness; such an event stays in clear.
            let _ = rollcall_personal::seal(&mut event, &keys[n]);
        }
        (
            log.namespace().aggregate_subject(tenant, "user", &id),
            async_nats::HeaderMap::new(),
            event.to_bytes().into(),
        )
    });
    super::env::publish_pipelined(log.jetstream(), messages).await?;
    Ok(())
}

/// `ssf`: a Shared Signals push receiver on loopback receiving a user's RISC
/// `account-disabled` SET after `PATCH active "False"`, per user, with a transmitting access
/// service of the private installation. Returns the time from sending the PATCH to the SET's
/// arrival, and the time from receiving the SCIM response to the arrival (0 when the SET came
/// first: it is sent from the event stream, before the read model's checkpoint the response
/// waits for). Users whose SET never came count as errors.
pub async fn ssf(
    env: &BenchEnv,
    victims: usize,
) -> anyhow::Result<(Measured, Measured, Option<f64>)> {
    use axum::body::Bytes;
    use std::collections::HashMap;
    use tokio::sync::oneshot;

    type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;
    let waiting: Waiting = Arc::default();
    // The receiver: answers 202 and reports the arrival of each account-disabled SET by the
    // subject's email (its payload read without verifying: the time is what is measured).
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}/events", receiver.local_addr()?);
    let app = axum::Router::new()
        .fallback(axum::routing::post(
            |axum::extract::State(waiting): axum::extract::State<Waiting>, body: Bytes| async move {
                let arrived = Instant::now();
                let claims = std::str::from_utf8(&body)
                    .ok()
                    .and_then(|token| token.split('.').nth(1))
                    .and_then(|part| {
                        use base64::Engine;
                        base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .decode(part)
                            .ok()
                    })
                    .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
                    .unwrap_or_default();
                if claims["events"]
                    .get(rollcall_access::ssf::signals::uri::ACCOUNT_DISABLED)
                    .is_some()
                {
                    let email = claims["sub_id"]["email"].as_str().unwrap_or_default();
                    if let Some(sender) = waiting.lock().ok().and_then(|mut w| w.remove(email)) {
                        let _ = sender.send(arrived);
                    }
                }
                axum::http::StatusCode::ACCEPTED
            },
        ))
        .with_state(waiting.clone());
    let receiving = tokio::spawn(async move { axum::serve(receiver, app).await });

    // A transmitting access service beside the instance's own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let access_base = format!("http://{}", listener.local_addr()?);
    let config = rollcall_access::Config {
        ssf: rollcall_access::ssf::SsfConfig {
            public_url: Some(access_base.parse()?),
            // The receiver listens on loopback.
            allow_internal_endpoints: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let access =
        rollcall_access::Access::from_installation(config, &env.client, &env.log, Some(&env.store))
            .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(rollcall_access::serve(
        listener,
        access,
        env.client.clone(),
        env.namespace.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let ssf_token = env
        .store
        .create_token("bench", rollcall_store::tenant::Scope::Ssf, Some("bench"))
        .await?
        .token;
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{access_base}/ssf/bench/streams"))
        .bearer_auth(&ssf_token)
        .json(&json!({
            "delivery": {"method": rollcall_domain::ssf::PUSH, "endpoint_url": endpoint},
            "events_requested": [rollcall_access::ssf::signals::uri::ACCOUNT_DISABLED],
        }))
        .send()
        .await?;
    anyhow::ensure!(
        created.status() == 201,
        "creating the SSF stream: {}",
        created.status()
    );

    let (_, base, token) = client(env);
    let run = Uuid::new_v4().simple().to_string();
    let mut started = Instant::now();
    let (mut latencies, mut after_response, mut errors) = (Vec::new(), Vec::new(), 0u64);
    let mut catch_up_ms = None;
    // The first deactivation is not measured: a new stream first walks the tenant's history
    // (the lookup and members scenarios' hundreds of thousands of events), which it is given
    // time for; its time to the first SET is reported apart.
    for n in 0..=victims {
        let warm_up = n == 0;
        let email = format!("ssf{n}.{run}@bench.test");
        let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": email, "active": true,
                          "emails": [{"value": email, "primary": true}]});
        let id = match http
            .post(format!("{base}/Users"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
        {
            Ok(response) if response.status() == 201 => response
                .json::<Value>()
                .await
                .ok()
                .and_then(|user| user["id"].as_str().map(str::to_owned)),
            _ => None,
        };
        let Some(id) = id else {
            errors += 1;
            continue;
        };
        let (sender, arrival) = oneshot::channel();
        if let Ok(mut waiting) = waiting.lock() {
            waiting.insert(email.clone(), sender);
        }
        let body = patch(json!([{"op": "Replace", "path": "active", "value": "False"}]));
        let sent = Instant::now();
        let response = http
            .patch(format!("{base}/Users/{id}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await;
        let answered = Instant::now();
        if !response.is_ok_and(|r| r.status() == 200) {
            errors += 1;
            continue;
        }
        let wait = if warm_up {
            SSF_CATCH_UP
        } else {
            Duration::from_secs(5)
        };
        match tokio::time::timeout(wait, arrival).await {
            Ok(Ok(arrived)) if warm_up => {
                catch_up_ms = Some(arrived.saturating_duration_since(sent).as_secs_f64() * 1_000.0);
                started = Instant::now();
            }
            Ok(Ok(arrived)) => {
                let since = |instant: Instant| {
                    arrived.saturating_duration_since(instant).as_secs_f64() * 1_000.0
                };
                latencies.push(since(sent));
                after_response.push(since(answered));
            }
            _ => errors += 1,
        }
    }
    let _ = stop.send(());
    let _ = serving.await;
    receiving.abort();
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        summarize(latencies, errors, seconds),
        summarize(after_response, errors, seconds),
        catch_up_ms,
    ))
}

/// How long the Shared Signals scenario gives a new stream to walk the tenant's history.
const SSF_CATCH_UP: Duration = Duration::from_secs(300);
