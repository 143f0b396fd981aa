//! `rollcall sessions revoke`: revoke users' sessions, recorded as events; `rollcall sessions
//! keys`: the installation's session keys (list, rotate, reseal).

use anyhow::Context;
use clap::Subcommand;

use crate::cli::Common;
use crate::connection::connect_nats;

/// The sessions' commands.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Revoke one session of a user, or all of the user's sessions issued until now. Recorded as
    /// an event on the user's stream.
    Revoke {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The user's id.
        #[arg(long)]
        user: uuid::Uuid,
        /// Only this session (its id); without it, every session issued until now.
        #[arg(long)]
        session: Option<String>,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        kek: rollcall_access::keys::KekConfig,
    },
    /// The installation's session keys (used when ROLLCALL_SESSION_KEYS is not set).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// `rollcall sessions keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Key ids, when each was created, from when it signs and what it does now; never key
    /// material.
    List {
        #[command(flatten)]
        kek: rollcall_access::keys::KekConfig,
    },
    /// Adds a signing key. Older keys keep verifying for the longest session lifetime (7 days)
    /// and are dropped at a later rotation. Every access replica picks it up without a restart.
    Rotate {
        /// Seconds until the new key signs, so that every replica holds it first.
        #[arg(long, default_value_t = 60)]
        activate_in: u64,
        /// Drop every other key now, after a key leaked: every session ends.
        #[arg(long)]
        drop_previous: bool,
        #[command(flatten)]
        kek: rollcall_access::keys::KekConfig,
    },
    /// Seals the key set under a new KEK (for example to move it out of PostgreSQL into
    /// ROLLCALL_KEK). Restart the access services with the new KEK afterwards.
    Reseal {
        /// A file holding the new KEK (base64 of 32 bytes).
        #[arg(long, value_name = "PATH")]
        new_kek_file: std::path::PathBuf,
        #[command(flatten)]
        kek: rollcall_access::keys::KekConfig,
    },
}

/// Runs a sessions command.
pub async fn run(common: Common, command: SessionsCommand) -> anyhow::Result<()> {
    match command {
        SessionsCommand::Revoke {
            tenant,
            user,
            session,
            reason,
            kek,
        } => {
            let (_, log) = connect_nats(&common).await?;
            // The user's history is folded to decide: its personal fields open under its key.
            let store = crate::connection::connect_store(&common).await?;
            crate::connection::install_keks(&store, &kek, false).await?;
            let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
            let sequence = rollcall_scim_api::operator::revoke_sessions(
                &log,
                &store,
                &tenant,
                user,
                session.clone(),
                &reason,
                &operator,
            )
            .await
            .map_err(|error| anyhow::anyhow!("{}", error.to_scim().detail))?;
            let what = session.map_or_else(
                || "every session issued until now".to_owned(),
                |s| format!("session {s}"),
            );
            println!("revoked {what} of user {user} (event at stream sequence {sequence})");
            Ok(())
        }
        SessionsCommand::Keys { command } => keys(common, command).await,
    }
}

async fn keys(common: Common, command: KeysCommand) -> anyhow::Result<()> {
    use rollcall_access::keys::{self, InstallationKeys, Kek, Rotation};
    let kek_config = match &command {
        KeysCommand::List { kek }
        | KeysCommand::Rotate { kek, .. }
        | KeysCommand::Reseal { kek, .. } => kek.clone(),
    };
    let (client, log) = connect_nats(&common).await?;
    // PostgreSQL only where the KEK is kept there (no ROLLCALL_KEK / ROLLCALL_KEK_FILE).
    let store = if kek_config.is_configured() {
        None
    } else {
        Some(crate::connection::connect_store(&common).await?)
    };
    let listed = match command {
        KeysCommand::List { .. } => {
            keys::list(&client, log.namespace(), &kek_config, store.as_ref()).await?
        }
        KeysCommand::Rotate {
            activate_in,
            drop_previous,
            ..
        } => {
            let rotation = Rotation {
                activate_in: std::time::Duration::from_secs(activate_in),
                drop_previous,
            };
            let listed = keys::rotate(
                &client,
                log.namespace(),
                &kek_config,
                store.as_ref(),
                rotation,
            )
            .await?;
            println!("rotated; every access replica follows within moments");
            listed
        }
        KeysCommand::Reseal { new_kek_file, .. } => {
            let text = std::fs::read_to_string(&new_kek_file)
                .with_context(|| format!("reading {}", new_kek_file.display()))?;
            let new = Kek::from_base64(text.trim(), new_kek_file.display().to_string())?;
            let old = Kek::existing(&kek_config, store.as_ref()).await?;
            InstallationKeys::open(&client, log.namespace(), old)
                .await?
                .reseal(&new)
                .await?;
            println!(
                "resealed under KEK {}; restart the access services with it (ROLLCALL_KEK_FILE={})",
                new.fingerprint(),
                new_kek_file.display()
            );
            return Ok(());
        }
    };
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    println!("{:<22} {:<30} {:<30} STATE", "KEY", "CREATED", "SIGNS FROM");
    for key in listed {
        println!(
            "{:<22} {:<30} {:<30} {}",
            key.id,
            key.created_at.format(rfc3339).unwrap_or_default(),
            key.signs_from.format(rfc3339).unwrap_or_default(),
            key.state
        );
    }
    Ok(())
}
