//! `rollcall migrate encrypt-pii`: an installation whose event stream holds personal data in
//! clear (written before personal fields were sealed) gets a stream of the same events, in the
//! same order and at the same stream sequences, with every personal field sealed under its
//! user's data key; the installation switches to it, and the old stream is kept (its subjects
//! retired) until the operator deletes it.
//!
//! 1. Refused while a Rollcall process of the namespace runs (a SCIM API alive in the writers
//!    bucket, a projector holding its advisory lock, an access service announcing its
//!    checkpoint), or when the stream was migrated already.
//! 2. The old stream's subjects are retired (`<ns>.retired.events.>`): nothing can be appended
//!    to it any more, and the new stream can take `<ns>.events.>`.
//! 3. Every message is copied in order to `<STREAM>_SEALED`: its events decoded, their personal
//!    fields sealed (data keys created for users that have none), the message published with
//!    its headers and `Nats-Expected-Last-Sequence`, so that each lands at the sequence it had.
//! 4. Verified: both streams read side by side, every event of the new one opens to exactly the
//!    old one, and for each tenant the chain over the events with their personal fields masked
//!    is the same on both streams: every non-personal field is unchanged, in the same order.
//! 5. The read models are rebuilt from the new stream (the audit records then hold the sealed
//!    events and their chain).
//! 6. The switch: one key-value put names the new stream (`<ns>_config`, `event-stream`);
//!    every process opening the log from then on uses it.
//!
//! A failure before the switch puts the old stream back as it was (the partial copy deleted,
//! the old stream's subjects restored). A migration stopped by force before the switch leaves
//! the old stream retired: no process opens the log then (it says why), and running the
//! migration again starts it over; after the switch there is nothing left to do.

use std::collections::{HashMap, VecDeque};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, stream};
use futures::StreamExt;
use rollcall_eventlog::chain::{link, GENESIS};
use rollcall_eventlog::envelope::{decode_commit, encode_commit};
use rollcall_eventlog::log::{active_stream, switch_stream};
use rollcall_eventlog::{Envelope, EventLog, Namespace};
use rollcall_store::personal_key::{DataKey, Freshness, KeyState};
use rollcall_store::Store;
use tracing::{info, warn};

/// Publishes awaited at once while copying.
const IN_FLIGHT: usize = 256;

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The old stream (kept, its subjects retired).
    pub old_stream: String,
    /// The new stream, now active.
    pub new_stream: String,
    /// Messages copied.
    pub messages: u64,
    /// Events copied.
    pub events: u64,
    /// Events whose personal fields were sealed by the migration.
    pub sealed: u64,
    /// Tenants whose chains were compared.
    pub tenants: usize,
}

/// Where the migration is: copying, then verifying, `done` of `total` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Copying into the new stream.
    Copying,
    /// Comparing the two streams.
    Verifying,
    /// Rebuilding the read models from the new stream (`done` and `total` count events).
    Rebuilding,
}

/// Migrates the namespace's stream (see the module's documentation). `store` must hold the
/// KEK; `progress` hears of every 1000 messages.
pub async fn encrypt_pii(
    client: &async_nats::Client,
    namespace: &Namespace,
    store: &Store,
    mut progress: impl FnMut(Stage, u64, u64),
) -> anyhow::Result<Migrated> {
    let jetstream = jetstream::new(client.clone());
    let old_name = active_stream(&jetstream, namespace).await?;
    if old_name != namespace.stream() {
        bail!("the event stream was migrated already: {old_name} is active");
    }
    let running = running_processes(client, &jetstream, namespace, store).await?;
    if !running.is_empty() {
        bail!(
            "Rollcall processes of namespace {namespace} are running ({}): stop every one first",
            running.join(", ")
        );
    }
    let mut old = jetstream
        .get_stream(&old_name)
        .await
        .with_context(|| format!("opening the event stream {old_name}"))?;
    let info = old.info().await?.clone();
    let live_subjects = vec![namespace.all_events()];
    let retired_subjects = vec![format!("{}.retired.events.>", namespace.as_str())];
    if info.config.subjects != live_subjects && info.config.subjects != retired_subjects {
        bail!(
            "the event stream {old_name} takes {:?}, not {:?}: not a stream Rollcall made",
            info.config.subjects,
            live_subjects
        );
    }
    if info.state.messages > 0 && info.state.first_sequence != 1 {
        bail!("the event stream {old_name} does not start at sequence 1; refusing to copy it");
    }
    let new_name = format!("{old_name}_SEALED");
    // A copy a stopped migration left is made again from the start; a sealed stream that holds
    // more than the old one is not a copy (the installation's settings were lost?): never
    // deleted here.
    if let Ok(mut partial) = jetstream.get_stream(&new_name).await {
        let copied = partial.info().await?.state.last_sequence;
        if copied > info.state.last_sequence {
            bail!("{new_name} holds {copied} messages, more than {old_name} ({}): it is not a partial copy; it is left alone (was {} in the bucket {} lost?)", info.state.last_sequence, rollcall_eventlog::log::ACTIVE_STREAM_KEY, namespace.config_bucket());
        }
        jetstream.delete_stream(&new_name).await?;
    }
    let mut retired = info.config.clone();
    retired.subjects = retired_subjects;
    jetstream
        .update_stream(&retired)
        .await
        .context("retiring the old stream's subjects")?;
    // Read again once nothing can be appended: a write that landed meanwhile is copied too.
    let total = old.info().await?.state.last_sequence;
    info!(old = %old_name, new = %new_name, messages = total, "migrating the event stream");
    let outcome = async {
        let mut config = info.config.clone();
        config.name = new_name.clone();
        config.subjects = live_subjects.clone();
        config.description =
            Some("Rollcall identity lifecycle events (immutable; personal fields sealed)".into());
        let mut new = jetstream
            .create_stream(config)
            .await
            .with_context(|| format!("creating {new_name}"))?;
        let (messages, events, sealed) =
            copy(&jetstream, &mut old, store, total, &mut progress).await?;
        let tenants = verify(&mut old, &mut new, store, total, &mut progress).await?;
        // The read models from the new stream before the switch (the live ones are swapped at
        // the rebuild's very end): a failure still puts the old stream back, and after the
        // switch there is nothing left to do.
        let sealed_log =
            EventLog::open_stream(client.clone(), namespace.clone(), &new_name).await?;
        rollcall_projector::rebuild::rebuild(
            client.clone(),
            &sealed_log,
            store,
            rollcall_projector::rebuild::DEFAULT_BATCH,
            |done| progress(Stage::Rebuilding, done.applied, done.head),
        )
        .await
        .context("rebuilding the read models from the new stream")?;
        anyhow::Ok((messages, events, sealed, tenants))
    }
    .await;
    let (messages, events, sealed, tenants) = match outcome {
        Ok(done) => done,
        Err(error) => {
            warn!(error = %format!("{error:#}"), "the migration failed; putting the old stream back");
            // The copy goes first: two streams cannot take the same subjects.
            jetstream
                .delete_stream(&new_name)
                .await
                .context("deleting the partial copy after a failed migration")?;
            let mut restored = info.config.clone();
            restored.subjects = live_subjects;
            jetstream
                .update_stream(&restored)
                .await
                .context("restoring the old stream's subjects after a failed migration")?;
            return Err(error);
        }
    };
    switch_stream(&jetstream, namespace, &new_name).await?;
    info!(old = %old_name, new = %new_name, messages, events, sealed, "switched to the sealed stream");
    Ok(Migrated {
        old_stream: old_name,
        new_stream: new_name,
        messages,
        events,
        sealed,
        tenants,
    })
}

/// The Rollcall processes of the namespace that show they are alive: SCIM APIs in the writers
/// bucket, projectors holding their advisory locks, access services announcing their
/// checkpoints (listened to for a few seconds).
async fn running_processes(
    client: &async_nats::Client,
    jetstream: &jetstream::Context,
    namespace: &Namespace,
    store: &Store,
) -> anyhow::Result<Vec<String>> {
    let mut running = Vec::new();
    if let Ok(mut bucket) = jetstream
        .get_stream(format!("KV_{}", namespace.writers_bucket()))
        .await
    {
        let writers = bucket.info().await?.state.messages;
        if writers > 0 {
            running.push(format!("{writers} SCIM API"));
        }
    }
    let projectors = store.projector_processes().await?;
    if projectors > 0 {
        running.push(format!("{projectors} projector"));
    }
    // Access services announce what they have applied every moment; projectors after each
    // batch.
    let mut announcements = client.subscribe(namespace.checkpoint_subject(">")).await?;
    let heard = tokio::time::timeout(std::time::Duration::from_secs(3), announcements.next())
        .await
        .is_ok();
    if heard {
        running.push("access services".into());
    }
    Ok(running)
}

/// Every message of `stream`, in order, from the first.
async fn messages(stream: &mut stream::Stream) -> anyhow::Result<pull::Ordered> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// Copies the old stream's `total` messages, sealing personal fields: (messages, events,
/// events sealed).
async fn copy(
    jetstream: &jetstream::Context,
    old: &mut stream::Stream,
    store: &Store,
    total: u64,
    progress: &mut impl FnMut(Stage, u64, u64),
) -> anyhow::Result<(u64, u64, u64)> {
    let (mut copied, mut events, mut sealed) = (0u64, 0u64, 0u64);
    if total == 0 {
        return Ok((0, 0, 0));
    }
    let mut source = messages(old).await?;
    let mut acks = VecDeque::new();
    while let Some(message) = source.next().await {
        let message = message?;
        let sequence = message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        let mut envelopes = decode_commit(&message.payload)
            .with_context(|| format!("reading the message at sequence {sequence}"))?;
        let clear = envelopes
            .iter()
            .filter(|envelope| {
                !rollcall_personal::sealed(envelope)
                    && rollcall_personal::has_personal_fields(&envelope.event_type)
            })
            .count() as u64;
        seal_copies(store, &mut envelopes)
            .await
            .with_context(|| format!("sealing the events at sequence {sequence}"))?;
        sealed += clear;
        events += envelopes.len() as u64;
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(
            "Nats-Expected-Last-Sequence",
            (sequence - 1).to_string().as_str(),
        );
        let ack = jetstream
            .publish_with_headers(
                message.subject.to_string(),
                headers,
                encode_commit(&envelopes).into(),
            )
            .await
            .with_context(|| format!("copying the message at sequence {sequence}"))?;
        acks.push_back((sequence, ack));
        if acks.len() >= IN_FLIGHT {
            settle(&mut acks, 1).await?;
        }
        copied += 1;
        if copied % 1000 == 0 {
            progress(Stage::Copying, copied, total);
        }
        if sequence >= total {
            break;
        }
    }
    settle(&mut acks, usize::MAX).await?;
    progress(Stage::Copying, copied, total);
    if copied != total {
        bail!("copied {copied} messages of {total}");
    }
    Ok((copied, events, sealed))
}

/// Seals the events' personal fields under their owners' data keys (created for users that
/// have none). A user erased before the migration has no key any more: its fields are sealed
/// under a key made for the copy and forgotten at once, so they read `[erased]` like every
/// other field of an erased person.
async fn seal_copies(store: &Store, envelopes: &mut [Envelope]) -> anyhow::Result<()> {
    let keys = rollcall_personal::owners_key_states(store, envelopes).await?;
    for envelope in envelopes.iter_mut() {
        let Some(owner) = rollcall_personal::key_owner(envelope) else {
            continue;
        };
        let key = match keys.get(&owner) {
            Some(KeyState::Erased) => {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                DataKey::from_bytes(bytes)
            }
            _ => store.data_key_for_writing(&owner.0, owner.1).await?,
        };
        rollcall_personal::seal(envelope, &key)?;
    }
    Ok(())
}

/// Waits for the oldest `count` publishes; each must land at the sequence it had.
async fn settle(
    acks: &mut VecDeque<(u64, jetstream::context::PublishAckFuture)>,
    count: usize,
) -> anyhow::Result<()> {
    for _ in 0..count {
        let Some((sequence, ack)) = acks.pop_front() else {
            return Ok(());
        };
        let ack = ack
            .await
            .with_context(|| format!("the copy of the message at sequence {sequence}"))?;
        if ack.sequence != sequence {
            bail!(
                "the message at sequence {sequence} landed at {} in the new stream",
                ack.sequence
            );
        }
    }
    Ok(())
}

/// Reads both streams side by side: every new event must open to the old one exactly, and
/// each tenant's chain over the events with personal fields masked must be the same on both.
/// The number of tenants compared.
async fn verify(
    old: &mut stream::Stream,
    new: &mut stream::Stream,
    store: &Store,
    total: u64,
    progress: &mut impl FnMut(Stage, u64, u64),
) -> anyhow::Result<usize> {
    if total == 0 {
        return Ok(0);
    }
    let (mut before, mut after) = (messages(old).await?, messages(new).await?);
    let mut chains: HashMap<String, ([u8; 32], [u8; 32])> = HashMap::new();
    let mut checked = 0u64;
    loop {
        let (Some(was), Some(is)) = (before.next().await, after.next().await) else {
            bail!("the new stream ended before the old one, after {checked} messages");
        };
        let (was, is) = (was?, is?);
        let sequence = was
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        let new_sequence = is
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        if sequence != new_sequence || was.subject != is.subject {
            bail!("the message at sequence {sequence} differs in place or subject");
        }
        let old_events = decode_commit(&was.payload)?;
        let mut new_events = decode_commit(&is.payload)?;
        if old_events.len() != new_events.len() {
            bail!("the message at sequence {sequence} holds another number of events");
        }
        // Both opened (the old stream may hold events sealed already, by a later release).
        let mut opened = new_events.clone();
        rollcall_personal::open_all(store, &mut opened, Freshness::Fresh).await?;
        let mut plain = old_events.clone();
        rollcall_personal::open_all(store, &mut plain, Freshness::Fresh).await?;
        let keys = rollcall_personal::owners_key_states(store, &mut plain).await?;
        for (((old_event, new_event), opened), plain) in old_events
            .iter()
            .zip(new_events.iter_mut())
            .zip(&opened)
            .zip(&plain)
        {
            // An erased person's fields cannot be compared, only masked (below).
            let erased = rollcall_personal::key_owner(&mut plain.clone())
                .is_some_and(|owner| keys.get(&owner) == Some(&KeyState::Erased));
            if !erased && opened != plain {
                bail!(
                    "event {} at sequence {sequence} does not open to the event it was",
                    old_event.event_id
                );
            }
            let (old_masked, new_masked) = (masked(old_event), masked(new_event));
            let chain = chains
                .entry(old_event.tenant.clone())
                .or_insert((GENESIS, GENESIS));
            chain.0 = link(&chain.0, &old_masked.canonical_bytes());
            chain.1 = link(&chain.1, &new_masked.canonical_bytes());
        }
        checked += 1;
        if checked % 1000 == 0 {
            progress(Stage::Verifying, checked, total);
        }
        if sequence >= total {
            break;
        }
    }
    progress(Stage::Verifying, checked, total);
    for (tenant, (old_head, new_head)) in &chains {
        if old_head != new_head {
            bail!("tenant {tenant}: the chains over the non-personal fields differ");
        }
    }
    Ok(chains.len())
}

/// The event with its personal fields replaced by one marker and the schema version of a
/// clear event: what must be the same before and after sealing.
fn masked(envelope: &Envelope) -> Envelope {
    let mut masked = envelope.clone();
    if rollcall_personal::sealed(&masked) {
        let _ = rollcall_personal::open(&mut masked, &KeyState::Erased);
    } else {
        rollcall_personal::mask(&mut masked);
    }
    masked
}
