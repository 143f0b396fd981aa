//! Key-value buckets that work on NATS 2.9: the bucket's stream is created directly, because
//! async-nats' `create_key_value` first reads account fields that 2.9 does not send. Each is
//! kept by the namespace's replica count ([`crate::Namespace::replicas`]).

use async_nats::jetstream::kv::Store;
use async_nats::jetstream::{stream, Context};

use crate::log::LoadError;

/// Opens a key-value bucket keeping the last value of each key on `replicas` servers, creating
/// it if missing (and changing an existing bucket's replicas to `replicas`).
pub async fn open_bucket(
    jetstream: &Context,
    bucket: &str,
    description: &str,
    replicas: usize,
) -> Result<Store, LoadError> {
    open(
        jetstream,
        stream::Config {
            storage: stream::StorageType::File,
            duplicate_window: std::time::Duration::from_secs(120),
            ..config(bucket, description, replicas)
        },
    )
    .await
}

/// Opens (creating it if missing) a bucket whose entries expire `max_age` after their last
/// put, kept in memory on `replicas` servers: for liveness (a process that stops putting its
/// key is gone).
pub async fn open_expiring_bucket(
    jetstream: &Context,
    bucket: &str,
    description: &str,
    max_age: std::time::Duration,
    replicas: usize,
) -> Result<Store, LoadError> {
    open(
        jetstream,
        stream::Config {
            storage: stream::StorageType::Memory,
            max_age,
            ..config(bucket, description, replicas)
        },
    )
    .await
}

/// The stream of a bucket as the key-value API expects it.
fn config(bucket: &str, description: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        ..Default::default()
    }
}

async fn open(jetstream: &Context, config: stream::Config) -> Result<Store, LoadError> {
    let bucket = config.name.trim_start_matches("KV_").to_owned();
    let replicas = config.num_replicas;
    let mut stream = jetstream
        .get_or_create_stream(config)
        .await
        .map_err(|e| crate::replicas::error(&format!("opening bucket {bucket}"), replicas, e))?;
    crate::replicas::reconcile(jetstream, &mut stream, replicas).await?;
    jetstream
        .get_key_value(&bucket)
        .await
        .map_err(|e| LoadError::Nats(e.to_string()))
}
