//! Delivery: each stream walks its tenant's events in stream order from a durable position
//! (`ssf_delivery`), derives the SETs of each event ([`super::signals`]) and hands them over.
//!
//! - Push (RFC 8935): one process at a time delivers a stream (it holds the stream's lock in
//!   PostgreSQL, [`DeliveryLocks`]; a process that dies loses it with its connection, and
//!   another takes over within a second). Each SET is posted until the receiver answers `2xx`;
//!   network errors and other answers are retried with backoff and jitter, except `400`, which
//!   RFC 8935 means as "this SET is refused" (logged with its `err` code, not retried, but for
//!   codes that may pass later, tried a few times). The position moves past an event only once
//!   every SET of it is handed over, on the lock's own session: at-least-once, in order, across
//!   crashes. When more than `ROLLCALL_SSF_MAX_BACKLOG` of the tenant's events pile up after
//!   the receiver started failing, the stream is paused, with a reason.
//! - Poll (RFC 8936): a cursor per stream derives the next SETs after the position; SETs are
//!   acknowledged one by one (`ack`, `setErrs`) and the position moves past every event whose
//!   SETs are all acknowledged. Any replica answers any poll.
//! - Status: `paused` holds events (nothing moves until the stream is enabled again),
//!   `disabled` drops the events that occur while it is disabled; control SETs
//!   (verification, stream-updated) pass both.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures::StreamExt;
use rollcall_domain::ssf::{
    self, Delivery, Initiator, Status, Stream, StreamCommand, StreamEvent, StreamSpec,
};
use rollcall_domain::EventKind;
use rollcall_eventlog::consumer::{decode, Delivered};
use rollcall_eventlog::{Actor, EventLog};
use rollcall_store::personal_key::Freshness;
use rollcall_store::ssf::{DeliveryLocks, Lease};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::{error, info, warn};
use uuid::Uuid;

use super::signals::{self, uri, Signal, TenantFold};
use super::Transmitter;

/// The position of a deleted stream (`ssf_delivery`'s tombstone).
const TOMBSTONE: u64 = i64::MAX as u64;

/// How long a push delivery goes at most without writing its position while it passes events
/// that derive no SET.
const ADVANCE_EVERY: Duration = Duration::from_secs(1);

/// Attempts of a SET refused with a code that may pass later (`invalid_key`, …).
const REFUSAL_ATTEMPTS: u32 = 10;
/// The registered RFC 8935 error codes (any other is counted as `other`).
const REFUSALS: [&str; 6] = [
    "invalid_request",
    "invalid_key",
    "invalid_issuer",
    "invalid_audience",
    "authentication_failed",
    "access_denied",
];

/// The RFC 8935 error code of a `400`, from at most 4 KiB of its body.
async fn refusal_code(mut response: reqwest::Response) -> &'static str {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > 4096 {
            break;
        }
    }
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|body| body["err"].as_str().map(str::to_owned));
    match code {
        Some(code) => REFUSALS
            .iter()
            .find(|known| **known == code)
            .copied()
            .unwrap_or("other"),
        None => "none",
    }
}

/// The longest pause between two attempts of one SET.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The first pause.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The SET id of the `index`th SET derived from `event` for `stream`: the same whenever it is
/// derived again, so a receiver recognizes a SET sent twice.
pub fn jti(stream: Uuid, event: Uuid, index: usize) -> String {
    let mut hash = Sha256::new();
    hash.update(b"rollcall.ssf.jti.v1\0");
    hash.update(stream.as_bytes());
    hash.update(event.as_bytes());
    hash.update((index as u64).to_be_bytes());
    hex::encode(&hash.finalize()[..16])
}

/// The event types a stream delivers: those asked for that Rollcall supports (all of them
/// when none were asked for).
pub fn delivered_events(spec: &StreamSpec) -> Vec<&'static str> {
    signals::SUPPORTED
        .iter()
        .copied()
        .filter(|uri| {
            spec.events_requested.is_empty() || spec.events_requested.iter().any(|r| r == uri)
        })
        .collect()
}

/// The `aud` claim: a string for one audience, else an array.
pub fn audience(spec: &StreamSpec) -> Value {
    match spec.aud.as_slice() {
        [one] => json!(one),
        many => json!(many),
    }
}

/// Whether a SET is about the stream itself (verification, stream-updated), not a person.
fn is_control(claims: &Value) -> bool {
    claims["events"].get(uri::VERIFICATION).is_some()
        || claims["events"].get(uri::STREAM_UPDATED).is_some()
}

/// Walks one stream's tenant in order: what the tenant and the stream said so far.
#[derive(Debug, Clone)]
pub struct Walker {
    stream: Uuid,
    issuer: String,
    fold: TenantFold,
    own: Stream,
}

/// One SET ready to sign: its id and claims.
pub type Unsigned = (String, Value);

impl Walker {
    fn new(stream: Uuid, issuer: String) -> Self {
        Self {
            stream,
            issuer,
            fold: TenantFold::default(),
            own: Stream::Absent,
        }
    }

    /// Whether the stream is deleted (as far as the walk has come).
    fn deleted(&self) -> bool {
        matches!(self.own, Stream::Deleted)
    }

    /// The SETs of one event for this stream, and folds it in.
    fn step(&mut self, delivered: &Delivered) -> Vec<Unsigned> {
        let envelope = &delivered.envelope;
        let mut out: Vec<Signal> = Vec::new();
        if envelope.aggregate_type == StreamEvent::AGGREGATE {
            if envelope.aggregate_id != self.stream {
                return Vec::new();
            }
            let Ok(event) = StreamEvent::from_payload(
                &envelope.event_type,
                envelope.schema_version,
                &envelope.payload,
            ) else {
                return Vec::new();
            };
            self.own = ssf::evolve(std::mem::take(&mut self.own), &event);
            let subject = json!({"format": "opaque", "id": self.stream.to_string()});
            let control = |event: &'static str, body: Value| Signal {
                event,
                body,
                sub_id: subject.clone(),
                identifiers: Vec::new(),
            };
            match &event {
                StreamEvent::VerificationRequested { state } => {
                    let body = match state {
                        Some(state) => json!({"state": state}),
                        None => json!({}),
                    };
                    out.push(control(uri::VERIFICATION, body));
                }
                StreamEvent::StatusChanged {
                    after, reason, by, ..
                } if *by != Initiator::Receiver => {
                    let mut body = json!({"status": after.as_str()});
                    if let Some(reason) = reason {
                        body["reason"] = json!(reason);
                    }
                    out.push(control(uri::STREAM_UPDATED, body));
                }
                _ => {}
            }
        } else {
            // Before the stream exists nothing is delivered, so the walk only folds.
            if self.own.live().is_some() {
                out = self.fold.derive(&self.issuer, envelope);
            }
            self.fold.apply(envelope);
        }
        let Some(live) = self.own.live() else {
            return Vec::new();
        };
        // Events that occur while the stream is disabled are dropped; control events are not.
        let control = |signal: &Signal| {
            signal.event == uri::VERIFICATION || signal.event == uri::STREAM_UPDATED
        };
        let wanted = delivered_events(&live.spec);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        out.into_iter()
            .enumerate()
            .filter(|(_, signal)| {
                control(signal)
                    || (live.status != Status::Disabled
                        && wanted.contains(&signal.event)
                        && !signal.identifiers.iter().any(|i| live.removed.contains(i)))
            })
            .map(|(index, signal)| {
                let jti = jti(self.stream, envelope.event_id, index);
                let claims = json!({
                    "iss": self.issuer,
                    "aud": audience(&live.spec),
                    "iat": now,
                    "jti": jti,
                    "txn": envelope.event_id.to_string(),
                    "sub_id": signal.sub_id,
                    "events": { signal.event: signal.body },
                });
                (jti, claims)
            })
            .collect()
    }
}

/// The events of a message, their personal fields opened (signals name people by them; an
/// erased person's read `[erased]` and are never used as a subject). A message that cannot be
/// read, or an event whose fields do not open, derives no signal; data keys that cannot be
/// read are an error (the delivery is started again later, from where it stands).
async fn readable(
    transmitter: &Transmitter,
    message: &async_nats::jetstream::Message,
) -> Result<Vec<Delivered>, String> {
    let mut events = match decode(message) {
        Ok(events) => events,
        Err(error) => {
            error!(error = %error, "an event cannot be read; it derives no signal");
            return Ok(Vec::new());
        }
    };
    rollcall_personal::forget_erased(&transmitter.store, events.iter().map(|e| &e.envelope));
    match rollcall_personal::open_all(&transmitter.store, &mut events, Freshness::Cached).await {
        Ok(()) => {}
        // PostgreSQL did not answer: the delivery stops here and is started again later.
        Err(rollcall_personal::PersonalError::Store(
            error @ rollcall_store::StoreError::Database(_),
        )) => return Err(format!("reading data keys: {error}")),
        Err(error) => {
            warn!(error = %error, "an event's personal fields do not open; it derives no signal about them")
        }
    }
    Ok(events)
}

/// The tenant's events after `after`, and how many there are now.
async fn tenant_events(
    log: &EventLog,
    tenant: &str,
    after: u64,
) -> Result<(async_nats::jetstream::consumer::pull::Ordered, u64), String> {
    let filter = format!("{}.events.{tenant}.>", log.namespace().as_str());
    log.follow(filter, after).await.map_err(|e| e.to_string())
}

/// The stream's status, configuration and tenant as this replica's catalog has them now
/// (`None`: deleted or unknown).
fn live_status(transmitter: &Transmitter, id: Uuid) -> Option<(Status, StreamSpec, String)> {
    let entry = transmitter.stream(id)?;
    let live = entry.state.live()?;
    Some((live.status, live.spec.clone(), entry.tenant.clone()))
}

/// Delivers push stream `lease.stream` while this process holds its lock, then gives the lock
/// back. An error means the delivery should be started again later.
pub async fn push(
    transmitter: Transmitter,
    locks: DeliveryLocks,
    lease: Lease,
) -> Result<(), String> {
    use futures::FutureExt;
    let id = lease.stream;
    // The lock is given back also when the delivery panics.
    let result = std::panic::AssertUnwindSafe(push_stream(&transmitter, &locks, &lease))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err("the delivery panicked".into()));
    locks.release(lease).await;
    match &result {
        Ok(()) => info!(stream = %id, "delivery ended"),
        Err(error) => {
            warn!(stream = %id, error = %error, "delivery stopped; it starts again later")
        }
    }
    result
}

/// What became of a SET handed to a push receiver.
enum Handed {
    /// Accepted (`2xx`) or refused for good (`400`): the position may move past it.
    Done,
    /// The stream was disabled meanwhile: its events are dropped.
    Dropped,
}

async fn push_stream(
    transmitter: &Transmitter,
    locks: &DeliveryLocks,
    lease: &Lease,
) -> Result<(), String> {
    let id = lease.stream;
    let entry = transmitter.stream(id).ok_or("the stream is gone")?;
    let tenant = entry.tenant.clone();
    let position = transmitter
        .store
        .ssf_position(id)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or(entry.created);
    if position >= TOMBSTONE {
        return Ok(()); // deleted
    }
    let mut walker = Walker::new(id, transmitter.issuer(&tenant));
    let (mut messages, _) = tenant_events(&transmitter.log, &tenant, 0).await?;
    info!(stream = %id, position, "delivering");
    let mut advanced = std::time::Instant::now();
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let events = readable(transmitter, &message).await?;
        if sequence <= position {
            for delivered in &events {
                walker.step(delivered);
            }
            if walker.deleted() {
                return Ok(());
            }
            continue;
        }
        let mut sets = Vec::new();
        for delivered in &events {
            sets.extend(walker.step(delivered));
        }
        for (_, claims) in &sets {
            match hand(
                transmitter,
                locks,
                lease,
                claims,
                is_control(claims),
                sequence,
            )
            .await?
            {
                Handed::Done => {}
                Handed::Dropped => break,
            }
        }
        if walker.deleted() {
            transmitter
                .store
                .forget_ssf_stream(id)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        // The position moves after every event that had SETs, when the walk catches up, and at
        // least every second: events without SETs (most of a bulk import) cost no write each.
        if sets.is_empty() && pending > 0 && advanced.elapsed() < ADVANCE_EVERY {
            continue;
        }
        if !locks
            .advance(lease, &tenant, sequence)
            .await
            .map_err(|e| e.to_string())?
        {
            return Err("the delivery lock was lost".into());
        }
        advanced = std::time::Instant::now();
        rollcall_telemetry::metrics::counter!("rollcall_ssf_events_total", "delivery" => "push")
            .increment(sets.len() as u64);
    }
    Err("the tenant's events ended".into())
}

/// Posts one SET (of the event at `sequence`) until it is accepted or refused for good; holds
/// while the stream is paused. A control SET (verification, stream-updated) is sent also
/// while the stream is paused or disabled: a pause is announced when the delivery reaches it
/// (at once, unless the delivery was already holding an earlier event for a receiver that does
/// not answer). Stops if the lock no longer holds.
async fn hand(
    transmitter: &Transmitter,
    locks: &DeliveryLocks,
    lease: &Lease,
    claims: &Value,
    control: bool,
    sequence: u64,
) -> Result<Handed, String> {
    let id = lease.stream;
    let mut backoff = FIRST_BACKOFF;
    let mut attempt: u32 = 0;
    let mut refusals: u32 = 0;
    // How far behind delivery was when this SET first failed.
    let mut behind_at_first: Option<u64> = None;
    // Whether this delivery paused the stream (once per stretch of being enabled).
    let mut paused = false;
    loop {
        let (status, spec, tenant) =
            live_status(transmitter, id).ok_or("the stream was deleted")?;
        match status {
            Status::Paused if !control => {
                paused = false;
                let mut version = transmitter.version.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(1), version.changed()).await;
                continue;
            }
            Status::Disabled if !control => return Ok(Handed::Dropped),
            Status::Paused | Status::Disabled | Status::Enabled => {}
        }
        if !locks.holds(lease).await {
            return Err("the delivery lock was lost".into());
        }
        let Delivery::Push {
            endpoint_url,
            authorization_sealed,
        } = &spec.delivery
        else {
            return Err("the stream no longer pushes".into());
        };
        let token = transmitter.keys.signer().sign(claims)?;
        let mut request = transmitter
            .http
            .post(endpoint_url)
            .header(reqwest::header::CONTENT_TYPE, "application/secevent+jwt")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(token);
        if let Some(sealed) = authorization_sealed {
            request = request.header(
                reqwest::header::AUTHORIZATION,
                open_authorization(transmitter, id, sealed)?,
            );
        }
        let failure = match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(Handed::Done),
            Ok(response) if response.status() == reqwest::StatusCode::BAD_REQUEST => {
                let code = refusal_code(response).await;
                rollcall_telemetry::metrics::counter!("rollcall_ssf_refused_total", "err" => code)
                    .increment(1);
                let jti = claims["jti"].as_str().unwrap_or_default();
                // A key or issuer the receiver does not know yet (a rotation it has not
                // fetched, a configuration being fixed) is worth a few more attempts; any other
                // refusal is final (RFC 8935).
                let transient = matches!(
                    code,
                    "invalid_key" | "invalid_issuer" | "authentication_failed" | "access_denied"
                );
                refusals += 1;
                if !transient || refusals >= REFUSAL_ATTEMPTS {
                    warn!(stream = %id, jti, err = code, attempt, "the receiver refused a SET (400); it is not sent again");
                    return Ok(Handed::Done);
                }
                format!("the receiver refused it with {code}")
            }
            Ok(response) => format!("the receiver answered {}", response.status()),
            Err(error) => format!("the receiver could not be reached: {}", without_url(&error)),
        };
        attempt += 1;
        if attempt == 1 || attempt.is_power_of_two() {
            warn!(stream = %id, attempt, error = %failure, "a SET was not delivered; retrying");
        }
        // Paused for the backlog only while enabled, and only for what piled up while the
        // receiver failed (not for a backlog it was already catching up on).
        if !paused && status == Status::Enabled {
            // How far delivery is behind: the tenant's events after this one.
            let behind = tenant_events(&transmitter.log, &tenant, sequence)
                .await
                .map(|(_, pending)| pending)
                .unwrap_or(0);
            let first = *behind_at_first.get_or_insert(behind);
            let behind = behind.saturating_sub(first);
            if behind > transmitter.config.max_backlog {
                paused = true;
                let reason = format!(
                    "the receiver was unreachable while {behind} more events came, more than the {} Rollcall holds for a stream; resume the stream once it is back",
                    transmitter.config.max_backlog
                );
                pause(transmitter, id, reason).await;
                continue;
            }
        }
        let jitter = u64::from(random_byte()) * backoff.as_millis() as u64 / 512;
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// An HTTP client error without its URL (a receiver's URL may carry a secret).
fn without_url(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

/// A random byte, for spreading retries.
fn random_byte() -> u8 {
    let mut byte = [0u8];
    let _ = getrandom::fill(&mut byte);
    byte[0]
}

/// Pauses a stream on Rollcall's own account (announced with a `stream-updated` SET).
async fn pause(transmitter: &Transmitter, id: Uuid, reason: String) {
    let Some(entry) = transmitter.stream(id) else {
        return;
    };
    let tenant = entry.tenant.clone();
    let command = StreamCommand::SetStatus {
        status: Status::Paused,
        reason: Some(reason.clone()),
        by: Initiator::Transmitter,
    };
    let actor = Actor::System {
        name: "ssf delivery".into(),
    };
    let request = format!("ssf-backlog-{}", Uuid::now_v7());
    match super::streams::change(
        &transmitter.log,
        &tenant,
        id,
        Some(&entry),
        command,
        &actor,
        &request,
    )
    .await
    {
        Ok((_, sequence)) => {
            error!(stream = %id, tenant = %tenant, reason = %reason, "a Shared Signals stream was paused: its receiver is unreachable and its backlog outgrew the bound");
            transmitter.caught_up(sequence).await;
        }
        Err(error) => warn!(stream = %id, error = %error, "pausing the stream failed"),
    }
}

/// A poll stream's cursor in this process: the walk up to the position, and the SETs derived
/// beyond it, by event.
#[derive(Debug)]
pub struct PollCursor {
    position: u64,
    walker: Walker,
    /// Events after the position, each with its SETs, in order (at most [`MAX_BUFFERED`]).
    buffer: VecDeque<(u64, Vec<Unsigned>)>,
    /// The last sequence walked.
    read: u64,
}

/// A poll request (RFC 8936 §2.4).
#[derive(Debug, Default, serde::Deserialize)]
pub struct PollRequest {
    /// How many SETs at most.
    #[serde(default, rename = "maxEvents")]
    pub max_events: Option<u32>,
    /// Answer at once even with nothing to return (false: wait for SETs, a long poll).
    #[serde(default, rename = "returnImmediately")]
    pub return_immediately: bool,
    /// SETs acknowledged.
    #[serde(default)]
    pub ack: Vec<String>,
    /// SETs the receiver could not process.
    #[serde(default, rename = "setErrs")]
    pub set_errs: serde_json::Map<String, Value>,
}

/// How many events a poll cursor holds beyond its position at most.
const MAX_BUFFERED: usize = 10_000;

/// How often a long poll looks again at most while its tenant is busy.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// How many SETs one poll returns at most.
const MAX_EVENTS: usize = 1000;
/// How long a long poll waits for a SET.
pub const LONG_POLL: Duration = Duration::from_secs(30);

/// Answers one poll of stream `id` of `tenant`: records the acknowledgements, moves the
/// position, and returns the next SETs (signed) and whether more are waiting.
pub async fn poll(
    transmitter: &Transmitter,
    id: Uuid,
    tenant: &str,
    request: PollRequest,
    long_poll: Duration,
) -> Result<(Vec<(String, String)>, bool), String> {
    let store = &transmitter.store;
    let mut acked: Vec<String> = request.ack.clone();
    for (jti, error) in &request.set_errs {
        warn!(stream = %id, jti = %jti, err = error["err"].as_str().unwrap_or("none"), "the receiver could not process a SET");
        acked.push(jti.clone());
    }
    store
        .record_ssf_acks(id, &acked)
        .await
        .map_err(|e| e.to_string())?;
    let slot = {
        let mut polls = transmitter.polls.lock().map_err(|_| "poisoned")?;
        polls.entry(id).or_default().clone()
    };
    let limit = request
        .max_events
        .map_or(MAX_EVENTS, |n| (n as usize).min(MAX_EVENTS));
    let deadline = tokio::time::Instant::now() + long_poll;
    loop {
        // Subscribed before looking, so that an event appended after the look wakes a long
        // poll.
        let mut wake = if request.return_immediately {
            None
        } else {
            let subject = format!("{}.events.{tenant}.>", transmitter.log.namespace().as_str());
            Some(
                transmitter
                    .log
                    .jetstream()
                    .client()
                    .subscribe(subject)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        };
        // The cursor is held while this poll looks, not while it waits.
        let mut cursor = slot.lock().await;
        let entry = transmitter
            .stream(id)
            .filter(|entry| entry.state.live().is_some())
            .ok_or("the stream was deleted")?;
        let stored = store
            .ssf_position(id)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or(entry.created);
        match cursor.as_mut() {
            Some(current) if current.position == stored => {}
            // Another replica moved the position within what this cursor has read: skip to it.
            Some(current) if current.position < stored && stored <= current.read => {
                while current
                    .buffer
                    .front()
                    .is_some_and(|(sequence, _)| *sequence <= stored)
                {
                    current.buffer.pop_front();
                }
                current.position = stored;
            }
            // Ahead of what the cursor read: walk on from there.
            Some(current) if current.position < stored => {
                current.buffer.clear();
                walk_on(transmitter, tenant, current, stored).await?;
            }
            _ => {
                let mut fresh = PollCursor {
                    position: 0,
                    walker: Walker::new(id, transmitter.issuer(tenant)),
                    buffer: VecDeque::new(),
                    read: 0,
                };
                walk_on(transmitter, tenant, &mut fresh, stored).await?;
                *cursor = Some(fresh);
            }
        }
        let Some(current) = cursor.as_mut() else {
            return Err("no cursor".into());
        };
        let acknowledged: HashSet<String> = store.ssf_acks(id).await.map_err(|e| e.to_string())?;
        // Past every event whose SETs are all acknowledged.
        let mut covered = Vec::new();
        let mut moved = false;
        while let Some((sequence, sets)) = current.buffer.front() {
            if !sets.iter().all(|(jti, _)| acknowledged.contains(jti)) {
                break;
            }
            covered.extend(sets.iter().map(|(jti, _)| jti.clone()));
            current.position = *sequence;
            current.buffer.pop_front();
            moved = true;
        }
        if moved {
            store
                .advance_ssf_position(id, tenant, current.position, &covered)
                .await
                .map_err(|e| e.to_string())?;
        }
        let status = live_status(transmitter, id).map(|(status, ..)| status);
        let paused = status == Some(Status::Paused);
        let mut more = false;
        if status.is_some() {
            more =
                fill(transmitter, tenant, current, &acknowledged, limit, paused).await? && !paused;
        }
        // A paused stream holds its events; its control SETs (the pause's announcement, a
        // verification) still go.
        let waiting: Vec<&Unsigned> = current
            .buffer
            .iter()
            .flat_map(|(_, sets)| sets)
            .filter(|(jti, _)| !acknowledged.contains(jti))
            .filter(|(_, claims)| !paused || is_control(claims))
            .collect();
        if !waiting.is_empty() || request.return_immediately || limit == 0 {
            let signer = transmitter.keys.signer();
            let mut sets = Vec::new();
            for (jti, claims) in waiting.iter().take(limit) {
                sets.push((jti.clone(), signer.sign(claims)?));
            }
            return Ok((sets, more || waiting.len() > limit));
        }
        drop(cursor);
        if more {
            continue; // more to read before there is anything to return
        }
        // Long poll: wait for the tenant's next event (or a status change) until the deadline;
        // look again at least every second (an event can be announced before the stream
        // serves it).
        let now = tokio::time::Instant::now();
        match wake.as_mut() {
            Some(wake) if now < deadline => {
                let slice = (deadline - now).min(Duration::from_secs(1));
                if let Ok(Some(_)) = tokio::time::timeout(slice, wake.next()).await {
                    // A busy tenant wakes every poll at each event: look at most every 100 ms.
                    tokio::time::sleep(LOOK_EVERY).await;
                }
            }
            _ => return Ok((Vec::new(), false)),
        }
    }
}

/// Walks the cursor on to `position` (deriving nothing): its position and what it read.
async fn walk_on(
    transmitter: &Transmitter,
    tenant: &str,
    cursor: &mut PollCursor,
    position: u64,
) -> Result<(), String> {
    if position > cursor.read {
        let (mut messages, pending) = tenant_events(&transmitter.log, tenant, cursor.read).await?;
        if pending > 0 {
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| e.to_string())?;
                let info = message.info().map_err(|e| e.to_string())?;
                if info.stream_sequence > position {
                    break;
                }
                for delivered in readable(transmitter, &message).await? {
                    cursor.walker.step(&delivered);
                }
                cursor.read = info.stream_sequence;
                if info.pending == 0 || info.stream_sequence == position {
                    break;
                }
            }
        }
    }
    cursor.position = position;
    cursor.read = cursor.read.max(position);
    Ok(())
}

/// Derives SETs after what the cursor read until `limit` SETs wait unacknowledged or the
/// events run out; returns whether events remain unread.
async fn fill(
    transmitter: &Transmitter,
    tenant: &str,
    cursor: &mut PollCursor,
    acknowledged: &HashSet<String>,
    limit: usize,
    paused: bool,
) -> Result<bool, String> {
    // What a poll could return now (while paused, only control SETs).
    let waiting = |cursor: &PollCursor| {
        cursor
            .buffer
            .iter()
            .flat_map(|(_, sets)| sets)
            .filter(|(jti, _)| !acknowledged.contains(jti))
            .filter(|(_, claims)| !paused || is_control(claims))
            .count()
    };
    if waiting(cursor) >= limit.max(1) || cursor.buffer.len() >= MAX_BUFFERED {
        return Ok(true);
    }
    let (mut messages, pending) = tenant_events(&transmitter.log, tenant, cursor.read).await?;
    if pending == 0 {
        return Ok(false);
    }
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        let mut sets = Vec::new();
        for delivered in readable(transmitter, &message).await? {
            sets.extend(cursor.walker.step(&delivered));
        }
        cursor.read = info.stream_sequence;
        cursor.buffer.push_back((info.stream_sequence, sets));
        if info.pending == 0 {
            return Ok(false);
        }
        if cursor.buffer.len() >= MAX_BUFFERED {
            return Ok(true);
        }
        if waiting(cursor) >= limit.max(1) {
            return Ok(true);
        }
    }
    Err("the tenant's events ended".into())
}

/// Seals a receiver's `Authorization` header for stream `id`.
pub fn seal_authorization(
    transmitter: &Transmitter,
    id: Uuid,
    header: &str,
) -> Result<String, String> {
    let sealed = crate::keys::seal(
        &transmitter.kek,
        transmitter.log.namespace(),
        &format!("ssf-authorization/{id}"),
        header.as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    Ok(BASE64.encode(sealed))
}

/// Opens the sealed `Authorization` header of stream `id`.
pub fn open_authorization(
    transmitter: &Transmitter,
    id: Uuid,
    sealed: &str,
) -> Result<String, String> {
    let bytes = BASE64
        .decode(sealed)
        .map_err(|_| "the stream's authorization header is not sealed as Rollcall seals it")?;
    let plain = crate::keys::open(
        &transmitter.kek,
        transmitter.log.namespace(),
        &format!("ssf-authorization/{id}"),
        &bytes,
    )
    .map_err(|e| e.to_string())?;
    String::from_utf8(plain).map_err(|_| "the stream's authorization header is not text".into())
}
