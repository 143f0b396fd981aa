//! rollcall-store: Rollcall's PostgreSQL side. Connects (creating the database if missing),
//! runs the embedded migrations, and offers the read-model queries SCIM reads use, the writes
//! the projector makes (one writer per table), projection checkpoints, and tenants and tokens.
//!
//! Read models live in a schema of their own (`read_model`), found through `search_path`, so
//! that a rebuild can fill a fresh schema from the event stream and swap it in atomically.
#![warn(missing_docs)]

pub mod access;
pub mod audit;
pub mod checkpoint;
pub mod group;
pub mod lookup_key;
mod page;
pub mod partition;
pub mod personal_key;
pub mod quarantine;
pub mod rebuild;
pub mod request_log;
pub mod secrets;
pub mod ssf;
pub mod tenant;
pub mod user;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tracing::{info, instrument};

/// The schema holding the live read models.
pub const LIVE_SCHEMA: &str = "read_model";

/// The embedded migrations (`migrations/` at the workspace root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A name or argument was refused.
    #[error("{0}")]
    Invalid(String),
    /// The user was erased: its data key is gone, nothing is sealed under it again.
    #[error("user {user} of tenant {tenant} was erased; its id is never used again")]
    Erased {
        /// The tenant.
        tenant: String,
        /// The user.
        user: uuid::Uuid,
    },
    /// The key-encryption key is missing or is not the one the data keys are wrapped under.
    #[error("{0}")]
    Kek(String),
}

/// A connection pool whose `search_path` finds one read-model schema.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    schema: String,
    options: PgConnectOptions,
    keyring: std::sync::Arc<personal_key::Keyring>,
}

impl Store {
    /// Connects to the live read models at `url`: creates the database if it is missing and
    /// runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, LIVE_SCHEMA, 16).await
    }

    /// Connects with a given read-model schema and pool size.
    #[instrument(skip_all, fields(schema), err)]
    pub async fn connect_with(
        url: &str,
        schema: &str,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let base =
            PgConnectOptions::from_str(url)?.log_statements(tracing::log::LevelFilter::Trace);
        create_database_if_missing(&base).await?;
        migrate(&base).await?;
        let options = base
            .clone()
            .options([("search_path", format!("{schema},public"))]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        Ok(Self {
            keyring: personal_key::keyring(&pool),
            pool,
            schema: schema.to_owned(),
            options: base,
        })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction on a pooled connection; use it, never the pool's own `begin`.
    ///
    /// sqlx's `Pool::begin`, dropped after it sent `BEGIN` and before the answer came (a
    /// task aborted, a client gone, a `select!` that took another branch), returns the
    /// connection to the pool inside a transaction that nothing rolls back: sqlx counts a
    /// transaction only once `BEGIN` is answered. Every later statement on that connection
    /// then runs inside it, and any lock one takes is held for good (a projector's start once
    /// waited forever behind such a `FOR SHARE`). Run in a task of its own, the `BEGIN` always
    /// completes, and a transaction its caller no longer awaits is dropped there, which rolls
    /// it back before the connection is pooled again.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        let pool = self.pool.clone();
        #[allow(clippy::disallowed_methods)]
        let begun = tokio::spawn(async move { pool.begin().await }).await;
        match begun {
            Ok(transaction) => Ok(transaction?),
            Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
            // The runtime is shutting down.
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolClosed)),
        }
    }

    /// The read-model schema this store reads and writes.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The same database with another read-model schema.
    pub async fn with_schema(
        &self,
        schema: &str,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        self.with_schema_options(schema, max_connections, &[]).await
    }

    /// [`Store::with_schema`] whose commits do not wait for their WAL to reach the disk
    /// (`synchronous_commit = off`): for a schema that is thrown away and made again if the
    /// process stops (a rebuild's), and made durable by a synchronous commit after it.
    pub async fn with_schema_committing_asynchronously(
        &self,
        schema: &str,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let asynchronous = [("synchronous_commit", "off")];
        self.with_schema_options(schema, max_connections, &asynchronous)
            .await
    }

    async fn with_schema_options(
        &self,
        schema: &str,
        max_connections: u32,
        settings: &[(&str, &str)],
    ) -> Result<Self, StoreError> {
        let options = self
            .options
            .clone()
            .options([("search_path", format!("{schema},public"))])
            .options(settings.iter().copied());
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            options: self.options.clone(),
            keyring: self.keyring.clone(),
        })
    }

    /// The same database and read-model schema over a pool of its own, for long-running reads
    /// (the audit API): at most `bounds.max_connections`, each cancelling any statement that
    /// runs longer than `bounds.statement_timeout`, and waiting at most `bounds.acquire_timeout`
    /// for a free connection. What runs there can never take a connection from this store's
    /// pool (SCIM, the projector). Connects lazily.
    pub fn bounded(&self, bounds: PoolBounds) -> Self {
        let options = self.options.clone().options([
            ("search_path", format!("{},public", self.schema)),
            (
                "statement_timeout",
                bounds.statement_timeout.as_millis().max(1).to_string(),
            ),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(bounds.max_connections.max(1))
            .acquire_timeout(bounds.acquire_timeout)
            .connect_lazy_with(options);
        Self {
            pool,
            schema: self.schema.clone(),
            options: self.options.clone(),
            keyring: self.keyring.clone(),
        }
    }

    /// A single connection without a read-model search path (for DDL).
    pub async fn admin_connection(&self) -> Result<PgConnection, StoreError> {
        Ok(PgConnection::connect_with(&self.options).await?)
    }
}

/// The bounds of a pool kept apart for long-running reads ([`Store::bounded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBounds {
    /// Connections at most.
    pub max_connections: u32,
    /// How long a query waits for a free connection before failing with
    /// `sqlx::Error::PoolTimedOut`.
    pub acquire_timeout: Duration,
    /// PostgreSQL cancels a statement running longer (SQLSTATE `57014`).
    pub statement_timeout: Duration,
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), StoreError> {
    let Some(database) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    match PgConnection::connect_with(options).await {
        Ok(connection) => {
            let _ = connection.close().await;
            Ok(())
        }
        // 3D000: invalid_catalog_name, the database does not exist.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("3D000") => {
            let mut admin =
                PgConnection::connect_with(&options.clone().database("postgres")).await?;
            let statement = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
            match sqlx::query(&statement).execute(&mut admin).await {
                Ok(_) => info!(database = %database, "created database"),
                // 42P04: duplicate_database; 23505: the catalog's unique index caught two
                // processes creating it at once. Either way it exists now.
                Err(sqlx::Error::Database(error))
                    if matches!(error.code().as_deref(), Some("42P04" | "23505")) => {}
                Err(error) => return Err(error.into()),
            }
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

async fn migrate(options: &PgConnectOptions) -> Result<(), StoreError> {
    // Migrations run with the default search_path, so that their objects and sqlx's own
    // bookkeeping table land in `public`.
    let mut connection = PgConnection::connect_with(options).await?;
    MIGRATOR.run(&mut connection).await?;
    let _ = connection.close().await;
    Ok(())
}

/// Drops a database (for tests and tooling); connections to it are terminated first.
pub async fn drop_database(url: &str) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    let Some(database) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&database)
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{}\"",
        database.replace('"', "\"\"")
    ))
    .execute(&mut admin)
    .await?;
    Ok(())
}
