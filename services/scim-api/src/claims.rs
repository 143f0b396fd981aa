//! Uniqueness through NATS claims: a userName (or group displayName) is claimed, without case,
//! before the event that uses it is appended, and released when it is no longer used.

use std::time::Duration;

use rollcall_eventlog::Claim;
use rollcall_scim::ScimError;
use time::OffsetDateTime;
use tracing::warn;
use uuid::Uuid;

use crate::error::ApiError;
use crate::AppState;

/// The claim kind of userNames.
pub const USER_NAME: &str = "userName";
/// The claim kind of group displayNames.
pub const DISPLAY_NAME: &str = "displayName";

/// A claim older than this whose holder never came to exist (or no longer uses the value) is
/// stale: its writer crashed between claiming and appending, or between renaming and releasing.
const STALE_AFTER: Duration = Duration::from_secs(30);

async fn holder_uses(
    state: &AppState,
    tenant: &str,
    kind: &str,
    value: &str,
    holder: Uuid,
) -> Result<bool, ApiError> {
    let current = if kind == USER_NAME {
        state
            .repositories
            .users
            .load(tenant, holder)
            .await?
            .state
            .user_name()
            .map(str::to_owned)
    } else {
        let folded = state.repositories.groups.load(tenant, holder).await?;
        folded
            .state
            .state()
            .and_then(|s| s.display_name())
            .map(str::to_owned)
    };
    Ok(current.is_some_and(|current| current.to_lowercase() == value.to_lowercase()))
}

/// Claims `value` for `holder`, or answers `409 uniqueness`.
pub async fn claim(
    state: &AppState,
    tenant: &str,
    kind: &str,
    value: &str,
    holder: Uuid,
) -> Result<(), ApiError> {
    match state.claims.claim(tenant, kind, value, holder).await? {
        Claim::Acquired | Claim::AlreadyHeld => Ok(()),
        Claim::HeldBy {
            holder: other,
            revision,
            claimed_at,
        } => {
            let old = OffsetDateTime::now_utc() - claimed_at > STALE_AFTER;
            if old
                && !holder_uses(state, tenant, kind, value, other).await?
                && state
                    .claims
                    .take_over(tenant, kind, value, holder, revision)
                    .await?
            {
                warn!(kind, "took over a stale claim");
                return Ok(());
            }
            let resource = if kind == USER_NAME { "User" } else { "Group" };
            Err(
                ScimError::uniqueness(format!("a {resource} with this {kind} exists already"))
                    .into(),
            )
        }
    }
}

/// Releases a claim; a failure leaves a stale claim, taken over later, so it is only logged.
pub async fn release(state: &AppState, tenant: &str, kind: &str, value: &str, holder: Uuid) {
    if let Err(error) = state.claims.release(tenant, kind, value, holder).await {
        warn!(kind, error = %error, "releasing a claim failed; it will be taken over once stale");
    }
}

/// Claims `value` for `holder`, then runs `write`; gives the claim back when the write fails.
pub async fn while_claimed<T>(
    state: &AppState,
    tenant: &str,
    kind: &str,
    value: &str,
    holder: Uuid,
    write: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    claim(state, tenant, kind, value, holder).await?;
    let written = write.await;
    if written.is_err() {
        release(state, tenant, kind, value, holder).await;
    }
    written
}

/// Settles a rename's claims once its write is done: a failed write gives the new value back;
/// a written one releases whichever of old and new the resource no longer carries.
pub async fn settle_rename(
    state: &AppState,
    tenant: &str,
    kind: &str,
    claimed: Option<(String, String)>,
    written: bool,
    final_value: Option<&str>,
    holder: Uuid,
) {
    let Some((old, new)) = claimed else { return };
    let released = if written && final_value == Some(new.as_str()) {
        old
    } else {
        new
    };
    release(state, tenant, kind, &released, holder).await;
}
