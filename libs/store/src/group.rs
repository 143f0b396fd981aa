//! The `scim_group` and `group_member` read models.
//!
//! `display_name_lower` and `external_id_lower` are lookup keys, case-folded in Rust
//! ([`rollcall_scim::case::fold`]) as the uniqueness claims and every filter are.

use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use time::OffsetDateTime;
use uuid::Uuid;

use rollcall_scim::case::fold;

use crate::page::Table;
use crate::{Store, StoreError};

/// One group as the read model holds it (members apart).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct GroupRow {
    /// The tenant.
    pub tenant: String,
    /// The group's id.
    pub id: Uuid,
    /// The displayName, as sent.
    pub display_name: String,
    /// The externalId, as sent.
    pub external_id: Option<String>,
    /// Every other attribute but members, canonical JSON.
    pub attributes: Json<Map<String, Value>>,
    /// The aggregate's version.
    pub version: i64,
    /// When the group was created.
    pub created_at: OffsetDateTime,
    /// When the group last changed.
    pub updated_at: OffsetDateTime,
}

/// One membership.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MemberRow {
    /// The group.
    pub group_id: Uuid,
    /// The member's id, as sent.
    pub member_id: String,
    /// `User` or `Group`, when the client said.
    pub member_type: Option<String>,
    /// A display name, when the client sent one.
    pub member_display: Option<String>,
}

/// A condition group lookups compile to; all conditions of a query must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCondition {
    /// `id eq`
    Id(Uuid),
    /// `displayName eq`, compared without case.
    DisplayName(String),
    /// `externalId eq`, compared without case.
    ExternalId(String),
    /// `members eq` (Entra's membership check), compared without case.
    Member(String),
}

const COLUMNS: &str =
    "tenant, id, display_name, external_id, attributes, version, created_at, updated_at";

fn where_clause<'a>(
    builder: &mut QueryBuilder<'a, Postgres>,
    tenant: &'a str,
    conditions: &'a [GroupCondition],
) {
    builder.push(" WHERE g.tenant = ").push_bind(tenant);
    for condition in conditions {
        match condition {
            GroupCondition::Id(id) => builder.push(" AND g.id = ").push_bind(*id),
            GroupCondition::DisplayName(name) => builder.push(" AND g.display_name_lower = ").push_bind(fold(name).into_owned()),
            GroupCondition::ExternalId(id) => builder.push(" AND g.external_id_lower = ").push_bind(fold(id).into_owned()),
            GroupCondition::Member(member) => builder
                .push(" AND EXISTS (SELECT 1 FROM group_member m WHERE m.tenant = g.tenant AND m.group_id = g.id AND m.member_key = ")
                .push_bind(member.to_lowercase())
                .push(")"),
        };
    }
}

impl Store {
    /// One group by id.
    pub async fn group(&self, tenant: &str, id: Uuid) -> Result<Option<GroupRow>, StoreError> {
        Ok(sqlx::query_as::<_, GroupRow>(&format!(
            "SELECT {COLUMNS} FROM scim_group WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Groups meeting every condition (from indexed columns), a page of them in creation
    /// order, and how many meet them in all.
    pub async fn find_groups(
        &self,
        tenant: &str,
        conditions: &[GroupCondition],
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<GroupRow>, usize), StoreError> {
        self.find_page(
            Table {
                from: "scim_group g",
                columns: "g.tenant, g.id, g.display_name, g.external_id, g.attributes, g.version, g.created_at, g.updated_at",
                order: "g.created_at, g.id",
            },
            |builder| where_clause(builder, tenant, conditions),
            offset,
            limit,
        )
        .await
    }

    /// Up to `limit` groups of a tenant, in creation order.
    pub async fn scan_groups(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<GroupRow>, StoreError> {
        Ok(sqlx::query_as::<_, GroupRow>(&format!(
            "SELECT {COLUMNS} FROM scim_group WHERE tenant = $1 ORDER BY created_at, id LIMIT $2"
        ))
        .bind(tenant)
        .bind(limit as i64)
        .fetch_all(self.pool())
        .await?)
    }

    /// Every group whose displayName holds a character beyond ASCII: (tenant, id,
    /// displayName). For the others, every case folding Rollcall ever used agrees.
    pub async fn group_names_beyond_ascii(
        &self,
    ) -> Result<Vec<(String, Uuid, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT tenant, id, display_name FROM scim_group
             WHERE octet_length(display_name) <> char_length(display_name) ORDER BY tenant, id",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// The members of these groups, in the order they were added.
    pub async fn members(
        &self,
        tenant: &str,
        groups: &[Uuid],
    ) -> Result<Vec<MemberRow>, StoreError> {
        Ok(sqlx::query_as::<_, MemberRow>(
            "SELECT group_id, member_id, member_type, member_display FROM group_member
             WHERE tenant = $1 AND group_id = ANY($2) ORDER BY group_id, added_at, member_key",
        )
        .bind(tenant)
        .bind(groups)
        .fetch_all(self.pool())
        .await?)
    }
}

/// The group, locked for update within the projector's transaction.
pub async fn lock(
    connection: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<GroupRow>, StoreError> {
    Ok(sqlx::query_as::<_, GroupRow>(&format!(
        "SELECT {COLUMNS} FROM scim_group WHERE tenant = $1 AND id = $2 FOR UPDATE"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(connection)
    .await?)
}

/// Inserts or replaces a group (members apart), with its lookup keys.
pub async fn upsert(connection: &mut PgConnection, row: &GroupRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO scim_group (tenant, id, display_name, display_name_lower, external_id, external_id_lower,
                                 attributes, version, created_at, updated_at)
         VALUES ($1, $2, $3, $9, $4, $10, $5, $6, $7, $8)
         ON CONFLICT (tenant, id) DO UPDATE SET
             display_name = EXCLUDED.display_name, display_name_lower = EXCLUDED.display_name_lower,
             external_id = EXCLUDED.external_id, external_id_lower = EXCLUDED.external_id_lower,
             attributes = EXCLUDED.attributes, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
    )
    .bind(&row.tenant)
    .bind(row.id)
    .bind(&row.display_name)
    .bind(&row.external_id)
    .bind(&row.attributes)
    .bind(row.version)
    .bind(row.created_at)
    .bind(row.updated_at)
    .bind(fold(&row.display_name).as_ref())
    .bind(row.external_id.as_deref().map(fold).as_deref())
    .execute(connection)
    .await?;
    Ok(())
}

/// Deletes a group and its memberships; returns the member keys it had.
pub async fn delete(
    connection: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Vec<String>, StoreError> {
    let members: Vec<String> = sqlx::query_scalar(
        "DELETE FROM group_member WHERE tenant = $1 AND group_id = $2 RETURNING member_key",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(&mut *connection)
    .await?;
    sqlx::query("DELETE FROM scim_group WHERE tenant = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(connection)
        .await?;
    Ok(members)
}

/// A member to add: id, type and display name as the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMember {
    /// The member's id.
    pub id: String,
    /// `User` or `Group`.
    pub kind: Option<String>,
    /// A display name.
    pub display: Option<String>,
}

/// Adds members; existing ones are kept as they are.
pub async fn add_members(
    connection: &mut PgConnection,
    tenant: &str,
    group: Uuid,
    members: &[NewMember],
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    if members.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = members.iter().map(|m| m.id.to_lowercase()).collect();
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    let types: Vec<Option<String>> = members.iter().map(|m| m.kind.clone()).collect();
    let displays: Vec<Option<String>> = members.iter().map(|m| m.display.clone()).collect();
    sqlx::query(
        "INSERT INTO group_member (tenant, group_id, member_key, member_id, member_type, member_display, added_at)
         SELECT $1, $2, key, id, kind, display, $7
         FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS m(key, id, kind, display)
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(group)
    .bind(&keys)
    .bind(&ids)
    .bind(&types)
    .bind(&displays)
    .bind(at)
    .execute(connection)
    .await?;
    Ok(())
}

/// Removals of at most this many members delete them one by one (by primary key).
const SINGLE_KEY_REMOVALS: usize = 16;

/// Removes members by id, compared without case.
pub async fn remove_members(
    connection: &mut PgConnection,
    tenant: &str,
    group: Uuid,
    members: &[String],
) -> Result<(), StoreError> {
    let keys: Vec<String> = members.iter().map(|id| id.to_lowercase()).collect();
    if keys.len() <= SINGLE_KEY_REMOVALS {
        // One probe of the primary key per member: PostgreSQL may plan `member_key = ANY(…)`
        // as a filter over every member of the group (it did, 20 ms per removal on a group of
        // 100,000, while the table's statistics were not yet gathered).
        for key in &keys {
            sqlx::query(
                "DELETE FROM group_member WHERE tenant = $1 AND group_id = $2 AND member_key = $3",
            )
            .bind(tenant)
            .bind(group)
            .bind(key)
            .execute(&mut *connection)
            .await?;
        }
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM group_member WHERE tenant = $1 AND group_id = $2 AND member_key = ANY($3)",
    )
    .bind(tenant)
    .bind(group)
    .bind(&keys)
    .execute(connection)
    .await?;
    Ok(())
}

/// Locks the groups of these (tenant, id) keys that exist, in one statement: a rebuild reads a
/// batch's groups at once.
pub async fn lock_many(
    connection: &mut PgConnection,
    keys: &[(&str, Uuid)],
) -> Result<Vec<GroupRow>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (tenants, ids): (Vec<&str>, Vec<Uuid>) = keys.iter().copied().unzip();
    Ok(sqlx::query_as::<_, GroupRow>(&format!(
        "SELECT {COLUMNS} FROM scim_group
         WHERE (tenant, id) IN (SELECT * FROM unnest($1::text[], $2::uuid[])) FOR UPDATE"
    ))
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(connection)
    .await?)
}

/// Inserts or replaces many groups (members apart; at most one row per group), with their
/// lookup keys, in one statement per 5,000 rows.
pub async fn upsert_many(
    connection: &mut PgConnection,
    rows: &[GroupRow],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(5_000) {
        let mut builder = QueryBuilder::new(
            "INSERT INTO scim_group (tenant, id, display_name, display_name_lower, external_id, external_id_lower,
                                     attributes, version, created_at, updated_at) ",
        );
        builder.push_values(chunk, |mut b, row| {
            b.push_bind(&row.tenant)
                .push_bind(row.id)
                .push_bind(&row.display_name)
                .push_bind(fold(&row.display_name).into_owned())
                .push_bind(&row.external_id)
                .push_bind(row.external_id.as_deref().map(|id| fold(id).into_owned()))
                .push_bind(&row.attributes)
                .push_bind(row.version)
                .push_bind(row.created_at)
                .push_bind(row.updated_at);
        });
        builder.push(
            " ON CONFLICT (tenant, id) DO UPDATE SET
                 display_name = EXCLUDED.display_name, display_name_lower = EXCLUDED.display_name_lower,
                 external_id = EXCLUDED.external_id, external_id_lower = EXCLUDED.external_id_lower,
                 attributes = EXCLUDED.attributes, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
        );
        builder.build().execute(&mut *connection).await?;
    }
    Ok(())
}

/// Deletes many groups and their memberships, in two statements.
pub async fn delete_many(
    connection: &mut PgConnection,
    keys: &[(&str, Uuid)],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let (tenants, ids): (Vec<&str>, Vec<Uuid>) = keys.iter().copied().unzip();
    sqlx::query(
        "DELETE FROM group_member
         WHERE (tenant, group_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))",
    )
    .bind(&tenants)
    .bind(&ids)
    .execute(&mut *connection)
    .await?;
    sqlx::query(
        "DELETE FROM scim_group WHERE (tenant, id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))",
    )
    .bind(&tenants)
    .bind(&ids)
    .execute(connection)
    .await?;
    Ok(())
}

/// A membership to write: its group, its key (the id folded to lower case) and the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEntry {
    /// The tenant.
    pub tenant: String,
    /// The group.
    pub group: Uuid,
    /// The member's id, lower case.
    pub key: String,
    /// The member as sent.
    pub member: NewMember,
    /// When it was added.
    pub added_at: OffsetDateTime,
}

/// Deletes the memberships of these (tenant, group, key) triples, in one statement.
pub async fn delete_member_keys(
    connection: &mut PgConnection,
    keys: &[(&str, Uuid, &str)],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let groups: Vec<Uuid> = keys.iter().map(|k| k.1).collect();
    let members: Vec<&str> = keys.iter().map(|k| k.2).collect();
    sqlx::query(
        "DELETE FROM group_member WHERE (tenant, group_id, member_key) IN
             (SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[]))",
    )
    .bind(&tenants)
    .bind(&groups)
    .bind(&members)
    .execute(connection)
    .await?;
    Ok(())
}

/// Adds many memberships in one statement per 5,000; existing ones are kept as they are.
pub async fn insert_members(
    connection: &mut PgConnection,
    entries: &[MemberEntry],
) -> Result<(), StoreError> {
    for chunk in entries.chunks(5_000) {
        let mut builder = QueryBuilder::new(
            "INSERT INTO group_member (tenant, group_id, member_key, member_id, member_type, member_display, added_at) ",
        );
        builder.push_values(chunk, |mut b, entry| {
            b.push_bind(&entry.tenant)
                .push_bind(entry.group)
                .push_bind(&entry.key)
                .push_bind(&entry.member.id)
                .push_bind(&entry.member.kind)
                .push_bind(&entry.member.display)
                .push_bind(entry.added_at);
        });
        builder.push(" ON CONFLICT DO NOTHING");
        builder.build().execute(&mut *connection).await?;
    }
    Ok(())
}
