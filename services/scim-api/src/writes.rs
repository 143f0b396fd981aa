//! One write path for every SCIM resource type ([`Resource`]): create, replace, patch, delete.
//! Each claims what must stay unique before anything is appended, appends through the
//! resource's repository, and answers once the write is in effect (read-your-writes: the
//! projector and, when configured, the access service have applied it).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use rollcall_eventlog::Actor;
use rollcall_scim::{case, resource, PatchRequest, Projection};
use serde_json::Value;
use tracing::instrument;
use uuid::Uuid;

use crate::aggregate::{self, Folded, WriteContext};
use crate::auth::Principal;
use crate::body::ScimJson;
use crate::change::Change;
use crate::claims;
use crate::error::ApiError;
use crate::http::{self, RequestInfo};
use crate::mapping::{self, etag};
use crate::resources::{Resource, Stage};
use crate::AppState;

/// Who writes, and within which request.
fn context(principal: &Principal, info: &RequestInfo) -> WriteContext {
    WriteContext {
        tenant: principal.tenant.clone(),
        actor: Actor::ScimToken {
            token_id: principal.token_id.clone(),
        },
        request_id: info.request_id.clone(),
    }
}

fn not_found<R: Resource>(id: &str) -> ApiError {
    http::not_found(R::resource_type(), id)
}

/// What a write answers with, made from the written state while the write holds it (the next
/// write of a large group then takes the state back from the cache without a copy).
struct Answer {
    /// The resource's last stream sequence: what must be in effect before the answer.
    sequence: u64,
    /// Its `meta.version`.
    version: u64,
    /// Its document, when the answer shows it (`None` too for a resource that is gone).
    document: Option<Value>,
}

impl Answer {
    /// The response showing the resource's document (`404` if it is gone).
    fn respond<R: Resource>(
        self,
        status: StatusCode,
        projection: &Projection,
        base: &str,
        id: &str,
    ) -> Result<Response, ApiError> {
        let rt = R::resource_type();
        let document = self.document.ok_or_else(|| not_found::<R>(id))?;
        Ok(http::resource(
            status,
            rt,
            projection,
            &document,
            self.version,
            base,
            &id,
        ))
    }

    /// The answer of a write that left `folded` (with its document if `document`).
    fn of<R: Resource>(id: Uuid, folded: &Folded<R::State>, base: &str, document: bool) -> Self {
        Self {
            sequence: folded.sequence,
            version: folded.version,
            document: document.then(|| R::document(id, folded, base)).flatten(),
        }
    }
}

/// `POST /Users`, `POST /Groups`: `201` with the new resource.
#[instrument(skip_all, fields(tenant = %principal.tenant, resource = R::resource_type().name), err(level = "debug"))]
pub async fn create<R: Resource>(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    ScimJson(body): ScimJson,
) -> Result<Response, ApiError> {
    let rt = R::resource_type();
    let projection = http::projection(rt, &info)?;
    R::check_body(&body)?;
    let resource = resource::create(rt, body)?;
    let unique = mapping::text(&resource, R::UNIQUE).unwrap_or_default();
    let seals = R::PERSONAL && state.store.seals_personal_data();
    // A new user takes a spare id whose data key is stored already, when there is one.
    let spare = seals
        .then(|| state.store.spare_user(&principal.tenant))
        .flatten();
    let id = spare.unwrap_or_else(Uuid::now_v7);
    let context = context(&principal, &info);
    let commands = R::created(&resource);
    let write = R::repository(&state).write_then(
        &context,
        id,
        |folded| {
            Ok((
                aggregate::decide_all::<R>(&folded.state, commands.clone())?,
                (),
            ))
        },
        |folded, _, ()| Answer::of::<R>(id, folded, &info.base, true),
    );
    // Otherwise its data key is stored while its name is claimed (the write seals its events
    // under it): two round trips at once instead of one after the other.
    let prefetch = async {
        if seals && spare.is_none() {
            // A failure is the write's to report: sealing asks for the key again.
            let _ = state
                .store
                .data_key_for_writing(&principal.tenant, id)
                .await;
        }
    };
    let (answer, ()) = tokio::join!(
        claims::while_claimed::<R, _>(&state, &principal.tenant, unique, id, write),
        prefetch
    );
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            // Nothing was appended: the key stored for the user that never came to be goes.
            if seals && !error.may_have_appended() {
                if let Err(cleanup) = state
                    .store
                    .forget_unused_data_key(&principal.tenant, id)
                    .await
                {
                    tracing::warn!(error = %cleanup, "removing the data key of a user that was never created failed");
                }
            }
            return Err(error);
        }
    };
    state
        .checkpoint
        .settle(rt.name, &principal.tenant, id, answer.sequence)
        .await?;
    answer.respond::<R>(
        StatusCode::CREATED,
        &projection,
        &info.base,
        &id.to_string(),
    )
}

/// Applies a PUT or PATCH (`body` as received) to resource `id`; the answer carries the
/// document when `document` asks for it.
async fn update<R: Resource>(
    state: &AppState,
    principal: &Principal,
    info: &RequestInfo,
    id: &str,
    body: &Value,
    change: Change,
    document: bool,
) -> Result<Answer, ApiError> {
    let rt = R::resource_type();
    let uuid = http::parse_id(rt, id)?;
    let tenant = principal.tenant.as_str();
    state.checkpoint.writable(rt.name, tenant, uuid).await?;
    let context = context(principal, info);
    let repository = R::repository(state);
    // A new unique value is claimed before anything is appended.
    let mut claimed = None;
    if change.may_touch(R::UNIQUE, body) {
        let folded = repository.load(tenant, uuid).await?;
        let current = R::document(uuid, &folded, &info.base).ok_or_else(|| not_found::<R>(id))?;
        let next = change.apply(rt, &current)?;
        let (old, new) = (
            mapping::text(&current, R::UNIQUE),
            mapping::text(&next, R::UNIQUE),
        );
        if let (Some(old), Some(new)) = (old, new) {
            if !case::equal(old, new) {
                claims::claim::<R>(state, tenant, new, uuid).await?;
                claimed = Some((old.to_owned(), new.to_owned()));
            }
        }
    }
    // The plan notes the unique value the write leaves, which settles the claims.
    let written = repository
        .write_then(
            &context,
            uuid,
            |folded| {
                if let Change::Patch(request) = &change {
                    if let Some(commands) = R::commands_of_patch(&folded.state, request) {
                        if R::stage(&folded.state) != Stage::Live {
                            return Err(not_found::<R>(id));
                        }
                        info.check_if_match(&etag(folded.version))?;
                        let events = aggregate::decide_all::<R>(&folded.state, commands?)?;
                        return Ok((events, R::unique(&folded.state).map(str::to_owned)));
                    }
                }
                let current =
                    R::document(uuid, folded, &info.base).ok_or_else(|| not_found::<R>(id))?;
                info.check_if_match(&etag(folded.version))?;
                let next = change.apply(rt, &current)?;
                let unique = mapping::text(&next, R::UNIQUE).map(str::to_owned);
                let events =
                    aggregate::decide_all::<R>(&folded.state, R::changed(&current, &next))?;
                Ok((events, unique))
            },
            |folded, _, unique| (Answer::of::<R>(uuid, folded, &info.base, document), unique),
        )
        .await;
    match &written {
        Ok((_, left)) => {
            claims::settle_rename::<R>(state, tenant, claimed, left.as_deref(), uuid).await;
        }
        // An append whose acknowledgement was lost may have landed: both values stay claimed
        // (the one the resource does not hold is taken over once stale).
        Err(error) if error.may_have_appended() => {}
        Err(_) => claims::settle_rename::<R>(state, tenant, claimed, None, uuid).await,
    }
    let (answer, _) = written?;
    // Also for a write that changed nothing (Entra re-sends a deactivation that may still be
    // in flight): the resource's last event must be in effect before the answer.
    state
        .checkpoint
        .settle(rt.name, tenant, uuid, answer.sequence)
        .await?;
    Ok(answer)
}

/// `PUT /Users/{id}`, `PUT /Groups/{id}`: `200` with the resource.
#[instrument(skip_all, fields(tenant = %principal.tenant, resource = R::resource_type().name, resource.id = %id), err(level = "debug"))]
pub async fn replace<R: Resource>(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    Path(id): Path<String>,
    ScimJson(body): ScimJson,
) -> Result<Response, ApiError> {
    let rt = R::resource_type();
    let projection = http::projection(rt, &info)?;
    R::check_body(&body)?;
    // Checked before anything is loaded: a bad body appends nothing.
    resource::normalize(rt, body.clone())?;
    let change = Change::Replace(body.clone());
    let answer = update::<R>(&state, &principal, &info, &id, &body, change, true).await?;
    answer.respond::<R>(StatusCode::OK, &projection, &info.base, &id)
}

/// `PATCH /Users/{id}`: `200` with the user. `PATCH /Groups/{id}`: `204`, or `200` with the
/// group when `attributes` or `excludedAttributes` is given.
#[instrument(skip_all, fields(tenant = %principal.tenant, resource = R::resource_type().name, resource.id = %id), err(level = "debug"))]
pub async fn modify<R: Resource>(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    Path(id): Path<String>,
    ScimJson(body): ScimJson,
) -> Result<Response, ApiError> {
    let rt = R::resource_type();
    let projection = http::projection(rt, &info)?;
    let request = PatchRequest::from_json(&body)?;
    R::check_patch(&request)?;
    let document = !R::PATCH_ANSWERS_NO_CONTENT
        || info.param("attributes").is_some()
        || info.param("excludedAttributes").is_some();
    let change = Change::Patch(request);
    let answer = update::<R>(&state, &principal, &info, &id, &body, change, document).await?;
    if !document {
        return Ok(http::no_content(Some(&etag(answer.version))));
    }
    answer.respond::<R>(StatusCode::OK, &projection, &info.base, &id)
}

/// `DELETE /Users/{id}`, `DELETE /Groups/{id}`: `204`, then `404`.
#[instrument(skip_all, fields(tenant = %principal.tenant, resource = R::resource_type().name, resource.id = %id), err(level = "debug"))]
pub async fn delete<R: Resource>(
    State(state): State<AppState>,
    principal: Principal,
    info: RequestInfo,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rt = R::resource_type();
    let uuid = http::parse_id(rt, &id)?;
    let tenant = principal.tenant.as_str();
    state.checkpoint.writable(rt.name, tenant, uuid).await?;
    let context = context(&principal, &info);
    // The plan notes the unique value the deleted resource held, to release its claim.
    let (sequence, unique) = R::repository(&state)
        .write_then(
            &context,
            uuid,
            |folded| {
                if R::stage(&folded.state) != Stage::Live {
                    return Err(not_found::<R>(&id));
                }
                info.check_if_match(&etag(folded.version))?;
                let events = aggregate::decide_all::<R>(&folded.state, vec![R::delete()])?;
                Ok((events, R::unique(&folded.state).map(str::to_owned)))
            },
            |folded, _, unique| (folded.sequence, unique),
        )
        .await?;
    if let Some(unique) = unique {
        claims::release::<R>(&state, tenant, &unique, uuid).await;
    }
    state
        .checkpoint
        .settle(rt.name, tenant, uuid, sequence)
        .await?;
    Ok(http::no_content(None))
}
