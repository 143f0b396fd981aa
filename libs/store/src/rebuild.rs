//! Fresh read-model schemas for a rebuild, and the atomic swap that makes one live.

use crate::{Store, StoreError, LIVE_SCHEMA};

/// The schema a rebuild fills.
pub const REBUILD_SCHEMA: &str = "read_model_rebuild";

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

    /// Makes the rebuilt schema live and drops the old one, in one transaction. Connections
    /// resolve table names again after the swap (PostgreSQL re-plans statements whose tables
    /// changed), so running services read the new tables at once.
    pub async fn swap_rebuild_schema(&self) -> Result<(), StoreError> {
        let mut connection = self.admin_connection().await?;
        let mut transaction = sqlx::Connection::begin(&mut connection).await?;
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
