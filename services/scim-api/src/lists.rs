//! Reads: `GET /Users/{id}`, `GET /Groups/{id}`, the lists and `.search`, for both resource
//! types through [`Listed`].
//!
//! Queries: Entra's lookups (`userName eq`, `externalId eq`, `displayName eq`, `id eq`,
//! `members eq`, joined by `and`) are answered from this process's lookup index
//! ([`crate::index`]) when it vouches for itself, else compiled to indexed SQL; they never scan
//! a tenant. So is `GET /Users/{id}` (and `GET /Groups/{id}` without members). Any
//! other filter, and any `sortBy`, is evaluated in memory over at most [`SCAN_LIMIT`] resources
//! of the tenant; beyond that the client gets `400 tooMany` with advice.

use std::future::Future;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use rollcall_scim::{
    CompValue, Filter, ListResponse, Query, ResourceType, ScimError, ScimType, GROUP_RESOURCE,
    USER_RESOURCE,
};
use rollcall_store::group::{GroupCondition, GroupRow};
use rollcall_store::user::{UserCondition, UserRow};
use rollcall_store::{Store, StoreError};
use serde_json::Value;
use tracing::instrument;
use uuid::Uuid;

use crate::aggregate::{Groups, Users};
use crate::auth::Principal;
use crate::body::ScimJson;
use crate::error::ApiError;
use crate::http::{self, RequestInfo};
use crate::index::{self, Found, LookupIndex};
use crate::{render, AppState};

/// The most resources a filter that no index answers may examine.
pub const SCAN_LIMIT: usize = 10_000;

/// What a filter compiles to.
#[derive(Debug, PartialEq)]
pub enum Compiled<C> {
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

/// The read side of a resource type: its SCIM resource type, its read-model rows, the
/// conditions its indexes answer, and how rows render.
pub trait Listed: Send + Sync + 'static {
    /// A read-model row.
    type Row: Send + Sync;
    /// An indexed condition.
    type Condition: Send + Sync;
    /// The attribute whose rendering takes another query (a user's groups, a group's members);
    /// loaded only when the projection includes it.
    const JOINED: &'static str;
    /// Whether the lookup index renders [`Listed::JOINED`] (a group's members are listed in
    /// the order they were added, which only the read model keeps).
    const INDEX_RENDERS_JOINED: bool;
    /// The resource type.
    fn resource() -> &'static ResourceType;
    /// Compiles a filter to indexed conditions where it can.
    fn compile(filter: Option<&Filter>) -> Compiled<Self::Condition>;
    /// The row's version (`meta.version`, `ETag`).
    fn version(row: &Self::Row) -> u64;
    /// One row by id.
    fn row(
        store: &Store,
        tenant: &str,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Self::Row>, StoreError>> + Send;
    /// A page of the rows that meet every condition, and how many do.
    fn find(
        store: &Store,
        tenant: &str,
        conditions: &[Self::Condition],
        offset: usize,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<Self::Row>, usize), StoreError>> + Send;
    /// The tenant's first `limit` rows.
    fn scan(
        store: &Store,
        tenant: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Self::Row>, StoreError>> + Send;
    /// The condition that holds for the resource `id` only.
    fn id_condition(id: Uuid) -> Self::Condition;
    /// A page of the resources that meet every condition, from the lookup index.
    fn from_index(
        index: &LookupIndex,
        tenant: &str,
        conditions: &[Self::Condition],
        page: index::Page,
        base: &str,
    ) -> Option<Found>;
    /// The SCIM documents of rows.
    fn render(
        state: &AppState,
        tenant: &str,
        rows: &[Self::Row],
        joined: bool,
        base: &str,
    ) -> impl Future<Output = Result<Vec<Value>, ApiError>> + Send;
}

impl Listed for Users {
    type Row = UserRow;
    type Condition = UserCondition;
    const JOINED: &'static str = "groups";
    const INDEX_RENDERS_JOINED: bool = true;
    fn resource() -> &'static ResourceType {
        &USER_RESOURCE
    }
    fn compile(filter: Option<&Filter>) -> Compiled<UserCondition> {
        compile_user(filter)
    }
    fn version(row: &UserRow) -> u64 {
        row.version as u64
    }
    async fn row(store: &Store, tenant: &str, id: Uuid) -> Result<Option<UserRow>, StoreError> {
        store.user(tenant, id).await
    }
    async fn find(
        store: &Store,
        tenant: &str,
        conditions: &[UserCondition],
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<UserRow>, usize), StoreError> {
        store.find_users(tenant, conditions, offset, limit).await
    }
    async fn scan(store: &Store, tenant: &str, limit: usize) -> Result<Vec<UserRow>, StoreError> {
        store.scan_users(tenant, limit).await
    }
    fn id_condition(id: Uuid) -> UserCondition {
        UserCondition::Id(id)
    }
    fn from_index(
        index: &LookupIndex,
        tenant: &str,
        conditions: &[UserCondition],
        page: index::Page,
        base: &str,
    ) -> Option<Found> {
        index.users(tenant, conditions, page, base)
    }
    async fn render(
        state: &AppState,
        tenant: &str,
        rows: &[UserRow],
        joined: bool,
        base: &str,
    ) -> Result<Vec<Value>, ApiError> {
        render::users(state, tenant, rows, joined, base).await
    }
}

impl Listed for Groups {
    type Row = GroupRow;
    type Condition = GroupCondition;
    const JOINED: &'static str = "members";
    const INDEX_RENDERS_JOINED: bool = false;
    fn resource() -> &'static ResourceType {
        &GROUP_RESOURCE
    }
    fn compile(filter: Option<&Filter>) -> Compiled<GroupCondition> {
        compile_group(filter)
    }
    fn version(row: &GroupRow) -> u64 {
        row.version as u64
    }
    async fn row(store: &Store, tenant: &str, id: Uuid) -> Result<Option<GroupRow>, StoreError> {
        store.group(tenant, id).await
    }
    async fn find(
        store: &Store,
        tenant: &str,
        conditions: &[GroupCondition],
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<GroupRow>, usize), StoreError> {
        store.find_groups(tenant, conditions, offset, limit).await
    }
    async fn scan(store: &Store, tenant: &str, limit: usize) -> Result<Vec<GroupRow>, StoreError> {
        store.scan_groups(tenant, limit).await
    }
    fn id_condition(id: Uuid) -> GroupCondition {
        GroupCondition::Id(id)
    }
    fn from_index(
        index: &LookupIndex,
        tenant: &str,
        conditions: &[GroupCondition],
        page: index::Page,
        base: &str,
    ) -> Option<Found> {
        index.groups(tenant, conditions, page, base)
    }
    async fn render(
        state: &AppState,
        tenant: &str,
        rows: &[GroupRow],
        joined: bool,
        base: &str,
    ) -> Result<Vec<Value>, ApiError> {
        render::groups(state, tenant, rows, joined, base).await
    }
}

/// A page of a lookup from this process's index, when it answers it: conditions that name
/// something (a list of everything stays with the read model), the joined attribute only if
/// the index renders it, and the index holding every write answered before.
async fn from_index<K: Listed>(
    state: &AppState,
    tenant: &str,
    conditions: &[K::Condition],
    page: index::Page,
    base: &str,
) -> Option<Found> {
    let index = state.index.as_ref()?;
    if conditions.is_empty() || (page.joined && !K::INDEX_RENDERS_JOINED) || !index.answers(tenant)
    {
        return None;
    }
    if !index.current().await {
        return None;
    }
    K::from_index(index, tenant, conditions, page, base)
}

/// One page of a query over users or groups.
pub async fn query<K: Listed>(
    state: &AppState,
    principal: &Principal,
    info: &RequestInfo,
    query: &Query,
) -> Result<ListResponse, ApiError> {
    let (rt, tenant) = (K::resource(), principal.tenant.as_str());
    match (K::compile(query.filter.as_ref()), &query.sort) {
        (Compiled::Nothing, _) => Ok(ListResponse::new(0, query.page.start_index, Vec::new())),
        (Compiled::Conditions(conditions), None) => {
            let joined = query.projection.includes(rt, K::JOINED);
            let page = index::Page {
                offset: query.page.offset(),
                limit: query.page.count,
                joined,
            };
            if let Some(found) = from_index::<K>(state, tenant, &conditions, page, &info.base).await
            {
                let projected = found
                    .resources
                    .iter()
                    .map(|r| query.projection.apply(rt, r))
                    .collect();
                return Ok(ListResponse::new(
                    found.total,
                    query.page.start_index,
                    projected,
                ));
            }
            let (rows, total) = K::find(
                &state.store,
                tenant,
                &conditions,
                query.page.offset(),
                query.page.count,
            )
            .await?;
            let resources = K::render(state, tenant, &rows, joined, &info.base).await?;
            let projected = resources
                .iter()
                .map(|r| query.projection.apply(rt, r))
                .collect();
            Ok(ListResponse::new(total, query.page.start_index, projected))
        }
        _ => {
            let rows = K::scan(&state.store, tenant, SCAN_LIMIT + 1).await?;
            if rows.len() > SCAN_LIMIT {
                return Err(too_many());
            }
            let resources = K::render(state, tenant, &rows, true, &info.base).await?;
            Ok(query.run(rt, resources))
        }
    }
}

/// `GET /Users/{id}`, `GET /Groups/{id}`; `excludedAttributes=groups` (or `members`) never
/// loads them.
#[instrument(skip_all, fields(tenant = %principal.tenant, resource = K::resource().name, id = %id), err(level = "debug"))]
pub async fn get<K: Listed>(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rt = K::resource();
    let projection = http::projection(rt, &info)?;
    let uuid = http::parse_id(rt, &id)?;
    let joined = projection.includes(rt, K::JOINED);
    let page = index::Page {
        offset: 0,
        limit: 1,
        joined,
    };
    let condition = [K::id_condition(uuid)];
    if let Some(found) =
        from_index::<K>(&state, &principal.tenant, &condition, page, &info.base).await
    {
        let (document, version) = found
            .resources
            .into_iter()
            .zip(found.versions)
            .next()
            .ok_or_else(|| http::not_found(rt, &id))?;
        return Ok(http::resource(
            StatusCode::OK,
            rt,
            &projection,
            &document,
            version,
            &info.base,
            &id,
        ));
    }
    let row = K::row(&state.store, &principal.tenant, uuid)
        .await?
        .ok_or_else(|| http::not_found(rt, &id))?;
    let documents = K::render(
        &state,
        &principal.tenant,
        std::slice::from_ref(&row),
        joined,
        &info.base,
    )
    .await?;
    let document = documents
        .into_iter()
        .next()
        .ok_or_else(|| http::not_found(rt, &id))?;
    Ok(http::resource(
        StatusCode::OK,
        rt,
        &projection,
        &document,
        K::version(&row),
        &info.base,
        &id,
    ))
}

/// `GET /Users`, `GET /Groups`
#[instrument(skip_all, fields(tenant = %principal.tenant, resource = K::resource().name), err(level = "debug"))]
pub async fn list<K: Listed>(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
) -> Result<Response, ApiError> {
    let parsed = Query::parse(K::resource(), &info.list_params()?)?;
    let list = query::<K>(&state, &principal, &info, &parsed).await?;
    Ok(http::scim(StatusCode::OK, &list.to_json(), None, None))
}

/// `POST /Users/.search`, `POST /Groups/.search`
#[instrument(skip_all, fields(tenant = %principal.tenant, resource = K::resource().name), err(level = "debug"))]
pub async fn search<K: Listed>(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    ScimJson(body): ScimJson,
) -> Result<Response, ApiError> {
    let params = rollcall_scim::QueryParams::from_search_body(&body)?;
    let parsed = Query::parse(K::resource(), &params)?;
    let list = query::<K>(&state, &principal, &info, &parsed).await?;
    Ok(http::scim(StatusCode::OK, &list.to_json(), None, None))
}

/// `POST /.search` at the root: users then groups, one page over both (RFC 7644 §3.4.3).
pub async fn root(
    state: &AppState,
    principal: &Principal,
    info: &RequestInfo,
    params: &rollcall_scim::QueryParams,
) -> Result<ListResponse, ApiError> {
    let page = rollcall_scim::Page::new(params.start_index, params.count);
    // A filter that does not parse (or exceeds a limit) is refused, not taken as matching
    // nothing of either type.
    if let Some(text) = params
        .filter
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Filter::parse(text).map_err(|error| error.into_filter_error(text))?;
    }
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
            self::query::<Users>(state, principal, info, &query).await?
        } else {
            self::query::<Groups>(state, principal, info, &query).await?
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
    fn an_and_chain_at_the_term_limit_compiles_to_one_condition_per_term_on_a_small_stack() {
        let compiled = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let terms = rollcall_scim::limits::MAX_FILTER_TERMS;
                let chain: Vec<String> = (0..terms)
                    .map(|i| format!("externalId eq \"e{i}\""))
                    .collect();
                match user(&chain.join(" and ")) {
                    Compiled::Conditions(conditions) => conditions.len(),
                    other => panic!("{other:?}"),
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(compiled, rollcall_scim::limits::MAX_FILTER_TERMS);
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
