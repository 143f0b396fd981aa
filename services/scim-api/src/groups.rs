//! `/Groups`: create, read, list, replace, patch, delete. Group PATCH answers `204` (Entra
//! prefers it; ENTRA.md §4.9) unless the request asks for attributes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use rollcall_domain::group::{self, Group, GroupCommand};
use rollcall_scim::{case, limits, resource, PatchRequest, Projection, GROUP_RESOURCE};
use serde_json::Value;
use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

use crate::aggregate::{self, Folded, Groups};
use crate::auth::Principal;
use crate::body::ScimJson;
use crate::change::Change;
use crate::claims::{self, DISPLAY_NAME};
use crate::error::ApiError;
use crate::http::{self, RequestInfo};
use crate::mapping::{self, etag, Meta};
use crate::users::context;
use crate::AppState;

fn not_found(id: &str) -> ApiError {
    http::not_found(&GROUP_RESOURCE, id)
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    http::parse_id(&GROUP_RESOURCE, id)
}

fn document(id: Uuid, folded: &Folded<Group>, base: &str) -> Option<Value> {
    let state = folded.state.state()?;
    let now = OffsetDateTime::now_utc();
    let meta = Meta {
        base,
        version: folded.version,
        created: folded.created_at.unwrap_or(now),
        modified: folded.updated_at.unwrap_or(now),
    };
    let members = state
        .members
        .values()
        .map(|m| (m.value.as_str(), m.kind.as_deref(), m.display.as_deref()));
    Some(mapping::group(id, &state.attributes, members, meta))
}

fn projection(info: &RequestInfo) -> Result<Projection, ApiError> {
    http::projection(&GROUP_RESOURCE, info)
}

/// `POST /Groups`
#[instrument(skip_all, fields(tenant = %principal.tenant), err(level = "debug"))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    ScimJson(body): ScimJson,
) -> Result<Response, ApiError> {
    let projection = projection(&info)?;
    limits::check_listed_members(limits::members_in_body(&body))?;
    let resource = resource::create(&GROUP_RESOURCE, body)?;
    let display_name = mapping::text(&resource, "displayName")
        .unwrap_or_default()
        .to_owned();
    let id = Uuid::now_v7();
    let context = context(&principal, &info);
    let command = mapping::create_group(&resource);
    let write = state.repositories.groups.write(&context, id, |folded| {
        Ok(group::decide(&folded.state, command.clone())?)
    });
    let written = claims::while_claimed(
        &state,
        &principal.tenant,
        DISPLAY_NAME,
        &display_name,
        id,
        write,
    )
    .await?;
    state
        .checkpoint
        .settle("Group", &principal.tenant, id, written.folded.sequence)
        .await?;
    let document =
        document(id, &written.folded, &info.base).ok_or_else(|| not_found(&id.to_string()))?;
    Ok(http::resource(
        StatusCode::CREATED,
        &GROUP_RESOURCE,
        &projection,
        &document,
        written.folded.version,
        &info.base,
        &id,
    ))
}

/// Applies a PUT or PATCH; `render` makes the answer from the written state while the write
/// holds it (the next write of a large group then takes it back from the cache without a
/// copy).
async fn update<T>(
    state: AppState,
    principal: Principal,
    info: RequestInfo,
    id: String,
    body: Value,
    change: Change,
    render: impl FnOnce(Uuid, &Folded<Group>) -> T,
) -> Result<T, ApiError> {
    let uuid = parse_id(&id)?;
    state
        .checkpoint
        .writable("Group", &principal.tenant, uuid)
        .await?;
    let context = context(&principal, &info);
    let tenant = principal.tenant.as_str();
    let mut claimed = None;
    if matches!(change, Change::Replace(_))
        || body
            .to_string()
            .to_ascii_lowercase()
            .contains("displayname")
    {
        let folded = state.repositories.groups.load(tenant, uuid).await?;
        let current = document(uuid, &folded, &info.base).ok_or_else(|| not_found(&id))?;
        let next = change.apply(&GROUP_RESOURCE, &current)?;
        if let (Some(old), Some(new)) = (
            mapping::text(&current, "displayName"),
            mapping::text(&next, "displayName"),
        ) {
            if !case::equal(old, new) {
                claims::claim(&state, tenant, DISPLAY_NAME, new, uuid).await?;
                claimed = Some((old.to_owned(), new.to_owned()));
            }
        }
    }
    let mut final_name = None;
    let written = state
        .repositories
        .groups
        .write_then(
            &context,
            uuid,
            |folded| {
                // Member-only PATCHes (most of Entra's group traffic) never render the group.
                if let Change::Patch(request) = &change {
                    let listed = || {
                        folded
                            .state
                            .state()
                            .map(|s| s.members.values().map(|m| m.value.clone()).collect())
                            .unwrap_or_default()
                    };
                    if let Some(commands) = mapping::member_commands(request, listed) {
                        if folded.state.state().is_none() {
                            return Err(not_found(&id));
                        }
                        info.check_if_match(&etag(folded.version))?;
                        return aggregate::decide_all::<Groups>(&folded.state, commands?);
                    }
                }
                let current = document(uuid, folded, &info.base).ok_or_else(|| not_found(&id))?;
                info.check_if_match(&etag(folded.version))?;
                let next = change.apply(&GROUP_RESOURCE, &current)?;
                final_name = mapping::text(&next, "displayName").map(str::to_owned);
                aggregate::decide_all::<Groups>(
                    &folded.state,
                    mapping::group_update(&current, &next),
                )
            },
            |folded, _| (folded.sequence, render(uuid, folded)),
        )
        .await;
    let (ok, name) = (written.is_ok(), final_name.as_deref());
    claims::settle_rename(&state, tenant, DISPLAY_NAME, claimed, ok, name, uuid).await;
    let (sequence, rendered) = written?;
    // Also for a write that changed nothing (Entra re-sends a deactivation that may still be
    // in flight): the resource's last event must be in effect before the answer.
    state
        .checkpoint
        .settle("Group", tenant, uuid, sequence)
        .await?;
    Ok(rendered)
}

/// `PUT /Groups/{id}`: `200` with the group.
#[instrument(skip_all, fields(tenant = %principal.tenant, group.id = %id), err(level = "debug"))]
pub async fn replace(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    Path(id): Path<String>,
    ScimJson(body): ScimJson,
) -> Result<Response, ApiError> {
    let projection = projection(&info)?;
    limits::check_listed_members(limits::members_in_body(&body))?;
    resource::normalize(&GROUP_RESOURCE, body.clone())?;
    let base = info.base.clone();
    let (version, document) = update(
        state,
        principal,
        info,
        id.clone(),
        body.clone(),
        Change::Replace(body),
        |uuid, folded| (folded.version, document(uuid, folded, &base)),
    )
    .await?;
    let document = document.ok_or_else(|| not_found(&id))?;
    Ok(http::resource(
        StatusCode::OK,
        &GROUP_RESOURCE,
        &projection,
        &document,
        version,
        &base,
        &id,
    ))
}

/// `PATCH /Groups/{id}`: `204`, or `200` with the group when `attributes` or
/// `excludedAttributes` is given.
#[instrument(skip_all, fields(tenant = %principal.tenant, group.id = %id), err(level = "debug"))]
pub async fn modify(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    Path(id): Path<String>,
    ScimJson(body): ScimJson,
) -> Result<Response, ApiError> {
    let projection = projection(&info)?;
    let wants_body =
        info.param("attributes").is_some() || info.param("excludedAttributes").is_some();
    let request = PatchRequest::from_json(&body)?;
    limits::check_listed_members(limits::members_in_patch(&request))?;
    let change = Change::Patch(request);
    let base = info.base.clone();
    let (version, document) = update(
        state,
        principal,
        info,
        id.clone(),
        body,
        change,
        |uuid, folded| {
            (
                folded.version,
                wants_body.then(|| document(uuid, folded, &base)),
            )
        },
    )
    .await?;
    let Some(document) = document else {
        return Ok(http::no_content(Some(&etag(version))));
    };
    let document = document.ok_or_else(|| not_found(&id))?;
    Ok(http::scim(
        StatusCode::OK,
        &projection.apply(&GROUP_RESOURCE, &document),
        Some(&etag(version)),
        None,
    ))
}

/// `DELETE /Groups/{id}`: `204`, then `404`.
#[instrument(skip_all, fields(tenant = %principal.tenant, group.id = %id), err(level = "debug"))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let uuid = parse_id(&id)?;
    state
        .checkpoint
        .writable("Group", &principal.tenant, uuid)
        .await?;
    let context = context(&principal, &info);
    let mut display_name = None;
    let written = state
        .repositories
        .groups
        .write(&context, uuid, |folded| {
            let Some(current) = folded.state.state() else {
                return Err(not_found(&id));
            };
            info.check_if_match(&etag(folded.version))?;
            display_name = current.display_name().map(str::to_owned);
            Ok(group::decide(&folded.state, GroupCommand::Delete)?)
        })
        .await?;
    if let Some(display_name) = display_name {
        claims::release(&state, &principal.tenant, DISPLAY_NAME, &display_name, uuid).await;
    }
    state
        .checkpoint
        .settle("Group", &principal.tenant, uuid, written.folded.sequence)
        .await?;
    Ok(http::no_content(None))
}
