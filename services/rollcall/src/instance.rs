//! The composition root: an [`Instance`] starts the chosen [roles](crate::role) of Rollcall over
//! one process's shared [`Connections`] and returns an [`InstanceHandle`]. `rollcall serve`, the
//! end-to-end tests and the benchmark all start Rollcall through it, so the system is wired in
//! this one place.
//!
//! ```text
//! Instance::new(roles).scim(config)….listener(Role::Scim, tcp).start(connections) → handle
//! handle.addr(Role::Scim) · handle.failed().await · handle.shutdown().await
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use rollcall_http::{HttpConfig, Listener};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};
use tracing::{error, info};

use crate::connection::Connections;
use crate::ops::{self, OpsState, Running};
use crate::role::{Role, Roles};

/// Where a listener comes from: an address to bind, or a socket already bound (tests bind
/// port 0 and read the address back).
#[derive(Debug)]
enum Bind {
    Address(SocketAddr),
    Bound(TcpListener),
}

impl Bind {
    async fn listen(self, what: &str, http: &HttpConfig) -> anyhow::Result<Listener> {
        let tcp = match self {
            Bind::Bound(tcp) => tcp,
            Bind::Address(addr) => TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the {what} to {addr}"))?,
        };
        Ok(Listener::new(tcp, http.clone()))
    }
}

/// The roles to start and each one's configuration. Built with [`Instance::new`] and the
/// builder methods; [`Instance::start`] starts it.
#[derive(Debug)]
pub struct Instance {
    roles: Roles,
    scim: rollcall_scim_api::Config,
    projector: rollcall_projector::Config,
    access: rollcall_access::Config,
    audit: rollcall_audit_api::Config,
    http: HttpConfig,
    listeners: BTreeMap<Role, TcpListener>,
    access_service: Option<rollcall_access::Access>,
    ops: Option<Bind>,
}

impl Instance {
    /// `roles`, each with its default configuration, on its configured address; no operations
    /// listener.
    pub fn new(roles: Roles) -> Self {
        Self {
            roles,
            scim: rollcall_scim_api::Config::default(),
            projector: rollcall_projector::Config::default(),
            access: rollcall_access::Config::default(),
            audit: rollcall_audit_api::Config::default(),
            http: HttpConfig::default(),
            listeners: BTreeMap::new(),
            access_service: None,
            ops: None,
        }
    }

    /// The roles it starts.
    pub fn roles(&self) -> Roles {
        self.roles
    }

    /// The SCIM API's configuration. Its `wait_for_access` is forced on when the access role
    /// runs in this instance (see [`Instance::start`]).
    pub fn scim(mut self, config: rollcall_scim_api::Config) -> Self {
        self.scim = config;
        self
    }

    /// The projector's configuration.
    pub fn projector(mut self, config: rollcall_projector::Config) -> Self {
        self.projector = config;
        self
    }

    /// The access service's configuration (unused when [`Instance::access_service`] gives one
    /// already built).
    pub fn access(mut self, config: rollcall_access::Config) -> Self {
        self.access = config;
        self
    }

    /// An access service already built (tests issue sessions with it).
    pub fn access_service(mut self, access: rollcall_access::Access) -> Self {
        self.access_service = Some(access);
        self
    }

    /// The audit API's configuration.
    pub fn audit(mut self, config: rollcall_audit_api::Config) -> Self {
        self.audit = config;
        self
    }

    /// Header, body and idle timeouts of every listener.
    pub fn http(mut self, config: HttpConfig) -> Self {
        self.http = config;
        self
    }

    /// Serves `role` on `listener` instead of binding its configured address.
    pub fn listener(mut self, role: Role, listener: TcpListener) -> Self {
        self.listeners.insert(role, listener);
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` too.
    pub fn ops_addr(mut self, addr: SocketAddr) -> Self {
        self.ops = Some(Bind::Address(addr));
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listener` too.
    pub fn ops_listener(mut self, listener: TcpListener) -> Self {
        self.ops = Some(Bind::Bound(listener));
        self
    }

    fn bind(&mut self, role: Role, addr: SocketAddr) -> Option<Bind> {
        self.roles.contains(role).then(|| {
            self.listeners
                .remove(&role)
                .map_or(Bind::Address(addr), Bind::Bound)
        })
    }

    /// Starts the roles over `connections`. Every listener is bound and every role's state
    /// built before any role starts, so a wrong address or configuration fails here with
    /// nothing left running.
    ///
    /// What a SCIM write waits for before it answers `2xx` depends on where the access role
    /// runs. The projector publishes each write's access state to the `<ns>_access` bucket and
    /// only then announces its checkpoint; access services load that bucket and announce, on
    /// `<ns>.checkpoints.access`, the sequence they have applied.
    /// - SCIM and access in this instance: the write waits for the projector's checkpoint
    ///   **and** an access announcement (`wait_for_access` is forced on), so the next decision
    ///   of this process's access service after the `2xx` reflects the write — also across a
    ///   split, as long as this access service runs.
    /// - SCIM without access here: the SCIM configuration decides (`--scim-wait-for-access`,
    ///   off by default). Off, a `2xx` means the read model holds the write and the access
    ///   state was handed to the bucket that every access service follows (applied there
    ///   within the time NATS takes to deliver it). On, the write also waits for an access
    ///   service's announcement, so the next decision there reflects it; set it only where an
    ///   access service runs in the namespace, or every write answers `503` after 5 s. Forcing
    ///   it on would make a SCIM-only installation without access services unusable.
    ///
    /// Each access service announces under a name of its own: a write waits for every access
    /// service heard from in the last 3 seconds.
    ///
    /// The installation's partitioning is settled first when this instance projects
    /// (`--partitions`), so that the SCIM API waits on the partitions' checkpoints.
    pub async fn start(mut self, connections: Connections) -> anyhow::Result<InstanceHandle> {
        let roles = self.roles;
        let Connections { client, log, store } = connections.clone();
        let http = self.http.clone();
        let scim_bind = self.bind(Role::Scim, self.scim.addr);
        let access_bind = self.bind(Role::Access, self.access.addr);
        let audit_bind = self.bind(Role::Audit, self.audit.addr);
        let mut listeners: Vec<(Role, Listener)> = Vec::new();
        for (role, bind, what) in [
            (Role::Scim, scim_bind, "SCIM API"),
            (Role::Access, access_bind, "access service"),
            (Role::Audit, audit_bind, "audit API"),
        ] {
            if let Some(bind) = bind {
                listeners.push((role, bind.listen(what, &http).await?));
            }
        }
        let ops_listener = match self.ops.take() {
            Some(bind) => Some(bind.listen("operations listener", &http).await?),
            None => None,
        };
        let mut addresses = HashMap::new();
        for (role, listener) in &listeners {
            addresses.insert(*role, listener.local_addr()?);
        }
        let ops_addr = ops_listener
            .as_ref()
            .map(Listener::local_addr)
            .transpose()?;

        // Every role reads or writes personal fields under the users' data keys.
        crate::connection::install_keks(&store, &self.access.kek, true).await?;
        if roles.contains(Role::Projector) {
            rollcall_projector::choose_partitions(&store, self.projector.partitions)
                .await
                .context("settling the installation's partitions")?;
        }
        let scim = if roles.contains(Role::Scim) {
            let mut config = self.scim.clone();
            config.wait_for_access |= roles.contains(Role::Access);
            Some(
                rollcall_scim_api::AppState::new(
                    config,
                    client.clone(),
                    log.clone(),
                    store.clone(),
                )
                .await
                .context("starting the SCIM API")?,
            )
        } else {
            None
        };
        let access = if roles.contains(Role::Access) {
            let access = match self.access_service.take() {
                Some(access) => access,
                None => rollcall_access::Access::from_installation(
                    self.access.clone(),
                    &client,
                    &log,
                    Some(&store),
                )
                .await
                .context("access service configuration")?,
            };
            // Sign-outs are recorded as events (a revoker given earlier stays).
            Some(
                access.with_revoker(Arc::new(rollcall_scim_api::operator::SignOutRevoker(
                    log.clone(),
                    store.clone(),
                ))),
            )
        } else {
            None
        };
        let audit = if roles.contains(Role::Audit) {
            Some(
                rollcall_audit_api::AuditState::new(&self.audit, store.clone())
                    .context("audit API configuration")?,
            )
        } else {
            None
        };

        let (stop, stopped) = watch::channel(false);
        let stopping = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|&stop| stop).await;
            }
        };
        let running = Arc::new(Running::new(roles));
        let mut tasks = Tasks::default();
        let mut listeners: BTreeMap<Role, Listener> = listeners.into_iter().collect();
        if roles.contains(Role::Projector) {
            let (config, client, log, store) = (
                self.projector.clone(),
                client.clone(),
                log.clone(),
                store.clone(),
            );
            let shutdown = stopping();
            tasks.spawn(Part::Role(Role::Projector), &running, async move {
                rollcall_projector::run(config, client, log, store, shutdown)
                    .await
                    .context("projector")
            });
        }
        let lookup_index = scim.as_ref().and_then(|state| state.index.clone());
        if let (Some(state), Some(listener)) = (scim, listeners.remove(&Role::Scim)) {
            let shutdown = stopping();
            tasks.spawn(Part::Role(Role::Scim), &running, async move {
                rollcall_scim_api::serve(listener, state, shutdown)
                    .await
                    .context("SCIM API")
            });
        }
        if let (Some(access), Some(listener)) = (access.clone(), listeners.remove(&Role::Access)) {
            let (client, namespace) = (client.clone(), log.namespace().clone());
            let shutdown = stopping();
            tasks.spawn(Part::Role(Role::Access), &running, async move {
                rollcall_access::serve(listener, access, client, namespace, shutdown)
                    .await
                    .context("access service")
            });
        }
        if let (Some(state), Some(listener)) = (audit, listeners.remove(&Role::Audit)) {
            let shutdown = stopping();
            tasks.spawn(Part::Role(Role::Audit), &running, async move {
                rollcall_audit_api::serve(listener, state, shutdown)
                    .await
                    .context("audit API")
            });
        }
        if let Some(listener) = ops_listener {
            let state = OpsState {
                roles,
                running: running.clone(),
                client: client.clone(),
                store: store.clone(),
            };
            let shutdown = stopping();
            tasks.spawn(Part::Ops, &running, async move {
                rollcall_http::serve(listener, "ops", ops::router(state), shutdown)
                    .await
                    .context("operations listener")
            });
        }
        info!(roles = %roles, namespace = %log.namespace(), "instance started");
        Ok(InstanceHandle {
            roles,
            connections,
            addresses,
            ops_addr,
            access,
            lookup_index,
            stop,
            tasks,
        })
    }
}

/// A part of a running instance: one of its roles, or its operations listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// A role.
    Role(Role),
    /// The operations listener.
    Ops,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Role(role) => role.fmt(f),
            Part::Ops => f.write_str("ops"),
        }
    }
}

/// The running parts' tasks, by task id.
#[derive(Debug, Default)]
struct Tasks {
    set: JoinSet<anyhow::Result<()>>,
    parts: HashMap<Id, Part>,
}

impl Tasks {
    fn spawn(
        &mut self,
        part: Part,
        running: &Arc<Running>,
        task: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let running = running.clone();
        let handle = self.set.spawn(async move {
            let result = task.await;
            if let Part::Role(role) = part {
                running.stopped(role);
            }
            result
        });
        self.parts.insert(handle.id(), part);
    }

    /// The next part to end, and how it ended; `None` when none is left.
    async fn next(&mut self) -> Option<(Part, anyhow::Result<()>)> {
        let (id, result) = match self.set.join_next_with_id().await? {
            Ok((id, result)) => (id, result),
            Err(error) => {
                let id = error.id();
                let message = if error.is_panic() {
                    "panicked"
                } else {
                    "was aborted"
                };
                (id, Err(anyhow::anyhow!("{message}")))
            }
        };
        let part = self.parts.remove(&id).unwrap_or(Part::Ops);
        Some((part, result))
    }
}

/// A part that ended while the instance was meant to run (see [`InstanceHandle::failed`]).
#[derive(Debug)]
pub struct Stopped {
    /// Which part.
    pub part: Part,
    /// Its error; `Ok` when it ended without one (still unexpected while running).
    pub result: anyhow::Result<()>,
}

impl Stopped {
    /// The failure as an error naming the part.
    pub fn into_error(self) -> anyhow::Error {
        match self.result {
            Ok(()) => anyhow::anyhow!("the {} role stopped unexpectedly", self.part),
            Err(error) => error.context(format!("the {} role failed", self.part)),
        }
    }
}

/// A running [`Instance`]: the addresses its roles serve on, the shared connections, and the
/// means to wait for a failure or to shut it down. Dropping it aborts every role (as a crash
/// would); [`InstanceHandle::shutdown`] stops them cleanly.
#[derive(Debug)]
pub struct InstanceHandle {
    roles: Roles,
    connections: Connections,
    addresses: HashMap<Role, SocketAddr>,
    ops_addr: Option<SocketAddr>,
    access: Option<rollcall_access::Access>,
    lookup_index: Option<rollcall_scim_api::index::LookupIndex>,
    stop: watch::Sender<bool>,
    tasks: Tasks,
}

impl InstanceHandle {
    /// The roles it runs.
    pub fn roles(&self) -> Roles {
        self.roles
    }

    /// The address `role` serves on (`None` for the projector and for roles it does not run).
    pub fn addr(&self, role: Role) -> Option<SocketAddr> {
        self.addresses.get(&role).copied()
    }

    /// The address of the operations listener, if it runs.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// The shared connections.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// The access service, when the access role runs (it issues sessions).
    pub fn access(&self) -> Option<&rollcall_access::Access> {
        self.access.as_ref()
    }

    /// The SCIM API's lookup index, when the SCIM role runs with one.
    pub fn lookup_index(&self) -> Option<&rollcall_scim_api::index::LookupIndex> {
        self.lookup_index.as_ref()
    }

    /// Waits until a part ends on its own (a failure while the instance is meant to run);
    /// never resolves for an instance with nothing running.
    pub async fn failed(&mut self) -> Stopped {
        match self.tasks.next().await {
            Some((part, result)) => Stopped { part, result },
            None => std::future::pending().await,
        }
    }

    /// Stops every part cleanly (listeners drain their connections, the projector finishes
    /// its batch) and waits for them; the first error of a part, if any.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let mut first = Ok(());
        while let Some((part, result)) = self.tasks.next().await {
            if let Err(error) = result {
                error!(part = %part, error = format!("{error:#}"), "stopped with an error");
                if first.is_ok() {
                    first = Err(error.context(format!("the {part} role")));
                }
            }
        }
        first
    }

    /// Aborts every part at once (as a crash would) and waits until they are gone.
    pub async fn abort(mut self) {
        self.tasks.set.abort_all();
        while self.tasks.next().await.is_some() {}
    }
}

impl Drop for InstanceHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.tasks.set.abort_all();
    }
}
