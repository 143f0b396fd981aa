//! Rollcall on a three-node JetStream cluster of the test's own, with every stream, bucket and
//! durable consumer kept by three servers: the server leading the event stream is killed under
//! a steady write load. Writes may fail only with `503` and `Retry-After` while a new leader is
//! elected, then go on; no write answered 2xx is lost; access decisions go on from memory, and
//! fail closed only once NATS has been silent for longer than the staleness bound. On the
//! machine's NATS (2.9) and on the current release.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollcall_it::nats::{self, NatsCluster, Settings};
use rollcall_it::{access_config, eventually, Response, Scim, TestEnv};
use serde_json::json;

/// The access service's staleness bound in this test (seconds): short, so that the test can
/// show it, and still longer than nothing: an election must not count as NATS lost.
const STALENESS: u64 = 4;

/// Concurrent SCIM clients writing during the test.
const WRITERS: usize = 4;

fn user(name: &str) -> serde_json::Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name})
}

fn deactivate() -> serde_json::Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": "False"}]})
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Deactivate,
}

/// One write of the load and how it was answered.
#[derive(Debug, Clone)]
struct Write {
    writer: usize,
    kind: Kind,
    user_name: String,
    /// The user's id (known for every 201 create and every deactivation).
    id: Option<String>,
    status: u16,
    retry_after: bool,
    started: Instant,
    finished: Instant,
}

type Writes = Arc<Mutex<Vec<Write>>>;

/// Creates users and deactivates every other one until `stop` is set.
async fn write_load(
    scim: Scim,
    writer: usize,
    writes: Writes,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    // A steady load: at most one write every 20 ms per writer, also while writes fail fast.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        pace.tick().await;
        n += 1;
        let user_name = format!("w{writer}-{n}@example.com");
        let started = Instant::now();
        let created = scim.post("/Users", &user(&user_name)).await;
        let id = created.body["id"].as_str().map(str::to_owned);
        let record = |kind, status, retry_after, id: Option<String>, started| Write {
            writer,
            kind,
            user_name: user_name.clone(),
            id,
            status,
            retry_after,
            started,
            finished: Instant::now(),
        };
        writes.lock().unwrap().push(record(
            Kind::Create,
            created.status,
            created.header("retry-after").is_some(),
            id.clone().filter(|_| created.status == 201),
            started,
        ));
        if let (201, Some(id)) = (created.status, id) {
            if n % 2 == 0 {
                let started = Instant::now();
                let patched = scim.patch(&format!("/Users/{id}"), &deactivate()).await;
                writes.lock().unwrap().push(record(
                    Kind::Deactivate,
                    patched.status,
                    patched.header("retry-after").is_some(),
                    Some(id),
                    started,
                ));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_event_stream_leader_under_load_loses_no_acknowledged_write_on_nats_2_9() {
    stream_leader_killed_under_load(nats::binary()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_event_stream_leader_under_load_loses_no_acknowledged_write_on_the_current_release(
) {
    stream_leader_killed_under_load(nats::current_binary()).await;
}

async fn stream_leader_killed_under_load(binary: String) {
    let mut cluster = NatsCluster::start(Settings {
        binary: Some(binary.clone()),
        ..Default::default()
    })
    .await;
    let mut env = TestEnv::start_on_cluster(cluster.urls(), 3).await;
    let access = rollcall_access::Access::new(rollcall_access::Config {
        staleness_seconds: STALENESS,
        ..access_config(&env.policy_file)
    })
    .unwrap();
    env.start_access(access).await;
    let stream = env.namespace.stream();
    assert_replicated(&env, &cluster).await;
    // A second SCIM API that takes no write until after the election: nothing cached.
    let cold = env.replica().await;

    // Before the load: a user who keeps access and one who lost it.
    let scim = env.scim();
    let staying = scim.create_user(&user("staying@example.com")).await;
    let leaving = scim.create_user(&user("leaving@example.com")).await;
    let patched = scim
        .patch(&format!("/Users/{leaving}"), &deactivate())
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    let (staying_session, leaving_session) = (env.session(&staying), env.session(&leaving));
    let decisions = || async {
        (
            env.forward_auth("wiki.test", Some(&staying_session))
                .await
                .status,
            env.forward_auth("wiki.test", Some(&leaving_session))
                .await
                .status,
        )
    };
    assert_eq!(decisions().await, (200, 403));

    let writes: Writes = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..WRITERS)
        .map(|writer| {
            tokio::spawn(write_load(
                scim.clone(),
                writer,
                writes.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let succeeded_since = |since: Instant| {
        writes
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.started >= since && w.status < 300)
            .count()
    };
    let started = Instant::now();
    eventually(
        "writes succeed on the healthy cluster",
        Duration::from_secs(15),
        || async { succeeded_since(started) >= 2 * WRITERS },
    )
    .await;

    let leader = std::cell::Cell::new(None);
    eventually(
        "the event stream has a leader",
        Duration::from_secs(10),
        || async {
            leader.set(cluster.stream_leader(&stream).await);
            leader.get().is_some()
        },
    )
    .await;
    let leader = leader.get().unwrap();
    cluster.kill(leader).await;
    let killed = Instant::now();

    // Through the election: decisions from memory, and every writer writes again.
    let checked = std::cell::Cell::new(0);
    // NATS 2.9 may take tens of seconds to elect new leaders for every stream, bucket and
    // consumer when the machine is loaded (the tests share two cores with everything else).
    eventually(
        "every writer has two successful writes after the stream leader was killed",
        Duration::from_secs(90),
        || async {
            assert_eq!(
                decisions().await,
                (200, 403),
                "access decisions must go on from memory during the election"
            );
            checked.set(checked.get() + 1);
            let writes = writes.lock().unwrap();
            (0..WRITERS).all(|writer| {
                let mine: Vec<_> = writes
                    .iter()
                    .filter(|w| w.writer == writer && w.started >= killed)
                    .collect();
                mine.len() >= 2 && mine[mine.len() - 2..].iter().all(|w| w.status < 300)
            })
        },
    )
    .await;
    let recovered = killed.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let new_leader = cluster.stream_leader(&stream).await;
    assert!(
        new_leader.is_some_and(|node| node != leader),
        "a surviving server leads the event stream (was {}, now {new_leader:?})",
        cluster.name(leader)
    );
    assert!(checked.get() >= 2, "access was asked during the election");

    let writes = writes.lock().unwrap().clone();
    let failed: Vec<_> = writes.iter().filter(|w| w.status >= 300).collect();
    for write in &failed {
        assert!(
            write.status == 503 && write.retry_after,
            "a write failed otherwise than 503 with Retry-After: {write:?}"
        );
        assert!(
            write.finished > killed,
            "a write failed while the cluster was healthy: {write:?}"
        );
    }
    eprintln!(
        "{binary}: {} writes, {} answered 503 during the election; writes recovered {recovered:?} after the kill",
        writes.len(),
        failed.len()
    );

    // No write answered 2xx is lost: each is in the event stream and in the read model.
    let events = async_nats::jetstream::new(env.client.clone())
        .get_stream(&stream)
        .await
        .unwrap();
    for write in writes.iter().filter(|w| w.status < 300) {
        let id = write.id.as_deref().unwrap();
        let subject = env.namespace.aggregate_subject(
            &env.tenant,
            "user",
            &uuid::Uuid::parse_str(id).unwrap(),
        );
        let recorded = recorded_event_types(&events, &subject).await;
        let expected = match write.kind {
            Kind::Create => "user.provisioned",
            Kind::Deactivate => "user.deactivated",
        };
        assert!(
            recorded.iter().any(|t| t == expected),
            "{write:?} answered {} but the stream holds {recorded:?}",
            write.status
        );
        let read = scim.get(&format!("/Users/{id}")).await;
        assert_eq!(read.status, 200, "{write:?}: {:?}", read.body);
        assert_eq!(read.body["userName"], write.user_name.as_str());
        if write.kind == Kind::Deactivate {
            assert_eq!(read.body["active"], false, "{write:?}");
        }
    }

    // After the election a replica that has no cached state (it reads each user's events from
    // the stream) writes to users created before the kill.
    let earlier: Vec<&Write> = writes
        .iter()
        .filter(|w| w.kind == Kind::Create && w.status == 201 && w.finished < killed)
        .filter(|w| {
            !writes
                .iter()
                .any(|d| d.kind == Kind::Deactivate && d.id == w.id)
        })
        .take(6)
        .collect();
    assert!(!earlier.is_empty(), "users were created before the kill");
    for write in earlier {
        let id = write.id.as_deref().unwrap();
        let started = Instant::now();
        let patched = cold.patch(&format!("/Users/{id}"), &deactivate()).await;
        assert_eq!(
            patched.status,
            200,
            "a write after the election, to a user created before it, on a replica without cached state ({:?}): {:?}",
            started.elapsed(),
            patched.body
        );
    }

    // The staleness bound: with every server gone, decisions go on from memory until NATS has
    // been silent for STALENESS seconds, then fail closed.
    cluster.stop().await;
    let stopped = Instant::now();
    assert_eq!(decisions().await, (200, 403));
    eventually(
        "access fails closed once NATS is silent past the staleness bound",
        Duration::from_secs(STALENESS + 8),
        || async { decisions().await == (403, 403) },
    )
    .await;
    assert!(
        stopped.elapsed() >= Duration::from_secs(STALENESS - 1),
        "access failed closed {:?} after NATS was lost, before the {STALENESS} s bound",
        stopped.elapsed()
    );
    let health = reqwest::get(format!("{}/healthz", env.access_base))
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["stale"], true, "{health}");
}

/// The event types recorded on `subject`, read from the stream leader message by message
/// (`STREAM.MSG.GET` with `next_by_subj`): no consumer is involved, so this reads what the
/// stream holds whatever Rollcall's own reading does.
async fn recorded_event_types(
    events: &async_nats::jetstream::stream::Stream,
    subject: &str,
) -> Vec<String> {
    let mut types = Vec::new();
    let mut next = 1;
    loop {
        let message = match events
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(subject)
            .send()
            .await
        {
            Ok(message) => message,
            Err(error)
                if error.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
            {
                return types
            }
            Err(error) => panic!("reading {subject} from the event stream: {error}"),
        };
        let envelopes = rollcall_eventlog::envelope::decode_commit(&message.payload).unwrap();
        types.extend(envelopes.into_iter().map(|e| e.event_type));
        next = message.sequence + 1;
    }
}

/// The stream, the buckets and the durable consumers are kept by three servers each.
async fn assert_replicated(env: &TestEnv, cluster: &NatsCluster) {
    let jetstream = async_nats::jetstream::new(env.client.clone());
    let streams = [
        env.namespace.stream(),
        format!("KV_{}", env.namespace.claims_bucket()),
        format!("KV_{}", env.namespace.writers_bucket()),
        format!("KV_{}", env.namespace.access_bucket()),
    ];
    for name in &streams {
        let mut stream = jetstream.get_stream(name).await.unwrap();
        eventually(
            &format!("stream {name} has a leader and two current followers"),
            // Bounds, not waits: a fresh cluster on a loaded 2-core machine (several clusters
            // of the suite start at once) can take this long to place and elect.
            Duration::from_secs(30),
            || {
                let mut stream = stream.clone();
                async move {
                    let info = stream.info().await.unwrap().clone();
                    assert_eq!(info.config.num_replicas, 3, "{name}");
                    info.cluster.is_some_and(|c| {
                        c.leader.is_some()
                            && c.replicas.len() == 2
                            && c.replicas.iter().all(|r| r.current)
                    })
                }
            },
        )
        .await;
        let leader = stream.info().await.unwrap().cluster.clone().unwrap().leader;
        assert!(
            (0..3).any(|node| leader.as_deref() == Some(cluster.name(node))),
            "{name} is led by {leader:?}, a server of the test's cluster"
        );
    }
    let events = jetstream.get_stream(env.namespace.stream()).await.unwrap();
    eventually(
        "the projector's durable consumer exists",
        Duration::from_secs(60),
        || {
            let events = events.clone();
            async move {
                use futures::StreamExt;
                let mut consumers = events.consumers();
                let mut durable = 0;
                while let Some(info) = consumers.next().await {
                    let info = info.unwrap();
                    if info.config.durable_name.is_some() {
                        durable += 1;
                        let cluster = info.cluster.clone().unwrap();
                        assert_eq!(
                            cluster.replicas.len(),
                            2,
                            "durable consumer {} has three replicas",
                            info.name
                        );
                    }
                }
                durable > 0
            }
        },
    )
    .await;
}

#[tokio::test]
async fn an_installation_opened_with_more_replicas_is_changed_to_them() {
    let cluster = NatsCluster::start(Settings::default()).await;
    let client = rollcall_eventlog::connect(&cluster.urls(), "rollcall-test")
        .await
        .unwrap();
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let single = rollcall_eventlog::Namespace::new(name).unwrap();
    // What every process opens at start: the event stream and the claims buckets.
    let open = |namespace: rollcall_eventlog::Namespace| {
        let client = client.clone();
        async move {
            let log = rollcall_eventlog::EventLog::open(client, namespace.clone())
                .await
                .unwrap();
            rollcall_eventlog::Claims::open(log.jetstream(), &namespace)
                .await
                .unwrap();
        }
    };
    open(single.clone()).await;
    let jetstream = async_nats::jetstream::new(client.clone());
    let replicas = |name: String| {
        let jetstream = jetstream.clone();
        async move {
            let mut stream = jetstream.get_stream(&name).await.unwrap();
            stream.info().await.unwrap().config.num_replicas
        }
    };
    let streams = [
        single.stream(),
        format!("KV_{}", single.claims_bucket()),
        format!("KV_{}", single.writers_bucket()),
    ];
    for name in &streams {
        assert_eq!(replicas(name.clone()).await, 1, "{name}");
    }
    // The operator sets ROLLCALL_REPLICAS=3 and restarts.
    open(single.clone().with_replicas(3).unwrap()).await;
    for name in &streams {
        assert_eq!(replicas(name.clone()).await, 3, "{name}");
    }
    // A process (or an operator's command) run without ROLLCALL_REPLICAS never takes them
    // down to one copy.
    open(single.clone()).await;
    for name in &streams {
        assert_eq!(replicas(name.clone()).await, 3, "{name} lowered");
    }
}

#[tokio::test]
async fn more_than_one_replica_on_a_single_server_is_refused_naming_the_setting() {
    let client = rollcall_eventlog::connect(&rollcall_it::nats_url(), "rollcall-test")
        .await
        .unwrap();
    let name = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let namespace = rollcall_eventlog::Namespace::new(name)
        .unwrap()
        .with_replicas(3)
        .unwrap();
    let refused = rollcall_eventlog::EventLog::open(client.clone(), namespace.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("ROLLCALL_REPLICAS"), "{refused}");
    // The buckets say the same, from the server's own refusal.
    let refused =
        rollcall_eventlog::Claims::open(&async_nats::jetstream::new(client.clone()), &namespace)
            .await
            .unwrap_err()
            .to_string();
    assert!(refused.contains("ROLLCALL_REPLICAS"), "{refused}");
    let jetstream = async_nats::jetstream::new(client);
    assert!(jetstream.get_stream(namespace.stream()).await.is_err());
    assert!(jetstream
        .get_stream(format!("KV_{}", namespace.claims_bucket()))
        .await
        .is_err());
}

/// While the stream leader does not answer, an aggregate is read from a replica, which may be
/// behind (`Loaded::from_replica`). A write appended expecting the replica's sequence is proven
/// current by the leader accepting it; but no `404`, no "nothing to change" and no rename (its
/// old name comes from the state) may rest on such a state: those answer `503` + `Retry-After`
/// until the leader answers again. On one server the replica is the leader itself, so the state
/// is current and every answer below is what a stale state would have produced unchecked.
#[tokio::test]
async fn a_state_only_a_replica_gave_decides_no_answer_but_an_append() {
    let mut env = TestEnv::start().await;
    let id = env.scim().create_user(&user("replica@example.com")).await;
    // SCIM APIs with nothing cached: every state they need, they read.
    let (cold, colder) = (env.replica().await, env.replica().await);
    let unknown = uuid::Uuid::now_v7();
    let rename = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "userName", "value": "renamed@example.com"}]});
    let retry = |response: &Response, what: &str| {
        assert_eq!(response.status, 503, "{what}: {}", response.body);
        assert!(response.header("retry-after").is_some(), "{what}");
    };

    env.log.silence_leader(true);
    retry(
        &cold
            .patch(&format!("/Users/{unknown}"), &deactivate())
            .await,
        "a user a replica does not know may exist: no 404",
    );
    retry(
        &cold.patch(&format!("/Users/{id}"), &rename).await,
        "a rename's old name from a replica",
    );
    // Planned on the replica's state and appended expecting its sequence: the leader accepted.
    let deactivated = cold.patch(&format!("/Users/{id}"), &deactivate()).await;
    assert_eq!(deactivated.status, 200, "{}", deactivated.body);
    // Nothing to change, by a state only a replica gave (it could be the state before a
    // reactivation): no answer.
    retry(
        &colder.patch(&format!("/Users/{id}"), &deactivate()).await,
        "a no-op decided on a replica's state",
    );

    env.log.silence_leader(false);
    assert_eq!(
        colder
            .patch(&format!("/Users/{id}"), &deactivate())
            .await
            .status,
        200
    );
    assert_eq!(
        cold.patch(&format!("/Users/{unknown}"), &deactivate())
            .await
            .status,
        404
    );
    let renamed = cold.patch(&format!("/Users/{id}"), &rename).await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.body["userName"], "renamed@example.com");
    assert_eq!(renamed.body["active"], false);
}
