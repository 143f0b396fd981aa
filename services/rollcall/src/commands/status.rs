//! `rollcall status`: the event stream (head, replicas and leader), the key-value buckets'
//! replicas and leaders, and per partition the active projector (process and host), the
//! standbys, the checkpoint and the lag; then the quarantine.

use futures::TryStreamExt;
use serde_json::{json, Value};

use crate::cli::Common;
use crate::connection::{connect_nats, connect_store};

/// Replicas and leader of one JetStream stream (the events or a bucket's).
fn placement(info: &async_nats::jetstream::stream::Info) -> Value {
    let cluster = info.cluster.as_ref();
    let mut peers: Vec<Value> = cluster
        .map(|c| {
            c.replicas
                .iter()
                .map(|p| json!({"server": p.name, "current": p.current, "offline": p.offline, "lag": p.lag}))
                .collect()
        })
        .unwrap_or_default();
    if let Some(leader) = cluster.and_then(|c| c.leader.clone()) {
        peers.insert(0, json!({"server": leader, "leader": true}));
    }
    json!({
        "name": info.config.name,
        "replicas": info.config.num_replicas,
        "leader": cluster.and_then(|c| c.leader.clone()),
        "peers": peers,
        "messages": info.state.messages,
    })
}

/// Prints the status (JSON with `json`).
pub async fn run(common: Common, json: bool) -> anyhow::Result<()> {
    let report = report(&common).await?;
    if json {
        println!("{report}");
    } else {
        print(&report);
    }
    Ok(())
}

/// The status as JSON: what `rollcall status --json` prints.
pub async fn report(common: &Common) -> anyhow::Result<Value> {
    let (client, log) = connect_nats(common).await?;
    let store = connect_store(common).await?;
    let jetstream = async_nats::jetstream::new(client);
    let head = log.head().await?;

    // The event stream and the namespace's buckets (their streams are `KV_<bucket>`).
    let mut stream = log.stream().clone();
    let events = placement(&stream.info().await?.clone());
    let prefix = format!("KV_{}_", log.namespace().as_str().replace('-', "_"));
    let names: Vec<String> = jetstream.stream_names().try_collect().await?;
    let mut buckets = Vec::new();
    for name in names.into_iter().filter(|n| n.starts_with(&prefix)) {
        if let Ok(mut bucket) = jetstream.get_stream(&name).await {
            if let Ok(info) = bucket.info().await {
                buckets.push(placement(info));
            }
        }
    }

    // Partitions: who projects each, and how far.
    let partitions = store.partitions().await?;
    let partitioning = rollcall_eventlog::partition::Partitioning::new(partitions.into())?;
    let names: Vec<String> = partitioning
        .all()
        .map(|p| p.name(rollcall_projector::DEFAULT_NAME))
        .collect();
    let holders = rollcall_projector::lease::holders(&store, &names).await?;
    let mut rows = Vec::new();
    for (index, (name, active)) in holders.active.iter().enumerate() {
        let checkpoint = store.checkpoint(name).await?;
        let standbys: Vec<&String> = holders
            .processes
            .iter()
            .filter(|process| Some(*process) != active.as_ref())
            .collect();
        rows.push(json!({
            "partition": index,
            "projector": name,
            "checkpoint": checkpoint,
            "lag": head.saturating_sub(checkpoint),
            "active": active,
            "standbys": standbys,
        }));
    }

    let quarantined = store.quarantine(false).await?;
    let failed = quarantined
        .iter()
        .filter(|row| row.status == "failed")
        .count();
    let quarantine = json!({"failed": failed, "held": quarantined.len() - failed,
        "sequences": quarantined.iter().map(|row| row.sequence).collect::<Vec<_>>()});

    // The installation as a whole, in the shape it had before partitions: the lowest
    // checkpoint and the largest lag of its partitions.
    let lowest = rows
        .iter()
        .filter_map(|row| row["checkpoint"].as_u64())
        .min()
        .unwrap_or(0);
    Ok(json!({
        "stream": log.stream_name(),
        "head": head,
        "projector": {"checkpoint": lowest, "lag": head.saturating_sub(lowest), "quarantine": quarantine},
        "events": events,
        "buckets": buckets,
        "partitions": partitions,
        "projector_processes": holders.processes,
        "projectors": rows,
        "quarantine": quarantine,
    }))
}

fn print(report: &Value) {
    let head = &report["head"];
    let events = &report["events"];
    let leader = |value: &Value| {
        value["leader"]
            .as_str()
            .map_or("(single server)".to_owned(), str::to_owned)
    };
    println!(
        "stream       {} (head {head})",
        report["stream"].as_str().unwrap_or_default()
    );
    println!(
        "  replicas {}, leader {}",
        events["replicas"],
        leader(events)
    );
    for bucket in report["buckets"].as_array().into_iter().flatten() {
        println!(
            "bucket       {}: replicas {}, leader {}",
            bucket["name"].as_str().unwrap_or_default(),
            bucket["replicas"],
            leader(bucket)
        );
    }
    println!(
        "projectors   {} partition(s), {} process(es) running",
        report["partitions"],
        report["projector_processes"].as_array().map_or(0, Vec::len)
    );
    for row in report["projectors"].as_array().into_iter().flatten() {
        println!(
            "  {:<14} checkpoint {:<10} lag {:<8} active: {}",
            row["projector"].as_str().unwrap_or_default(),
            row["checkpoint"],
            row["lag"],
            row["active"]
                .as_str()
                .unwrap_or("none (no process holds it)"),
        );
        if let Some(standbys) = row["standbys"].as_array().filter(|s| !s.is_empty()) {
            let standbys: Vec<&str> = standbys.iter().filter_map(Value::as_str).collect();
            println!("  {:<14} standing by: {}", "", standbys.join(", "));
        }
    }
    let quarantine = &report["quarantine"];
    let (failed, held) = (
        quarantine["failed"].as_u64().unwrap_or(0),
        quarantine["held"].as_u64().unwrap_or(0),
    );
    if failed + held == 0 {
        println!("quarantine   empty");
    } else {
        println!(
            "quarantine   {failed} failed, {held} held: see `rollcall projector quarantine list`"
        );
    }
}
