//! Feeds the directory from NATS: the whole access bucket at start (the service is not ready
//! until it has caught up), then every change as it arrives. Announces the event sequence it
//! has applied on `<namespace>.checkpoints.access`, so that SCIM writes can answer only once
//! access decisions reflect them. Tracks when NATS last answered, for the staleness bound.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use futures::StreamExt;
use rollcall_eventlog::{LoadError, Namespace};
use time::OffsetDateTime;
use tracing::{error, info, warn};

use crate::directory::Directory;

/// The consumer name the access service announces its checkpoint under.
pub const CHECKPOINT_NAME: &str = "access";

/// Liveness of the feed.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    last_contact_ms: AtomicI64,
}

impl Health {
    /// Whether the initial load finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn touch(&self) {
        let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        self.last_contact_ms.store(now, Ordering::Release);
    }

    /// How long since NATS last answered.
    pub fn silence(&self) -> Duration {
        let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let last = self.last_contact_ms.load(Ordering::Acquire);
        Duration::from_millis((now - last).max(0) as u64)
    }
}

/// The name the access service announces partition `partition`'s checkpoint under
/// (`access` in an unpartitioned installation, `access-p<k>` otherwise).
pub fn checkpoint_name(partition: Option<u16>) -> String {
    match partition {
        None => CHECKPOINT_NAME.to_owned(),
        Some(k) => format!("{CHECKPOINT_NAME}-p{k}"),
    }
}

/// The header naming the access service (one per process and service) that announces: a
/// write that waits for the access services waits for every one that announces.
pub const REPLICA_HEADER: &str = rollcall_eventlog::access::REPLICA_HEADER;

async fn announce(
    client: &async_nats::Client,
    namespace: &Namespace,
    replica: &str,
    partition: Option<u16>,
    sequence: u64,
) {
    let subject = namespace.checkpoint_subject(&checkpoint_name(partition));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(REPLICA_HEADER, replica);
    if let Err(error) = client
        .publish_with_headers(subject, headers, sequence.to_string().into())
        .await
    {
        warn!(error = %error, "announcing the access checkpoint failed");
    }
}

async fn announce_all(
    client: &async_nats::Client,
    namespace: &Namespace,
    replica: &str,
    directory: &RwLock<Directory>,
) {
    let applied = directory
        .read()
        .map(|d| d.applied_by_partition())
        .unwrap_or_default();
    for (partition, sequence) in applied {
        announce(client, namespace, replica, partition, sequence).await;
    }
}

/// A watch that has delivered nothing for this long while the bucket is ahead is started again.
const STALLED_AFTER: Duration = Duration::from_secs(10);

/// Follows the access bucket into `directory` until the client closes; restarts the watch
/// after an error.
pub async fn follow(
    client: async_nats::Client,
    namespace: Namespace,
    directory: Arc<RwLock<Directory>>,
    health: Arc<Health>,
    staleness: Duration,
    fail_open: bool,
) {
    let replica = uuid::Uuid::new_v4().to_string();
    // Liveness: a round trip to NATS every second; announcements double as a heartbeat for
    // writers that started after the last change. It runs within this future, not as a task of
    // its own: an access service that stops following (its `serve` ended) stops announcing, or
    // every write would wait for its stale checkpoint.
    let heartbeat = {
        let (client, health, directory, namespace, replica) = (
            client.clone(),
            health.clone(),
            directory.clone(),
            namespace.clone(),
            replica.clone(),
        );
        async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            let mut stale = false;
            loop {
                interval.tick().await;
                if tokio::time::timeout(Duration::from_secs(1), client.flush())
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    health.touch();
                }
                let now_stale = health.is_ready() && health.silence() >= staleness;
                if now_stale != stale {
                    stale = now_stale;
                    if stale && fail_open {
                        error!(silence_ms = health.silence().as_millis() as u64, "NATS unreachable past the staleness bound; deciding from stale state (fail-open)");
                    } else if stale {
                        error!(silence_ms = health.silence().as_millis() as u64, "NATS unreachable past the staleness bound; denying every request (fail-closed)");
                    } else {
                        info!("NATS reachable again; access state is fresh");
                    }
                }
                if health.is_ready() {
                    announce_all(&client, &namespace, &replica, &directory).await;
                }
            }
        }
    };
    let following = async {
        loop {
            if let Err(error) = watch(&client, &namespace, &replica, &directory, &health).await {
                warn!(error = %error, "following the access bucket failed; reloading");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::join!(heartbeat, following);
}

/// Reads the whole access state once (the policy tester at the command line): every entry of
/// the access bucket as it is now.
#[tracing::instrument(skip_all, err)]
pub async fn load(
    client: &async_nats::Client,
    namespace: &Namespace,
) -> Result<Directory, LoadError> {
    let nats = |e: &dyn std::fmt::Display| LoadError::Nats(e.to_string());
    let jetstream = async_nats::jetstream::new(client.clone());
    // Read only: a mistyped namespace finds nothing instead of creating a bucket.
    let bucket = jetstream
        .get_key_value(namespace.access_bucket())
        .await
        .map_err(|e| {
            LoadError::Nats(format!(
                "the access bucket {}: {e}",
                namespace.access_bucket()
            ))
        })?;
    let mut directory = Directory::default();
    let mut stream = jetstream
        .get_stream(format!("KV_{}", namespace.access_bucket()))
        .await
        .map_err(|e| nats(&e))?;
    if stream.info().await.map_err(|e| nats(&e))?.state.messages == 0 {
        return Ok(directory);
    }
    let mut entries = bucket.watch_with_history(">").await.map_err(|e| nats(&e))?;
    while let Some(entry) = tokio::time::timeout(STALLED_AFTER, entries.next())
        .await
        .map_err(|_| LoadError::Nats("the access bucket did not answer".into()))?
    {
        let entry = entry.map_err(|e| nats(&e))?;
        let value = (entry.operation == Operation::Put).then_some(entry.value.as_ref());
        if let Err(error) = directory.apply(&entry.key, value) {
            warn!(error = %error, "ignoring an unreadable access entry");
        }
        if entry.delta == 0 {
            return Ok(directory);
        }
    }
    Err(LoadError::Nats("the access bucket watch ended".into()))
}

async fn watch(
    client: &async_nats::Client,
    namespace: &Namespace,
    replica: &str,
    directory: &RwLock<Directory>,
    health: &Health,
) -> Result<(), LoadError> {
    let jetstream = async_nats::jetstream::new(client.clone());
    let bucket = rollcall_eventlog::access::open_bucket(&jetstream, namespace).await?;
    let mut stream = jetstream
        .get_stream(format!("KV_{}", namespace.access_bucket()))
        .await
        .map_err(|e| LoadError::Nats(e.to_string()))?;
    let empty = stream
        .info()
        .await
        .map_err(|e| LoadError::Nats(e.to_string()))?
        .state
        .messages
        == 0;
    let mut entries = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| LoadError::Nats(e.to_string()))?;
    health.touch();
    if empty {
        mark_ready(client, namespace, replica, directory, health).await;
    }
    let mut seen = 0;
    loop {
        let entry = match tokio::time::timeout(STALLED_AFTER, entries.next()).await {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            // NATS can leave a watch silent after a server dies (seen on 2.9 and the current
            // release), with no error: one that delivers nothing while the bucket is ahead of
            // it is started again. The bucket is asked with a bound of its own.
            Err(_) => match tokio::time::timeout(STALLED_AFTER, stream.info()).await {
                Ok(Ok(info)) if info.state.last_sequence > seen => {
                    return Err(LoadError::Nats(format!(
                        "the watch delivers nothing while the bucket is ahead of it ({seen} < {})",
                        info.state.last_sequence
                    )));
                }
                _ => continue,
            },
        };
        let entry = entry.map_err(|e| LoadError::Nats(e.to_string()))?;
        seen = seen.max(entry.revision);
        health.touch();
        let value = (entry.operation == Operation::Put).then_some(entry.value.as_ref());
        let applied = match directory.write() {
            Ok(mut directory) => directory.apply(&entry.key, value),
            Err(_) => return Err(LoadError::Nats("directory lock poisoned".into())),
        };
        match applied {
            Ok(Some((partition, sequence))) if health.is_ready() => {
                announce(client, namespace, replica, partition, sequence).await
            }
            Ok(_) => {}
            Err(error) => warn!(error = %error, "ignoring an unreadable access entry"),
        }
        if entry.delta == 0 && !health.is_ready() {
            mark_ready(client, namespace, replica, directory, health).await;
        }
    }
    Err(LoadError::Nats("the access bucket watch ended".into()))
}

async fn mark_ready(
    client: &async_nats::Client,
    namespace: &Namespace,
    replica: &str,
    directory: &RwLock<Directory>,
    health: &Health,
) {
    health.ready.store(true, Ordering::Release);
    let (applied, (users, groups)) = directory
        .read()
        .map(|d| (d.applied(), d.size()))
        .unwrap_or_default();
    info!(applied, users, groups, "access state loaded; ready");
    announce_all(client, namespace, replica, directory).await;
}
