//! `rollcall projector quarantine list|retry|skip`: what the projector could not apply, and an
//! operator's resolution of it, recorded as an event with the operator's reason.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use rollcall_eventlog::quarantine::{self, Resolution, RETRIED, SKIPPED};
use rollcall_eventlog::Actor;
use rollcall_store::quarantine::QuarantineRow;
use serde_json::json;

use crate::cli::Common;
use crate::connection::{connect_nats, connect_store};

/// The quarantine's commands.
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined events: the ones that failed and the ones held behind them.
    List {
        /// Also list resolved ones.
        #[arg(long)]
        all: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Apply a resource's quarantined events again, in order (after the cause is fixed, for
    /// example by an upgrade). Recorded as an event with your reason.
    Retry {
        /// The stream sequence of a quarantined event of the resource (see `list`).
        sequence: u64,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Pass over one failed event for good, then apply the events held behind it. Recorded as
    /// an event with your reason.
    Skip {
        /// The stream sequence of the failed event (see `list`).
        sequence: u64,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
    },
}

fn line(row: &QuarantineRow) -> String {
    format!(
        "{:>10}  {:<8} {:<7}  {}/{} {}  {}  attempts {}{}\n            {}",
        row.sequence,
        row.status,
        if row.audited { "audited" } else { "unaudited" },
        row.tenant,
        row.aggregate_type,
        row.aggregate_id,
        row.event_type,
        row.attempts,
        row.resolution
            .as_deref()
            .map(|reason| format!(", resolved: {reason}"))
            .unwrap_or_default(),
        row.error,
    )
}

/// Runs a quarantine command.
pub async fn run(common: Common, command: QuarantineCommand) -> anyhow::Result<()> {
    let store = connect_store(&common).await?;
    match command {
        QuarantineCommand::List { all, json } => {
            let rows = store.quarantine(all).await?;
            if json {
                for row in &rows {
                    println!(
                        "{}",
                        json!({"sequence": row.sequence, "status": row.status, "tenant": row.tenant,
                               "aggregate_type": row.aggregate_type, "aggregate_id": row.aggregate_id,
                               "event_type": row.event_type, "event_id": row.event_id, "error": row.error,
                               "audited": row.audited, "attempts": row.attempts,
                               "affected_users": row.affected_users.len(),
                               "resolution": row.resolution, "resolved_by": row.resolved_by})
                    );
                }
            } else if rows.is_empty() {
                println!("nothing is quarantined");
            } else {
                for row in &rows {
                    println!("{}", line(row));
                }
            }
            Ok(())
        }
        QuarantineCommand::Retry { sequence, reason } => {
            resolve(&common, &store, sequence, RETRIED, reason).await
        }
        QuarantineCommand::Skip { sequence, reason } => {
            resolve(&common, &store, sequence, SKIPPED, reason).await
        }
    }
}

async fn resolve(
    common: &Common,
    store: &rollcall_store::Store,
    sequence: u64,
    event_type: &str,
    reason: String,
) -> anyhow::Result<()> {
    anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
    let row = store
        .quarantined(sequence)
        .await?
        .with_context(|| format!("no quarantined event at sequence {sequence} (see `rollcall projector quarantine list`)"))?;
    anyhow::ensure!(
        row.resolved_at.is_none(),
        "the event at sequence {sequence} is resolved already ({})",
        row.status
    );
    anyhow::ensure!(
        event_type != SKIPPED || row.status == "failed",
        "the event at sequence {sequence} is held behind an earlier failed event of its resource; skip that one, or retry"
    );
    let (_, log) = connect_nats(common).await?;
    let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let resolution = Resolution {
        sequence,
        aggregate_type: row.aggregate_type.clone(),
        reason,
    };
    let at = quarantine::append(
        &log,
        &row.tenant,
        row.aggregate_id,
        event_type,
        &resolution,
        Actor::Operator { name: operator },
    )
    .await?;
    println!("recorded {event_type} for sequence {sequence} as the event at stream sequence {at}");
    // The running projector applies it; report what came of it.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if store.checkpoint(rollcall_projector::DEFAULT_NAME).await? >= at {
            let rows = store.quarantine(true).await?;
            let left: Vec<_> = rows
                .iter()
                .filter(|r| {
                    r.tenant == row.tenant
                        && r.aggregate_id == row.aggregate_id
                        && r.resolved_at.is_none()
                })
                .collect();
            if left.is_empty() {
                println!("resolved: the resource takes writes again");
            } else {
                println!("still quarantined:");
                for row in left {
                    println!("{}", line(row));
                }
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("the projector has not applied it yet (is `rollcall serve` running?); see `rollcall projector quarantine list`");
    Ok(())
}
