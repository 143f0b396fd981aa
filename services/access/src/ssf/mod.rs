//! The Shared Signals transmitter (OpenID SSF 1.0 with CAEP 1.0 and RISC 1.0): every tenant's
//! lifecycle changes, as signed Security Event Tokens, to any receiver that subscribes.
//!
//! - Discovery and keys: `GET /.well-known/ssf-configuration/<tenant>` (issuer
//!   `<ROLLCALL_SSF_PUBLIC_URL>/<tenant>`) and its JWKS ([`keys`]).
//! - Streams: receivers (tokens of scope `ssf`) create and manage their tenant's streams
//!   ([`http`]); every stream and change to it is an event ([`streams`]).
//! - Signals: derived from the tenant's events in stream order ([`signals`]) and delivered
//!   from a durable position per stream ([`deliver`]): pushed (RFC 8935) by whichever replica
//!   holds the stream's delivery lock, or polled (RFC 8936).

pub mod deliver;
pub mod http;
pub mod keys;
pub mod signals;
pub mod streams;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use rollcall_eventlog::EventLog;
use rollcall_store::tenant::{Scope, TokenVerifier};
use rollcall_store::Store;
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};
use uuid::Uuid;

use crate::folded::Folded;
use crate::keys::Kek;
use keys::SigningKeys;
use streams::Catalog;

/// The transmitter's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct SsfConfig {
    /// The public base URL of the access service (`https://access.example.com`). Set, it
    /// transmits Shared Signals: each tenant's issuer is `<URL>/<tenant>`, discovered at
    /// `<URL>/.well-known/ssf-configuration/<tenant>`. Needs the database.
    #[arg(
        id = "ssf_public_url",
        long = "ssf-public-url",
        env = "ROLLCALL_SSF_PUBLIC_URL"
    )]
    pub public_url: Option<url::Url>,
    /// How many events a push stream may fall behind (its receiver unreachable) before it is
    /// paused, with a reason and a `stream-updated` event.
    #[arg(
        id = "ssf_max_backlog",
        long = "ssf-max-backlog",
        env = "ROLLCALL_SSF_MAX_BACKLOG",
        default_value_t = 100_000
    )]
    pub max_backlog: u64,
    /// Seconds a receiver waits between two verification requests of a stream.
    #[arg(
        id = "ssf_min_verification_interval",
        long = "ssf-min-verification-interval",
        env = "ROLLCALL_SSF_MIN_VERIFICATION_INTERVAL",
        default_value_t = 30
    )]
    pub min_verification_interval: u64,
    /// Let push streams deliver to loopback, private and link-local addresses (and over
    /// plain http there). Off, a receiver cannot make Rollcall post into its own network.
    #[arg(
        id = "ssf_allow_internal_endpoints",
        long = "ssf-allow-internal-endpoints",
        env = "ROLLCALL_SSF_ALLOW_INTERNAL_ENDPOINTS",
        default_value_t = false
    )]
    pub allow_internal_endpoints: bool,
}

impl Default for SsfConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            max_backlog: 100_000,
            min_verification_interval: 30,
            allow_internal_endpoints: false,
        }
    }
}

/// Whether an address is not one a receiver on the internet has: loopback, private,
/// link-local, carrier-grade NAT, unspecified, broadcast, unique-local.
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || a == 0
                || (a == 100 && (b & 0xc0) == 64)
        }
        std::net::IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(v4.into()))
        }
    }
}

/// Resolves receivers' host names to public addresses only.
#[derive(Debug)]
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|address| !is_internal(address.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The transmitter: shared by the HTTP handlers and the delivery tasks.
#[derive(Debug, Clone)]
pub struct Transmitter(Arc<Inner>);

/// What a [`Transmitter`] shares.
#[derive(Debug)]
pub struct Inner {
    config: SsfConfig,
    base: String,
    log: EventLog,
    store: Store,
    kek: Kek,
    keys: SigningKeys,
    catalog: RwLock<Catalog>,
    version: tokio::sync::watch::Sender<u64>,
    tokens: TokenVerifier,
    http: reqwest::Client,
    polls: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<Option<deliver::PollCursor>>>>>,
}

impl std::ops::Deref for Transmitter {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The transmitter's tasks; aborted when dropped.
#[derive(Debug)]
pub struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// How long a change waits to be in this replica's catalog before it is answered.
const CATALOG_WAIT: Duration = Duration::from_secs(5);

impl Transmitter {
    /// Loads (or generates) the signing keys and reads every stream up to the head.
    pub async fn start(
        config: SsfConfig,
        client: &async_nats::Client,
        log: EventLog,
        store: Store,
        kek: Kek,
    ) -> Result<Self, String> {
        let Some(url) = &config.public_url else {
            return Err("ROLLCALL_SSF_PUBLIC_URL is not set".into());
        };
        if !matches!(url.scheme(), "https" | "http") {
            return Err(format!(
                "ROLLCALL_SSF_PUBLIC_URL must be an http(s) URL, not {url}"
            ));
        }
        if url.path() != "/" || url.query().is_some() {
            return Err(format!(
                "ROLLCALL_SSF_PUBLIC_URL must be an origin without a path (https://access.example.com), not {url}: discovery is served at <origin>/.well-known/ssf-configuration/<tenant>"
            ));
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        let keys = SigningKeys::load(client, log.namespace(), kek.clone())
            .await
            .map_err(|e| format!("the Shared Signals keys: {e}"))?;
        let catalog = {
            let mut catalog = Catalog::default();
            crate::folded::catch_up(&log, &mut catalog)
                .await
                .map_err(|e| format!("reading the SSF streams: {e}"))?;
            catalog
        };
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if !config.allow_internal_endpoints {
            // Names that resolve to internal addresses are not connected to (an address in
            // the URL itself is refused when the stream is configured).
            http = http.dns_resolver(Arc::new(PublicOnly));
        }
        let http = http.build().map_err(|e| e.to_string())?;
        let version = catalog.version();
        info!(issuer_base = %base, streams = catalog.live(None).count(), "Shared Signals transmitter ready");
        Ok(Self(Arc::new(Inner {
            config,
            base,
            log,
            store,
            kek,
            keys,
            catalog: RwLock::new(catalog),
            version: tokio::sync::watch::Sender::new(version),
            tokens: TokenVerifier::new(Scope::Ssf),
            http,
            polls: Mutex::default(),
        })))
    }

    /// The issuer of `tenant`'s SETs.
    pub fn issuer(&self, tenant: &str) -> String {
        format!("{}/{tenant}", self.base)
    }

    /// The base URL of the SSF endpoints of `tenant`.
    pub fn endpoints(&self, tenant: &str) -> String {
        format!("{}/ssf/{tenant}", self.base)
    }

    /// The signing keys.
    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// A snapshot of one stream.
    pub fn stream(&self, id: Uuid) -> Option<streams::Entry> {
        self.catalog.read().ok()?.get(id).cloned()
    }

    /// The live streams of a tenant (or all), in id order.
    pub fn streams(&self, tenant: Option<&str>) -> Vec<(Uuid, streams::Entry)> {
        self.catalog
            .read()
            .map(|catalog| {
                catalog
                    .live(tenant)
                    .map(|(id, entry)| (id, entry.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops the poll cursor of a deleted stream.
    pub fn forget_poll(&self, id: Uuid) {
        if let Ok(mut polls) = self.polls.lock() {
            polls.remove(&id);
        }
    }

    /// Waits until this replica's catalog holds the stream event at `sequence`.
    pub async fn caught_up(&self, sequence: u64) -> bool {
        let mut version = self.version.subscribe();
        tokio::time::timeout(CATALOG_WAIT, version.wait_for(|&v| v >= sequence))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Starts following the keys and the streams and delivering push streams; the tasks stop
    /// when the returned [`Tasks`] drops (also when the service's task is aborted, as at a
    /// crash: its deliveries' locks go with them).
    pub fn spawn(&self) -> Tasks {
        Tasks(vec![
            tokio::spawn(self.keys.clone().follow()),
            tokio::spawn(
                self.clone()
                    .follow_streams()
                    .instrument(tracing::info_span!("ssf.follow_streams")),
            ),
            tokio::spawn(
                self.clone()
                    .supervise()
                    .instrument(tracing::info_span!("ssf.deliveries")),
            ),
        ])
    }

    async fn follow_streams(self) {
        loop {
            let after = self.catalog.read().map(|c| c.version()).unwrap_or(0);
            match crate::folded::follow::<Catalog>(&self.log, after).await {
                Ok((mut messages, _)) => {
                    while let Some(message) = messages.next().await {
                        let Ok(message) = message else { break };
                        let Ok(info) = message.info() else { break };
                        let sequence = info.stream_sequence;
                        if let Ok(mut catalog) = self.catalog.write() {
                            crate::folded::fold(&mut *catalog, &message, sequence);
                            // Poll cursors of deleted streams go (on every replica).
                            if let Ok(mut polls) = self.polls.lock() {
                                polls.retain(|id, _| {
                                    catalog.get(*id).is_some_and(|e| e.state.live().is_some())
                                });
                            }
                        }
                        self.version.send_replace(sequence);
                    }
                }
                Err(error) => {
                    warn!(error = %error, "following the SSF streams failed; trying again")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Starts a delivery for every push stream no process delivers, each under its lock (all
    /// on one connection of this task's). The deliveries and their locks end with this task.
    /// A delivery that stopped on an error starts again after a pause that doubles, from 1 s
    /// to a minute.
    async fn supervise(self) {
        let locks = self.store.delivery_locks();
        let mut version = self.version.subscribe();
        let mut tasks: tokio::task::JoinSet<Result<(), String>> = tokio::task::JoinSet::new();
        let mut running: HashMap<tokio::task::Id, (Uuid, tokio::time::Instant)> = HashMap::new();
        let mut pause: HashMap<Uuid, (tokio::time::Instant, Duration)> = HashMap::new();
        loop {
            let now = tokio::time::Instant::now();
            // Every push stream no delivery of this process runs, asked for in one query.
            let wanted: Vec<Uuid> = self
                .streams(None)
                .into_iter()
                .filter(|(id, entry)| {
                    let push = entry.state.live().is_some_and(|live| {
                        matches!(
                            live.spec.delivery,
                            rollcall_domain::ssf::Delivery::Push { .. }
                        )
                    });
                    let waiting = pause.get(id).is_some_and(|(until, _)| *until > now);
                    push && !waiting && !running.values().any(|(r, _)| r == id)
                })
                .map(|(id, _)| id)
                .collect();
            match locks.try_lock_all(&wanted).await {
                Ok(leases) => {
                    for lease in leases {
                        let id = lease.stream;
                        let (transmitter, locks) = (self.clone(), locks.clone());
                        let task = tasks.spawn(
                            deliver::push(transmitter, locks, lease)
                                .instrument(tracing::info_span!("ssf.push", stream = %id)),
                        );
                        running.insert(task.id(), (id, tokio::time::Instant::now()));
                    }
                }
                Err(error) => warn!(error = %error, "the delivery locks could not be asked for"),
            }
            tokio::select! {
                Some(ended) = tasks.join_next_with_id() => {
                    let (task, failed) = match ended {
                        Ok((task, result)) => (task, result.is_err()),
                        Err(error) => {
                            warn!(error = %error, "a delivery task ended abnormally");
                            (error.id(), true)
                        }
                    };
                    if let Some((id, started)) = running.remove(&task) {
                        // A delivery that ran for a minute or more starts over from 1 s.
                        if started.elapsed() >= Duration::from_secs(60) {
                            pause.remove(&id);
                        }
                        if failed {
                            let wait = pause.get(&id).map_or(Duration::from_secs(1), |(_, w)| (*w * 2).min(Duration::from_secs(60)));
                            pause.insert(id, (tokio::time::Instant::now() + wait, wait));
                        } else {
                            pause.remove(&id);
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = version.changed() => {}
            }
            pause.retain(|id, _| {
                running.values().any(|(r, _)| r == id) || self.stream(*id).is_some()
            });
        }
    }
}
