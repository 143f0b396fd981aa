//! Partitions: an installation's tenants shared between P partitions, each applied by exactly
//! one projector process at a time; several processes share the partitions between them, and
//! when one dies (`kill -9` of a real process), the others take its partitions over within
//! seconds, with nothing lost and nothing applied twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rollcall_domain::user::UserEvent;
use rollcall_domain::EventKind;
use rollcall_eventlog::partition::Partitioning;
use rollcall_eventlog::{Actor, Envelope, EventLog};
use rollcall_it::{eventually, TestEnv};
use uuid::Uuid;

const PARTITIONS: u16 = 4;

fn config(partitions: Option<u16>) -> rollcall_projector::Config {
    rollcall_projector::Config {
        partitions,
        ..Default::default()
    }
}

/// A projector process on the environment's installation (`partitions`: as `--partitions`).
async fn projector_process(env: &TestEnv, partitions: Option<u16>) -> rollcall_projector::Running {
    rollcall_projector::start(
        config(partitions),
        env.client.clone(),
        env.log.clone(),
        env.store.clone(),
    )
    .await
    .unwrap()
}

/// Appends one provisioned user of `tenant` straight to the stream (as the SCIM API would).
async fn provision(log: &EventLog, tenant: &str, n: usize) {
    let id = Uuid::now_v7();
    let name = format!("user{n}@{tenant}.test");
    let attributes = serde_json::json!({"userName": name});
    let event = UserEvent::Provisioned {
        attributes: attributes.as_object().cloned().unwrap_or_default(),
        active: true,
    };
    let now = time::OffsetDateTime::now_utc();
    let envelope = Envelope {
        event_id: Uuid::now_v7(),
        tenant: tenant.into(),
        aggregate_type: "user".into(),
        aggregate_id: id,
        version: 1,
        event_type: event.event_type().into(),
        schema_version: 1,
        occurred_at: now
            .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
            .unwrap_or(now),
        actor: Actor::Operator {
            name: "partitions test".into(),
        },
        request_id: None,
        traceparent: None,
        payload: event.to_payload(),
    };
    let subject = log.namespace().aggregate_subject(tenant, "user", &id);
    log.append(&subject, 0, &[envelope]).await.unwrap();
}

/// Tenants that fill every partition.
fn tenants() -> Vec<String> {
    let partitioning = Partitioning::new(PARTITIONS.into()).unwrap();
    let mut covered = BTreeSet::new();
    let mut tenants = Vec::new();
    for n in 0.. {
        let tenant = format!("t{n}");
        if covered.insert(partitioning.of(&tenant).index()) || tenants.len() < 8 {
            tenants.push(tenant);
        }
        if covered.len() == usize::from(PARTITIONS) && tenants.len() >= 8 {
            break;
        }
    }
    tenants
}

/// Waits until every partition's checkpoint reaches the head; then the read model must hold
/// every event exactly once.
async fn assert_everything_applied_once(env: &TestEnv, users: usize) {
    let head = env.head().await;
    let partitioning = Partitioning::new(PARTITIONS.into()).unwrap();
    eventually(
        "every partition's checkpoint reaches the head",
        Duration::from_secs(20),
        || async {
            let mut all = true;
            for partition in partitioning.all() {
                let name = partition.name(rollcall_projector::DEFAULT_NAME);
                all &= env.store.checkpoint(&name).await.unwrap() == head;
            }
            all
        },
    )
    .await;
    // Every event audited once (a second application would have failed on the audit record's
    // key, or shown here), and every user in the read model.
    assert_eq!(env.store.audit_count().await.unwrap(), head);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM scim_user")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(count as usize, users);
    assert_eq!(
        env.store.quarantine_open().await.unwrap(),
        0,
        "an event failed (applied twice?)"
    );
}

#[tokio::test]
async fn two_processes_share_the_partitions_and_one_takes_all_when_the_other_stops() {
    let mut env = TestEnv::start().await;
    // The harness's single projector makes way: this test's projectors partition the
    // installation (moving it from one partition to four in place).
    env.kill_projector().await;
    let first = projector_process(&env, Some(PARTITIONS)).await;
    assert_eq!(first.partitioning().count(), PARTITIONS);
    assert_eq!(env.store.partitions().await.unwrap(), PARTITIONS);
    let second = projector_process(&env, None).await;
    assert_eq!(
        second.partitioning().count(),
        PARTITIONS,
        "a process started without a count takes the installation's"
    );
    eventually(
        "each process projects two of the four partitions",
        Duration::from_secs(15),
        || async { first.active().len() == 2 && second.active().len() == 2 },
    )
    .await;
    let (a, b): (BTreeSet<u16>, BTreeSet<u16>) = (
        first.active().into_iter().collect(),
        second.active().into_iter().collect(),
    );
    assert!(
        a.is_disjoint(&b),
        "a partition is projected twice: {a:?} {b:?}"
    );
    // `rollcall status` shows each partition's active projector and the processes.
    let common = rollcall::cli::Common {
        database_url: env.database_url.clone(),
        nats_url: rollcall_it::nats_url(),
        namespace: env.namespace.to_string(),
        replicas: 1,
    };
    let status = rollcall::commands::status::report(&common).await.unwrap();
    assert_eq!(status["partitions"], PARTITIONS);
    let rows = status["projectors"].as_array().unwrap();
    assert_eq!(rows.len(), usize::from(PARTITIONS));
    let pid = format!("pid={} ", std::process::id());
    for row in rows {
        assert!(
            row["active"].as_str().is_some_and(|a| a.contains(&pid)),
            "{row}"
        );
        assert!(row["lag"].is_u64(), "{row}");
    }
    assert_eq!(
        status["projector_processes"].as_array().unwrap().len(),
        2,
        "{status}"
    );
    assert_eq!(status["events"]["replicas"], 1, "{status}");
    // The installation as a whole keeps the shape scripts read (`projector.lag`).
    assert!(status["projector"]["lag"].is_u64(), "{status}");
    assert!(
        status["projector"]["quarantine"]["failed"].is_u64(),
        "{status}"
    );

    let tenants = tenants();
    let mut users = 0;
    for (n, tenant) in tenants.iter().cycle().take(120).enumerate() {
        provision(&env.log, tenant, n).await;
        users += 1;
    }
    assert_everything_applied_once(&env, users).await;
    // Each partition published its own access checkpoint.
    let bucket = async_nats::jetstream::new(env.client.clone())
        .get_key_value(env.namespace.access_bucket())
        .await
        .unwrap();
    for partition in Partitioning::new(PARTITIONS.into()).unwrap().all() {
        // Published beside the partition's next batch, after its checkpoint is committed.
        eventually(
            "each partition publishes its access checkpoint",
            Duration::from_secs(10),
            || async {
                bucket
                    .get(partition.checkpoint_key())
                    .await
                    .unwrap()
                    .is_some()
            },
        )
        .await;
    }

    // A clean stop gives the partitions back at once: the other process takes them all.
    first.stop().await;
    let stopped = Instant::now();
    eventually(
        "the remaining process projects every partition",
        Duration::from_secs(5),
        || async { second.active().len() == usize::from(PARTITIONS) },
    )
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(5));
    for (n, tenant) in tenants.iter().cycle().take(40).enumerate() {
        provision(&env.log, tenant, 1000 + n).await;
        users += 1;
    }
    assert_everything_applied_once(&env, users).await;

    // A rebuild of a partitioned installation: every partition goes on from where it stopped.
    rollcall_projector::rebuild::rebuild(
        env.client.clone(),
        &env.log,
        &env.store,
        rollcall_projector::DEFAULT_BATCH,
        |_| {},
    )
    .await
    .unwrap();
    for (n, tenant) in tenants.iter().cycle().take(20).enumerate() {
        provision(&env.log, tenant, 2000 + n).await;
        users += 1;
    }
    assert_everything_applied_once(&env, users).await;
    second.stop().await;
}

/// What the child process runs: a projector process on the parent's installation, until it is
/// killed. Only runs when the parent starts it.
#[tokio::test]
#[ignore = "started by killing_the_active_projector_process_hands_its_partitions_over"]
async fn child_projector_process() {
    let Ok(spec) = std::env::var("ROLLCALL_IT_CHILD_PROJECTOR") else {
        return;
    };
    let mut parts = spec.split('|');
    let (database_url, namespace) = (parts.next().unwrap(), parts.next().unwrap());
    let client = async_nats::connect(rollcall_it::nats_url()).await.unwrap();
    let namespace = rollcall_eventlog::Namespace::new(namespace).unwrap();
    let log = EventLog::open(client.clone(), namespace).await.unwrap();
    let store = rollcall_store::Store::connect(database_url).await.unwrap();
    let running = rollcall_projector::start(config(None), client, log, store)
        .await
        .unwrap();
    eprintln!("child projector running");
    std::future::pending::<()>().await;
    running.stop().await;
}

#[tokio::test]
async fn killing_the_active_projector_process_hands_its_partitions_over() {
    let mut env = TestEnv::start().await;
    env.kill_projector().await;
    let parent = projector_process(&env, Some(PARTITIONS)).await;
    let mut child = rollcall_it::child_test("partitions::child_projector_process")
        .env(
            "ROLLCALL_IT_CHILD_PROJECTOR",
            format!("{}|{}", env.database_url, env.namespace),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child_pid = format!("pid={} ", child.id());
    let names: Vec<String> = Partitioning::new(PARTITIONS.into())
        .unwrap()
        .all()
        .map(|p| p.name(rollcall_projector::DEFAULT_NAME))
        .collect();
    eventually(
        "the child process projects two partitions, this one the other two",
        Duration::from_secs(20),
        || async {
            let holders = rollcall_projector::lease::holders(&env.store, &names)
                .await
                .unwrap();
            let by_child = holders
                .active
                .iter()
                .filter(|(_, holder)| holder.as_deref().is_some_and(|h| h.contains(&child_pid)))
                .count();
            by_child == 2 && parent.active().len() == 2
        },
    )
    .await;

    // Writes go on while the child is killed.
    let tenants = tenants();
    let writer = {
        let log = env.log.clone();
        let tenants = tenants.clone();
        tokio::spawn(async move {
            for (n, tenant) in tenants.iter().cycle().take(300).enumerate() {
                provision(&log, tenant, n).await;
            }
        })
    };
    eventually(
        "some writes reached the child's partitions",
        Duration::from_secs(10),
        || async { env.head().await >= 60 },
    )
    .await;
    child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let _ = child.wait();
    eventually(
        "this process projects every partition",
        Duration::from_secs(5),
        || async { parent.active().len() == usize::from(PARTITIONS) },
    )
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "took over after {:?}",
        killed.elapsed()
    );
    writer.await.unwrap();
    assert_everything_applied_once(&env, 300).await;
    parent.stop().await;
}

#[tokio::test]
async fn scim_writes_on_a_partitioned_installation_read_their_writes() {
    let installation = rollcall_it::Installation::create_on(rollcall_it::nats_url()).await;
    let partitioning = rollcall_projector::choose_partitions(&installation.store, Some(PARTITIONS))
        .await
        .unwrap();
    assert_eq!(partitioning.count(), PARTITIONS);
    let env = TestEnv::start_in(installation).await;
    let mut clients = Vec::new();
    for tenant in tenants() {
        clients.push((tenant.clone(), env.tenant(&tenant).await));
    }
    for round in 0..3 {
        for (tenant, scim) in &clients {
            let name = format!("u{round}@{tenant}.example.com");
            let created = scim
                .post(
                    "/Users",
                    &serde_json::json!({
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                        "userName": name,
                    }),
                )
                .await;
            assert_eq!(created.status, 201, "{}", created.body);
            // Read-your-writes waited on this tenant's partition.
            let found = scim
                .get(&format!("/Users?filter=userName%20eq%20%22{name}%22"))
                .await;
            assert_eq!(found.body["totalResults"], 1, "{tenant}: {}", found.body);
            let id = created.body["id"].as_str().unwrap().to_owned();
            let deactivated = scim
                .patch(
                    &format!("/Users/{id}"),
                    &serde_json::json!({
                        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                        "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
                    }),
                )
                .await;
            assert_eq!(deactivated.status, 200, "{}", deactivated.body);
            assert_eq!(
                scim.get(&format!("/Users/{id}")).await.body["active"],
                false
            );
        }
    }
    env.assert_other_tenant_unaffected().await;
}

/// An installation from before partitions (its history under the single projector, no
/// partitioning recorded) started with `--partitions 4`: every partition goes on from the
/// single projector's checkpoint, nothing is applied again.
#[tokio::test]
async fn an_installation_from_before_partitions_moves_to_four_without_applying_anything_twice() {
    let mut env = TestEnv::start().await;
    let tenants = tenants();
    for (n, tenant) in tenants.iter().cycle().take(40).enumerate() {
        provision(&env.log, tenant, n).await;
    }
    let head = env.head().await;
    eventually(
        "the single projector applies the history",
        Duration::from_secs(20),
        || async {
            env.store
                .checkpoint(rollcall_projector::DEFAULT_NAME)
                .await
                .unwrap()
                == head
        },
    )
    .await;
    env.kill_projector().await;
    // As an installation migrated to 0006 looks before any process recorded a choice.
    sqlx::query("DELETE FROM rollcall_partitioning")
        .execute(env.store.pool())
        .await
        .unwrap();
    let running = projector_process(&env, Some(PARTITIONS)).await;
    for partition in running.partitioning().all() {
        assert_eq!(
            env.store
                .checkpoint(&partition.name(rollcall_projector::DEFAULT_NAME))
                .await
                .unwrap(),
            head,
            "partition {partition} starts from the single projector's checkpoint"
        );
    }
    for (n, tenant) in tenants.iter().cycle().take(20).enumerate() {
        provision(&env.log, tenant, 100 + n).await;
    }
    assert_everything_applied_once(&env, 60).await;
    running.stop().await;
}

#[tokio::test]
async fn a_projector_applies_nothing_once_the_installations_partitioning_changed_under_it() {
    let mut env = TestEnv::start().await;
    env.kill_projector().await;
    let mut running = projector_process(&env, Some(PARTITIONS)).await;
    let tenants = tenants();
    for (n, tenant) in tenants.iter().enumerate() {
        provision(&env.log, tenant, n).await;
    }
    assert_everything_applied_once(&env, tenants.len()).await;
    let head = env.head().await;

    // Another process changed the partitioning (as no Rollcall command does in place).
    sqlx::query("UPDATE rollcall_partitioning SET partitions = partitions + 1")
        .execute(env.store.pool())
        .await
        .unwrap();
    provision(&env.log, &tenants[0], 100).await;
    let failed = tokio::time::timeout(Duration::from_secs(20), running.failed())
        .await
        .expect("the projector stops within the bound");
    assert!(
        matches!(
            failed,
            rollcall_projector::ProjectorError::Repartitioned {
                current,
                started: PARTITIONS,
            } if current == PARTITIONS + 1
        ),
        "{failed}"
    );
    let partition = Partitioning::new(PARTITIONS.into())
        .unwrap()
        .of(&tenants[0])
        .name(rollcall_projector::DEFAULT_NAME);
    assert_eq!(
        env.store.checkpoint(&partition).await.unwrap(),
        head,
        "the event after the change is not applied"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_polled_checkpoint_stops_below_the_oldest_access_state_of_its_partition_not_yet_published(
) {
    use rollcall_store::access::{enqueue, OutboxKind};
    let installation = rollcall_it::Installation::create_on(rollcall_it::nats_url()).await;
    let store = &installation.store;
    let two = Partitioning::new(2).unwrap();
    let tenant_of = |index: u16| {
        (0..)
            .map(|n| format!("tenant-{n}"))
            .find(|tenant| two.of(tenant).index() == index)
            .unwrap()
    };
    let (zero, one) = (tenant_of(0), tenant_of(1));
    let mut connection = store.pool().acquire().await.unwrap();
    rollcall_store::checkpoint::set(&mut connection, "p0", 10)
        .await
        .unwrap();
    assert_eq!(store.published_checkpoint("p0", 0, 2).await.unwrap(), 10);
    assert_eq!(
        store.published_checkpoint("never-ran", 0, 2).await.unwrap(),
        0
    );

    for (sequence, tenant) in [(6, &zero), (9, &zero), (4, &one)] {
        enqueue(
            &mut connection,
            sequence,
            OutboxKind::User,
            tenant,
            Uuid::now_v7(),
            None,
        )
        .await
        .unwrap();
    }
    assert_eq!(
        store.published_checkpoint("p0", 0, 2).await.unwrap(),
        5,
        "the state of event 6 is not published yet"
    );
    assert_eq!(
        store.published_checkpoint("p0", 0, 1).await.unwrap(),
        3,
        "one partition: every entry counts"
    );
    let (rows, _) = store.outbox_and_quarantine(0, 2, 100).await.unwrap();
    let six: Vec<i64> = rows
        .iter()
        .filter(|row| row.sequence == 6)
        .map(|row| row.id)
        .collect();
    store.clear_outbox_entries(&six).await.unwrap();
    assert_eq!(store.published_checkpoint("p0", 0, 2).await.unwrap(), 8);
    store.clear_outbox(i64::MAX).await.unwrap();
    assert_eq!(store.published_checkpoint("p0", 0, 2).await.unwrap(), 10);
}
