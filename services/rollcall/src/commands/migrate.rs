//! `rollcall migrate`: one-off migrations of an installation's data.

use clap::Subcommand;

use crate::cli::Common;
use crate::connection::{connect_nats, connect_store, install_keks, namespace};
use crate::migrate::Stage;

/// The migrations.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Seals the personal fields of an event stream written before Rollcall sealed them: copies
    /// every event, in order and at the same stream sequence, into a new stream with its
    /// personal fields encrypted under each user's data key, verifies the copy against the
    /// original (every event opens to what it was; each tenant's chain over the non-personal
    /// fields is unchanged), switches the installation to it, and rebuilds the read models from
    /// it. The old stream is kept, its subjects retired, until you delete it
    /// (`nats stream rm <OLD STREAM>`): until then it still holds the personal data in clear.
    /// Stop every Rollcall process of the namespace first.
    EncryptPii {
        #[command(flatten)]
        kek: rollcall_access::keys::KekConfig,
    },
}

/// Runs a migration.
pub async fn run(common: Common, command: MigrateCommand) -> anyhow::Result<()> {
    match command {
        MigrateCommand::EncryptPii { kek } => {
            let (client, _) = connect_nats(&common).await?;
            let namespace = namespace(&common)?;
            let store = connect_store(&common).await?;
            install_keks(&store, &kek, true).await?;
            let migrated =
                crate::migrate::encrypt_pii(&client, &namespace, &store, |stage, done, total| {
                    let (stage, unit) = match stage {
                        Stage::Copying => ("copying", "messages"),
                        Stage::Verifying => ("verifying", "messages"),
                        Stage::Rebuilding => ("rebuilding the read models", "events"),
                    };
                    eprintln!("{stage}: {done} of {total} {unit}");
                })
                .await?;
            println!(
                "{} messages ({} events, {} of them sealed now) copied from {} to {} and verified for {} tenant(s); the read models were rebuilt from it, and {} is now the installation's stream: start Rollcall again",
                migrated.messages,
                migrated.events,
                migrated.sealed,
                migrated.old_stream,
                migrated.new_stream,
                migrated.tenants,
                migrated.new_stream
            );
            println!(
                "the old stream {} still holds the personal data in clear: delete it once you no longer need it (nats stream rm {})",
                migrated.old_stream, migrated.old_stream
            );
            Ok(())
        }
    }
}
