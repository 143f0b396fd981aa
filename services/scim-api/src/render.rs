//! Read-model rows rendered as SCIM resources, with the related rows (a user's groups, a
//! group's members) fetched in one query per page.

use std::collections::HashMap;

use rollcall_store::group::GroupRow;
use rollcall_store::user::UserRow;
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::mapping::{self, Meta};
use crate::AppState;

/// Users as SCIM resources; `with_groups` looks up their groups.
pub async fn users(
    state: &AppState,
    tenant: &str,
    rows: &[UserRow],
    with_groups: bool,
    base: &str,
) -> Result<Vec<Value>, ApiError> {
    let mut groups: HashMap<Uuid, Vec<(Uuid, String)>> = HashMap::new();
    if with_groups && !rows.is_empty() {
        let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        for (user, group, name) in state.store.groups_of_users(tenant, &ids).await? {
            groups.entry(user).or_default().push((group, name));
        }
    }
    Ok(rows
        .iter()
        .map(|row| {
            let meta = Meta {
                base,
                version: row.version as u64,
                created: row.created_at,
                modified: row.updated_at,
            };
            let groups =
                with_groups.then(|| groups.get(&row.id).map(Vec::as_slice).unwrap_or_default());
            mapping::user(row.id, &row.attributes.0, groups, meta)
        })
        .collect())
}

/// Groups as SCIM resources; `with_members` loads their members.
pub async fn groups(
    state: &AppState,
    tenant: &str,
    rows: &[GroupRow],
    with_members: bool,
    base: &str,
) -> Result<Vec<Value>, ApiError> {
    let mut members: HashMap<Uuid, Vec<rollcall_store::group::MemberRow>> = HashMap::new();
    if with_members && !rows.is_empty() {
        let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        for member in state.store.members(tenant, &ids).await? {
            members.entry(member.group_id).or_default().push(member);
        }
    }
    Ok(rows
        .iter()
        .map(|row| {
            let meta = Meta {
                base,
                version: row.version as u64,
                created: row.created_at,
                modified: row.updated_at,
            };
            let list = members.get(&row.id).map(Vec::as_slice).unwrap_or_default();
            let views = list.iter().map(|m| {
                (
                    m.member_id.as_str(),
                    m.member_type.as_deref(),
                    m.member_display.as_deref(),
                )
            });
            mapping::group(row.id, &row.attributes.0, views, meta)
        })
        .collect())
}
