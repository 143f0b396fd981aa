//! `rollcall audit verify`: recomputes every tenant's hash chain from the JetStream stream and
//! from the audit table, in lockstep, and reports the first sequence where they part: a record
//! whose content no longer matches its hash (altered), a broken link, a record that differs from
//! the stream, or one missing on either side. Optionally checks a signed checkpoint too.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use rollcall_eventlog::chain::{link, GENESIS};
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
    let sql = format!("SELECT {COLUMNS} FROM audit_event WHERE ($1::text IS NULL OR tenant = $1) AND sequence <= $2 ORDER BY sequence");
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
    let fail = |sequence: u64, tenant: &str, reason: String| {
        Some(Mismatch {
            sequence,
            tenant: tenant.to_owned(),
            reason,
        })
    };
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
            let envelope = match Envelope::from_bytes(&message.payload) {
                Ok(envelope) => envelope,
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
            let recorded_here = next_row
                .as_ref()
                .is_some_and(|row| row.sequence as u64 == sequence);
            if !recorded_here && unaudited.contains(&sequence) {
                verified.unaudited.push(sequence);
                if sequence >= up_to {
                    break;
                }
                continue;
            }
            let mismatch = match &next_row {
                None => fail(
                    sequence,
                    &envelope.tenant,
                    "missing from the audit table".into(),
                ),
                Some(row) if (row.sequence as u64) > sequence => fail(
                    sequence,
                    &envelope.tenant,
                    "missing from the audit table".into(),
                ),
                Some(row) if (row.sequence as u64) < sequence => fail(
                    row.sequence as u64,
                    &row.tenant,
                    "in the audit table but not on the stream".into(),
                ),
                Some(row) => match envelope_of(row) {
                    Err(reason) => fail(sequence, &row.tenant, reason),
                    Ok(recorded) => {
                        if row.prev_hash != previous {
                            fail(
                                sequence,
                                &row.tenant,
                                "chain broken: the previous hash differs".into(),
                            )
                        } else if link(&row.prev_hash, &recorded.canonical_bytes()).as_slice()
                            != row.hash
                        {
                            fail(
                                sequence,
                                &row.tenant,
                                "the record does not match its hash: it was altered".into(),
                            )
                        } else if row.hash != expected {
                            fail(
                                sequence,
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
            if let Some(checkpoint) = checkpoint {
                if checkpoint.tenant == envelope.tenant && checkpoint.sequence == sequence {
                    checkpoint_seen = true;
                    if hex::encode(expected) != checkpoint.hash {
                        verified.mismatch = fail(
                            sequence,
                            &envelope.tenant,
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
            row.sequence as u64,
            &row.tenant,
            "in the audit table but not on the stream".into(),
        );
        return Ok(verified);
    }
    if let Some(checkpoint) = checkpoint.filter(|_| !checkpoint_seen) {
        verified.mismatch = fail(
            checkpoint.sequence,
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
