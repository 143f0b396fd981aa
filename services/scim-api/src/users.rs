//! `/Users`: create, read, list, replace, patch, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use rollcall_domain::user::{self, User, UserCommand};
use rollcall_eventlog::Actor;
use rollcall_scim::{case, resource, PatchRequest, Projection, USER_RESOURCE};
use serde_json::Value;
use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

use crate::aggregate::{self, Folded, Users, WriteContext};
use crate::auth::Principal;
use crate::body::ScimJson;
use crate::change::Change;
use crate::claims::{self, USER_NAME};
use crate::error::ApiError;
use crate::http::{self, RequestInfo};
use crate::mapping::{self, etag, Meta};
use crate::AppState;

fn not_found(id: &str) -> ApiError {
    http::not_found(&USER_RESOURCE, id)
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    http::parse_id(&USER_RESOURCE, id)
}

pub(crate) fn context(principal: &Principal, info: &RequestInfo) -> WriteContext {
    WriteContext {
        tenant: principal.tenant.clone(),
        actor: Actor::ScimToken {
            token_id: principal.token_id.clone(),
        },
        request_id: info.request_id.clone(),
    }
}

/// The SCIM document of a folded user, if it exists.
fn document(id: Uuid, folded: &Folded<User>, base: &str) -> Option<Value> {
    let attributes = folded.state.attributes()?;
    let now = OffsetDateTime::now_utc();
    let meta = Meta {
        base,
        version: folded.version,
        created: folded.created_at.unwrap_or(now),
        modified: folded.updated_at.unwrap_or(now),
    };
    Some(mapping::user(id, attributes, None, meta))
}

fn projection(info: &RequestInfo) -> Result<Projection, ApiError> {
    http::projection(&USER_RESOURCE, info)
}

/// Applies commands in order on an evolving state.
/// `POST /Users`
#[instrument(skip_all, fields(tenant = %principal.tenant), err(level = "debug"))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    ScimJson(body): ScimJson,
) -> Result<Response, ApiError> {
    let projection = projection(&info)?;
    let resource = resource::create(&USER_RESOURCE, body)?;
    let user_name = mapping::text(&resource, "userName")
        .unwrap_or_default()
        .to_owned();
    let id = Uuid::now_v7();
    let context = context(&principal, &info);
    let mut commands = vec![mapping::provision(&resource)];
    commands.extend(mapping::password_set(&resource));
    let write = state.repositories.users.write(&context, id, |folded| {
        aggregate::decide_all::<Users>(&folded.state, commands.clone())
    });
    let written =
        claims::while_claimed(&state, &principal.tenant, USER_NAME, &user_name, id, write).await?;
    state
        .checkpoint
        .settle("User", &principal.tenant, id, written.folded.sequence)
        .await?;
    let document =
        document(id, &written.folded, &info.base).ok_or_else(|| not_found(&id.to_string()))?;
    Ok(http::resource(
        StatusCode::CREATED,
        &USER_RESOURCE,
        &projection,
        &document,
        written.folded.version,
        &info.base,
        &id,
    ))
}

impl Change {
    /// Whether the change may touch userName (then its claim is checked first).
    fn may_rename(&self, body: &Value) -> bool {
        matches!(self, Change::Replace(_))
            || body.to_string().to_ascii_lowercase().contains("username")
    }
}

async fn update(
    state: AppState,
    principal: Principal,
    info: RequestInfo,
    id: String,
    body: Value,
    change: Change,
) -> Result<Response, ApiError> {
    let projection = projection(&info)?;
    let uuid = parse_id(&id)?;
    state
        .checkpoint
        .writable("User", &principal.tenant, uuid)
        .await?;
    let context = context(&principal, &info);
    let tenant = principal.tenant.as_str();
    // A new userName is claimed before anything is appended.
    let mut claimed = None;
    if change.may_rename(&body) {
        let folded = state.repositories.users.load(tenant, uuid).await?;
        let current = document(uuid, &folded, &info.base).ok_or_else(|| not_found(&id))?;
        let next = change.apply(&USER_RESOURCE, &current)?;
        let (old, new) = (
            mapping::text(&current, "userName"),
            mapping::text(&next, "userName"),
        );
        if let (Some(old), Some(new)) = (old, new) {
            if !case::equal(old, new) {
                claims::claim(&state, tenant, USER_NAME, new, uuid).await?;
                claimed = Some((old.to_owned(), new.to_owned()));
            }
        }
    }
    let mut final_name = None;
    let written = state
        .repositories
        .users
        .write(&context, uuid, |folded| {
            let current = document(uuid, folded, &info.base).ok_or_else(|| not_found(&id))?;
            info.check_if_match(&etag(folded.version))?;
            let next = change.apply(&USER_RESOURCE, &current)?;
            final_name = mapping::text(&next, "userName").map(str::to_owned);
            aggregate::decide_all::<Users>(&folded.state, mapping::user_update(&current, &next))
        })
        .await;
    let (ok, name) = (written.is_ok(), final_name.as_deref());
    claims::settle_rename(&state, tenant, USER_NAME, claimed, ok, name, uuid).await;
    let written = written?;
    // Also for a write that changed nothing (Entra re-sends a deactivation that may still be
    // in flight): the resource's last event must be in effect before the answer.
    state
        .checkpoint
        .settle("User", tenant, uuid, written.folded.sequence)
        .await?;
    let document = document(uuid, &written.folded, &info.base).ok_or_else(|| not_found(&id))?;
    Ok(http::resource(
        StatusCode::OK,
        &USER_RESOURCE,
        &projection,
        &document,
        written.folded.version,
        &info.base,
        &id,
    ))
}

/// `PUT /Users/{id}`
#[instrument(skip_all, fields(tenant = %principal.tenant, user.id = %id), err(level = "debug"))]
pub async fn replace(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    Path(id): Path<String>,
    ScimJson(body): ScimJson,
) -> Result<Response, ApiError> {
    // Checked before anything is loaded: a bad body appends nothing.
    resource::normalize(&USER_RESOURCE, body.clone())?;
    let change = Change::Replace(body.clone());
    update(state, principal, info, id, body, change).await
}

/// `PATCH /Users/{id}`: `200` with the user.
#[instrument(skip_all, fields(tenant = %principal.tenant, user.id = %id), err(level = "debug"))]
pub async fn modify(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    Path(id): Path<String>,
    ScimJson(body): ScimJson,
) -> Result<Response, ApiError> {
    let change = Change::Patch(PatchRequest::from_json(&body)?);
    update(state, principal, info, id, body, change).await
}

/// `DELETE /Users/{id}`: `204`, then `404`.
#[instrument(skip_all, fields(tenant = %principal.tenant, user.id = %id), err(level = "debug"))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let uuid = parse_id(&id)?;
    state
        .checkpoint
        .writable("User", &principal.tenant, uuid)
        .await?;
    let context = context(&principal, &info);
    let mut user_name = None;
    let written = state
        .repositories
        .users
        .write(&context, uuid, |folded| {
            if folded.state.attributes().is_none() {
                return Err(not_found(&id));
            }
            info.check_if_match(&etag(folded.version))?;
            user_name = folded.state.user_name().map(str::to_owned);
            Ok(user::decide(&folded.state, UserCommand::Delete)?)
        })
        .await?;
    if let Some(user_name) = user_name {
        claims::release(&state, &principal.tenant, USER_NAME, &user_name, uuid).await;
    }
    state
        .checkpoint
        .settle("User", &principal.tenant, uuid, written.folded.sequence)
        .await?;
    Ok(http::no_content(None))
}
