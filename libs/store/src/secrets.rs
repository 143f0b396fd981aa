//! Installation secrets: values Rollcall generates once and keeps (table
//! `installation_secret`, migration 0004), such as the key-encryption key that seals the
//! session keys in NATS when no `ROLLCALL_KEK` is configured. A secret is stored once and never
//! changed: processes starting together each offer a fresh value and all read back the one
//! stored first. Values are never logged.

use tracing::instrument;

use crate::{Store, StoreError};

impl Store {
    /// The installation secret `name`: the stored value, or `candidate` if none was stored yet
    /// (it is stored now). Concurrent callers all get the value stored first.
    #[instrument(skip_all, fields(secret = %name), err)]
    pub async fn installation_secret(
        &self,
        name: &str,
        candidate: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        sqlx::query(
            "INSERT INTO public.installation_secret (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(self.pool())
        .await?;
        self.stored_installation_secret(name)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("installation secret {name:?} vanished")))
    }

    /// The installation secret `name`, if one is stored.
    #[instrument(skip_all, fields(secret = %name), err)]
    pub async fn stored_installation_secret(
        &self,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let value: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT value FROM public.installation_secret WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await?;
        Ok(value.map(|(value,)| value))
    }
}
