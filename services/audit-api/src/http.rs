//! The audit API's routes under `/audit/v1`, authenticated with auditor tokens
//! (`rollcall tokens create --scope audit`): read-only, one tenant each. Exports are in
//! [`crate::export`].

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use rollcall_store::audit::{AuditQuery, AuditRow};
use rollcall_store::personal_key::Freshness;
use rollcall_store::request_log::RequestQuery;
use rollcall_store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::access;
use crate::auth::Auditor;
use crate::error::{ApiError, Params, PathValue};
use crate::history::{self, AsOf, AuditedEvent};
use crate::{AuditError, AuditState};

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

fn not_found(message: impl Into<String>) -> ApiError {
    ApiError::NotFound(message.into())
}

/// A reconstruction that failed on stored data: a server fault, never the client's.
/// The tenant's audit records `query` finds, their personal fields opened (`[erased]` for an
/// erased person's). Keys are read fresh: an auditor never sees an erased person from a cache.
async fn opened_search(
    store: &rollcall_store::Store,
    tenant: &str,
    query: &AuditQuery,
) -> Result<Vec<AuditRow>, ApiError> {
    let mut rows = store.audit_search(tenant, query).await?;
    rollcall_personal::open_all(store, &mut rows, Freshness::Fresh)
        .await
        .map_err(StoreError::from)?;
    Ok(rows)
}

fn corrupt(message: String) -> ApiError {
    ApiError::Internal(AuditError::Corrupt(message))
}

/// Which aggregates a route is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    User,
    Group,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Group => "group",
        }
    }
}

/// An RFC 3339 parameter, if given.
pub(crate) fn instant(name: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                bad(format!(
                    "{name} must be an RFC 3339 instant such as 2026-03-03T00:00:00Z, not {v:?}"
                ))
            })
        })
        .transpose()
}

fn events(rows: &[AuditRow]) -> Vec<AuditedEvent> {
    rows.iter().map(AuditedEvent::from).collect()
}

/// The events of `id` if it is an aggregate of `kind` (none for a group's id on a user route:
/// ids are unique across kinds, so it is simply not a user).
async fn aggregate_rows(
    state: &AuditState,
    tenant: &str,
    kind: Kind,
    id: Uuid,
) -> Result<Vec<AuditRow>, ApiError> {
    let query = AuditQuery {
        aggregate: Some(id),
        limit: i64::MAX,
        ..Default::default()
    };
    let mut rows = opened_search(&state.store, tenant, &query).await?;
    rows.retain(|row| row.aggregate_type == kind.as_str());
    Ok(rows)
}

/// `?at=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct At {
    /// The instant (RFC 3339); default now.
    pub at: Option<String>,
}

/// Lookup by name.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct UserLookup {
    /// A userName the user had, compared without case.
    pub user_name: Option<String>,
    /// An externalId the user had, compared without case.
    pub external_id: Option<String>,
}

/// Lookup by name.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
pub struct GroupLookup {
    /// A displayName the group had, compared without case.
    pub display_name: Option<String>,
}

/// Users that ever had a userName or externalId.
#[utoipa::path(get, path = "/audit/v1/users", params(UserLookup), responses((status = 200, description = "matching user ids, deleted users included")), security(("bearer" = [])))]
pub async fn find_users(
    State(state): State<AuditState>,
    auditor: Auditor,
    Params(lookup): Params<UserLookup>,
) -> Result<Json<Value>, ApiError> {
    if lookup.user_name.is_none() && lookup.external_id.is_none() {
        return Err(bad("give userName or externalId"));
    }
    let mut ids = state
        .store
        .audit_find_users(
            &auditor.tenant,
            lookup.user_name.as_deref(),
            lookup.external_id.as_deref(),
        )
        .await?;
    // Events whose personal fields are sealed are opened and compared here.
    let mut sealed = state
        .store
        .audit_sealed_user_events(&auditor.tenant)
        .await?;
    rollcall_personal::open_all(&state.store, &mut sealed, Freshness::Fresh)
        .await
        .map_err(StoreError::from)?;
    let wanted = [
        ("userName", lookup.user_name.as_deref()),
        ("externalId", lookup.external_id.as_deref()),
    ];
    for row in &sealed {
        let payload = &row.payload.0;
        for (path, value) in wanted {
            let Some(value) = value else { continue };
            let folded = rollcall_scim::case::fold(value);
            let held = std::iter::once(payload.pointer(&format!("/attributes/{path}")))
                .chain(
                    payload
                        .get("changes")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|change| change.get("path").and_then(Value::as_str) == Some(path))
                        .map(|change| change.get("after")),
                )
                .flatten()
                .filter_map(Value::as_str)
                .any(|held| rollcall_scim::case::fold(held) == folded);
            if held {
                ids.push(row.aggregate_id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(Json(json!({"users": ids})))
}

/// Groups that ever had a displayName.
#[utoipa::path(get, path = "/audit/v1/groups", params(GroupLookup), responses((status = 200, description = "matching group ids, deleted groups included")), security(("bearer" = [])))]
pub async fn find_groups(
    State(state): State<AuditState>,
    auditor: Auditor,
    Params(lookup): Params<GroupLookup>,
) -> Result<Json<Value>, ApiError> {
    let name = lookup.display_name.ok_or_else(|| bad("give displayName"))?;
    let ids = state
        .store
        .audit_find_groups(&auditor.tenant, &name)
        .await?;
    Ok(Json(json!({"groups": ids})))
}

/// Every event of a user, in order, with the group events that added or removed the user.
#[utoipa::path(get, path = "/audit/v1/users/{id}/history", params(("id" = Uuid, Path, description = "the user's id")), responses((status = 200, description = "the user's events, and the group events that added or removed the user, in order"), (status = 404, description = "no such user")), security(("bearer" = [])))]
pub async fn user_history(
    State(state): State<AuditState>,
    auditor: Auditor,
    PathValue(id): PathValue<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let mut rows = aggregate_rows(&state, &auditor.tenant, Kind::User, id).await?;
    if rows.is_empty() {
        return Err(not_found(format!("no history for user {id}")));
    }
    let memberships = state.store.audit_memberships(&auditor.tenant, id).await?;
    let mut names: HashMap<Uuid, Option<String>> = HashMap::new();
    for row in &memberships {
        if let std::collections::hash_map::Entry::Vacant(entry) = names.entry(row.aggregate_id) {
            entry.insert(
                state
                    .store
                    .group(&auditor.tenant, row.aggregate_id)
                    .await?
                    .map(|g| g.display_name),
            );
        }
    }
    rows.extend(memberships);
    rows.sort_by_key(|r| r.sequence);
    let events: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut event = serde_json::to_value(AuditedEvent::from(row)).unwrap_or_default();
            if row.aggregate_type == "group" {
                let name = names.get(&row.aggregate_id).cloned().flatten();
                event["group"] = json!({"id": row.aggregate_id, "display_name": name});
            }
            event
        })
        .collect();
    Ok(Json(json!({"type": "user", "id": id, "events": events})))
}

/// Every event of a group, in order.
#[utoipa::path(get, path = "/audit/v1/groups/{id}/history", params(("id" = Uuid, Path, description = "the group's id")), responses((status = 200, description = "the group's events in order"), (status = 404, description = "no such group")), security(("bearer" = [])))]
pub async fn group_history(
    State(state): State<AuditState>,
    auditor: Auditor,
    PathValue(id): PathValue<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let rows = aggregate_rows(&state, &auditor.tenant, Kind::Group, id).await?;
    if rows.is_empty() {
        return Err(not_found(format!("no history for group {id}")));
    }
    Ok(Json(
        json!({"type": "group", "id": id, "events": events(&rows)}),
    ))
}

fn as_of_response(
    kind: &str,
    id: Uuid,
    at: OffsetDateTime,
    result: Result<AsOf, String>,
) -> Result<Json<Value>, ApiError> {
    match result.map_err(corrupt)? {
        AsOf::Resource(resource) => Ok(Json(resource)),
        AsOf::NotYet => Err(not_found(format!(
            "{kind} {id} did not exist at {}",
            history::timestamp(at)
        ))),
        AsOf::Deleted(when) => Err(not_found(format!(
            "{kind} {id} was deleted at {}",
            history::timestamp(when)
        ))),
    }
}

/// A user's SCIM representation as of an instant.
#[utoipa::path(get, path = "/audit/v1/users/{id}", params(("id" = Uuid, Path, description = "the user's id"), At), responses((status = 200, description = "the SCIM User as it was"), (status = 404, description = "not existing then")), security(("bearer" = [])))]
pub async fn user_as_of(
    State(state): State<AuditState>,
    auditor: Auditor,
    PathValue(id): PathValue<Uuid>,
    Params(at): Params<At>,
) -> Result<Json<Value>, ApiError> {
    let at = instant("at", at.at.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    let rows = aggregate_rows(&state, &auditor.tenant, Kind::User, id).await?;
    as_of_response("user", id, at, history::user_as_of(id, &rows, at))
}

/// A group's SCIM representation, members included, as of an instant.
#[utoipa::path(get, path = "/audit/v1/groups/{id}", params(("id" = Uuid, Path, description = "the group's id"), At), responses((status = 200, description = "the SCIM Group as it was"), (status = 404, description = "not existing then")), security(("bearer" = [])))]
pub async fn group_as_of(
    State(state): State<AuditState>,
    auditor: Auditor,
    PathValue(id): PathValue<Uuid>,
    Params(at): Params<At>,
) -> Result<Json<Value>, ApiError> {
    let at = instant("at", at.at.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    let rows = aggregate_rows(&state, &auditor.tenant, Kind::Group, id).await?;
    as_of_response("group", id, at, history::group_as_of(id, &rows, at))
}

/// A group's members as of an instant.
#[utoipa::path(get, path = "/audit/v1/groups/{id}/members", params(("id" = Uuid, Path, description = "the group's id"), At), responses((status = 200, description = "the members then"), (status = 404, description = "not existing then")), security(("bearer" = [])))]
pub async fn members_as_of(
    State(state): State<AuditState>,
    auditor: Auditor,
    PathValue(id): PathValue<Uuid>,
    Params(at): Params<At>,
) -> Result<Json<Value>, ApiError> {
    let Json(group) = group_as_of(State(state), auditor, PathValue(id), Params(at)).await?;
    Ok(Json(
        json!({"group": id, "members": group.get("members").cloned().unwrap_or(json!([]))}),
    ))
}

/// A tenant's events that occurred at or before `at` (all of them without), in stream order.
///
/// A stream prefix: events are stamped by their writers, whose clocks and appends need not
/// agree, so the events kept are those before the first one stamped after `at`, never a later
/// one stamped earlier (which would fold a state that never existed).
async fn tenant_rows(
    state: &AuditState,
    tenant: &str,
    at: Option<OffsetDateTime>,
) -> Result<Vec<AuditRow>, ApiError> {
    let before = match at {
        Some(at) => state.store.audit_first_after(tenant, at).await?,
        None => None,
    };
    let query = AuditQuery {
        before,
        limit: i64::MAX,
        ..Default::default()
    };
    opened_search(&state.store, tenant, &query).await
}

/// The tenant as its events left it at the instant `at` asks for (default now).
async fn world_at(
    state: &AuditState,
    tenant: &str,
    at: At,
) -> Result<(OffsetDateTime, access::World), ApiError> {
    let at = instant("at", at.at.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    // It reads the tenant's history: bounded per tenant, as exports are.
    let _slot = state.exports.take(tenant)?;
    let rows = tenant_rows(state, tenant, Some(at)).await?;
    let world = access::World::fold(&rows).map_err(corrupt)?;
    Ok((at, world))
}

/// Every user who could have reached an application at an instant (active, in the right
/// groups, matching its policies then), with the deciding policy and the memberships that
/// satisfied it, from the events alone.
#[utoipa::path(get, path = "/audit/v1/applications/{name}/access", params(("name" = String, Path, description = "the application's name"), At), responses((status = 200, description = "{application, at, policy_version, users: [{id, userName, policy, via: [{group_id, group, since, event}]}]}"), (status = 404, description = "the application was not configured then")), security(("bearer" = [])))]
pub async fn application_access(
    State(state): State<AuditState>,
    auditor: Auditor,
    PathValue(name): PathValue<String>,
    Params(at): Params<At>,
) -> Result<Json<Value>, ApiError> {
    let (at, world) = world_at(&state, &auditor.tenant, at).await?;
    let application = world.application(&name).ok_or_else(|| {
        not_found(format!(
            "application {name:?} was not configured at {}",
            history::timestamp(at)
        ))
    })?;
    let mut users: Vec<(String, Value)> = world
        .users()
        .filter_map(|user| {
            let (verdict, via) = world.decide(&application, &user);
            let policy = access::deciding(&verdict)?;
            let user_name = rollcall_domain::policy::Person::user_name(&user).to_owned();
            let entry = json!({"id": user.id, "userName": user_name, "policy": policy, "via": via});
            Some((user_name, entry))
        })
        .collect();
    users.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Json(json!({
        "application": name,
        "at": history::timestamp(at),
        "bypass": world.bypass(&application),
        "policy_version": world.policy_version(),
        "users": users.into_iter().map(|(_, user)| user).collect::<Vec<_>>(),
    })))
}

/// Every application a user could have reached at an instant, with the deciding policy and
/// the memberships; for every other application configured then, why not.
#[utoipa::path(get, path = "/audit/v1/users/{id}/access", params(("id" = Uuid, Path, description = "the user's id"), At), responses((status = 200, description = "{user, at, policy_version, allowed: [{application, policy, via}], denied: [{application, reason}]}"), (status = 404, description = "the user did not exist then")), security(("bearer" = [])))]
pub async fn user_access(
    State(state): State<AuditState>,
    auditor: Auditor,
    PathValue(id): PathValue<Uuid>,
    Params(at): Params<At>,
) -> Result<Json<Value>, ApiError> {
    let (at, world) = world_at(&state, &auditor.tenant, at).await?;
    let user = world.user(id).ok_or_else(|| {
        not_found(format!(
            "user {id} did not exist at {}",
            history::timestamp(at)
        ))
    })?;
    let (mut allowed, mut denied) = (Vec::new(), Vec::new());
    for application in world.applications() {
        let (verdict, via) = world.decide(&application, &user);
        match access::deciding(&verdict) {
            Some(policy) => {
                allowed.push(json!({"application": application.name, "policy": policy, "via": via}))
            }
            None => denied
                .push(json!({"application": application.name, "reason": access::reason(&verdict)})),
        }
    }
    Ok(Json(json!({
        "user": id,
        "at": history::timestamp(at),
        "policy_version": world.policy_version(),
        "allowed": allowed,
        "denied": denied,
    })))
}

/// An application's configuration changes: its policies and routes before and after, with
/// actor and request.
#[utoipa::path(get, path = "/audit/v1/applications/{name}/history", params(("name" = String, Path, description = "the application's name")), responses((status = 200, description = "the application's events in order"), (status = 404, description = "no such application")), security(("bearer" = [])))]
pub async fn application_history(
    State(state): State<AuditState>,
    auditor: Auditor,
    PathValue(name): PathValue<String>,
) -> Result<Json<Value>, ApiError> {
    let id = rollcall_domain::application::application_id(&auditor.tenant, &name);
    let rows = state.store.audit_events(&auditor.tenant, id).await?;
    if rows.is_empty() {
        return Err(not_found(format!("no history for application {name:?}")));
    }
    Ok(Json(
        json!({"application": name, "id": id, "events": events(&rows)}),
    ))
}

/// Per user, the stretches of time during which an application let them in, with the events
/// that opened and closed each (memberships, deactivations, policy changes).
#[utoipa::path(get, path = "/audit/v1/applications/{name}/intervals", params(("name" = String, Path, description = "the application's name"), Range), responses((status = 200, description = "{application, from, to, users: [{id, userName, intervals: [{from, to, opened_by, closed_by}]}]}"), (status = 404, description = "no such application")), security(("bearer" = [])))]
pub async fn application_intervals(
    State(state): State<AuditState>,
    auditor: Auditor,
    PathValue(name): PathValue<String>,
    Params(range): Params<Range>,
) -> Result<Json<Value>, ApiError> {
    let from = instant("from", range.from.as_deref())?.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let to = instant("to", range.to.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    if from > to {
        return Err(bad("from must not be after to"));
    }
    let id = rollcall_domain::application::application_id(&auditor.tenant, &name);
    if state
        .store
        .audit_events(&auditor.tenant, id)
        .await?
        .is_empty()
    {
        return Err(not_found(format!("no history for application {name:?}")));
    }
    let _slot = state.exports.take(&auditor.tenant)?;
    let rows = tenant_rows(&state, &auditor.tenant, Some(to)).await?;
    let users = access::intervals(&rows, &name, from, to).map_err(corrupt)?;
    Ok(Json(json!({
        "application": name,
        "from": history::timestamp(from),
        "to": history::timestamp(to),
        "users": users,
    })))
}

/// `?from=&to=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct Range {
    /// From this instant (RFC 3339).
    pub from: Option<String>,
    /// Until this instant (RFC 3339).
    pub to: Option<String>,
}

/// Each member's membership intervals over a time range, with the events that opened and
/// closed them.
#[utoipa::path(get, path = "/audit/v1/groups/{id}/intervals", params(("id" = Uuid, Path, description = "the group's id"), Range), responses((status = 200, description = "intervals per member")), security(("bearer" = [])))]
pub async fn intervals(
    State(state): State<AuditState>,
    auditor: Auditor,
    PathValue(id): PathValue<Uuid>,
    Params(range): Params<Range>,
) -> Result<Json<Value>, ApiError> {
    let from = instant("from", range.from.as_deref())?.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let to = instant("to", range.to.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    let rows = aggregate_rows(&state, &auditor.tenant, Kind::Group, id).await?;
    if rows.is_empty() {
        return Err(not_found(format!("no history for group {id}")));
    }
    let members = history::intervals(&rows, from, to).map_err(corrupt)?;
    Ok(Json(
        json!({"group": id, "from": history::timestamp(from), "to": history::timestamp(to), "members": members}),
    ))
}

/// Event search parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EventSearch {
    /// Event type (`user.deactivated`, …).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Actor: a token id or an operator name.
    pub actor: Option<String>,
    /// A user's or group's id.
    pub aggregate: Option<Uuid>,
    /// From this instant.
    pub from: Option<String>,
    /// Until this instant.
    pub to: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// Searches events, with keyset pagination on the stream sequence.
#[utoipa::path(get, path = "/audit/v1/events", params(EventSearch), responses((status = 200, description = "a page of events and the next cursor")), security(("bearer" = [])))]
pub async fn search(
    State(state): State<AuditState>,
    auditor: Auditor,
    Params(search): Params<EventSearch>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_size(search.limit);
    let query = AuditQuery {
        event_type: search.event_type,
        actor: search.actor,
        aggregate: search.aggregate,
        from: instant("from", search.from.as_deref())?,
        to: instant("to", search.to.as_deref())?,
        after: search.cursor,
        before: None,
        limit,
    };
    let rows = opened_search(&state.store, &auditor.tenant, &query).await?;
    let next = next_cursor(&rows, limit, |r| r.sequence);
    Ok(Json(json!({"events": events(&rows), "next_cursor": next})))
}

/// A page's size: 100 unless asked, at most 1000.
fn page_size(limit: Option<i64>) -> i64 {
    limit.unwrap_or(100).clamp(1, 1000)
}

/// The cursor of the page after `rows`: the last row's key when the page is full (an events
/// page may hold more than `limit`: it ends with a whole message).
fn next_cursor<T>(rows: &[T], limit: i64, key: impl Fn(&T) -> i64) -> Option<i64> {
    (rows.len() as i64 >= limit)
        .then(|| rows.last().map(key))
        .flatten()
}

/// SCIM request log parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RequestSearch {
    /// Only this HTTP status.
    pub status: Option<i32>,
    /// From this instant.
    pub from: Option<String>,
    /// Until this instant.
    pub to: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// What the SCIM client sent, accepted or refused.
#[utoipa::path(get, path = "/audit/v1/scim-requests", params(RequestSearch), responses((status = 200, description = "a page of logged SCIM requests")), security(("bearer" = [])))]
pub async fn scim_requests(
    State(state): State<AuditState>,
    auditor: Auditor,
    Params(search): Params<RequestSearch>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_size(search.limit);
    let query = RequestQuery {
        status: search.status,
        from: instant("from", search.from.as_deref())?,
        to: instant("to", search.to.as_deref())?,
        after: search.cursor,
        limit,
    };
    let rows = state.store.requests(&auditor.tenant, &query).await?;
    let next = next_cursor(&rows, limit, |r| r.id);
    let requests: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"id": r.id, "at": history::timestamp(r.at), "token_id": r.token_id, "method": r.method, "path": r.path,
                   "filter": r.filter, "status": r.status, "scim_type": r.scim_type, "detail": r.detail,
                   "duration_ms": r.duration_ms, "request_id": r.request_id, "body": r.body.as_ref().map(|b| b.0.clone())})
        })
        .collect();
    Ok(Json(json!({"requests": requests, "next_cursor": next})))
}

/// The tenant's chain head, signed (when a signing key is configured).
#[utoipa::path(get, path = "/audit/v1/checkpoint", responses((status = 200, description = "a signed checkpoint"), (status = 404, description = "no signing key or no events")), security(("bearer" = [])))]
pub async fn checkpoint(
    State(state): State<AuditState>,
    auditor: Auditor,
) -> Result<Json<Value>, ApiError> {
    let key = state
        .signing_key
        .as_ref()
        .ok_or_else(|| not_found("no signing key is configured (ROLLCALL_AUDIT_SIGNING_KEY)"))?;
    let (sequence, hash) = state
        .store
        .chain_head(&auditor.tenant)
        .await?
        .ok_or_else(|| not_found("no events yet"))?;
    let signed = crate::checkpoint::sign(key, &auditor.tenant, sequence as u64, &hash);
    Ok(Json(serde_json::to_value(signed).unwrap_or_default()))
}

/// This document.
#[utoipa::path(get, path = "/audit/v1/openapi.json", responses((status = 200, description = "the OpenAPI document of the audit API")))]
pub async fn openapi() -> Json<Value> {
    Json(crate::openapi_document())
}

/// The auditors' page.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// `/audit` → `/audit/`
pub async fn page_redirect() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, "/audit/")],
    )
        .into_response()
}
