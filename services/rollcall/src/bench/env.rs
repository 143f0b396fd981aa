//! A private, in-process Rollcall for one benchmark run: its own namespace and database, and an
//! [`Instance`] with the SCIM API, projector and access service on 127.0.0.1, removed afterwards.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::HeaderMap;
use rollcall_domain::user::UserEvent;
use rollcall_domain::EventKind;
use rollcall_eventlog::{Actor, Envelope, EventLog, Namespace};
use rollcall_store::tenant::Scope;
use rollcall_store::Store;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::cli::Common;
use crate::connection::Connections;
use crate::instance::{Instance, InstanceHandle};
use crate::role::{Role, Roles};

/// The applications the benchmark asks about.
const POLICIES: &str = r#"
[[application]]
name = "bench"
tenant = "bench"
hosts = ["bench.test"]
[[application.policy]]
name = "everyone"
action = "allow"
include = [{ everyone = true }]
"#;

/// The private Rollcall.
pub struct BenchEnv {
    pub namespace: Namespace,
    pub client: async_nats::Client,
    pub log: EventLog,
    pub store: Store,
    pub database_url: String,
    pub scim: String,
    pub access_base: String,
    pub token: String,
    pub access: rollcall_access::Access,
    instance: Option<InstanceHandle>,
    policy_file: std::path::PathBuf,
}

/// `<server>/<database>` → `<server>/<name>`.
pub fn database_named(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

impl BenchEnv {
    /// The private SCIM API's lookup index.
    pub fn lookup_index(&self) -> Option<&rollcall_scim_api::index::LookupIndex> {
        self.instance.as_ref()?.lookup_index()
    }

    pub async fn start(common: &Common) -> anyhow::Result<Self> {
        let id = Uuid::new_v4().simple().to_string();
        let namespace =
            Namespace::new(format!("bench{}", &id[..12]))?.with_replicas(common.replicas)?;
        let database_url = database_named(
            &common.database_url,
            &format!("rollcall_bench_{}", &id[..12]),
        );
        let client = rollcall_eventlog::connect(&common.nats_url, "rollcall-bench").await?;
        let log = EventLog::open(client.clone(), namespace.clone()).await?;
        let store = Store::connect_with(&database_url, rollcall_store::LIVE_SCHEMA, 32).await?;
        store.create_tenant("bench").await?;
        let token = store
            .create_token("bench", Scope::Scim, Some("bench"))
            .await?
            .token;
        let policy_file = std::env::temp_dir().join(format!("rollcall-{namespace}.toml"));
        std::fs::write(&policy_file, POLICIES)?;
        let access = rollcall_access::Access::new(rollcall_access::Config {
            policies: Some(policy_file.clone()),
            // The scenarios ask /auth as Traefik does (X-Forwarded-Host).
            trusted_proxy: Some(rollcall_access::proxy::TrustedProxy::Traefik),
            ..Default::default()
        })?;
        let roles: Roles = [Role::Scim, Role::Projector, Role::Access]
            .into_iter()
            .collect();
        let instance = Instance::new(roles)
            .access_service(access.clone())
            .listener(Role::Scim, TcpListener::bind("127.0.0.1:0").await?)
            .listener(Role::Access, TcpListener::bind("127.0.0.1:0").await?)
            .start(Connections {
                client: client.clone(),
                log: log.clone(),
                store: store.clone(),
            })
            .await?;
        let address = |role| {
            instance
                .addr(role)
                .with_context(|| format!("the {role} role has no address"))
        };
        let scim = format!("http://{}/scim/v2", address(Role::Scim)?);
        let access_base = format!("http://{}", address(Role::Access)?);
        let env = Self {
            namespace,
            client,
            log,
            store,
            database_url,
            scim,
            access_base,
            token,
            access,
            instance: Some(instance),
            policy_file,
        };
        let ready = format!("{}/readyz", env.access_base);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the access service did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(env)
    }

    /// Appends `count` provisioned users straight to the stream, pipelined (a preload, not a
    /// measurement); returns their ids. Names are `<prefix><n>@bench.test`.
    pub async fn preload_users(&self, prefix: &str, count: usize) -> anyhow::Result<Vec<Uuid>> {
        let jetstream = self.log.jetstream().clone();
        let mut ids = Vec::with_capacity(count);
        let messages = (0..count).map(|n| {
            let id = Uuid::now_v7();
            let attributes = serde_json::json!({"userName": format!("{prefix}{n}@bench.test"), "title": "Engineer",
                "emails": [{"value": format!("{prefix}{n}@bench.test"), "type": "work", "primary": true}]});
            let event = UserEvent::Provisioned {
                attributes: attributes.as_object().cloned().unwrap_or_default(),
                active: true,
            };
            let envelope = envelope("user", id, event.event_type(), event.to_payload());
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", envelope.event_id.to_string().as_str());
            headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
            headers.insert("Rollcall-Event-Type", envelope.event_type.as_str());
            ids.push(id);
            (
                self.namespace.aggregate_subject("bench", "user", &id),
                headers,
                envelope.to_bytes().into(),
            )
        });
        publish_pipelined(&jetstream, messages).await?;
        Ok(ids)
    }

    /// Waits until the projector and the access service hold everything on the stream.
    pub async fn settle(&self) -> anyhow::Result<()> {
        let head = self.log.head().await?;
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let projected = self.store.checkpoint("projector").await?;
            if projected >= head && self.access.applied() >= head {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "projection did not catch up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(instance) = self.instance.take() {
            instance.abort().await;
        }
        let jetstream = async_nats::jetstream::new(self.client.clone());
        for stream in [
            self.namespace.stream(),
            format!("KV_{}", self.namespace.claims_bucket()),
            format!("KV_{}", self.namespace.access_bucket()),
            format!("KV_{}", self.namespace.writers_bucket()),
        ] {
            let _ = jetstream.delete_stream(stream).await;
        }
        self.store.pool().close().await;
        let _ = rollcall_store::drop_database(&self.database_url).await;
        let _ = std::fs::remove_file(&self.policy_file);
    }
}

/// Publishes `messages` (subject, headers, payload) pipelined, with at most 512
/// acknowledgements outstanding, and waits for every acknowledgement (preloads, not
/// measurements).
pub async fn publish_pipelined(
    jetstream: &async_nats::jetstream::Context,
    messages: impl Iterator<Item = (String, HeaderMap, bytes::Bytes)>,
) -> anyhow::Result<()> {
    let mut pending: Vec<PublishAckFuture> = Vec::new();
    for (subject, headers, payload) in messages {
        pending.push(
            jetstream
                .publish_with_headers(subject, headers, payload)
                .await?,
        );
        if pending.len() >= 512 {
            for ack in pending.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in pending {
        ack.await?;
    }
    Ok(())
}

/// An operator-made envelope for preloaded events.
pub fn envelope(
    aggregate: &str,
    id: Uuid,
    event_type: &str,
    payload: serde_json::Value,
) -> Envelope {
    let now = time::OffsetDateTime::now_utc();
    Envelope {
        event_id: Uuid::now_v7(),
        tenant: "bench".into(),
        aggregate_type: aggregate.into(),
        aggregate_id: id,
        version: 1,
        event_type: event_type.into(),
        schema_version: 1,
        occurred_at: now
            .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
            .unwrap_or(now),
        actor: Actor::Operator {
            name: "bench".into(),
        },
        request_id: None,
        traceparent: None,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_database_sits_next_to_the_configured_one() {
        assert_eq!(
            database_named("postgres://postgres@127.0.0.1:5432/rollcall", "b1"),
            "postgres://postgres@127.0.0.1:5432/b1"
        );
        assert_eq!(
            database_named("postgres://u:p@db/rollcall?sslmode=disable", "b1"),
            "postgres://u:p@db/b1?sslmode=disable"
        );
    }
}
