//! `rollcall projector rebuild|quarantine`: projection maintenance.

pub mod quarantine;

use clap::Subcommand;

use crate::cli::Common;
use crate::connection::{connect_nats, connect_store};

/// The projector's commands.
#[derive(Debug, Subcommand)]
pub enum ProjectorCommand {
    /// Replay the whole event stream into fresh read-model tables, then switch to them.
    Rebuild {
        /// Events applied per transaction.
        #[arg(long, default_value_t = rollcall_projector::DEFAULT_BATCH)]
        batch: usize,
    },
    /// Events the projector could not apply, and their resolution.
    Quarantine {
        #[command(subcommand)]
        command: quarantine::QuarantineCommand,
    },
}

/// Runs a projector command.
pub async fn run(common: Common, command: ProjectorCommand) -> anyhow::Result<()> {
    match command {
        ProjectorCommand::Rebuild { batch } => rebuild(common, batch).await,
        ProjectorCommand::Quarantine { command } => quarantine::run(common, command).await,
    }
}

async fn rebuild(common: Common, batch: usize) -> anyhow::Result<()> {
    let (client, log) = connect_nats(&common).await?;
    let store = connect_store(&common).await?;
    let started = std::time::Instant::now();
    let mut last_report = std::time::Instant::now();
    let applied = rollcall_projector::rebuild::rebuild(client, &log, &store, batch, |progress| {
        if last_report.elapsed().as_secs() >= 1 {
            eprintln!("rebuild: {} of {} events", progress.applied, progress.head);
            last_report = std::time::Instant::now();
        }
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    println!("rebuilt the read models from {applied} events in {seconds:.1}s ({:.0} events/s); they are live", applied as f64 / seconds.max(1e-9));
    Ok(())
}
