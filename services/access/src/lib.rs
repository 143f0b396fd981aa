//! The access service: decision state in memory, fed from NATS, so that disabling, deleting or
//! removing a user from a group denies that user's next request. No database query and no
//! network call sits on the decision path.
#![warn(missing_docs)]

pub mod applications;
pub mod decision;
pub mod directory;
pub mod entra;
pub mod error;
pub mod feed;
pub mod folded;
pub mod http;
pub mod identity;
pub mod keys;
pub mod oidc;
pub mod policy;
pub mod proxy;
pub mod session;
pub mod signin;
pub mod ssf;
pub mod target;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use axum::routing::{any, get, post};
use axum::Router;
use rollcall_domain::EventKind;
pub use rollcall_eventlog::access::SessionRevoker;
use rollcall_eventlog::{Actor, EventLog, Namespace};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tracing::{error, info, instrument, warn, Instrument};
use uuid::Uuid;

use crate::decision::{Decision, Freshness, Request};
use crate::directory::Directory;
use crate::feed::Health;
use crate::folded::Folded;
use crate::keys::{InstallationKeys, Kek, KekConfig, Keyring};
use crate::policy::Policies;
use crate::session::SessionKeys;

/// Everything the access service reads from the environment.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "access")]
pub struct Config {
    /// Socket address the access service (forward-auth, decisions) binds to.
    #[arg(
        id = "access_addr",
        long = "access-addr",
        env = "ROLLCALL_ACCESS_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub addr: SocketAddr,
    /// The application policy file (TOML). The access service appends what differs between it
    /// and the applications on the event stream as application events, at start and on
    /// SIGHUP, and decides with the stream's applications. Without one, the stream's
    /// applications (`rollcall policies apply`) are in force; without those, every request is
    /// denied.
    #[arg(long = "access-policies", env = "ROLLCALL_ACCESS_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Session signing keys, `kid=base64secret[,kid=base64secret]`; the first signs, all verify.
    /// Without them the installation's key set is used: generated once, kept sealed in NATS
    /// under the KEK, shared by every replica, rotated with `rollcall sessions keys rotate`.
    #[arg(long = "session-keys", env = "ROLLCALL_SESSION_KEYS", hide_env_values = true, value_parser = secret)]
    pub session_keys: Option<SecretString>,
    /// The key-encryption key of the installation's session keys.
    #[command(flatten)]
    pub kek: KekConfig,
    /// How long a session lasts, in seconds (at most 7 days).
    #[arg(long = "session-ttl", env = "ROLLCALL_SESSION_TTL", default_value_t = 8 * 3600)]
    pub session_ttl_seconds: u64,
    /// Name of the session cookie.
    #[arg(
        long = "session-cookie",
        env = "ROLLCALL_SESSION_COOKIE",
        default_value = "rollcall_session"
    )]
    pub cookie: String,
    /// Domain of the session cookie (for example `.example.com`, so that every application
    /// under it sees the session); without it the cookie belongs to the host that set it.
    #[arg(long = "cookie-domain", env = "ROLLCALL_COOKIE_DOMAIN")]
    pub cookie_domain: Option<String>,
    /// After this many seconds without NATS the state is stale.
    #[arg(
        long = "access-staleness",
        env = "ROLLCALL_ACCESS_STALENESS",
        default_value_t = 30
    )]
    pub staleness_seconds: u64,
    /// Decide from stale state instead of denying everything.
    #[arg(
        long = "access-fail-open",
        env = "ROLLCALL_ACCESS_FAIL_OPEN",
        default_value_t = false
    )]
    pub fail_open: bool,
    /// The reverse proxy in front of /auth: `nginx` (reads only X-Original-URL),
    /// `traefik` or `caddy` (only X-Forwarded-Proto/-Host/-Uri) or `envoy` (/auth/<path> and
    /// Host). Headers of any other style are ignored. Unset, /auth refuses every request:
    /// which headers a client can forge depends on the proxy.
    #[arg(long = "trusted-proxy", env = "ROLLCALL_TRUSTED_PROXY", value_enum)]
    pub trusted_proxy: Option<proxy::TrustedProxy>,
    /// Sign-in with Entra ID or another OpenID provider.
    #[command(flatten)]
    pub oidc: oidc::OidcConfig,
    /// The Shared Signals transmitter.
    #[command(flatten)]
    pub ssf: ssf::SsfConfig,
}

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            policies: None,
            session_keys: None,
            kek: KekConfig::default(),
            session_ttl_seconds: 8 * 3600,
            cookie: "rollcall_session".into(),
            cookie_domain: None,
            staleness_seconds: 30,
            fail_open: false,
            trusted_proxy: None,
            oidc: oidc::OidcConfig::default(),
            ssf: ssf::SsfConfig::default(),
        }
    }
}

/// Why the access service could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// IO.
    #[error("{0}")]
    Io(String),
}

/// The access service's shared state, behind one `Arc`: handing it to a request costs one
/// reference count.
#[derive(Debug, Clone)]
pub struct Access(Arc<Shared>);

/// What [`Access`] shares.
#[derive(Debug)]
pub struct Shared {
    /// Configuration.
    pub config: Config,
    directory: Arc<RwLock<Directory>>,
    policies: RwLock<Arc<Policies>>,
    /// The version of the policies in force (the stream sequence of their last event).
    policy_version: tokio::sync::watch::Sender<u64>,
    /// The event stream the policies come from and are written to (none: from the file only).
    log: Option<EventLog>,
    /// The database, with the verifier of the policy tester's audit tokens (none: without the
    /// database). Also where the users' data keys are.
    tester: OnceLock<(rollcall_store::Store, rollcall_store::tenant::TokenVerifier)>,
    keys: Keyring,
    /// Where the keys come from when they follow the installation's key set.
    installation: Option<InstallationKeys>,
    /// Sign-in, when configured.
    signin: Option<Arc<oidc::RelyingParty>>,
    /// Sign-in states already answered, with their expiry (each state answers once).
    used_states: Mutex<HashMap<String, i64>>,
    revoker: OnceLock<Arc<dyn SessionRevoker>>,
    /// The Shared Signals transmitter, when configured (`ROLLCALL_SSF_PUBLIC_URL`).
    pub ssf: OnceLock<ssf::Transmitter>,
    /// Feed liveness.
    pub health: Arc<Health>,
}

impl std::ops::Deref for Access {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Reads and checks a policy file.
pub fn load_policies(path: &std::path::Path) -> Result<Policies, AccessError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AccessError::Config(format!("reading {}: {e}", path.display())))?;
    Policies::parse(&text).map_err(|e| AccessError::Config(format!("{}: {e}", path.display())))
}

impl Config {
    /// Whether the access service needs PostgreSQL to start: only to keep the installation's
    /// KEK, when neither session keys nor a KEK are configured.
    pub fn needs_database(&self) -> bool {
        self.session_keys.is_none() && !self.kek.is_configured()
    }

    fn session_ttl(&self) -> Result<Duration, AccessError> {
        let ttl = Duration::from_secs(self.session_ttl_seconds);
        // The projector stops publishing revocations older than this (they would be void by
        // expiry): a longer session could outlive its own revocation.
        let longest = rollcall_eventlog::access::MAX_SESSION_LIFETIME;
        if ttl > longest || ttl.is_zero() {
            return Err(AccessError::Config(format!(
                "ROLLCALL_SESSION_TTL must be between 1 and {} seconds (7 days), not {}",
                longest.as_secs(),
                self.session_ttl_seconds
            )));
        }
        Ok(ttl)
    }

    fn configured_keys(&self, ttl: Duration) -> Result<Option<SessionKeys>, AccessError> {
        self.session_keys
            .as_ref()
            .map(|spec| {
                SessionKeys::parse(spec.expose_secret(), ttl)
                    .map_err(|e| AccessError::Config(e.to_string()))
            })
            .transpose()
    }
}

impl Access {
    /// Builds the service state from configuration (checks the policy file and keys), with
    /// the configured session keys or, without them, a random key of this process only (tests;
    /// services use [`Access::from_installation`]).
    pub fn new(config: Config) -> Result<Self, AccessError> {
        let ttl = config.session_ttl()?;
        let keys = match config.configured_keys(ttl)? {
            Some(keys) => keys,
            None => {
                warn!("ROLLCALL_SESSION_KEYS is not set and the installation's keys were not loaded: using a random key; sessions end when this process stops");
                SessionKeys::ephemeral(ttl)
            }
        };
        Self::build(config, Keyring::new(keys), None, None)
    }

    /// Builds the service state with the installation's session keys: the configured ones
    /// (`ROLLCALL_SESSION_KEYS`) if any, else the installation's key set in NATS, generated if
    /// there is none yet and followed while serving, so that every replica of `namespace`
    /// signs and accepts the same sessions. The KEK is configured or kept in `store` (needed
    /// only then, see [`Config::needs_database`]). A key set that does not open under the KEK
    /// is an error; nothing is overwritten.
    pub async fn from_installation(
        config: Config,
        client: &async_nats::Client,
        log: &EventLog,
        store: Option<&rollcall_store::Store>,
    ) -> Result<Self, AccessError> {
        let ttl = config.session_ttl()?;
        let (log, namespace) = (log.clone(), log.namespace());
        let access = if let Some(keys) = config.configured_keys(ttl)? {
            info!("session keys from ROLLCALL_SESSION_KEYS");
            Self::build(config, Keyring::new(keys), None, Some(log))?
        } else {
            let keys_error = |e: keys::KeysError| AccessError::Config(format!("session keys: {e}"));
            let kek = Kek::resolve(&config.kek, store).await.map_err(keys_error)?;
            let installation = InstallationKeys::open(client, namespace, kek)
                .await
                .map_err(keys_error)?;
            let keyring = installation.keyring(ttl).await.map_err(keys_error)?;
            Self::build(config, keyring, Some(installation), Some(log))?
        };
        if let Some(store) = store {
            let verifier =
                rollcall_store::tenant::TokenVerifier::new(rollcall_store::tenant::Scope::Audit);
            let _ = access.tester.set((store.clone(), verifier));
        }
        access.follow_policies().await?;
        if access.config.ssf.public_url.is_some() {
            let store = store.ok_or_else(|| {
                AccessError::Config(
                    "ROLLCALL_SSF_PUBLIC_URL is set: the Shared Signals transmitter needs the database".into(),
                )
            })?;
            let kek = Kek::resolve(&access.config.kek, Some(store))
                .await
                .map_err(|e| AccessError::Config(format!("Shared Signals keys: {e}")))?;
            let transmitter = ssf::Transmitter::start(
                access.config.ssf.clone(),
                client,
                access
                    .log
                    .clone()
                    .ok_or_else(|| AccessError::Config("no event stream".into()))?,
                store.clone(),
                kek,
            )
            .await
            .map_err(AccessError::Config)?;
            let _ = access.ssf.set(transmitter);
        }
        Ok(access)
    }

    /// Takes the policies from the event stream: appends the policy file's differences
    /// first (if there is a file), reads every application up to the stream's head, and
    /// follows their changes from there.
    async fn follow_policies(&self) -> Result<(), AccessError> {
        let Some(log) = self.log.clone() else {
            return Ok(());
        };
        if self.config.policies.is_some() {
            self.write_policy_file(&log).await?;
        }
        let catalog = folded::read::<applications::Catalog>(&log)
            .await
            .map_err(|e| AccessError::Config(format!("reading the applications: {e}")))?;
        if catalog.declared().is_empty() {
            warn!("no application is configured on the event stream (rollcall policies apply, or ROLLCALL_ACCESS_POLICIES): every request is denied");
        }
        self.install(&catalog);
        tokio::spawn(
            follow_applications(Arc::downgrade(&self.0), log, catalog)
                .instrument(tracing::info_span!("follow_applications")),
        );
        Ok(())
    }

    /// Puts the policies of `catalog` in force.
    fn install(&self, catalog: &applications::Catalog) {
        let policies = catalog.policies();
        let (count, version) = (policies.applications.len(), policies.version);
        if let Ok(mut current) = self.policies.write() {
            if current.version == version && version != 0 {
                return;
            }
            *current = Arc::new(policies);
        }
        self.policy_version.send_replace(version);
        info!(applications = count, version, "policies in force");
    }

    /// Appends what differs between the policy file and the stream's applications, and
    /// returns the stream sequence up to which the stream holds the file (its last event
    /// written, or the last application event if nothing differed).
    #[instrument(skip_all, err)]
    async fn write_policy_file(&self, log: &EventLog) -> Result<u64, AccessError> {
        let Some(path) = &self.config.policies else {
            return Ok(0);
        };
        let declared = read_policy_file(path)?;
        let actor = Actor::Operator {
            name: format!("policy file {}", path.display()),
        };
        let request = format!("policy-file-{}", Uuid::now_v7());
        let (plan, sequence) = applications::apply_declared(log, &declared, &actor, &request)
            .await
            .map_err(|e| AccessError::Config(format!("{}: {e}", path.display())))?;
        for change in &plan.changes {
            let events: Vec<&str> = change.events.iter().map(|e| e.event_type()).collect();
            // Names only: policies can name people (user_name, email rules).
            if change.removes() {
                warn!(file = %path.display(), tenant = change.tenant, application = change.name, sequence, "the policy file does not declare this application: it is removed for every access service of the namespace");
            } else {
                info!(file = %path.display(), tenant = change.tenant, application = change.name, ?events, sequence, "a policy file's change is on the event stream");
            }
        }
        Ok(sequence)
    }

    fn build(
        config: Config,
        keys: Keyring,
        installation: Option<InstallationKeys>,
        log: Option<EventLog>,
    ) -> Result<Self, AccessError> {
        let policies = match (&config.policies, &log) {
            (Some(path), None) => load_policies(path)?,
            // Checked now; in force once on the stream (`follow_policies`).
            (Some(path), Some(_)) => read_policy_file(path).map(|_| Policies::default())?,
            (None, None) => {
                warn!("ROLLCALL_ACCESS_POLICIES is not set: no application is declared, every request is denied");
                Policies::default()
            }
            (None, Some(_)) => Policies::default(),
        };
        let signin = oidc::RelyingParty::from_config(&config.oidc, config.cookie_domain.as_deref())
            .map_err(|e| AccessError::Config(e.to_string()))?
            .map(Arc::new);
        if config.trusted_proxy.is_none() {
            error!("ROLLCALL_TRUSTED_PROXY is not set: /auth refuses every request until it names the reverse proxy in front of it (nginx, traefik, caddy or envoy)");
        }
        Ok(Self(Arc::new(Shared {
            config,
            directory: Arc::default(),
            policies: RwLock::new(Arc::new(policies)),
            policy_version: tokio::sync::watch::Sender::new(0),
            log,
            tester: OnceLock::new(),
            keys,
            installation,
            signin,
            used_states: Mutex::default(),
            revoker: OnceLock::new(),
            ssf: OnceLock::new(),
            health: Arc::default(),
        })))
    }

    /// Whether NATS has been silent for longer than the staleness bound.
    pub fn is_stale(&self) -> bool {
        self.health.is_ready()
            && self.health.silence() >= Duration::from_secs(self.config.staleness_seconds)
    }

    /// Whether decisions may be made from the state now: loaded, and not stale (or stale and
    /// configured to fail open).
    pub fn is_fresh(&self) -> bool {
        self.health.is_ready() && (self.config.fail_open || !self.is_stale())
    }

    /// The last event sequence applied.
    pub fn applied(&self) -> u64 {
        self.directory.read().map(|d| d.applied()).unwrap_or(0)
    }

    /// Users and groups held.
    pub fn size(&self) -> (usize, usize) {
        self.directory.read().map(|d| d.size()).unwrap_or_default()
    }

    /// Decides a request from memory.
    pub fn decide(&self, request: Request<'_>) -> Decision {
        let freshness = match (
            self.health.is_ready(),
            self.is_stale(),
            self.config.fail_open,
        ) {
            (false, ..) | (true, true, false) => decision::Freshness::StaleFailClosed,
            (true, true, true) => Freshness::StaleFailOpen,
            (true, false, _) => Freshness::Fresh,
        };
        let policies = self.policies_now();
        match self.directory.read() {
            Ok(directory) => decision::decide(
                &directory,
                &policies,
                &self.keys.current(),
                freshness,
                request,
            )
            .with_policy_version(policies.version),
            Err(_) => Decision::internal(policies.version),
        }
    }

    /// The policy tester: the decision a session of `user` (an id, userName or externalId of
    /// `tenant`) would get for `target` now, with every policy tried.
    pub fn decide_for_user(
        &self,
        target: &target::Target,
        tenant: &str,
        user: &str,
    ) -> (Decision, Vec<decision::Trial>) {
        let policies = self.policies_now();
        let Ok(directory) = self.directory.read() else {
            return (
                decision::decide_for_user(
                    &Directory::default(),
                    &Policies::default(),
                    target,
                    Some(tenant),
                    user,
                )
                .0,
                Vec::new(),
            );
        };
        let (decided, trials) =
            decision::decide_for_user(&directory, &policies, target, Some(tenant), user);
        (decided.with_policy_version(policies.version), trials)
    }

    /// The app launcher: the user of session `token` and the applications they may reach
    /// now (name and link), or the decision refusing the session.
    pub fn launcher(&self, token: &str) -> Result<Launched, Box<Decision>> {
        let policies = self.policies_now();
        let directory = self
            .directory
            .read()
            .map_err(|_| Box::new(Decision::internal(policies.version)))?;
        let (identity, reachable) =
            decision::launcher(&directory, &policies, &self.keys.current(), token)?;
        let reachable = reachable
            .into_iter()
            .map(|application| (application.name.clone(), application.url.clone()))
            .collect();
        Ok((identity, reachable))
    }

    /// The tenant of an audit token (the policy tester's caller).
    #[instrument(skip_all, err(level = "info"))]
    async fn tester_tenant(&self, token: &str) -> Result<String, error::ApiError> {
        let (store, verifier) = self.tester.get().ok_or(error::ApiError::NoTester)?;
        match verifier.verify(store, token).await {
            Ok(Some(info)) => Ok(info.tenant),
            Ok(None) => Err(error::ApiError::Unauthorized),
            Err(error) => Err(error::ApiError::Unavailable(error.to_string())),
        }
    }

    /// The policies in force.
    fn policies_now(&self) -> Arc<Policies> {
        self.policies
            .read()
            .map(|p| Arc::clone(&p))
            .unwrap_or_default()
    }

    /// The version of the policies in force: the stream sequence of their last application
    /// event (0: none, or policies from a file without the stream).
    pub fn policy_version(&self) -> u64 {
        *self.policy_version.borrow()
    }

    /// The session keys in force (they change when the installation's set is rotated).
    pub fn session_keys(&self) -> Arc<SessionKeys> {
        self.keys.current()
    }

    /// Issues a session for a user (sign-in does this; tests too).
    pub fn issue_session(&self, tenant: &str, user: Uuid) -> Result<String, session::SessionError> {
        self.keys
            .issue(tenant, user, decision::now())
            .map(|(token, _)| token)
    }

    /// Records sign-outs with `revoker` (the first one given stays).
    pub fn with_revoker(self, revoker: Arc<dyn SessionRevoker>) -> Self {
        let _ = self.0.revoker.set(revoker);
        self
    }

    /// The first user of `tenant` that `matches`: its id and whether it is active.
    pub fn find_user(
        &self,
        tenant: &str,
        matches: impl Fn(&directory::User<'_>) -> bool,
    ) -> Option<(Uuid, bool)> {
        let directory = self.directory.read().ok()?;
        directory
            .find_user(tenant, matches)
            .map(|user| (user.id(), user.active()))
    }

    /// Marks a sign-in state as answered; `false` if it already was.
    fn consume_state(&self, state: &str, expires: i64) -> bool {
        let Ok(mut used) = self.used_states.lock() else {
            return false;
        };
        let now = decision::now().unix_timestamp();
        used.retain(|_, expiry| *expiry + 60 >= now);
        used.insert(state.to_owned(), expires).is_none()
    }

    /// Records, once, that `user` of `tenant` signed in as `subject` at `issuer` (an
    /// `identity.linked` event, one aggregate per link: a later sign-in finds it recorded and
    /// writes nothing). A failure is logged, never refused: the sign-in stands.
    async fn link_identity(&self, tenant: &str, user: Uuid, issuer: &str, subject: &str) {
        use rollcall_domain::identity::{identity_id, IdentityEvent};
        let Some(log) = &self.log else {
            return;
        };
        let plain = |text: &str| {
            !text.is_empty() && text.len() <= 1024 && !text.chars().any(char::is_control)
        };
        if !plain(issuer) || !plain(subject) {
            warn!(tenant, user.id = %user, "the ID token's iss or sub is not plain text; the sign-in's identity is not recorded");
            return;
        }
        let id = identity_id(tenant, user, issuer, subject);
        let event = IdentityEvent::Linked {
            user_id: user,
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
        };
        let now = time::OffsetDateTime::now_utc();
        let envelope = rollcall_eventlog::Envelope {
            event_id: Uuid::now_v7(),
            tenant: tenant.to_owned(),
            aggregate_type: IdentityEvent::AGGREGATE.to_owned(),
            aggregate_id: id,
            version: 1,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            occurred_at: now
                .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
                .unwrap_or(now),
            actor: Actor::System {
                name: "sign-in".into(),
            },
            request_id: Some(format!("sign-in-{}", Uuid::now_v7())),
            traceparent: rollcall_telemetry::traceparent(),
            payload: event.to_payload(),
        };
        // The provider's subject is personal data: sealed under the user's data key.
        let Some((store, _)) = self.tester.get() else {
            warn!(tenant, user.id = %user, "without the database the provider account of a sign-in is not recorded");
            return;
        };
        let mut envelopes = [envelope];
        if let Err(error) = rollcall_personal::seal_all(store, &mut envelopes).await {
            warn!(tenant, user.id = %user, error = %error, "the provider account of a sign-in could not be sealed; not recorded");
            return;
        }
        let subject_name = log
            .namespace()
            .aggregate_subject(tenant, IdentityEvent::AGGREGATE, &id);
        match log.append(&subject_name, 0, &envelopes).await {
            Ok(_) => {
                info!(tenant, user.id = %user, "recorded the provider account a user signed in as")
            }
            Err(rollcall_eventlog::AppendError::Conflict { .. }) => {}
            Err(error) => {
                warn!(tenant, user.id = %user, error = %error, "the provider account of a sign-in could not be recorded")
            }
        }
    }

    /// Records the revocation of a session (sign-out).
    async fn revoke(&self, tenant: &str, user: Uuid, session: &str) -> Result<(), String> {
        match self.revoker.get() {
            Some(revoker) => revoker.revoke(tenant, user, session).await,
            None => Err("this access service cannot record revocations".into()),
        }
    }

    /// Reloads the policy file (SIGHUP); on error keeps the policies in force and says why.
    /// With the event stream, appends the file's differences as events and returns once this
    /// service decides with them.
    #[instrument(skip_all, err)]
    pub async fn reload_policies(&self) -> Result<(), AccessError> {
        let Some(path) = &self.config.policies else {
            return Ok(());
        };
        let Some(log) = &self.log else {
            let policies = load_policies(path)?;
            let count = policies.applications.len();
            if let Ok(mut current) = self.policies.write() {
                *current = Arc::new(policies);
            }
            info!(applications = count, "policies reloaded");
            return Ok(());
        };
        let sequence = self.write_policy_file(log).await?;
        let mut version = self.policy_version.subscribe();
        tokio::time::timeout(POLICY_WAIT, version.wait_for(|&v| v >= sequence))
            .await
            .map_err(|_| {
                AccessError::Config(format!(
                    "the policy file's changes are on the event stream (sequence {sequence}) but were not in force here within {} s",
                    POLICY_WAIT.as_secs()
                ))
            })?
            .map_err(|_| AccessError::Config("the policies are no longer followed".into()))?;
        Ok(())
    }
}

/// The app launcher's answer: who is signed in, and the applications they may reach now
/// (name, link).
pub type Launched = (decision::Identity, Vec<(String, Option<String>)>);

/// How long a reload waits for its changes to be in force here.
const POLICY_WAIT: Duration = Duration::from_secs(10);

/// How long following the applications pauses after losing the stream.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);

/// Reads and checks a policy file as declared applications.
pub fn read_policy_file(path: &std::path::Path) -> Result<policy::Declared, AccessError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AccessError::Config(format!("reading {}: {e}", path.display())))?;
    Policies::read_file(&text).map_err(|e| AccessError::Config(format!("{}: {e}", path.display())))
}

/// Follows the application events after `catalog` into the policies of `shared`, until it is
/// dropped. New policies are put in force once the follower has read every application event
/// there is (a change of several applications is in force whole, unless it is being written).
async fn follow_applications(
    shared: std::sync::Weak<Shared>,
    log: EventLog,
    mut catalog: applications::Catalog,
) {
    use futures::StreamExt;
    loop {
        let followed = async {
            let (mut messages, _) =
                folded::follow::<applications::Catalog>(&log, catalog.version()).await?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| e.to_string())?;
                let info = message.info().map_err(|e| e.to_string())?;
                let (sequence, pending) = (info.stream_sequence, info.pending);
                folded::fold(&mut catalog, &message, sequence);
                let Some(shared) = shared.upgrade() else {
                    return Ok(());
                };
                if pending == 0 {
                    Access(shared).install(&catalog);
                }
            }
            Err("the stream's messages ended".to_owned())
        };
        match followed.await {
            Ok(()) => return,
            Err(error) => {
                if shared.strong_count() == 0 {
                    return;
                }
                warn!(error, "following the applications failed; the policies in force stay until it follows again");
                tokio::time::sleep(FOLLOW_RETRY).await;
            }
        }
    }
}

/// The routes.
pub fn router(access: Access) -> Router {
    let refuse = error::method_not_allowed;
    Router::new()
        .route("/", get(http::launcher).fallback(refuse))
        .route("/auth", get(http::auth).fallback(refuse))
        // Envoy asks with the original request's method.
        .route("/auth/", any(http::auth_path))
        .route("/auth/{*path}", any(http::auth_path))
        .route("/v1/decisions", post(http::decisions).fallback(refuse))
        .route("/healthz", get(http::healthz).fallback(refuse))
        .route("/readyz", get(http::readyz).fallback(refuse))
        .route("/metrics", get(http::metrics).fallback(refuse))
        .route(
            "/.well-known/ssf-configuration/{tenant}",
            get(ssf::http::discovery).fallback(refuse),
        )
        .route(
            "/ssf/{tenant}/jwks.json",
            get(ssf::http::jwks).fallback(refuse),
        )
        .route(
            "/ssf/{tenant}/streams",
            post(ssf::http::create)
                .get(ssf::http::read)
                .patch(ssf::http::update)
                .put(ssf::http::replace)
                .delete(ssf::http::delete)
                .fallback(refuse),
        )
        .route(
            "/ssf/{tenant}/status",
            get(ssf::http::status)
                .post(ssf::http::set_status)
                .fallback(refuse),
        )
        .route(
            "/ssf/{tenant}/subjects/add",
            post(ssf::http::add_subject).fallback(refuse),
        )
        .route(
            "/ssf/{tenant}/subjects/remove",
            post(ssf::http::remove_subject).fallback(refuse),
        )
        .route(
            "/ssf/{tenant}/verify",
            post(ssf::http::verify).fallback(refuse),
        )
        .route(
            "/ssf/{tenant}/poll/{stream}",
            post(ssf::http::poll).fallback(refuse),
        )
        .route("/oauth2/start", get(signin::start).fallback(refuse))
        .route("/oauth2/callback", get(signin::callback).fallback(refuse))
        .route(
            "/oauth2/sign_out",
            get(signin::sign_out)
                .post(signin::sign_out_confirmed)
                .fallback(refuse),
        )
        .fallback(error::not_found)
        .with_state(access)
}

/// Starts following NATS and serves on `listener` until `shutdown` resolves. Reloads the
/// policy file on SIGHUP.
pub async fn serve(
    listener: impl Into<rollcall_http::Listener>,
    access: Access,
    client: async_nats::Client,
    namespace: Namespace,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AccessError> {
    let staleness = Duration::from_secs(access.config.staleness_seconds);
    let feed = tokio::spawn(feed::follow(
        client,
        namespace,
        access.directory.clone(),
        access.health.clone(),
        staleness,
        access.config.fail_open,
    ));
    // Rotations of the installation's session keys are in force here without a restart.
    let keys = access
        .installation
        .clone()
        .map(|installation| tokio::spawn(installation.follow(access.keys.clone())));
    #[cfg(unix)]
    let reload = {
        let access = access.clone();
        tokio::spawn(async move {
            let Ok(mut hangups) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hangups.recv().await.is_some() {
                if let Err(error) = access.reload_policies().await {
                    error!(error = %error, "policy reload failed; the policies in force stay as the event stream has them");
                }
            }
        })
    };
    if let Some(rp) = access.signin.clone() {
        let redirect = url::Url::parse(rp.redirect_url()).ok();
        let loopback = redirect
            .as_ref()
            .and_then(|u| u.host_str())
            .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]");
        if redirect.is_some_and(|u| u.scheme() != "https") && !loopback {
            warn!(redirect = rp.redirect_url(), "ROLLCALL_OIDC_REDIRECT_URL is not https: browsers keep the Secure session cookie only over HTTPS (or on localhost), so sign-in will not stick; put Rollcall behind TLS");
        }
        // Discover the provider now, so that a wrong issuer shows at startup, not at the first
        // sign-in; sign-in tries again by itself.
        tokio::spawn(async move {
            match rp.metadata().await {
                Ok(_) => info!(
                    issuer = rp.issuer(),
                    redirect = rp.redirect_url(),
                    "sign-in ready"
                ),
                Err(error) => {
                    error!(error = %error, "sign-in: the identity provider could not be discovered; `rollcall oidc check` tells more")
                }
            }
        });
    }
    // Stopped when this future ends or is dropped.
    let _transmitting = access.ssf.get().map(ssf::Transmitter::spawn);
    let state_metrics = tokio::spawn(http::report_state(access.clone()));
    let result = rollcall_http::serve(listener.into(), "access", router(access), shutdown).await;
    state_metrics.abort();
    feed.abort();
    if let Some(keys) = keys {
        keys.abort();
    }
    #[cfg(unix)]
    reload.abort();
    result.map_err(|e| AccessError::Io(e.to_string()))
}

/// Binds the configured address and serves until `shutdown` resolves, with the
/// installation's session keys ([`Access::from_installation`]).
pub async fn run(
    config: Config,
    client: async_nats::Client,
    namespace: Namespace,
    store: Option<&rollcall_store::Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AccessError> {
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|e| AccessError::Io(format!("binding {}: {e}", config.addr)))?;
    let log = EventLog::open(client.clone(), namespace.clone())
        .await
        .map_err(|e| AccessError::Config(format!("the event stream: {e}")))?;
    let access = Access::from_installation(config, &client, &log, store).await?;
    serve(listener, access, client, namespace, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_that_could_outlive_its_published_revocation_is_refused() {
        let config = Config {
            session_ttl_seconds: 8 * 24 * 3600,
            ..Default::default()
        };
        assert!(
            matches!(Access::new(config), Err(AccessError::Config(message)) if message.contains("ROLLCALL_SESSION_TTL"))
        );
        assert!(Access::new(Config::default()).is_ok());
    }
}
