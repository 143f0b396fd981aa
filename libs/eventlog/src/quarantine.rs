//! Operators' resolutions of the projector's quarantine, recorded on the event stream like
//! every other change, so that the audit shows who resolved what and why, and a rebuild resolves
//! it the same way. Subject: `<namespace>.events.<tenant>.projection.<aggregate id>`, the id
//! being the quarantined aggregate's.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Actor, AppendError, Envelope, EventLog, LoadError};

/// The aggregate type of resolutions (also the subject token).
pub const AGGREGATE: &str = "projection";
/// Apply the quarantined events again (after a fix), in order.
pub const RETRIED: &str = "projection.quarantine_retried";
/// Pass over one failed event, then apply the events held behind it.
pub const SKIPPED: &str = "projection.quarantine_skipped";

/// A resolution's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The stream sequence of the quarantined event it resolves.
    pub sequence: u64,
    /// The aggregate type of the quarantined event (`user`, `group`).
    pub aggregate_type: String,
    /// Why, as the operator gave it.
    pub reason: String,
}

/// Why a resolution could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum ResolutionError {
    /// Reading the stream failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Appending failed.
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// Appends a resolution (`RETRIED` or `SKIPPED`) of the quarantined event at `resolution.sequence`
/// of aggregate `aggregate_id`; returns its stream sequence.
pub async fn append(
    log: &EventLog,
    tenant: &str,
    aggregate_id: Uuid,
    event_type: &str,
    resolution: &Resolution,
    actor: Actor,
) -> Result<u64, ResolutionError> {
    let subject = log
        .namespace()
        .aggregate_subject(tenant, AGGREGATE, &aggregate_id);
    let earlier = log.load(&subject, 0).await?;
    let envelope = Envelope {
        event_id: Uuid::now_v7(),
        tenant: tenant.to_owned(),
        aggregate_type: AGGREGATE.to_owned(),
        aggregate_id,
        version: earlier.events.len() as u64 + 1,
        event_type: event_type.to_owned(),
        schema_version: 1,
        occurred_at: OffsetDateTime::now_utc(),
        actor,
        request_id: None,
        traceparent: None,
        payload: serde_json::to_value(resolution).unwrap_or_default(),
    };
    Ok(log
        .append(&subject, earlier.last_sequence, &[envelope])
        .await?)
}
