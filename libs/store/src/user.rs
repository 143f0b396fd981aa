//! The `scim_user` read model: written by the projector, read by SCIM lookups.
//!
//! `user_name_lower` and `external_id_lower` are lookup keys: the values case-folded in Rust
//! ([`rollcall_scim::case::fold`], the folding of the uniqueness claims and of every filter),
//! bound by every write and every lookup; PostgreSQL's `lower()` is not used.

use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

use rollcall_scim::case::fold;

use crate::page::Table;
use crate::{Store, StoreError};

/// One user as the read model holds it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserRow {
    /// The tenant.
    pub tenant: String,
    /// The user's id.
    pub id: Uuid,
    /// The userName, as sent.
    pub user_name: String,
    /// The externalId, as sent.
    pub external_id: Option<String>,
    /// Whether the user is active.
    pub active: bool,
    /// Every other attribute, canonical JSON.
    pub attributes: Json<Map<String, Value>>,
    /// The aggregate's version.
    pub version: i64,
    /// When the user was provisioned.
    pub created_at: OffsetDateTime,
    /// When the user last changed.
    pub updated_at: OffsetDateTime,
}

/// A condition Entra's lookups compile to; all conditions of a query must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCondition {
    /// `id eq`
    Id(Uuid),
    /// `userName eq`, compared without case.
    UserName(String),
    /// `externalId eq`, compared without case.
    ExternalId(String),
}

const COLUMNS: &str =
    "tenant, id, user_name, external_id, active, attributes, version, created_at, updated_at";

fn where_clause<'a>(
    builder: &mut QueryBuilder<'a, Postgres>,
    tenant: &'a str,
    conditions: &'a [UserCondition],
) {
    builder.push(" WHERE tenant = ").push_bind(tenant);
    for condition in conditions {
        match condition {
            UserCondition::Id(id) => builder.push(" AND id = ").push_bind(*id),
            UserCondition::UserName(name) => builder
                .push(" AND user_name_lower = ")
                .push_bind(fold(name).into_owned()),
            UserCondition::ExternalId(id) => builder
                .push(" AND external_id_lower = ")
                .push_bind(fold(id).into_owned()),
        };
    }
}

impl Store {
    /// One user by id.
    pub async fn user(&self, tenant: &str, id: Uuid) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {COLUMNS} FROM scim_user WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Users meeting every condition (from indexed columns), a page of them in creation
    /// order, and how many meet them in all.
    pub async fn find_users(
        &self,
        tenant: &str,
        conditions: &[UserCondition],
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<UserRow>, usize), StoreError> {
        self.find_page(
            Table {
                from: "scim_user",
                columns: COLUMNS,
                order: "created_at, id",
            },
            |builder| where_clause(builder, tenant, conditions),
            offset,
            limit,
        )
        .await
    }

    /// Up to `limit` users of a tenant, in creation order (for filters no index answers).
    pub async fn scan_users(&self, tenant: &str, limit: usize) -> Result<Vec<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {COLUMNS} FROM scim_user WHERE tenant = $1 ORDER BY created_at, id LIMIT $2"
        ))
        .bind(tenant)
        .bind(limit as i64)
        .fetch_all(self.pool())
        .await?)
    }

    /// Every user whose userName holds a character beyond ASCII: (tenant, id, userName). For
    /// the others, every case folding Rollcall ever used agrees.
    pub async fn user_names_beyond_ascii(&self) -> Result<Vec<(String, Uuid, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT tenant, id, user_name FROM scim_user
             WHERE octet_length(user_name) <> char_length(user_name) ORDER BY tenant, id",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// The groups each of these users is a direct member of: (user id, group id, displayName),
    /// by folded displayName (compared byte by byte, whatever the database's locale), then id.
    pub async fn groups_of_users(
        &self,
        tenant: &str,
        users: &[Uuid],
    ) -> Result<Vec<(Uuid, Uuid, String)>, StoreError> {
        let keys: Vec<String> = users.iter().map(|id| id.to_string()).collect();
        let rows: Vec<(String, Uuid, String)> = sqlx::query_as(
            "SELECT m.member_key, g.id, g.display_name FROM group_member m
             JOIN scim_group g ON g.tenant = m.tenant AND g.id = m.group_id
             WHERE m.tenant = $1 AND m.member_key = ANY($2) ORDER BY g.display_name_lower COLLATE \"C\", g.id",
        )
        .bind(tenant)
        .bind(&keys)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, group, name)| Some((Uuid::parse_str(&key).ok()?, group, name)))
            .collect())
    }
}

/// The user, locked for update within the projector's transaction.
pub async fn lock(
    connection: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<UserRow>, StoreError> {
    Ok(sqlx::query_as::<_, UserRow>(&format!(
        "SELECT {COLUMNS} FROM scim_user WHERE tenant = $1 AND id = $2 FOR UPDATE"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(connection)
    .await?)
}

/// Inserts or replaces a user, with its lookup keys.
pub async fn upsert(connection: &mut PgConnection, row: &UserRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO scim_user (tenant, id, user_name, user_name_lower, external_id, external_id_lower, active,
                                attributes, version, created_at, updated_at)
         VALUES ($1, $2, $3, $10, $4, $11, $5, $6, $7, $8, $9)
         ON CONFLICT (tenant, id) DO UPDATE SET
             user_name = EXCLUDED.user_name, user_name_lower = EXCLUDED.user_name_lower,
             external_id = EXCLUDED.external_id, external_id_lower = EXCLUDED.external_id_lower,
             active = EXCLUDED.active, attributes = EXCLUDED.attributes, version = EXCLUDED.version,
             updated_at = EXCLUDED.updated_at",
    )
    .bind(&row.tenant)
    .bind(row.id)
    .bind(&row.user_name)
    .bind(&row.external_id)
    .bind(row.active)
    .bind(&row.attributes)
    .bind(row.version)
    .bind(row.created_at)
    .bind(row.updated_at)
    .bind(fold(&row.user_name).as_ref())
    .bind(row.external_id.as_deref().map(fold).as_deref())
    .execute(connection)
    .await?;
    Ok(())
}

/// Deletes a user and its group memberships.
pub async fn delete(
    connection: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM scim_user WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *connection)
        .await?;
    sqlx::query("DELETE FROM group_member WHERE tenant = $1 AND member_key = $2")
        .bind(tenant)
        .bind(id.to_string())
        .execute(connection)
        .await?;
    Ok(())
}

/// The users of these (tenant, id) keys (`tenants[i]`, `ids[i]`) that exist, in one statement.
pub(crate) async fn many(
    executor: impl sqlx::PgExecutor<'_>,
    tenants: &[&str],
    ids: &[Uuid],
) -> Result<Vec<UserRow>, StoreError> {
    Ok(sqlx::query_as::<_, UserRow>(&format!(
        "SELECT {COLUMNS} FROM scim_user
         WHERE (tenant, id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))"
    ))
    .bind(tenants)
    .bind(ids)
    .fetch_all(executor)
    .await?)
}

/// Locks the users of these (tenant, id) keys that exist, in one statement: a rebuild reads a
/// batch's users at once.
pub async fn lock_many(
    connection: &mut PgConnection,
    keys: &[(&str, Uuid)],
) -> Result<Vec<UserRow>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (tenants, ids): (Vec<&str>, Vec<Uuid>) = keys.iter().copied().unzip();
    Ok(sqlx::query_as::<_, UserRow>(&format!(
        "SELECT {COLUMNS} FROM scim_user
         WHERE (tenant, id) IN (SELECT * FROM unnest($1::text[], $2::uuid[])) FOR UPDATE"
    ))
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(connection)
    .await?)
}

/// Inserts or replaces many users (at most one row per user), with their lookup keys, in one
/// statement per 5,000 rows.
pub async fn upsert_many(
    connection: &mut PgConnection,
    rows: &[UserRow],
) -> Result<(), StoreError> {
    // One array per column, as `audit::insert_many` does.
    for chunk in rows.chunks(5_000) {
        sqlx::query(
            "INSERT INTO scim_user (tenant, id, user_name, user_name_lower, external_id, external_id_lower, active,
                                    attributes, version, created_at, updated_at)
             SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::bool[], $8::jsonb[], $9::int8[], $10::timestamptz[], $11::timestamptz[])
             ON CONFLICT (tenant, id) DO UPDATE SET
                 user_name = EXCLUDED.user_name, user_name_lower = EXCLUDED.user_name_lower,
                 external_id = EXCLUDED.external_id, external_id_lower = EXCLUDED.external_id_lower,
                 active = EXCLUDED.active, attributes = EXCLUDED.attributes, version = EXCLUDED.version,
                 updated_at = EXCLUDED.updated_at",
        )
        .bind(chunk.iter().map(|r| r.tenant.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.user_name.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| fold(&r.user_name)).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.external_id.as_deref()).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|r| r.external_id.as_deref().map(fold))
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|r| r.active).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| Json(&r.attributes.0)).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}

/// Deletes many users and their group memberships, in two statements.
pub async fn delete_many(
    connection: &mut PgConnection,
    keys: &[(&str, Uuid)],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let (tenants, ids): (Vec<&str>, Vec<Uuid>) = keys.iter().copied().unzip();
    let member_keys: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    sqlx::query(
        "DELETE FROM scim_user WHERE (tenant, id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))",
    )
    .bind(&tenants)
    .bind(&ids)
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "DELETE FROM group_member
         WHERE (tenant, member_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
    )
    .bind(&tenants)
    .bind(&member_keys)
    .execute(connection)
    .await?;
    Ok(())
}
