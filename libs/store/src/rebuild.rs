//! Fresh read-model schemas for a rebuild, and the atomic swap that makes one live.

use crate::{Store, StoreError, LIVE_SCHEMA};

/// The schema a rebuild fills.
pub const REBUILD_SCHEMA: &str = "read_model_rebuild";

/// The indexes a rebuild builds once at the end rather than row by row: their keys are ids,
/// times, tenants and event types (bounded for the events a rebuild writes in bulk, which are
/// all of known types), or already bounded by a primary key (`group_member`'s). Before any
/// batch is applied event by event they are built, with [`LOOKUP_INDEXES`].
pub const DEFERRED_INDEXES: &[&str] = &[
    "audit_event_aggregate",
    "audit_event_time",
    "audit_event_type",
    "group_member_member",
    "revocation_user",
    "scim_group_created",
    "scim_user_created",
];

/// The lookup indexes (`userName`, `externalId`, `displayName`): a value too long for a btree
/// entry fails its row's write while they exist. A rebuild defers them too, as long as every
/// key it writes (at every event, not only at the end of a batch) is short enough that no
/// index could refuse it ([`crate::lookup_key::indexable`]); before the first batch that is
/// not written in bulk every deferred index is built, so that from there on PostgreSQL refuses
/// (and the projector quarantines) exactly what it refused to the live projector.
pub const LOOKUP_INDEXES: &[&str] = &[
    "scim_group_display_name",
    "scim_group_external_id",
    "scim_user_external_id",
    "scim_user_user_name",
];

/// How many deferred indexes are built at once.
pub const INDEX_BUILDERS: usize = 2;

impl Store {
    /// Drops any earlier rebuild schema and creates an empty one.
    pub async fn create_rebuild_schema(&self) -> Result<(), StoreError> {
        let mut connection = self.admin_connection().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {REBUILD_SCHEMA} CASCADE"))
            .execute(&mut connection)
            .await?;
        sqlx::query("SELECT rollcall_create_read_model($1)")
            .bind(REBUILD_SCHEMA)
            .execute(&mut connection)
            .await?;
        Ok(())
    }

    /// Drops the rebuild schema's indexes `names` and returns their definitions for
    /// [`Store::restore_rebuild_indexes`]: building an index once over loaded rows is cheaper
    /// than updating it row by row.
    pub async fn defer_rebuild_indexes(&self, names: &[&str]) -> Result<Vec<String>, StoreError> {
        let mut connection = self.admin_connection().await?;
        let definitions: Vec<String> = sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = ANY($2)
             ORDER BY indexname",
        )
        .bind(REBUILD_SCHEMA)
        .bind(names)
        .fetch_all(&mut connection)
        .await?;
        for name in names {
            sqlx::query(&format!("DROP INDEX IF EXISTS {REBUILD_SCHEMA}.{name}"))
                .execute(&mut connection)
                .await?;
        }
        Ok(definitions)
    }

    /// Builds again the indexes [`Store::defer_rebuild_indexes`] dropped, [`INDEX_BUILDERS`]
    /// at a time, each on a connection of its own: PostgreSQL's parallel workers leave a core
    /// idle for much of a build (measured on 2 cores over 1,000,000 events: 5.8 s one at a
    /// time, 4.6 s two at a time).
    pub async fn restore_rebuild_indexes(&self, definitions: &[String]) -> Result<(), StoreError> {
        // `None` once a build failed: the others finish the index they are building (a build
        // abandoned mid-way would go on in the server, holding its table) and take no other.
        let queue = std::sync::Mutex::new(Some(definitions.iter()));
        let lock = || {
            queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        // The guard is dropped before the build is awaited.
        let next = || lock().as_mut().and_then(Iterator::next);
        let builder = || async {
            let built = async {
                let mut connection = self.admin_connection().await?;
                sqlx::query("SET maintenance_work_mem = '256MB'")
                    .execute(&mut connection)
                    .await?;
                while let Some(definition) = next() {
                    sqlx::query(definition).execute(&mut connection).await?;
                }
                Ok::<_, StoreError>(())
            }
            .await;
            if built.is_err() {
                lock().take();
            }
            built
        };
        let builders = (0..INDEX_BUILDERS.min(definitions.len())).map(|_| builder());
        futures::future::join_all(builders)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    /// Makes the rebuilt schema live and drops the old one, in one transaction. Connections
    /// resolve table names again after the swap (PostgreSQL re-plans statements whose tables
    /// changed), so running services read the new tables at once.
    ///
    /// The live outbox's entries (access state committed but not yet published) move to the
    /// rebuilt schema with their ids, so that they are still published, and a publisher's
    /// deletion of entries it read before the swap removes those same entries after it.
    pub async fn swap_rebuild_schema(&self) -> Result<(), StoreError> {
        let mut connection = self.admin_connection().await?;
        // A connection of its own, never pooled: dropped mid-`BEGIN`, it is closed.
        #[allow(clippy::disallowed_methods)]
        let mut transaction = sqlx::Connection::begin(&mut connection).await?;
        // No entry is added or removed from here to the commit.
        sqlx::query(&format!(
            "LOCK TABLE {LIVE_SCHEMA}.access_outbox IN EXCLUSIVE MODE"
        ))
        .execute(&mut *transaction)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {REBUILD_SCHEMA}.access_outbox (id, sequence, kind, tenant, subject_id, payload)
             SELECT id, sequence, kind, tenant, subject_id, payload FROM {LIVE_SCHEMA}.access_outbox"
        ))
        .execute(&mut *transaction)
        .await?;
        // New entries are numbered after every id either schema gave.
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{REBUILD_SCHEMA}.access_outbox', 'id'),
                    GREATEST((SELECT last_value FROM {LIVE_SCHEMA}.access_outbox_id_seq),
                             (SELECT last_value FROM {REBUILD_SCHEMA}.access_outbox_id_seq)))"
        ))
        .execute(&mut *transaction)
        .await?;
        sqlx::query(&format!(
            "ALTER SCHEMA {LIVE_SCHEMA} RENAME TO {LIVE_SCHEMA}_old"
        ))
        .execute(&mut *transaction)
        .await?;
        sqlx::query(&format!(
            "ALTER SCHEMA {REBUILD_SCHEMA} RENAME TO {LIVE_SCHEMA}"
        ))
        .execute(&mut *transaction)
        .await?;
        sqlx::query(&format!("DROP SCHEMA {LIVE_SCHEMA}_old CASCADE"))
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }
}
