//! What the machine and the servers underneath can do, measured in the same run: a constant
//! HTTP handler, raw JetStream appends with Rollcall's headers (one at a time and pipelined),
//! and a durable consumer writing 500-row batches to PostgreSQL with a checkpoint.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use futures::StreamExt;
use tokio::net::TcpListener;
use uuid::Uuid;

use super::env::{envelope, publish_pipelined, BenchEnv};
use super::load::{drive, summarize, Measured};

/// `GET /` answering a constant, over keep-alive connections.
pub async fn http(concurrency: usize, duration: Duration) -> anyhow::Result<Measured> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let _ = axum::serve(listener, app).await;
    });
    let http = reqwest::Client::new();
    let measured = drive(concurrency, u64::MAX, duration, move |_, _| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    server.abort();
    Ok(measured)
}

async fn scratch(
    env: &BenchEnv,
    name: &str,
) -> anyhow::Result<(jetstream::Context, String, String)> {
    let jetstream = env.log.jetstream().clone();
    let stream_name = format!("{}_{name}", env.namespace.stream());
    let subjects = format!("{}.{}.>", env.namespace, name.to_lowercase());
    let _ = jetstream.delete_stream(&stream_name).await;
    jetstream
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![subjects.clone()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    Ok((
        jetstream,
        stream_name,
        subjects.trim_end_matches(".>").to_owned(),
    ))
}

fn message(prefix: &str) -> (String, HeaderMap, bytes::Bytes) {
    let id = Uuid::now_v7();
    let event = envelope(
        "user",
        id,
        "user.deactivated",
        serde_json::json!({"type": "user.deactivated"}),
    );
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.event_id.to_string().as_str());
    headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
    headers.insert("Rollcall-Event-Type", "user.deactivated");
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    (format!("{prefix}.{id}"), headers, event.to_bytes().into())
}

/// Raw appends: each waits for its ack (`pipelined: false`), or up to 256 in flight.
pub async fn publish(
    env: &BenchEnv,
    pipelined: bool,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let (jetstream, stream_name, prefix) =
        scratch(env, if pipelined { "PIPELINED" } else { "SYNC" }).await?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    if pipelined {
        let mut window = Vec::with_capacity(256);
        while started.elapsed() < duration {
            for _ in 0..256 {
                let (subject, headers, payload) = message(&prefix);
                window.push((
                    Instant::now(),
                    jetstream
                        .publish_with_headers(subject, headers, payload)
                        .await?,
                ));
            }
            for (sent, ack) in window.drain(..) {
                match ack.await {
                    Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1_000.0),
                    Err(_) => errors += 1,
                }
            }
        }
    } else {
        while started.elapsed() < duration {
            let (subject, headers, payload) = message(&prefix);
            let sent = Instant::now();
            match jetstream
                .publish_with_headers(subject, headers, payload)
                .await?
                .await
            {
                Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1_000.0),
                Err(_) => errors += 1,
            }
        }
    }
    let measured = summarize(latencies, errors, started.elapsed().as_secs_f64());
    let _ = jetstream.delete_stream(&stream_name).await;
    Ok(measured)
}

/// A durable consumer applying 500-message batches to a PostgreSQL table with a checkpoint, in
/// one transaction per batch: the most a projection can do here.
pub async fn projection(env: &BenchEnv, events: usize) -> anyhow::Result<Measured> {
    let (jetstream, stream_name, prefix) = scratch(env, "PROJECTION").await?;
    publish_pipelined(&jetstream, (0..events).map(|_| message(&prefix))).await?;
    let pool = env.store.pool();
    sqlx::query("CREATE TABLE IF NOT EXISTS public.bench_projection (sequence bigint PRIMARY KEY, payload jsonb NOT NULL)").execute(pool).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS public.bench_checkpoint (name text PRIMARY KEY, sequence bigint NOT NULL)").execute(pool).await?;
    let stream = jetstream.get_stream(&stream_name).await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::All,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut batches = consumer
        .stream()
        .max_messages_per_batch(500)
        .messages()
        .await?
        .ready_chunks(500);
    let (mut applied, mut latencies) = (0usize, Vec::new());
    while applied < events {
        let Some(batch) = batches.next().await else {
            break;
        };
        let begun = Instant::now();
        let messages: Vec<_> = batch
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut rows: Vec<(i64, serde_json::Value)> = Vec::with_capacity(messages.len());
        for message in &messages {
            let sequence = message
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .stream_sequence as i64;
            rows.push((sequence, serde_json::from_slice(&message.payload)?));
        }
        let mut transaction = env.store.begin().await?;
        let mut insert =
            sqlx::QueryBuilder::new("INSERT INTO public.bench_projection (sequence, payload) ");
        insert.push_values(&rows, |mut b, (sequence, payload)| {
            b.push_bind(*sequence).push_bind(sqlx::types::Json(payload));
        });
        insert.build().execute(&mut *transaction).await?;
        let last = rows.last().map_or(0, |(s, _)| *s);
        sqlx::query("INSERT INTO public.bench_checkpoint VALUES ('bench', $1) ON CONFLICT (name) DO UPDATE SET sequence = $1")
            .bind(last)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        if let Some(message) = messages.last() {
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        applied += rows.len();
        latencies.extend(std::iter::repeat_n(
            begun.elapsed().as_secs_f64() * 1_000.0 / rows.len().max(1) as f64,
            rows.len(),
        ));
    }
    let measured = summarize(latencies, 0, started.elapsed().as_secs_f64());
    let _ = jetstream.delete_stream(&stream_name).await;
    sqlx::query("DROP TABLE IF EXISTS public.bench_projection, public.bench_checkpoint")
        .execute(pool)
        .await?;
    Ok(measured)
}
