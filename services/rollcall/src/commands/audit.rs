//! `rollcall audit verify|checkpoint|keygen`: tamper evidence of the audit history.

use anyhow::Context;
use clap::Subcommand;

use crate::cli::Common;
use crate::connection::{connect_nats, connect_store};

/// The audit's commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chains from the event stream and from the audit table; report the
    /// first sequence where they part. Exits 1 on any mismatch.
    Verify {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Also check the history against this signed checkpoint (from `rollcall audit checkpoint`).
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
        /// The public key (hex) the checkpoint must be signed with.
        #[arg(long)]
        public_key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign the current head of a tenant's chain; prints the checkpoint as JSON to keep.
    Checkpoint {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The Ed25519 signing key, 64 hex characters (from `rollcall audit keygen`).
        #[arg(long, env = "ROLLCALL_AUDIT_SIGNING_KEY", hide_env_values = true)]
        signing_key: String,
    },
    /// Print a new signing key (keep it secret) and its public key (give it to auditors).
    Keygen,
}

/// Runs an audit command.
pub async fn run(common: Common, command: AuditCommand) -> anyhow::Result<()> {
    use rollcall_audit_api::checkpoint;
    match command {
        AuditCommand::Keygen => {
            let (secret, public) = checkpoint::generate();
            println!("signing key (ROLLCALL_AUDIT_SIGNING_KEY, keep secret): {secret}\npublic key (for auditors):                           {public}");
        }
        AuditCommand::Checkpoint {
            tenant,
            signing_key,
        } => {
            let key = checkpoint::signing_key(&signing_key).map_err(anyhow::Error::msg)?;
            let store = connect_store(&common).await?;
            let (sequence, hash) = store
                .chain_head(&tenant)
                .await?
                .with_context(|| format!("tenant {tenant:?} has no audited events"))?;
            println!(
                "{}",
                serde_json::to_string_pretty(&checkpoint::sign(
                    &key,
                    &tenant,
                    sequence as u64,
                    &hash
                ))?
            );
        }
        AuditCommand::Verify {
            tenant,
            checkpoint: file,
            public_key,
            json,
        } => {
            let signed = match file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let signed: checkpoint::SignedCheckpoint = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not a checkpoint", path.display()))?;
                    signed
                        .check_signature(public_key.as_deref())
                        .map_err(anyhow::Error::msg)?;
                    Some(signed)
                }
                None => None,
            };
            let (_, log) = connect_nats(&common).await?;
            let store = connect_store(&common).await?;
            let verified = rollcall_audit_api::verify::verify(
                &log,
                &store,
                tenant.as_deref(),
                signed.as_ref(),
                |done, total| {
                    eprintln!("verify: {done} of up to {total} events");
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&verified)?);
            } else {
                println!(
                    "checked {} events up to sequence {}",
                    verified.events, verified.up_to
                );
                for (tenant, (sequence, hash)) in &verified.heads {
                    println!("  {tenant}: head at {sequence}, hash {hash}");
                }
                if signed.is_some() && verified.mismatch.is_none() {
                    println!("the signed checkpoint matches this history");
                }
            }
            if let Some(mismatch) = verified.mismatch {
                eprintln!(
                    "MISMATCH at sequence {} (tenant {}): {}",
                    mismatch.sequence, mismatch.tenant, mismatch.reason
                );
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
