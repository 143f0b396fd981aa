//! Lookup keys computed again: rows of `scim_user` and `scim_group` whose keys were computed
//! otherwise (PostgreSQL's `lower()`, before migration 0003, or an older Unicode version of the
//! folding) get the keys [`rollcall_scim::case::fold`] gives. The projector runs this when it
//! starts, before it applies events; the table `lookup_key_folding` records that it is done.

use rollcall_scim::case::{fold, folding};
use tracing::{info, instrument};
use uuid::Uuid;

use crate::{Store, StoreError};

/// Whether a lookup key (with its tenant, as the lookup indexes hold them) is certain to fit a
/// btree index entry, uncompressed and with room for the entry's own header. Keys of values
/// within the SCIM limits always are.
pub fn indexable(tenant: &str, key: &str) -> bool {
    const ENTRY_HEADER_BYTES: usize = 64;
    tenant.len() + fold(key).len() + ENTRY_HEADER_BYTES
        <= rollcall_scim::limits::BTREE_MAX_INDEX_ROW_BYTES
}

/// Rows read per statement while keying again.
const BATCH: i64 = 1_000;

/// What keying again changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rekeyed {
    /// Users whose keys changed.
    pub users: u64,
    /// Groups whose keys changed.
    pub groups: u64,
}

type KeyRow = (String, Uuid, String, String, Option<String>, Option<String>);

/// Rows whose keys differ from the folding's, column by column, with their new keys.
#[derive(Default)]
struct Stale {
    tenants: Vec<String>,
    ids: Vec<Uuid>,
    values: Vec<String>,
    keys: Vec<String>,
    external_ids: Vec<Option<String>>,
    external_keys: Vec<Option<String>>,
}

/// The table's rows after `(tenant, id)`, with their values and keys.
fn select(table: &str, name: &str) -> String {
    format!(
        "SELECT tenant, id, {name}, {name}_lower, external_id, external_id_lower FROM {table}
         WHERE (tenant, id) > ($1, $2) ORDER BY tenant, id LIMIT $3"
    )
}

/// Sets the keys of rows whose values are still those the keys were computed from (a row the
/// projector changed meanwhile has its new keys already).
fn update(table: &str, name: &str) -> String {
    format!(
        "UPDATE {table} AS t SET {name}_lower = k.name_key, external_id_lower = k.external_id_key
         FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[])
             AS k(tenant, id, name, name_key, external_id, external_id_key)
         WHERE t.tenant = k.tenant AND t.id = k.id AND t.{name} = k.name
           AND t.external_id IS NOT DISTINCT FROM k.external_id"
    )
}

impl Store {
    /// Computes the lookup keys of every user and group again where they differ from the
    /// folding's, once per folding; returns how many rows changed (none when already done).
    #[instrument(skip_all, err)]
    pub async fn rekey_lookup_keys(&self) -> Result<Rekeyed, StoreError> {
        let folding = folding();
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM lookup_key_folding WHERE folding = $1)",
        )
        .bind(&folding)
        .fetch_one(self.pool())
        .await?;
        if done {
            return Ok(Rekeyed::default());
        }
        let rekeyed = Rekeyed {
            users: self.rekey("scim_user", "user_name").await?,
            groups: self.rekey("scim_group", "display_name").await?,
        };
        sqlx::query("INSERT INTO lookup_key_folding (folding) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&folding)
            .execute(self.pool())
            .await?;
        info!(
            users = rekeyed.users,
            groups = rekeyed.groups,
            folding,
            "lookup keys computed with the current case folding"
        );
        Ok(rekeyed)
    }

    async fn rekey(&self, table: &str, name: &str) -> Result<u64, StoreError> {
        let (select, update) = (select(table, name), update(table, name));
        let mut after = (String::new(), Uuid::nil());
        let mut changed = 0;
        loop {
            let rows: Vec<KeyRow> = sqlx::query_as(&select)
                .bind(&after.0)
                .bind(after.1)
                .bind(BATCH)
                .fetch_all(self.pool())
                .await?;
            let Some(last) = rows.last() else {
                return Ok(changed);
            };
            after = (last.0.clone(), last.1);
            let mut stale = Stale::default();
            for (tenant, id, value, key, external_id, external_key) in rows {
                let new_key = fold(&value).into_owned();
                let new_external_key = external_id.as_deref().map(|id| fold(id).into_owned());
                if new_key != key || new_external_key != external_key {
                    stale.tenants.push(tenant);
                    stale.ids.push(id);
                    stale.values.push(value);
                    stale.keys.push(new_key);
                    stale.external_ids.push(external_id);
                    stale.external_keys.push(new_external_key);
                }
            }
            if stale.ids.is_empty() {
                continue;
            }
            changed += sqlx::query(&update)
                .bind(&stale.tenants)
                .bind(&stale.ids)
                .bind(&stale.values)
                .bind(&stale.keys)
                .bind(&stale.external_ids)
                .bind(&stale.external_keys)
                .execute(self.pool())
                .await?
                .rows_affected();
        }
    }
}

#[cfg(test)]
mod indexable_tests {
    use super::indexable;

    #[test]
    fn keys_within_scim_limits_are_indexable_and_longer_ones_are_not() {
        let longest = "\u{1F600}".repeat(rollcall_scim::limits::MAX_USER_NAME_CHARS);
        assert!(indexable(&"t".repeat(63), &longest));
        assert!(!indexable("t", &"a".repeat(2_700)));
        // Case folding can make a key longer than its value (ß folds to ss).
        assert!(!indexable("t", &"ß".repeat(1_320)));
        assert!(indexable("t", &"ß".repeat(600)));
    }
}
