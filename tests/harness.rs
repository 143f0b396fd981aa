//! The end-to-end test harness: a private PostgreSQL database and NATS namespace per test
//! ([`Installation`]), Rollcall's roles started in-process on 127.0.0.1:0 through
//! [`rollcall::Instance`] as `rollcall serve` starts them ([`TestEnv`]), an HTTP client speaking SCIM
//! as Entra does, and waiting on conditions with a deadline. Everything a test creates is
//! removed when its `TestEnv` drops, also when the test fails.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use rollcall::{Connections, Instance, InstanceHandle, Role, Roles};
use rollcall_eventlog::{EventLog, Namespace};
use rollcall_store::tenant::Scope;
use rollcall_store::Store;
use serde_json::Value;
use tokio::task::JoinHandle;

/// PostgreSQL server the tests use (a database per test is created on it).
pub fn database_server() -> String {
    std::env::var("ROLLCALL_TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// NATS the tests use.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// An HTTP response: status, headers and JSON body (`Null` if none).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body.
    pub body: Value,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The resource ids of a ListResponse.
    pub fn ids(&self) -> Vec<String> {
        self.body["Resources"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|x| x["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A SCIM client with one tenant's token.
#[derive(Debug, Clone)]
pub struct Scim {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Scim {
    /// A client of the SCIM API at `base` with a bearer `token`.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.into(),
            token: Some(token.into()),
        }
    }

    /// Sends a request to `path` (relative to the SCIM base, e.g. `/Users?filter=…`).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Response {
        self.send_with(method, path, body, &[]).await
    }

    /// Sends a request with extra headers.
    pub async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/scim+json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Response {
            status,
            headers,
            body,
        }
    }

    /// GET
    pub async fn get(&self, path: &str) -> Response {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// POST
    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// PUT
    pub async fn put(&self, path: &str, body: &Value) -> Response {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    /// PATCH
    pub async fn patch(&self, path: &str, body: &Value) -> Response {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    /// DELETE
    pub async fn delete(&self, path: &str) -> Response {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a user, asserting `201`; returns its id.
    pub async fn create_user(&self, body: &Value) -> String {
        let response = self.post("/Users", body).await;
        assert_eq!(response.status, 201, "{:?}", response.body);
        response.body["id"].as_str().unwrap().to_owned()
    }

    /// Creates a group, asserting `201`; returns its id.
    pub async fn create_group(&self, body: &Value) -> String {
        let response = self.post("/Groups", body).await;
        assert_eq!(response.status, 201, "{:?}", response.body);
        response.body["id"].as_str().unwrap().to_owned()
    }

    /// The same client with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Scim {
        Scim {
            token: token.map(str::to_owned),
            ..self.clone()
        }
    }
}

/// Percent-encodes a query value (as Entra does: spaces as %20, quotes as %22).
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The applications every test environment declares: `eng.test` for group `Engineering`,
/// `wiki.test` for everyone of tenant `test`.
pub const POLICIES: &str = r#"
[[application]]
name = "engineering"
tenant = "test"
hosts = ["eng.test"]
[[application.policy]]
name = "engineers"
action = "allow"
include = [{ group = "Engineering" }]

[[application]]
name = "wiki"
tenant = "test"
hosts = ["wiki.test"]
[[application.policy]]
name = "everyone"
action = "allow"
include = [{ everyone = true }]
"#;

pub mod nats;
pub mod signin;

/// The access configuration of every test environment.
pub fn access_config(policies: &std::path::Path) -> rollcall_access::Config {
    // Configured keys, as in production: sessions outlive a restart of the access service.
    let keys = "test=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVm";
    rollcall_access::Config {
        policies: Some(policies.to_owned()),
        session_keys: Some(keys.to_owned().into()),
        // `forward_auth` asks as nginx `auth_request` does.
        trusted_proxy: Some(rollcall_access::proxy::TrustedProxy::Nginx),
        ..Default::default()
    }
}

/// A private installation for one test: its own namespace (stream, subjects, buckets) on a
/// NATS server, its own database with tenant `test`, a SCIM and an audit token and the policy
/// file; no role running. Everything is removed when it drops, also when the test fails.
/// [`TestEnv`] starts Rollcall's roles on one; a test can start [`rollcall::Instance`]s of its
/// own on one (as separate processes would run).
#[derive(Debug)]
pub struct Installation {
    /// The namespace of its stream, subjects and buckets.
    pub namespace: Namespace,
    /// A NATS connection.
    pub client: async_nats::Client,
    /// Its event log.
    pub log: EventLog,
    /// Its read models.
    pub store: Store,
    /// Its database URL.
    pub database_url: String,
    /// The tenant created for the test.
    pub tenant: String,
    /// A SCIM token of that tenant.
    pub token: String,
    /// An audit token of that tenant.
    pub audit_token: String,
    /// The policy file ([`POLICIES`]).
    pub policy_file: std::path::PathBuf,
    /// The NATS server's URL.
    pub nats_url: String,
}

impl Installation {
    /// Creates an installation on the NATS server at `nats_url`.
    pub async fn create_on(nats_url: String) -> Self {
        Self::create_on_cluster(nats_url, 1).await
    }

    /// Creates an installation on the NATS servers at `nats_urls` (comma-separated, as
    /// `NATS_URL` takes them) whose streams and buckets are kept by `replicas` servers.
    pub async fn create_on_cluster(nats_url: String, replicas: usize) -> Self {
        rollcall_telemetry::init_for_tests();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let namespace = Namespace::new(format!("t{}", &id[..16]))
            .unwrap()
            .with_replicas(replicas)
            .unwrap();
        let database_url = format!("{}/rollcall_it_{id}", database_server());
        Self::open(nats_url, namespace, database_url).await
    }

    /// The installation of `namespace` and `database_url` on the NATS server at `nats_url`,
    /// created if missing (as another process of the same test sees it), with tenant `test` and
    /// tokens of its own. It removes them too when it drops.
    pub async fn open(nats_url: String, namespace: Namespace, database_url: String) -> Self {
        rollcall_telemetry::init_for_tests();
        let client = rollcall_eventlog::connect(&nats_url, "rollcall-test")
            .await
            .expect("NATS must be running (scripts/services.sh)");
        let log = open_log(&client, &namespace).await;
        let store = Store::connect_with(&database_url, rollcall_store::LIVE_SCHEMA, 8)
            .await
            .expect("PostgreSQL must be running");
        store.create_tenant("test").await.unwrap();
        let token = store
            .create_token("test", Scope::Scim, Some("test"))
            .await
            .unwrap()
            .token;
        let audit_token = store
            .create_token("test", Scope::Audit, Some("auditor"))
            .await
            .unwrap()
            .token;
        let policy_file =
            std::env::temp_dir().join(format!("rollcall-{}.toml", namespace.as_str()));
        std::fs::write(&policy_file, POLICIES).unwrap();
        Self {
            namespace,
            client,
            log,
            store,
            database_url,
            tenant: "test".into(),
            token,
            audit_token,
            policy_file,
            nats_url,
        }
    }

    /// An access service of this installation with `config`: its policies from the event
    /// stream (the policy file's differences appended first), as `rollcall serve` builds it.
    pub async fn access(&self, config: rollcall_access::Config) -> rollcall_access::Access {
        rollcall_access::Access::from_installation(
            config,
            &self.client,
            &self.log,
            Some(&self.store),
        )
        .await
        .unwrap()
    }

    /// Its connections, shared (the roles of one process).
    pub fn connections(&self) -> Connections {
        Connections {
            client: self.client.clone(),
            log: self.log.clone(),
            store: self.store.clone(),
        }
    }

    /// Connections of their own (a NATS connection and a pool, as another process has).
    pub async fn connect_again(&self) -> Connections {
        let client = rollcall_eventlog::connect(&self.nats_url, "rollcall-test")
            .await
            .unwrap();
        let log = open_log(&client, &self.namespace).await;
        let store = Store::connect_with(&self.database_url, rollcall_store::LIVE_SCHEMA, 8)
            .await
            .unwrap();
        Connections { client, log, store }
    }
}

impl Drop for Installation {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.policy_file);
        let namespace = self.namespace.clone();
        let database_url = self.database_url.clone();
        let nats_url = self.nats_url.clone();
        // Cleanup needs async IO; run it on a runtime of its own so that it also happens
        // when the test panicked.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                // One attempt: a test's own servers may be gone already.
                let servers = rollcall_eventlog::connect::servers(&nats_url);
                if let Ok(client) = async_nats::connect(servers.unwrap()).await {
                    let jetstream = async_nats::jetstream::new(client);
                    let _ = jetstream.delete_stream(namespace.stream()).await;
                    // A migration's stream, and the settings that name it.
                    let _ = jetstream
                        .delete_stream(format!("{}_SEALED", namespace.stream()))
                        .await;
                    let _ = jetstream
                        .delete_stream(format!("KV_{}", namespace.config_bucket()))
                        .await;
                    let _ = jetstream
                        .delete_stream(format!("KV_{}", namespace.claims_bucket()))
                        .await;
                    let _ = jetstream
                        .delete_stream(format!("KV_{}", namespace.access_bucket()))
                        .await;
                    let _ = jetstream
                        .delete_stream(format!("KV_{}", namespace.writers_bucket()))
                        .await;
                }
                let _ = rollcall_store::drop_database(&database_url).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Binds a listener on a free loopback port.
pub async fn loopback() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// The roles `names` (`"scim,audit"`).
pub fn roles(names: &str) -> Roles {
    names.parse().unwrap()
}

/// A private Rollcall for one test: an [`Installation`] with the SCIM API and the audit API
/// running in one [`rollcall::Instance`], the projector and the access service each in one of
/// their own (so that a test can kill or replace them), all on 127.0.0.1:0.
#[allow(missing_debug_implementations)]
pub struct TestEnv {
    /// The namespace of its stream, subjects and buckets.
    pub namespace: Namespace,
    /// Its NATS connection.
    pub client: async_nats::Client,
    /// Its event log.
    pub log: EventLog,
    /// Its read models.
    pub store: Store,
    /// Its database URL.
    pub database_url: String,
    /// The SCIM base URL.
    pub base: String,
    /// The tenant created for the test.
    pub tenant: String,
    /// A SCIM token of that tenant.
    pub token: String,
    /// The access service (for issuing sessions).
    pub access: rollcall_access::Access,
    /// The access service's base URL.
    pub access_base: String,
    /// The audit API's base URL.
    pub audit_base: String,
    /// An audit token of the test's tenant.
    pub audit_token: String,
    /// The policy file.
    pub policy_file: std::path::PathBuf,
    /// The NATS server's URL.
    pub nats_url: String,
    /// The events the environment wrote before the test began (the access service appended the
    /// test policy file's applications), all applied by the projector.
    pub setup_events: u64,
    /// The SCIM API and the audit API.
    apis: Option<InstanceHandle>,
    /// SCIM API replicas started by [`TestEnv::replica`].
    replicas: Vec<InstanceHandle>,
    /// The projector's instance, as its start task returns it.
    projector: Option<JoinHandle<InstanceHandle>>,
    access_instance: Option<InstanceHandle>,
    /// Dropped last: removes the namespace and the database.
    installation: Installation,
}

/// The SCIM configuration of the test environments: the access service runs in an instance of
/// its own, so writes are told to wait for it (as `rollcall serve` does when it runs both).
pub fn scim_config() -> rollcall_scim_api::Config {
    rollcall_scim_api::Config {
        wait_for_access: true,
        ..Default::default()
    }
}

impl TestEnv {
    /// Starts a private Rollcall with tenant `test`.
    pub async fn start() -> Self {
        Self::start_on(nats_url()).await
    }

    /// Starts a private Rollcall with tenant `test` on the NATS server at `nats_url` (a test's
    /// own [`nats::NatsServer`], for example).
    pub async fn start_on(nats_url: String) -> Self {
        Self::start_on_cluster(nats_url, 1).await
    }

    /// Starts a private Rollcall with tenant `test` on the NATS servers at `nats_urls`
    /// (comma-separated; a test's own [`nats::NatsCluster`]), its streams and buckets kept by
    /// `replicas` servers.
    pub async fn start_on_cluster(nats_urls: String, replicas: usize) -> Self {
        Self::start_in(Installation::create_on_cluster(nats_urls, replicas).await).await
    }

    /// Starts Rollcall on an installation (one another process uses too, for example).
    pub async fn start_in(installation: Installation) -> Self {
        let apis = Instance::new(roles("scim,audit"))
            .scim(scim_config())
            .listener(Role::Scim, loopback().await)
            .listener(Role::Audit, loopback().await)
            .start(installation.connections())
            .await
            .unwrap();
        let base = format!("http://{}/scim/v2", apis.addr(Role::Scim).unwrap());
        let audit_base = format!("http://{}", apis.addr(Role::Audit).unwrap());
        let access = installation
            .access(access_config(&installation.policy_file))
            .await;
        let mut env = Self {
            namespace: installation.namespace.clone(),
            client: installation.client.clone(),
            log: installation.log.clone(),
            store: installation.store.clone(),
            database_url: installation.database_url.clone(),
            base,
            tenant: installation.tenant.clone(),
            token: installation.token.clone(),
            access: access.clone(),
            access_base: String::new(),
            audit_base,
            audit_token: installation.audit_token.clone(),
            policy_file: installation.policy_file.clone(),
            nats_url: installation.nats_url.clone(),
            setup_events: 0,
            apis: Some(apis),
            replicas: Vec::new(),
            projector: None,
            access_instance: None,
            installation,
        };
        env.start_projector();
        env.start_access(access).await;
        // Every test begins on a settled audit log.
        let head = env.head().await;
        eventually(
            "the projector applies the set-up events",
            Duration::from_secs(10),
            || env.projected(head),
        )
        .await;
        env.setup_events = env.store.audit_count().await.unwrap();
        env
    }

    /// Whether the projector (every partition's) has applied the stream up to `sequence`.
    pub async fn projected(&self, sequence: u64) -> bool {
        let name = rollcall_projector::DEFAULT_NAME;
        let count = self.store.partitions().await.unwrap();
        if count <= 1 {
            return self.store.checkpoint(name).await.unwrap() >= sequence;
        }
        let partitioning = rollcall_eventlog::partition::Partitioning::new(count.into()).unwrap();
        for partition in partitioning.all() {
            if self.store.checkpoint(&partition.name(name)).await.unwrap() < sequence {
                return false;
            }
        }
        true
    }

    /// Starts an access service (with fresh, empty state) and waits until it is ready.
    pub async fn start_access(&mut self, access: rollcall_access::Access) {
        self.start_access_unready(access).await;
        self.wait_for_access().await;
    }

    /// Waits until the access service answers `/readyz` with `200`.
    pub async fn wait_for_access(&self) {
        let ready = format!("{}/readyz", self.access_base);
        eventually(
            "the access service is ready",
            Duration::from_secs(10),
            || {
                let ready = ready.clone();
                async move { reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) }
            },
        )
        .await;
    }

    /// Replaces the access service with `access`, without waiting for it to be ready.
    pub async fn start_access_unready(&mut self, access: rollcall_access::Access) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.serve_access(listener, access).await;
    }

    /// Replaces the access service with `access` serving on `listener`, without waiting for it
    /// to be ready.
    pub async fn serve_access(
        &mut self,
        listener: tokio::net::TcpListener,
        access: rollcall_access::Access,
    ) {
        self.stop_access().await;
        self.access_base = format!("http://{}", listener.local_addr().unwrap());
        self.access = access.clone();
        let instance = Instance::new(roles("access"))
            .access_service(access)
            .listener(Role::Access, listener)
            .start(self.installation.connections())
            .await
            .unwrap();
        self.access_instance = Some(instance);
    }

    async fn stop_access(&mut self) {
        if let Some(instance) = self.access_instance.take() {
            instance.abort().await;
        }
    }

    /// Stops the access service and starts a new one with the same configuration, which must
    /// rebuild its state from NATS.
    pub async fn restart_access(&mut self) {
        self.stop_access().await;
        let access = self
            .installation
            .access(access_config(&self.policy_file))
            .await;
        self.start_access(access).await;
    }

    /// Replaces the access service with one built from the test configuration as `change`
    /// leaves it, given the address it will serve on (its public URL), and waits until it is
    /// ready.
    pub async fn restart_access_with(
        &mut self,
        change: impl FnOnce(&mut rollcall_access::Config, std::net::SocketAddr),
    ) {
        let listener = loopback().await;
        let mut config = access_config(&self.policy_file);
        change(&mut config, listener.local_addr().unwrap());
        let access = self.installation.access(config).await;
        self.serve_access(listener, access).await;
        self.wait_for_access().await;
    }

    /// Another access service of this installation (as another process would run it), built
    /// from the test configuration as `change` leaves it; with its address.
    pub async fn another_access(
        &self,
        change: impl FnOnce(&mut rollcall_access::Config, std::net::SocketAddr),
    ) -> (InstanceHandle, String) {
        let listener = loopback().await;
        let addr = listener.local_addr().unwrap();
        let mut config = access_config(&self.policy_file);
        change(&mut config, addr);
        let access = self.installation.access(config).await;
        let instance = Instance::new(roles("access"))
            .access_service(access)
            .listener(Role::Access, listener)
            .start(self.installation.connections())
            .await
            .unwrap();
        (instance, format!("http://{addr}"))
    }

    /// An access service of this installation built from `config`, as `rollcall serve` builds
    /// it (not yet serving).
    pub async fn installation_access(
        &self,
        config: rollcall_access::Config,
    ) -> rollcall_access::Access {
        self.installation.access(config).await
    }

    /// A session for a user of the test's tenant.
    pub fn session(&self, user: &str) -> String {
        self.access
            .issue_session(&self.tenant, uuid::Uuid::parse_str(user).unwrap())
            .unwrap()
    }

    /// GETs the audit API with the test's audit token; returns status and JSON.
    pub async fn audit(&self, path: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.audit_base))
            .bearer_auth(&self.audit_token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Asks the access service over HTTP, as nginx `auth_request` would (`X-Original-URL`).
    pub async fn forward_auth(&self, host: &str, session: Option<&str>) -> Response {
        let http = reqwest::Client::new();
        let mut request = http
            .get(format!("{}/auth", self.access_base))
            .header("X-Original-URL", format!("https://{host}/"));
        if let Some(session) = session {
            request = request.header("Cookie", format!("rollcall_session={session}"));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = Value::String(response.text().await.unwrap());
        Response {
            status,
            headers,
            body,
        }
    }

    /// Starts another SCIM API instance on the same stream and database (as a second replica
    /// would run); returns a client of it with the test's token.
    pub async fn replica(&mut self) -> Scim {
        self.replica_with(scim_config()).await
    }

    /// [`TestEnv::replica`] with its own SCIM configuration.
    pub async fn replica_with(&mut self, config: rollcall_scim_api::Config) -> Scim {
        let instance = Instance::new(roles("scim"))
            .scim(config)
            .listener(Role::Scim, loopback().await)
            .start(self.installation.connections())
            .await
            .unwrap();
        let base = format!("http://{}/scim/v2", instance.addr(Role::Scim).unwrap());
        self.replicas.push(instance);
        Scim {
            http: reqwest::Client::new(),
            base,
            token: Some(self.token.clone()),
        }
    }

    /// New connections to the test's installation (a process of its own would open them).
    pub async fn connect_again(&self) -> Connections {
        self.installation.connect_again().await
    }

    /// Starts the projector (if it is not running).
    pub fn start_projector(&mut self) {
        if self.projector.is_some() {
            return;
        }
        let connections = self.installation.connections();
        self.projector = Some(tokio::spawn(async move {
            Instance::new(roles("projector"))
                .start(connections)
                .await
                .expect("the projector starts")
        }));
    }

    /// Kills the projector wherever it is (as a crash would).
    pub async fn kill_projector(&mut self) {
        if let Some(projector) = self.projector.take() {
            if let Ok(instance) = projector.await {
                instance.abort().await;
            }
        }
    }

    /// A SCIM client of the test's tenant.
    pub fn scim(&self) -> Scim {
        Scim {
            http: reqwest::Client::new(),
            base: self.base.clone(),
            token: Some(self.token.clone()),
        }
    }

    /// Creates another tenant; returns a SCIM client for it.
    pub async fn tenant(&self, name: &str) -> Scim {
        self.store.create_tenant(name).await.unwrap();
        let token = self
            .store
            .create_token(name, Scope::Scim, None)
            .await
            .unwrap()
            .token;
        self.scim().with_token(Some(&token))
    }

    /// Asserts that tenant `test` is unaffected by whatever another tenant just did: a user
    /// create answers `201` promptly, and after that user's deactivation (Entra's `PATCH active
    /// "False"`) answers `200`, `/auth` denies their session within a second.
    pub async fn assert_other_tenant_unaffected(&self) {
        let scim = self.scim();
        let name = format!("bystander-{}@example.com", uuid::Uuid::new_v4().simple());
        let started = Instant::now();
        let created = scim
            .post(
                "/Users",
                &serde_json::json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name}),
            )
            .await;
        assert_eq!(
            created.status, 201,
            "another tenant's create: {:?}",
            created.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "another tenant's create took {:?}",
            started.elapsed()
        );
        let user = created.body["id"].as_str().unwrap().to_owned();
        let session = self.session(&user);
        assert_eq!(
            self.forward_auth("wiki.test", Some(&session)).await.status,
            200
        );
        let disable = serde_json::json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
        let patched = scim.patch(&format!("/Users/{user}"), &disable).await;
        assert_eq!(
            patched.status, 200,
            "another tenant's deactivation: {:?}",
            patched.body
        );
        eventually(
            "another tenant's deactivated user is denied at /auth",
            Duration::from_secs(1),
            || {
                let session = session.clone();
                async move { self.forward_auth("wiki.test", Some(&session)).await.status == 403 }
            },
        )
        .await;
    }

    /// The stream's head.
    pub async fn head(&self) -> u64 {
        self.log.head().await.unwrap()
    }

    /// Event types recorded for an aggregate, in order (from the audit table).
    pub async fn event_types(&self, tenant: &str, id: &str) -> Vec<String> {
        let id = uuid::Uuid::parse_str(id).unwrap();
        self.store
            .audit_events(tenant, id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    /// Payloads recorded for an aggregate, in order, personal fields opened (as an auditor
    /// reads them).
    pub async fn event_payloads(&self, tenant: &str, id: &str) -> Vec<Value> {
        let id = uuid::Uuid::parse_str(id).unwrap();
        let mut rows = self.store.audit_events(tenant, id).await.unwrap();
        rollcall_personal::open_all(
            &self.store,
            &mut rows,
            rollcall_store::personal_key::Freshness::Fresh,
        )
        .await
        .unwrap();
        rows.into_iter().map(|e| e.payload.0).collect()
    }
}

/// Opens (creates) the test's stream. JetStream answers stream creation within 5 s; with every
/// test of the binary creating streams at once on a loaded machine that was once exceeded, so a
/// failed attempt is tried again (three in all) before the test fails.
async fn open_log(client: &async_nats::Client, namespace: &Namespace) -> EventLog {
    let mut attempt = 1;
    loop {
        match EventLog::open(client.clone(), namespace.clone()).await {
            Ok(log) => return log,
            Err(error) if attempt < 3 => {
                eprintln!("opening the test stream (attempt {attempt}): {error}");
                attempt += 1;
            }
            Err(error) => panic!("opening the test stream: {error}"),
        }
    }
}

/// This test binary run again for one of its ignored tests, `name` (`module::test`), alone:
/// how the tests that kill or start processes of their own start them. The ignored test does
/// nothing unless the variables the caller sets name an installation to work on.
pub fn child_test(name: &str) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    command
}

/// Polls `condition` every 50 ms until it holds; panics after `deadline` naming `what`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Every role stops (aborted, as at a crash) before the installation is removed.
        if let Some(projector) = self.projector.take() {
            projector.abort();
        }
        self.apis.take();
        self.replicas.clear();
        self.access_instance.take();
    }
}

/// A user event's envelope for `id` at `version`, as an operator named `test` would append it:
/// for tests that put events on the stream directly (bypassing SCIM's checks).
pub fn user_envelope(
    tenant: &str,
    id: uuid::Uuid,
    version: u64,
    event: &rollcall_domain::user::UserEvent,
) -> rollcall_eventlog::Envelope {
    use rollcall_domain::EventKind;
    rollcall_eventlog::Envelope {
        event_id: uuid::Uuid::now_v7(),
        tenant: tenant.to_owned(),
        aggregate_type: rollcall_domain::user::UserEvent::AGGREGATE.to_owned(),
        aggregate_id: id,
        version,
        event_type: event.event_type().to_owned(),
        schema_version: 1,
        occurred_at: time::OffsetDateTime::now_utc(),
        actor: rollcall_eventlog::Actor::Operator {
            name: "test".into(),
        },
        request_id: None,
        traceparent: None,
        payload: event.to_payload(),
    }
}
