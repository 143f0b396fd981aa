//! The connections every command shares: NATS (with the namespace's event stream) and
//! PostgreSQL, opened from [`Common`].

use anyhow::Context;
use rollcall_eventlog::{EventLog, Namespace};
use rollcall_store::Store;

use crate::cli::Common;

/// A process's shared connections: what every role of an [`crate::instance::Instance`] uses.
#[derive(Debug, Clone)]
pub struct Connections {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// The namespace's event stream.
    pub log: EventLog,
    /// The read models.
    pub store: Store,
}

impl Connections {
    /// Connects to NATS and PostgreSQL as `common` says.
    pub async fn open(common: &Common) -> anyhow::Result<Self> {
        let (client, log) = connect_nats(common).await?;
        let store = connect_store(common).await?;
        Ok(Self { client, log, store })
    }
}

/// The namespace `common` names, with its replicas.
pub fn namespace(common: &Common) -> anyhow::Result<Namespace> {
    Namespace::new(&common.namespace)
        .context("ROLLCALL_NAMESPACE")?
        .with_replicas(common.replicas)
        .context("ROLLCALL_REPLICAS")
}

/// Connects to NATS (one server or a cluster's list) and opens the event stream.
pub async fn connect_nats(common: &Common) -> anyhow::Result<(async_nats::Client, EventLog)> {
    let namespace = namespace(common)?;
    // Its errors name NATS_URL and the servers tried.
    let client = rollcall_eventlog::connect(&common.nats_url, "rollcall").await?;
    let log = EventLog::open(client.clone(), namespace)
        .await
        .context("opening the event stream")?;
    Ok((client, log))
}

/// Gives `store` the key-encryption key(s) that wrap the users' data keys, and checks that they
/// open the stored ones, before anything is written: a wrong KEK is an error here.
/// - `Kek::resolve` for the services (the configured KEK, or the one kept in PostgreSQL,
///   generated there on a first start); `Kek::existing` for operator commands (never creates).
pub async fn install_keks(
    store: &Store,
    config: &rollcall_access::keys::KekConfig,
    services: bool,
) -> anyhow::Result<()> {
    use rollcall_access::keys::Kek;
    // A KEK is generated (and kept in PostgreSQL) only for an installation without data keys:
    // with some, the one they are wrapped under must be given or kept already, and nothing is
    // written.
    let kek = if services && !store.has_data_keys().await? {
        Kek::resolve(config, Some(store)).await
    } else {
        Kek::existing(config, Some(store)).await
    }
    .context("the key-encryption key (ROLLCALL_KEK)")?;
    let previous = config
        .previous()
        .context("ROLLCALL_KEK_PREVIOUS")?
        .map(|previous| *previous.expose());
    store.install_keks(*kek.expose(), previous.into_iter().collect());
    store
        .check_data_keys()
        .await
        .context("the users' data keys")?;
    Ok(())
}

/// Connects to PostgreSQL (creating the database and migrating it when needed).
pub async fn connect_store(common: &Common) -> anyhow::Result<Store> {
    Store::connect(&common.database_url)
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")
}
