//! The SCIM 2.0 server (RFC 7644) that Microsoft Entra ID provisions: bearer tokens per
//! tenant, SCIM requests turned into domain commands, events appended to JetStream, reads
//! served from the PostgreSQL read models once they hold the write.
#![warn(missing_docs)]

pub mod aggregate;
pub mod auth;
pub mod body;
mod change;
mod claims;
pub mod consistency;
mod discovery;
pub mod error;
mod health;
pub mod http;
pub mod index;
mod lists;
pub mod mapping;
pub mod operator;
mod render;
pub mod request_log;
pub mod resources;
pub mod retention;
mod writes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use rollcall_eventlog::partition::Partitioning;
use rollcall_eventlog::{Claims, EventLog};
use rollcall_store::tenant::Scope;
use rollcall_store::Store;
use rollcall_telemetry::http::ResponseError;
use tokio::net::TcpListener;
use tracing::{info, warn, Span};

use crate::aggregate::{Groups, Repositories, Repository, Users};
use crate::auth::TokenVerifier;
use crate::consistency::{Checkpoint, Consistency};
use crate::error::ApiError;
use crate::http::RequestId;

/// Where SCIM lives on the server.
pub const BASE_PATH: &str = "/scim/v2";

/// Everything the SCIM API reads from the environment (besides the shared connections).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "scim")]
pub struct Config {
    /// Socket address the SCIM HTTP server binds to.
    #[arg(
        id = "scim_addr",
        long = "scim-addr",
        env = "ROLLCALL_SCIM_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,
    /// The SCIM base URL as clients see it (for `meta.location`, `Location` and `$ref`);
    /// by default taken from each request's Host header, as `http://<host>/scim/v2`.
    #[arg(long = "public-url", env = "ROLLCALL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Largest request body accepted, in bytes (larger: `413`).
    #[arg(
        long = "scim-max-body",
        env = "ROLLCALL_SCIM_MAX_BODY",
        default_value_t = 1_048_576
    )]
    pub max_body_bytes: usize,
    /// Also wait, before answering a write, until the access service has applied it
    /// (`rollcall serve` sets this when it runs the access service).
    #[arg(
        long = "scim-wait-for-access",
        env = "ROLLCALL_SCIM_WAIT_FOR_ACCESS",
        default_value_t = false
    )]
    pub wait_for_access: bool,
    /// Log request bodies (passwords are always removed) in the SCIM request log.
    #[arg(
        long = "scim-log-bodies",
        env = "ROLLCALL_SCIM_LOG_BODIES",
        default_value_t = false
    )]
    pub log_bodies: bool,
    /// Days the SCIM request log keeps a request.
    #[arg(
        long = "scim-log-retention-days",
        env = "ROLLCALL_SCIM_LOG_RETENTION_DAYS",
        default_value_t = 30
    )]
    pub log_retention_days: u32,
    /// Answer Entra's lookups (`userName`, `externalId`, `displayName`, `id` and
    /// `members[value eq]` filters) from an index this process keeps in memory from the event
    /// stream, instead of from PostgreSQL. It holds every user and group of the installation
    /// (without group members' order); `false` keeps every read on PostgreSQL.
    #[arg(
        long = "scim-lookup-index",
        env = "ROLLCALL_SCIM_LOOKUP_INDEX",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub lookup_index: bool,
    /// Erase users deleted longer ago than this many days (GDPR storage limitation): each as
    /// its own `user.erased` event, like `rollcall users erase`. Unset: keep them.
    #[arg(
        long = "retention-days-after-delete",
        env = "ROLLCALL_RETENTION_DAYS_AFTER_DELETE"
    )]
    pub retention_days_after_delete: Option<u32>,
    /// Seconds between two looks for users to erase under the retention rule.
    #[arg(
        long = "retention-interval-seconds",
        env = "ROLLCALL_RETENTION_INTERVAL_SECONDS",
        default_value_t = 3600
    )]
    pub retention_interval_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            max_body_bytes: 1_048_576,
            wait_for_access: false,
            log_bodies: false,
            log_retention_days: 30,
            lookup_index: true,
            retention_days_after_delete: None,
            retention_interval_seconds: 3600,
        }
    }
}

/// Shared state of every handler: cloned for every request, so it is one reference count.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
#[derive(Debug)]
pub struct Shared {
    /// Configuration.
    pub config: Arc<Config>,
    /// Read models.
    pub store: Store,
    /// Write path.
    pub repositories: Arc<Repositories>,
    /// Uniqueness claims.
    pub claims: Claims,
    /// The checkpoints writes wait for (read-your-writes).
    pub checkpoint: Consistency,
    /// Verified tokens.
    pub tokens: TokenVerifier,
    /// The SCIM request log.
    pub request_log: request_log::RequestLog,
    /// The lookup index, when configured.
    pub index: Option<index::LookupIndex>,
}

impl AppState {
    /// Builds the state over shared connections.
    pub async fn new(
        config: Config,
        client: async_nats::Client,
        log: EventLog,
        store: Store,
    ) -> Result<Self, ApiError> {
        let claims = Claims::open(log.jetstream(), log.namespace()).await?;
        match claims::adopt_folded_keys(&claims, &store).await {
            Ok(0) => {}
            Ok(adopted) => info!(adopted, "claimed the case-folded keys of existing names"),
            // Only names that fold differently from their lowercase are exposed meanwhile.
            Err(error) => {
                warn!(error = %error, "claiming the case-folded keys of existing names failed")
            }
        }
        if let Some(days) = config.retention_days_after_delete {
            retention::start(
                log.clone(),
                store.clone(),
                claims.clone(),
                days,
                std::time::Duration::from_secs(config.retention_interval_seconds),
            );
        }
        let (store_for_log, retention_days, log_bodies) =
            (store.clone(), config.log_retention_days, config.log_bodies);
        // The installation's partitioning, as the projector chose it (an instance that also
        // projects settles it before the SCIM API starts; after a change of it, this process
        // answers writes 503 until it is restarted).
        // (The table's CHECK keeps it within 1..=64.)
        let partitioning = Partitioning::new(store.partitions().await?.into()).unwrap_or_default();
        let mut checkpoints = Vec::with_capacity(usize::from(partitioning.count()));
        for partition in partitioning.all() {
            let mut partition_checkpoints = vec![
                Checkpoint::follow(
                    client.clone(),
                    log.namespace(),
                    store.clone(),
                    &partition.name(PROJECTOR_NAME),
                    partition,
                )
                .await,
            ];
            if config.wait_for_access {
                let access = if partitioning.count() == 1 {
                    "access".to_owned()
                } else {
                    partition.name("access")
                };
                partition_checkpoints.push(
                    Checkpoint::follow_access_services(client.clone(), log.namespace(), &access)
                        .await,
                );
            }
            checkpoints.push(partition_checkpoints);
        }
        let checkpoint = Consistency::partitioned(partitioning, checkpoints, Some(store.clone()));
        checkpoint.watch_partitioning(store.clone());
        let index = config
            .lookup_index
            .then(|| index::LookupIndex::start(log.clone(), store.clone()));
        let repositories = Repositories {
            users: Repository::new(log.clone(), store.clone()),
            groups: Repository::new(log, store.clone()),
        };
        Ok(Self(Arc::new(Shared {
            config: Arc::new(config),
            store,
            repositories: Arc::new(repositories),
            claims,
            checkpoint,
            tokens: TokenVerifier::new(Scope::Scim),
            request_log: request_log::RequestLog::start(store_for_log, retention_days, log_bodies),
            index,
        })))
    }
}

/// The projector whose checkpoint writes wait for (its durable consumer name).
const PROJECTOR_NAME: &str = "projector";

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
    }
}

async fn not_found() -> ApiError {
    rollcall_scim::ScimError::not_found("no such SCIM endpoint; the base is /scim/v2").into()
}

/// Gives every request an id (returned as `X-Request-Id`, recorded on its events).
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = uuid::Uuid::now_v7().to_string();
    Span::current().record("request.id", id.as_str());
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// What the shared error log ([`rollcall_telemetry::http::layer`]) says of a SCIM error.
fn log_record(error: &ApiError) -> ResponseError {
    match error {
        ApiError::Internal(cause) => ResponseError::failure(cause),
        ApiError::Unavailable(cause) => ResponseError::degraded(cause),
        // A write not in effect needs a human; the message holds ids and sequences only.
        ApiError::NotApplied { .. } | ApiError::Quarantined { .. } => ResponseError::failure(error),
        // The detail can echo client input (a filter's userName): the keyword only.
        other => ResponseError::refusal(
            other
                .to_scim()
                .scim_type
                .map_or("none", |scim_type| scim_type.as_str()),
        ),
    }
}

/// Hands a SCIM error on the response to the shared error log.
async fn attach_log_record(mut response: Response) -> Response {
    if let Some(record) = response
        .extensions()
        .get::<Arc<ApiError>>()
        .map(|error| log_record(error))
    {
        record.attach(&mut response);
    }
    response
}

/// The SCIM routes under [`BASE_PATH`].
pub fn router(state: AppState) -> Router {
    let scim = Router::new()
        .route(
            "/Users",
            get(lists::list::<Users>)
                .post(writes::create::<Users>)
                .fallback(method_not_allowed),
        )
        .route(
            "/Users/.search",
            post(lists::search::<Users>).fallback(method_not_allowed),
        )
        .route(
            "/Users/{id}",
            get(lists::get::<Users>)
                .put(writes::replace::<Users>)
                .patch(writes::modify::<Users>)
                .delete(writes::delete::<Users>)
                .fallback(method_not_allowed),
        )
        .route(
            "/Groups",
            get(lists::list::<Groups>)
                .post(writes::create::<Groups>)
                .fallback(method_not_allowed),
        )
        .route(
            "/Groups/.search",
            post(lists::search::<Groups>).fallback(method_not_allowed),
        )
        .route(
            "/Groups/{id}",
            get(lists::get::<Groups>)
                .put(writes::replace::<Groups>)
                .patch(writes::modify::<Groups>)
                .delete(writes::delete::<Groups>)
                .fallback(method_not_allowed),
        )
        .route("/.search", post(root_search).fallback(method_not_allowed))
        .route(
            "/ServiceProviderConfig",
            get(discovery::service_provider_config).fallback(method_not_allowed),
        )
        .route(
            "/ResourceTypes",
            get(discovery::resource_types).fallback(method_not_allowed),
        )
        .route(
            "/ResourceTypes/{name}",
            get(discovery::resource_type).fallback(method_not_allowed),
        )
        .route(
            "/Schemas",
            get(discovery::schemas).fallback(method_not_allowed),
        )
        .route(
            "/Schemas/{id}",
            get(discovery::schema).fallback(method_not_allowed),
        )
        // Layers run outermost-last: the request id exists before the log records the request.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_log::record,
        ))
        .route_layer(axum::middleware::from_fn(request_id))
        .with_state(state.clone());
    Router::new()
        .nest(BASE_PATH, scim)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
        .fallback(not_found)
        .layer(axum::middleware::map_response(attach_log_record))
}

async fn root_search(
    axum::extract::State(state): axum::extract::State<AppState>,
    principal: auth::Principal,
    info: http::RequestInfo,
    body::ScimJson(body): body::ScimJson,
) -> Result<Response, ApiError> {
    let params = rollcall_scim::QueryParams::from_search_body(&body)?;
    let list = lists::root(&state, &principal, &info, &params).await?;
    Ok(http::scim(
        axum::http::StatusCode::OK,
        &list.to_json(),
        None,
        None,
    ))
}

/// Serves the SCIM API on `listener` (a `TcpListener` gets the default HTTP timeouts) until
/// `shutdown` resolves.
pub async fn serve(
    listener: impl Into<rollcall_http::Listener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store = state.store.clone();
    let served = rollcall_http::serve(listener.into(), "scim", router(state), shutdown).await;
    // Every request has been answered: the spare users' keys go (they sealed nothing).
    match store.release_spare_users().await {
        Ok(released) => tracing::debug!(released, "removed the spare users' data keys"),
        Err(error) => {
            tracing::warn!(%error, "removing the spare users' data keys failed; they stay, as keys of users that never existed")
        }
    }
    served
}

/// Binds the configured address and serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    client: async_nats::Client,
    log: EventLog,
    store: Store,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|e| ApiError::Internal(format!("binding {}: {e}", config.addr)))?;
    let state = AppState::new(config, client, log, store).await?;
    serve(listener, state, shutdown)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}
