//! Storage limitation (GDPR Art. 5(1)(e)): with `ROLLCALL_RETENTION_DAYS_AFTER_DELETE` set,
//! users deleted longer ago than that are erased, each as its own `user.erased` event (the
//! same erasure as `rollcall users erase`), with a log line and
//! [`rollcall_telemetry::metrics::RETENTION_ERASURES`]. Every SCIM API process looks, at start
//! and then every `ROLLCALL_RETENTION_INTERVAL_SECONDS`; two that erase one user at once record
//! one erasure (the second decides on the erased user, which changes nothing).

use std::time::Duration;

use rollcall_eventlog::{Actor, Claims, EventLog};
use rollcall_store::Store;
use time::OffsetDateTime;
use tracing::{info, instrument, warn};

use crate::error::ApiError;
use crate::operator::erase_user;

/// Users erased per look at most (the next look goes on).
const BATCH: i64 = 1000;

/// Erases the users deleted more than `days` days ago and not erased yet; how many.
#[instrument(skip_all, fields(days), err)]
pub async fn erase_expired(
    log: &EventLog,
    store: &Store,
    claims: &Claims,
    days: u32,
) -> Result<usize, ApiError> {
    let cutoff = OffsetDateTime::now_utc() - time::Duration::days(i64::from(days));
    let expired = store.users_deleted_before(cutoff, BATCH).await?;
    let mut erased = 0;
    for (tenant, user) in expired {
        let reason = format!("retention: deleted more than {days} days ago");
        let actor = Actor::System {
            name: "retention".into(),
        };
        match erase_user(log, store, claims, &tenant, user, &reason, actor).await {
            Ok(erasure) => {
                if erasure.sequence.is_some() {
                    erased += 1;
                    rollcall_telemetry::metrics::counter!(
                        rollcall_telemetry::metrics::RETENTION_ERASURES
                    )
                    .increment(1);
                    info!(tenant, user.id = %user, days, "erased a user deleted longer ago than the retention period");
                }
            }
            Err(error) => {
                warn!(tenant, user.id = %user, error = %error, "erasing a user under the retention rule failed; the next look tries again")
            }
        }
    }
    Ok(erased)
}

/// Looks for users to erase every `every`, until the process stops.
pub fn start(log: EventLog, store: Store, claims: Claims, days: u32, every: Duration) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every.max(Duration::from_secs(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(error) = erase_expired(&log, &store, &claims, days).await {
                warn!(error = %error, "looking for users to erase under the retention rule failed");
            }
        }
    });
}
