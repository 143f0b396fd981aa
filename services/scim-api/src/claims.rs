//! Uniqueness through NATS claims: a userName (or group displayName) is claimed, without case,
//! before the event that uses it is appended, and released when it is no longer used. "Without
//! case" is [`rollcall_scim::case`]'s folding, the one every lookup uses.

use std::time::Duration;

use rollcall_eventlog::{Actor, Claim, Claims};
use rollcall_scim::{case, ScimError};
use rollcall_store::Store;
use time::OffsetDateTime;
use tracing::warn;
use uuid::Uuid;

use crate::aggregate::{self, Groups, Users, WriteContext};
use crate::error::ApiError;
use crate::resources::{Resource, Stage};
use crate::AppState;

/// A claim taken before claims named their process, whose holder has no event, is recovered
/// (after fencing the holder) once older than this: longer than a live writer takes from its
/// claim to its append (a JetStream publish times out after 5 s).
const RECOVER_AFTER: Duration = Duration::from_secs(10);

/// A claim older than this whose holder exists but no longer uses the value is stale: its
/// writer crashed between renaming and releasing.
const STALE_AFTER: Duration = Duration::from_secs(30);

async fn holder_uses<R: Resource>(
    state: &AppState,
    tenant: &str,
    value: &str,
    holder: Uuid,
) -> Result<bool, ApiError> {
    let folded = R::repository(state).load(tenant, holder).await?;
    Ok(R::unique(&folded.state).is_some_and(|current| case::equal(current, value)))
}

/// Claims the folded keys of existing users and groups whose claims were taken under their
/// legacy key (`str::to_lowercase`, before claims were case-folded) and whose two keys differ
/// (`straße`, `İlker`, `ΟΔΟΣ`): otherwise a name folding alike (`STRASSE`) would find its key
/// free. Runs when the API starts; claiming what is held already changes nothing. Resources
/// appended but not yet in the read model are not seen. Returns how many keys it claimed.
pub async fn adopt_folded_keys(claims: &Claims, store: &Store) -> Result<usize, ApiError> {
    let users = store.user_names_beyond_ascii().await?;
    let groups = store.group_names_beyond_ascii().await?;
    let named = users
        .into_iter()
        .map(|row| (Users::UNIQUE, row))
        .chain(groups.into_iter().map(|row| (Groups::UNIQUE, row)));
    let mut adopted = 0;
    for (kind, (tenant, id, name)) in named {
        if name.to_lowercase() == case::fold(&name) {
            continue;
        }
        match claims.claim(&tenant, kind, &name, id).await? {
            Claim::Acquired => adopted += 1,
            Claim::AlreadyHeld => {}
            Claim::HeldBy { holder, .. } => warn!(
                kind,
                tenant,
                resource.id = %id,
                holder.id = %holder,
                "two resources' names are one under case folding; the other holds the claim"
            ),
        }
    }
    Ok(adopted)
}

/// Whether a claim's holder provably never comes to use its claim: it has no event, and an
/// `abandoned` event appended where its first event would go (expecting none) now fences its
/// writer out for good; or it was deleted (for good). A holder that exists answers `false`.
async fn fence_absent<R: Resource>(
    state: &AppState,
    tenant: &str,
    holder: Uuid,
) -> Result<bool, ApiError> {
    if holder.is_nil() {
        return Ok(false);
    }
    let context = WriteContext {
        tenant: tenant.to_owned(),
        actor: Actor::Operator {
            name: "rollcall: claim recovery".into(),
        },
        request_id: format!("claim-recovery-{holder}"),
    };
    let repository = R::repository(state);
    let folded = repository.load(tenant, holder).await?;
    let fenced = match R::stage(&folded.state) {
        Stage::Deleted => return Ok(true),
        Stage::Live => return Ok(false),
        Stage::Absent => repository
            .write(&context, holder, |folded| {
                aggregate::decide_all::<R>(&folded.state, vec![R::abandon()])
            })
            .await
            .map(|written| written.appended > 0),
    };
    match fenced {
        Ok(fenced) => Ok(fenced),
        // It came to exist after all (its writer appended first).
        Err(ApiError::Scim(_)) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Claims `value` for `holder`, or answers `409 uniqueness`.
pub async fn claim<R: Resource>(
    state: &AppState,
    tenant: &str,
    value: &str,
    holder: Uuid,
) -> Result<(), ApiError> {
    let kind = R::UNIQUE;
    match state.claims.claim(tenant, kind, value, holder).await? {
        Claim::Acquired | Claim::AlreadyHeld => Ok(()),
        Claim::HeldBy {
            holder: other,
            revision,
            claimed_at,
            writer,
        } => {
            // A holder whose writer is gone: it stopped between claiming and appending (a
            // crash, a `kill -9`). Fenced, the holder provably never comes to exist: recover.
            // A live writer is never fenced (twenty concurrent creates of one name would fence
            // each other in turn): this process knows its own writes in flight, and every
            // process says it is alive in the writers bucket.
            let age = OffsetDateTime::now_utc() - claimed_at;
            let writer_gone = match writer {
                Some(writer) if writer == state.claims.writer() => !state.claims.is_writing(other),
                Some(writer) => !state.claims.writer_alive(writer).await?,
                // Claimed before processes were named: gone once no live writer could append.
                None => age > RECOVER_AFTER,
            };
            if writer_gone
                && fence_absent::<R>(state, tenant, other).await?
                && state
                    .claims
                    .take_over(tenant, kind, value, holder, revision)
                    .await?
            {
                warn!(kind, holder.id = %other, "recovered a claim whose writer never created its resource");
                return Ok(());
            }
            let old = age > STALE_AFTER;
            if old
                && !holder_uses::<R>(state, tenant, value, other).await?
                && state
                    .claims
                    .take_over(tenant, kind, value, holder, revision)
                    .await?
            {
                warn!(kind, "took over a stale claim");
                return Ok(());
            }
            let resource = R::resource_type().name;
            Err(
                ScimError::uniqueness(format!("a {resource} with this {kind} exists already"))
                    .into(),
            )
        }
    }
}

/// Releases a claim; a failure leaves a stale claim, taken over later, so it is only logged.
pub async fn release<R: Resource>(state: &AppState, tenant: &str, value: &str, holder: Uuid) {
    let kind = R::UNIQUE;
    if let Err(error) = state.claims.release(tenant, kind, value, holder).await {
        warn!(kind, error = %error, "releasing a claim failed; it will be taken over once stale");
    }
}

/// Claims `value` for `holder`, then runs `write`; gives the claim back when the write fails.
pub async fn while_claimed<R: Resource, T>(
    state: &AppState,
    tenant: &str,
    value: &str,
    holder: Uuid,
    write: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let _writing = state.claims.writing(holder);
    claim::<R>(state, tenant, value, holder).await?;
    let written = write.await;
    if let Err(error) = &written {
        // A publish whose acknowledgement was lost may have landed: then the claim is the
        // resource's, and giving it back would let Entra's retry create a second user of the
        // name. Kept, it is recovered (fenced) if the resource never came to exist.
        if !error.may_have_appended() {
            release::<R>(state, tenant, value, holder).await;
        }
    }
    written
}

/// Settles a rename's claims once its write is done: `left` is the value the resource was
/// left with (`None` when the write failed). A rename written releases the old value; anything
/// else gives the new one back.
pub async fn settle_rename<R: Resource>(
    state: &AppState,
    tenant: &str,
    claimed: Option<(String, String)>,
    left: Option<&str>,
    holder: Uuid,
) {
    let Some((old, new)) = claimed else { return };
    let released = if left == Some(new.as_str()) { old } else { new };
    release::<R>(state, tenant, &released, holder).await;
}
