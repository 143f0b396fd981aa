//! `rollcall audit verify`: recomputes every tenant's hash chain from the JetStream stream and
//! from the audit table, in lockstep, and reports the first sequence where they part: a record
//! whose content no longer matches its hash (altered), a broken link, a record that differs from
//! the stream, or one missing on either side. Optionally checks a signed checkpoint too.
//!
//! A message on the stream holds one event or the events of one commit (a write); the chain
//! links every event, in stream order: by sequence, then by position within a commit. A
//! mismatch names the event by its sequence and, within a commit, its position.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use rollcall_eventlog::chain::{link, GENESIS};
use rollcall_eventlog::envelope::decode_commit;
use rollcall_eventlog::{Envelope, EventLog, LoadError};
use rollcall_store::audit::{AuditRow, COLUMNS};
use rollcall_store::Store;
use serde::Serialize;

use crate::checkpoint::SignedCheckpoint;
use crate::AuditError;

/// Where the history and its record part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// The stream sequence.
    pub sequence: u64,
    /// The event's place in its message, when the message is a commit of several events.
    #[serde(skip_serializing_if = "is_first")]
    pub position: u32,
    /// The tenant, when known.
    pub tenant: String,
    /// What is wrong.
    pub reason: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Events compared.
    pub events: u64,
    /// The last sequence compared (the projector's checkpoint; later events are not yet audited).
    pub up_to: u64,
    /// Each tenant's chain head: sequence and hash (hex).
    pub heads: BTreeMap<String, (u64, String)>,
    /// The first mismatch, if any.
    pub mismatch: Option<Mismatch>,
    /// Events on the stream whose audit record PostgreSQL refused: the projector quarantined
    /// them (`rollcall projector quarantine list`). They are chained from the stream's bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unaudited: Vec<u64>,
}

fn is_first(position: &u32) -> bool {
    *position == 0
}

fn envelope_of(row: &AuditRow) -> Result<Envelope, String> {
    Ok(Envelope {
        event_id: row.event_id,
        tenant: row.tenant.clone(),
        aggregate_type: row.aggregate_type.clone(),
        aggregate_id: row.aggregate_id,
        version: row.version as u64,
        event_type: row.event_type.clone(),
        schema_version: row.schema_version as u32,
        occurred_at: row.occurred_at,
        actor: serde_json::from_value(row.actor.0.clone())
            .map_err(|e| format!("unreadable actor: {e}"))?,
        request_id: row.request_id.clone(),
        traceparent: row.traceparent.clone(),
        payload: row.payload.0.clone(),
    })
}

fn nats<E: std::fmt::Display>(error: E) -> AuditError {
    AuditError::Log(LoadError::Nats(error.to_string()))
}

/// Verifies the audit record of one tenant (or all) against the stream, and against a signed
/// checkpoint when given. `progress` is called every 10,000 events.
pub async fn verify(
    log: &EventLog,
    store: &Store,
    tenant: Option<&str>,
    checkpoint: Option<&SignedCheckpoint>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Verified, AuditError> {
    let up_to = store.checkpoint("projector").await?;
    let mut verified = Verified {
        events: 0,
        up_to,
        heads: BTreeMap::new(),
        mismatch: None,
        unaudited: Vec::new(),
    };
    let unaudited: std::collections::HashSet<u64> = store
        .quarantine(true)
        .await?
        .into_iter()
        .filter(|row| !row.audited)
        .map(|row| row.sequence as u64)
        .collect();
    let mut checkpoint_seen = false;
    let sql = format!("SELECT {COLUMNS} FROM audit_event WHERE ($1::text IS NULL OR tenant = $1) AND sequence <= $2 ORDER BY sequence, position");
    let mut rows = sqlx::query_as::<_, AuditRow>(&sql)
        .bind(tenant)
        .bind(up_to as i64)
        .fetch(store.pool());
    let mut next_row = rows
        .next()
        .await
        .transpose()
        .map_err(rollcall_store::StoreError::from)?;
    let mut chains: HashMap<String, ([u8; 32], u64)> = HashMap::new();
    let fail = |(sequence, position): (u64, u32), tenant: &str, reason: String| {
        Some(Mismatch {
            sequence,
            position,
            tenant: tenant.to_owned(),
            reason,
        })
    };
    let key = |row: &AuditRow| (row.sequence as u64, row.position as u32);
    if up_to > 0 {
        use async_nats::jetstream::consumer::{pull, DeliverPolicy};
        let consumer = log
            .stream()
            .create_consumer(pull::OrderedConfig {
                filter_subject: log.namespace().all_events(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let mut messages = consumer.messages().await.map_err(nats)?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(nats)?;
            let sequence = message.info().map_err(nats)?.stream_sequence;
            if sequence > up_to {
                break;
            }
            let events = match decode_commit(&message.payload) {
                Ok(events) => events,
                // Not a Rollcall event at all: the projector passed over it (quarantine).
                Err(_) if unaudited.contains(&sequence) => {
                    verified.unaudited.push(sequence);
                    if sequence >= up_to {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(AuditError::Corrupt(format!("stream event {sequence}: {e}"))),
            };
            for (position, envelope) in events.iter().enumerate() {
                let here = (sequence, position as u32);
                if tenant.is_some_and(|t| t != envelope.tenant) {
                    continue;
                }
                let previous = chains
                    .get(&envelope.tenant)
                    .map_or(GENESIS, |(hash, _)| *hash);
                let expected = link(&previous, &envelope.canonical_bytes());
                chains.insert(envelope.tenant.clone(), (expected, sequence));
                verified.events += 1;
                if verified.events % 10_000 == 0 {
                    progress(verified.events, up_to);
                }
                let recorded_here = next_row.as_ref().is_some_and(|row| key(row) == here);
                if !recorded_here && unaudited.contains(&sequence) {
                    if verified.unaudited.last() != Some(&sequence) {
                        verified.unaudited.push(sequence);
                    }
                    continue;
                }
                let mismatch = match &next_row {
                    None => fail(
                        here,
                        &envelope.tenant,
                        "missing from the audit table".into(),
                    ),
                    Some(row) if key(row) > here => fail(
                        here,
                        &envelope.tenant,
                        "missing from the audit table".into(),
                    ),
                    Some(row) if key(row) < here => fail(
                        key(row),
                        &row.tenant,
                        "in the audit table but not on the stream".into(),
                    ),
                    Some(row) => match envelope_of(row) {
                        Err(reason) => fail(here, &row.tenant, reason),
                        Ok(recorded) => {
                            if row.prev_hash != previous {
                                fail(
                                    here,
                                    &row.tenant,
                                    "chain broken: the previous hash differs".into(),
                                )
                            } else if link(&row.prev_hash, &recorded.canonical_bytes()).as_slice()
                                != row.hash
                            {
                                fail(
                                    here,
                                    &row.tenant,
                                    "the record does not match its hash: it was altered".into(),
                                )
                            } else if row.hash != expected {
                                fail(
                                    here,
                                    &row.tenant,
                                    "the record differs from the event on the stream".into(),
                                )
                            } else {
                                None
                            }
                        }
                    },
                };
                if mismatch.is_some() {
                    verified.mismatch = mismatch;
                    return Ok(verified);
                }
                next_row = rows
                    .next()
                    .await
                    .transpose()
                    .map_err(rollcall_store::StoreError::from)?;
            }
            // A signed head names a message: its hash is the chain's after the message's last
            // event of the tenant.
            if let Some(checkpoint) = checkpoint {
                let signed_here = checkpoint.sequence == sequence
                    && events.iter().any(|e| e.tenant == checkpoint.tenant)
                    && tenant.is_none_or(|t| t == checkpoint.tenant);
                if signed_here {
                    checkpoint_seen = true;
                    let head = chains
                        .get(&checkpoint.tenant)
                        .map(|(hash, _)| hex::encode(hash));
                    if head.as_deref() != Some(checkpoint.hash.as_str()) {
                        verified.mismatch = fail(
                            (sequence, 0),
                            &checkpoint.tenant,
                            "the history differs from the signed checkpoint".into(),
                        );
                        return Ok(verified);
                    }
                }
            }
            if sequence >= up_to {
                break;
            }
        }
    }
    if let Some(row) = next_row {
        verified.mismatch = fail(
            key(&row),
            &row.tenant,
            "in the audit table but not on the stream".into(),
        );
        return Ok(verified);
    }
    if let Some(checkpoint) = checkpoint.filter(|_| !checkpoint_seen) {
        verified.mismatch = fail(
            (checkpoint.sequence, 0),
            &checkpoint.tenant,
            "the signed checkpoint names an event this history does not have".into(),
        );
        return Ok(verified);
    }
    verified.heads = chains
        .into_iter()
        .map(|(tenant, (hash, sequence))| (tenant, (sequence, hex::encode(hash))))
        .collect();
    Ok(verified)
}
