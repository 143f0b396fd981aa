//! Queries: Entra's lookups (`userName eq`, `externalId eq`, `displayName eq`, `id eq`,
//! `members eq`, joined by `and`) are compiled to indexed SQL and never scan a tenant. Any
//! other filter, and any `sortBy`, is evaluated in memory over at most [`SCAN_LIMIT`] resources
//! of the tenant; beyond that the client gets `400 tooMany` with advice.

use rollcall_scim::{
    CompValue, Filter, ListResponse, Query, ResourceType, ScimError, ScimType, GROUP_RESOURCE,
    USER_RESOURCE,
};
use rollcall_store::group::GroupCondition;
use rollcall_store::user::UserCondition;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::http::RequestInfo;
use crate::{render, AppState};

/// The most resources a filter that no index answers may examine.
pub const SCAN_LIMIT: usize = 10_000;

/// What a filter compiles to.
#[derive(Debug, PartialEq)]
enum Compiled<C> {
    /// Indexed conditions, all of which must hold.
    Conditions(Vec<C>),
    /// A condition that can hold for no resource (an id that is no UUID of ours).
    Nothing,
    /// Not indexable.
    Scan,
}

fn is_core(path: &rollcall_scim::AttrPath, rt: &ResourceType) -> bool {
    path.sub_attr.is_none()
        && path
            .urn
            .as_deref()
            .is_none_or(|urn| urn.eq_ignore_ascii_case(rt.schema.id))
}

/// Ids are case-exact: only the canonical text of one of our UUIDs can match.
fn exact_uuid(text: &str) -> Option<Uuid> {
    Uuid::parse_str(text)
        .ok()
        .filter(|id| id.to_string() == text)
}

fn compile<C>(
    rt: &ResourceType,
    filter: Option<&Filter>,
    condition: impl Fn(&str, String) -> Option<Option<C>>,
) -> Compiled<C> {
    let Some(filter) = filter else {
        return Compiled::Conditions(Vec::new());
    };
    let Some(equalities) = filter.equalities() else {
        return Compiled::Scan;
    };
    let mut conditions = Vec::new();
    for (path, value) in equalities {
        let text = match value {
            CompValue::String(text) => text.clone(),
            _ => return Compiled::Scan,
        };
        if !is_core(path, rt) {
            return Compiled::Scan;
        }
        match condition(&path.name.to_ascii_lowercase(), text) {
            Some(Some(condition)) => conditions.push(condition),
            Some(None) => return Compiled::Nothing,
            None => return Compiled::Scan,
        }
    }
    Compiled::Conditions(conditions)
}

fn compile_user(filter: Option<&Filter>) -> Compiled<UserCondition> {
    compile(&USER_RESOURCE, filter, |name, text| match name {
        "id" => Some(exact_uuid(&text).map(UserCondition::Id)),
        "username" => Some(Some(UserCondition::UserName(text))),
        "externalid" => Some(Some(UserCondition::ExternalId(text))),
        _ => None,
    })
}

fn compile_group(filter: Option<&Filter>) -> Compiled<GroupCondition> {
    compile(&GROUP_RESOURCE, filter, |name, text| match name {
        "id" => Some(exact_uuid(&text).map(GroupCondition::Id)),
        "displayname" => Some(Some(GroupCondition::DisplayName(text))),
        "externalid" => Some(Some(GroupCondition::ExternalId(text))),
        "members" => Some(Some(GroupCondition::Member(text))),
        _ => None,
    })
}

fn too_many() -> ApiError {
    ScimError::new(
        400,
        Some(ScimType::TooMany),
        format!("this filter or sort would examine more than {SCAN_LIMIT} resources; filter with eq on id, userName, externalId (users) or id, displayName, externalId, members (groups)"),
    )
    .into()
}

/// `GET /Users` and `POST /Users/.search`.
pub async fn users(
    state: &AppState,
    principal: &Principal,
    info: &RequestInfo,
    query: &Query,
) -> Result<ListResponse, ApiError> {
    let tenant = principal.tenant.as_str();
    let with_groups = query.projection.includes(&USER_RESOURCE, "groups");
    match (compile_user(query.filter.as_ref()), &query.sort) {
        (Compiled::Nothing, _) => Ok(ListResponse::new(0, query.page.start_index, Vec::new())),
        (Compiled::Conditions(conditions), None) => {
            let (rows, total) = state
                .store
                .find_users(tenant, &conditions, query.page.offset(), query.page.count)
                .await?;
            let resources = render::users(state, tenant, &rows, with_groups, &info.base).await?;
            let projected = resources
                .iter()
                .map(|r| query.projection.apply(&USER_RESOURCE, r))
                .collect();
            Ok(ListResponse::new(total, query.page.start_index, projected))
        }
        _ => {
            let rows = state.store.scan_users(tenant, SCAN_LIMIT + 1).await?;
            if rows.len() > SCAN_LIMIT {
                return Err(too_many());
            }
            let resources = render::users(state, tenant, &rows, true, &info.base).await?;
            Ok(query.run(&USER_RESOURCE, resources))
        }
    }
}

/// `GET /Groups` and `POST /Groups/.search`.
pub async fn groups(
    state: &AppState,
    principal: &Principal,
    info: &RequestInfo,
    query: &Query,
) -> Result<ListResponse, ApiError> {
    let tenant = principal.tenant.as_str();
    let with_members = query.projection.includes(&GROUP_RESOURCE, "members");
    match (compile_group(query.filter.as_ref()), &query.sort) {
        (Compiled::Nothing, _) => Ok(ListResponse::new(0, query.page.start_index, Vec::new())),
        (Compiled::Conditions(conditions), None) => {
            let (rows, total) = state
                .store
                .find_groups(tenant, &conditions, query.page.offset(), query.page.count)
                .await?;
            let resources = render::groups(state, tenant, &rows, with_members, &info.base).await?;
            let projected = resources
                .iter()
                .map(|r| query.projection.apply(&GROUP_RESOURCE, r))
                .collect();
            Ok(ListResponse::new(total, query.page.start_index, projected))
        }
        _ => {
            let rows = state.store.scan_groups(tenant, SCAN_LIMIT + 1).await?;
            if rows.len() > SCAN_LIMIT {
                return Err(too_many());
            }
            let resources = render::groups(state, tenant, &rows, true, &info.base).await?;
            Ok(query.run(&GROUP_RESOURCE, resources))
        }
    }
}

/// `POST /.search` at the root: users then groups, one page over both (RFC 7644 §3.4.3).
pub async fn root(
    state: &AppState,
    principal: &Principal,
    info: &RequestInfo,
    params: &rollcall_scim::QueryParams,
) -> Result<ListResponse, ApiError> {
    let page = rollcall_scim::Page::new(params.start_index, params.count);
    let mut all: Vec<Value> = Vec::new();
    for rt in [&USER_RESOURCE, &GROUP_RESOURCE] {
        // A filter naming attributes of one type only matches nothing of the other.
        let unpaged = rollcall_scim::QueryParams {
            start_index: None,
            count: Some(rollcall_scim::list::MAX_COUNT as i64),
            ..params.clone()
        };
        let Ok(mut query) = Query::parse(rt, &unpaged) else {
            continue;
        };
        query.page = rollcall_scim::Page {
            start_index: 1,
            count: SCAN_LIMIT,
        };
        let list = if std::ptr::eq(rt, &USER_RESOURCE) {
            users(state, principal, info, &query).await?
        } else {
            groups(state, principal, info, &query).await?
        };
        all.extend(list.resources);
    }
    let total = all.len();
    Ok(ListResponse::new(
        total,
        page.start_index,
        page.slice(&all).to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(filter: &str) -> Compiled<UserCondition> {
        compile_user(Some(&Filter::parse(filter).unwrap()))
    }

    #[test]
    fn entra_lookups_compile_to_indexed_conditions() {
        assert_eq!(
            user(r#"userName eq "Ada@X""#),
            Compiled::Conditions(vec![UserCondition::UserName("Ada@X".into())])
        );
        assert_eq!(
            user(r#"externalId eq "e1" and USERNAME eq "a""#),
            Compiled::Conditions(vec![
                UserCondition::ExternalId("e1".into()),
                UserCondition::UserName("a".into())
            ])
        );
        let id = Uuid::now_v7();
        assert_eq!(
            user(&format!("id eq \"{id}\"")),
            Compiled::Conditions(vec![UserCondition::Id(id)])
        );
        assert_eq!(user(r#"id eq "not-a-uuid""#), Compiled::Nothing);
        assert_eq!(
            compile_group(Some(
                &Filter::parse(r#"id eq "g" and members eq "u""#).unwrap()
            )),
            Compiled::Nothing
        );
    }

    #[test]
    fn other_filters_fall_back_to_a_bounded_scan() {
        assert_eq!(user(r#"userName sw "a""#), Compiled::Scan);
        assert_eq!(
            user(r#"userName eq "a" or userName eq "b""#),
            Compiled::Scan
        );
        assert_eq!(
            user(r#"emails[type eq "work"].value eq "a@x""#),
            Compiled::Scan
        );
        assert_eq!(user(r#"title eq "Dr""#), Compiled::Scan);
    }
}
