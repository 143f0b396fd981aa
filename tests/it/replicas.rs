//! Several projectors on one namespace and database: exactly one projects (it holds the
//! lease), the others stand by, and one of them takes over when the active one dies.

use std::time::Duration;

use rollcall_it::{eventually, TestEnv};
use serde_json::json;

fn user(name: &str) -> serde_json::Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name})
}

#[tokio::test]
async fn a_standby_projector_takes_over_within_seconds_when_the_active_one_dies() {
    let mut env = TestEnv::start().await;
    let scim = env.scim();
    // The environment's projector is active once a write is answered.
    assert_eq!(
        scim.post("/Users", &user("first@example.com")).await.status,
        201
    );
    // A second projector process (its own leases) on the same installation.
    let standby = rollcall_projector::start(
        rollcall_projector::Config::default(),
        env.client.clone(),
        env.log.clone(),
        env.store.clone(),
    )
    .await
    .unwrap();
    for n in 0..20 {
        assert_eq!(
            scim.post("/Users", &user(&format!("u{n}@example.com")))
                .await
                .status,
            201
        );
    }
    assert!(
        standby.active().is_empty(),
        "the second projector must stand by"
    );

    // The active projector dies (its lease connection with it).
    env.kill_projector().await;
    let started = std::time::Instant::now();
    eventually(
        "the standby holds the lease",
        Duration::from_secs(5),
        || async { standby.active() == [0] },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // Writes go on, read-your-writes and deprovisioning included.
    for n in 20..30 {
        assert_eq!(
            scim.post("/Users", &user(&format!("u{n}@example.com")))
                .await
                .status,
            201
        );
    }
    env.assert_other_tenant_unaffected().await;
    // Nothing lost, nothing applied twice: the audit record holds every event once.
    let head = env.head().await;
    eventually(
        "the checkpoint reaches the head",
        Duration::from_secs(5),
        || async { env.store.checkpoint("projector").await.unwrap() == head },
    )
    .await;
    assert_eq!(env.store.audit_count().await.unwrap(), head);
    assert_eq!(scim.get("/Users").await.body["totalResults"], 32);
    standby.stop().await;
}

/// What each child process runs: every role of Rollcall on the parent's installation, logging
/// as `rollcall serve` does (JSON on stderr), until it is killed. Prints its SCIM address.
#[tokio::test]
#[ignore = "started by replicas_cooperate_under_write_load_with_nothing_wrong_in_their_logs"]
async fn child_replica_process() {
    let Ok(spec) = std::env::var("ROLLCALL_IT_CHILD_REPLICA") else {
        return;
    };
    let mut parts = spec.split('|');
    let (database_url, namespace, policies) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let _telemetry = rollcall_telemetry::init("rollcall").unwrap();
    let common = rollcall::cli::Common {
        database_url,
        nats_url: rollcall_it::nats_url(),
        namespace,
        replicas: 1,
    };
    let connections = rollcall::Connections::open(&common).await.unwrap();
    let handle = rollcall::Instance::new("scim,projector,access,audit".parse().unwrap())
        .access(rollcall_it::access_config(std::path::Path::new(&policies)))
        .listener(rollcall::Role::Scim, rollcall_it::loopback().await)
        .listener(rollcall::Role::Access, rollcall_it::loopback().await)
        .listener(rollcall::Role::Audit, rollcall_it::loopback().await)
        .start(connections)
        .await
        .unwrap();
    println!("SCIM {}", handle.addr(rollcall::Role::Scim).unwrap());
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn replicas_cooperate_under_write_load_with_nothing_wrong_in_their_logs() {
    use std::io::BufRead;
    let installation = rollcall_it::Installation::create_on(rollcall_it::nats_url()).await;
    let logs = std::env::temp_dir().join(format!("rollcall-replicas-{}", installation.namespace));
    std::fs::create_dir_all(&logs).unwrap();
    let mut children = Vec::new();
    let mut bases = Vec::new();
    for n in 0..3 {
        let log = std::fs::File::create(logs.join(format!("replica-{n}.log"))).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "replicas::child_replica_process",
                "--ignored",
                "--nocapture",
            ])
            .env(
                "ROLLCALL_IT_CHILD_REPLICA",
                format!(
                    "{}|{}|{}",
                    installation.database_url,
                    installation.namespace,
                    installation.policy_file.display()
                ),
            )
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        children.push(child);
        // Its SCIM address, once it has started (the read ends with the child at the latest).
        let line = tokio::task::spawn_blocking(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find_map(|line| line.strip_prefix("SCIM ").map(str::to_owned))
        });
        let addr = tokio::time::timeout(Duration::from_secs(60), line)
            .await
            .expect("the replica starts within a minute")
            .unwrap()
            .expect("the replica prints its address");
        bases.push(format!("http://{addr}/scim/v2"));
    }
    let clients: Vec<rollcall_it::Scim> = bases
        .iter()
        .map(|base| rollcall_it::Scim::new(base.clone(), installation.token.clone()))
        .collect();

    // Writes spread over the replicas, concurrently.
    let mut writers = Vec::new();
    for (n, scim) in clients.iter().enumerate() {
        let scim = scim.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for k in 0..30 {
                let created = scim
                    .post("/Users", &user(&format!("r{n}-{k}@example.com")))
                    .await;
                assert_eq!(created.status, 201, "{}", created.body);
                let id = created.body["id"].as_str().unwrap().to_owned();
                if k % 3 == 0 {
                    let patched = scim
                        .patch(
                            &format!("/Users/{id}"),
                            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                    "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}),
                        )
                        .await;
                    assert_eq!(patched.status, 200, "{}", patched.body);
                }
                ids.push((id, k % 3 != 0));
            }
            ids
        }));
    }
    let mut written = Vec::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    // Every write answered 2xx is readable, as written, from every replica.
    for scim in &clients {
        for (id, active) in &written {
            let got = scim.get(&format!("/Users/{id}")).await;
            assert_eq!(got.status, 200, "{}", got.body);
            // `active` is absent until set; deactivated users say `false`.
            assert_eq!(got.body["active"] != false, *active, "{}", got.body);
        }
        assert_eq!(
            scim.get("/Users?count=1").await.body["totalResults"],
            written.len()
        );
    }
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    // A healthy set of replicas logs no error, no repositioning and no deleted consumer.
    let mut problems = Vec::new();
    let mut lines = 0;
    for n in 0..3 {
        let text = std::fs::read_to_string(logs.join(format!("replica-{n}.log"))).unwrap();
        for line in text.lines() {
            lines += 1;
            if line.contains("\"ERROR\"")
                || line.contains("repositioning")
                || line.contains("consumer deleted")
            {
                problems.push(format!("replica {n}: {line}"));
            }
        }
    }
    assert!(lines > 0, "the replicas logged nothing at all");
    // The logs are the projectors' own: one projects, the other two stand by.
    let standing_by = (0..3)
        .filter(|n| {
            std::fs::read_to_string(logs.join(format!("replica-{n}.log")))
                .unwrap()
                .contains("standing by")
        })
        .count();
    assert_eq!(standing_by, 2, "two of the three projectors stand by");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let _ = std::fs::remove_dir_all(&logs);
}

/// A write waits for every live access service, not the first that applied it: an access
/// service that announces but does not catch up holds writes back (`503` + `Retry-After`),
/// and once it falls silent (it stopped) writes go on without it.
#[tokio::test]
async fn a_write_waits_for_every_live_access_service() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    assert_eq!(
        scim.post("/Users", &user("before@example.com"))
            .await
            .status,
        201
    );
    // A second access service that is stuck at sequence 1.
    let subject = env.namespace.checkpoint_subject("access");
    let stuck = tokio::spawn({
        let client = env.client.clone();
        async move {
            // Announces as an access service does: on a heartbeat.
            let mut heartbeat = tokio::time::interval(Duration::from_millis(300));
            loop {
                heartbeat.tick().await;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(rollcall_access::feed::REPLICA_HEADER, "stuck");
                let _ = client
                    .publish_with_headers(subject.clone(), headers, "1".into())
                    .await;
            }
        }
    });
    let held = scim.post("/Users", &user("held@example.com")).await;
    assert_eq!(held.status, 503, "{}", held.body);
    assert!(held.headers.contains_key("retry-after"));
    stuck.abort();
    // Silent for longer than the bound, it no longer holds writes back.
    let mut created = false;
    for n in 0..3 {
        let response = scim
            .post("/Users", &user(&format!("after{n}@example.com")))
            .await;
        if response.status == 201 {
            created = true;
            break;
        }
    }
    assert!(
        created,
        "writes go on once the stuck access service is gone"
    );
}

/// An access service whose `serve` ended (its instance stopped, the process going on) stops
/// announcing: its heartbeat does not outlive it and hold every later write to its last
/// checkpoint.
#[tokio::test]
async fn an_access_service_that_stopped_no_longer_holds_writes_back() {
    let env = TestEnv::start().await;
    let scim = env.scim();
    let (other, base) = env.another_access(|_, _| {}).await;
    eventually(
        "the second access service is ready",
        Duration::from_secs(10),
        || {
            let ready = format!("{base}/readyz");
            async move { reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) }
        },
    )
    .await;
    assert_eq!(
        scim.post("/Users", &user("both@example.com")).await.status,
        201
    );
    other.shutdown().await.unwrap();
    // Its last announcements hold a write for at most the silence bound (3 s), within the
    // write's own (5 s); a heartbeat that outlived it would hold every write to 503.
    for n in 0..2 {
        let response = scim
            .post("/Users", &user(&format!("after-stop{n}@example.com")))
            .await;
        assert_eq!(response.status, 201, "{}", response.body);
    }
}
