//! The replica count of the streams Rollcall opens (the events stream and the streams of its
//! key-value buckets): an existing stream kept by fewer servers than configured is changed to
//! the configured count (JetStream adds the copies; a stream is never lowered automatically),
//! and a count a server cannot place fails with an error that names the setting.

use async_nats::jetstream::{stream, Context};
use tracing::{info, warn};

use crate::log::LoadError;

/// Whether the server's answer says it cannot place the replicas: a single server (`replicas >
/// 1 not supported in non-clustered mode`, 10074), or a cluster with fewer servers up than
/// replicas (`no suitable peers for placement`, 10005; `insufficient resources`, 10023).
fn is_placement(error: &str) -> bool {
    ["10074", "10005", "10023"]
        .iter()
        .any(|code| error.contains(&format!("error code {code}")))
        || [
            "non-clustered",
            "no suitable peers",
            "insufficient resources",
        ]
        .iter()
        .any(|text| error.contains(text))
}

/// The error of a stream request that failed, naming `ROLLCALL_REPLICAS` when the server
/// could not place the replicas.
pub(crate) fn error(what: &str, replicas: usize, error: impl std::fmt::Display) -> LoadError {
    let error = error.to_string();
    if replicas > 1 && is_placement(&error) {
        LoadError::Nats(format!(
            "{what} with {replicas} replicas (ROLLCALL_REPLICAS): {error}; more than 1 replica needs a JetStream cluster with at least that many servers up (set ROLLCALL_REPLICAS=1 on a single server)"
        ))
    } else {
        LoadError::Nats(format!("{what}: {error}"))
    }
}

/// Refuses more than one replica on a server that is not part of a cluster, before asking it.
pub(crate) fn check_server(
    server: &async_nats::ServerInfo,
    replicas: usize,
) -> Result<(), LoadError> {
    if replicas > 1 && server.cluster.is_none() {
        return Err(LoadError::Nats(format!(
            "ROLLCALL_REPLICAS is {replicas}, but the NATS server {} is not part of a cluster: more than 1 replica needs a JetStream cluster with at least that many servers (set ROLLCALL_REPLICAS=1 on a single server)",
            server.server_name
        )));
    }
    Ok(())
}

/// Changes an existing stream to `replicas` copies if it has another count.
pub(crate) async fn reconcile(
    jetstream: &Context,
    stream: &mut stream::Stream,
    replicas: usize,
) -> Result<(), LoadError> {
    let current = stream.cached_info().config.clone();
    if current.num_replicas == replicas {
        return Ok(());
    }
    // Never fewer copies by accident: a process (or an operator's command) run without
    // ROLLCALL_REPLICAS must not take a replicated stream down to one server. Lowering is an
    // operator's deliberate act (`nats stream edit --replicas`).
    if current.num_replicas > replicas {
        warn!(
            stream = %current.name,
            replicas = current.num_replicas,
            configured = replicas,
            "the stream keeps more replicas than ROLLCALL_REPLICAS says; leaving it as it is"
        );
        return Ok(());
    }
    info!(
        stream = %current.name,
        from = current.num_replicas,
        to = replicas,
        "changing the stream's replicas to ROLLCALL_REPLICAS"
    );
    let name = current.name.clone();
    jetstream
        .update_stream(stream::Config {
            num_replicas: replicas,
            ..current
        })
        .await
        .map_err(|e| {
            error(
                &format!("changing the replicas of stream {name}"),
                replicas,
                e,
            )
        })?;
    // JetStream places the new replicas and elects a leader among them after answering:
    // wait for that (bounded), so that the stream takes writes when this returns.
    let started = std::time::Instant::now();
    loop {
        let placed = stream
            .info()
            .await
            .ok()
            .and_then(|info| info.cluster.clone())
            .is_some_and(|cluster| {
                cluster.leader.is_some() && cluster.replicas.len() + 1 == replicas
            });
        if placed {
            return Ok(());
        }
        if started.elapsed() > PLACEMENT_WAIT {
            warn!(stream = %name, to = replicas, "the stream's new replicas are not in place yet; JetStream goes on placing them");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How long opening a stream waits for replicas it asked for to be in place.
const PLACEMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_the_server_cannot_place_names_the_setting() {
        let single = error(
            "creating stream X",
            3,
            "jetstream error: replicas > 1 not supported in non-clustered mode (code 500, error code 10074)",
        );
        assert!(single.to_string().contains("ROLLCALL_REPLICAS"), "{single}");
        let short = error(
            "creating stream X",
            5,
            "insufficient resources (code 503, error code 10023)",
        );
        assert!(short.to_string().contains("ROLLCALL_REPLICAS"), "{short}");
        let full = error(
            "creating stream X",
            1,
            "insufficient resources (code 503, error code 10023)",
        );
        assert!(!full.to_string().contains("ROLLCALL_REPLICAS"), "{full}");
        let other = error("creating stream X", 3, "timed out");
        assert!(!other.to_string().contains("ROLLCALL_REPLICAS"), "{other}");
    }
}
