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
        /// Events applied per transaction: each batch is folded per user and group in memory
        /// and written in bulk.
        #[arg(long, default_value_t = rollcall_projector::rebuild::DEFAULT_BATCH)]
        batch: usize,
        /// The KEK the users' data keys are wrapped under (their personal fields open for the
        /// read models).
        #[command(flatten)]
        kek: rollcall_access::keys::KekConfig,
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
        ProjectorCommand::Rebuild { batch, kek } => rebuild(common, batch, kek).await,
        ProjectorCommand::Quarantine { command } => quarantine::run(common, command).await,
    }
}

async fn rebuild(
    common: Common,
    batch: usize,
    kek: rollcall_access::keys::KekConfig,
) -> anyhow::Result<()> {
    let (client, log) = connect_nats(&common).await?;
    let store = connect_store(&common).await?;
    crate::connection::install_keks(&store, &kek, false).await?;
    let started = std::time::Instant::now();
    // On a terminal a bar with the rate and the time left; otherwise (a log) a line every 10 s.
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "rebuild {wide_bar} {human_pos}/{human_len} events, {per_sec}, {eta} left",
    ) {
        bar.set_style(style);
    }
    let mut last_line = std::time::Instant::now();
    let applied = rollcall_projector::rebuild::rebuild(client, &log, &store, batch, |progress| {
        bar.set_length(progress.head);
        bar.set_position(progress.applied);
        if bar.is_hidden() && last_line.elapsed().as_secs() >= 10 {
            let rate = progress.applied as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let left = progress.head.saturating_sub(progress.applied) as f64 / rate.max(1e-9);
            eprintln!(
                "rebuild: {} of {} events ({rate:.0}/s, about {left:.0}s left)",
                progress.applied, progress.head
            );
            last_line = std::time::Instant::now();
        }
    })
    .await;
    bar.finish_and_clear();
    let rebuilt = applied?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "rebuilt the read models from {} events in {seconds:.1}s ({:.0} events/s); they are live",
        rebuilt.applied,
        rebuilt.applied as f64 / seconds.max(1e-9)
    );
    if rebuilt.folded < rebuilt.applied {
        println!(
            "{} events were applied one by one: their batches held an event that could not be applied in bulk (PostgreSQL refused it, or it failed to apply) or a resource in quarantine (see `rollcall projector quarantine list`)",
            rebuilt.applied - rebuilt.folded
        );
    }
    Ok(())
}
