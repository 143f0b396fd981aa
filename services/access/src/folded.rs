//! Catalogs folded from one kind of aggregate on the event stream (the applications, the SSF
//! streams): read up to the stream's head, then followed. One way to read, follow and fold
//! them, so that an unreadable event is handled the same everywhere: passed over, loudly (the
//! stream keeps it for good; refusing to go on would stop every access service for good).

use std::time::Duration;

use rollcall_eventlog::consumer::{decode, Delivered};
use rollcall_eventlog::{EventLog, LoadError};
use tracing::error;

/// How long reading up to the stream's head may take.
const READ_WAIT: Duration = Duration::from_secs(30);

/// A catalog folded from the events of one aggregate type.
pub trait Folded: Default {
    /// The aggregate type whose events it folds.
    const AGGREGATE: &'static str;
    /// Its events, in log lines and errors ("an application event").
    const EVENT: &'static str;

    /// The stream sequence of the last event folded (0: none).
    fn version(&self) -> u64;

    /// Folds the events of one message; an event that cannot be read is an error (the
    /// catalog keeps what it had).
    fn apply(&mut self, events: &[Delivered]) -> Result<(), String>;

    /// Passes over the message at `sequence`, which cannot be read.
    fn skip(&mut self, sequence: u64);
}

/// The subjects of every event of `F` in the namespace of `log`.
pub fn subjects<F: Folded>(log: &EventLog) -> String {
    format!("{}.events.*.{}.*", log.namespace().as_str(), F::AGGREGATE)
}

/// Folds one message into `catalog`; one that cannot be read is passed over, loudly.
pub fn fold<F: Folded>(catalog: &mut F, message: &async_nats::jetstream::Message, sequence: u64) {
    let folded = decode(message)
        .map_err(|e| e.to_string())
        .and_then(|events| catalog.apply(&events));
    if let Err(reason) = folded {
        error!(
            sequence,
            reason,
            "{} cannot be read; what it changed is not in force",
            F::EVENT
        );
        catalog.skip(sequence);
    }
}

/// Folds the events after `catalog`'s version up to the stream's head.
pub async fn catch_up<F: Folded>(log: &EventLog, catalog: &mut F) -> Result<(), LoadError> {
    let after = catalog.version();
    let what = format!(
        "reading every {}",
        F::EVENT.trim_start_matches("an ").trim_start_matches("a ")
    );
    log.read_to_head(
        subjects::<F>(log),
        after,
        READ_WAIT,
        &what,
        |message, sequence| fold(catalog, message, sequence),
    )
    .await
}

/// Every event of `F` up to the stream's head, folded.
pub async fn read<F: Folded>(log: &EventLog) -> Result<F, LoadError> {
    let mut catalog = F::default();
    catch_up(log, &mut catalog).await?;
    Ok(catalog)
}

/// The events of `F` after stream sequence `after`, as they are appended, and how many there
/// are now.
pub async fn follow<F: Folded>(
    log: &EventLog,
    after: u64,
) -> Result<(async_nats::jetstream::consumer::pull::Ordered, u64), String> {
    log.follow(subjects::<F>(log), after)
        .await
        .map_err(|e| e.to_string())
}
