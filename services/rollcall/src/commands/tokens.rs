//! `rollcall tokens create|list|revoke`.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use rollcall_store::tenant::Scope;
use serde_json::json;

use crate::cli::Common;
use crate::connection::connect_store;

/// The tokens' commands.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; prints it once.
    Create {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// What the token may do: `scim` (provisioning), `audit` (the audit API) or `ssf` (a
        /// Shared Signals receiver: its tenant's SSF streams).
        #[arg(long, default_value = "scim", value_parser = ["scim", "audit", "ssf"])]
        scope: String,
        /// A note for whoever lists tokens later.
        #[arg(long)]
        description: Option<String>,
        /// Print JSON: {"tenant", "id", "scope", "token"}.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token by id; requests with it fail within seconds.
    Revoke {
        /// The token's id (the part after `rc_`).
        id: String,
    },
}

/// Runs a tokens command.
pub async fn run(common: Common, command: TokensCommand) -> anyhow::Result<()> {
    let store = connect_store(&common).await?;
    match command {
        TokensCommand::Create {
            tenant,
            scope,
            description,
            json,
        } => {
            let scope = Scope::parse(&scope).context("scope")?;
            let token = store
                .create_token(&tenant, scope, description.as_deref())
                .await?;
            if json {
                println!(
                    "{}",
                    json!({"tenant": tenant, "id": token.info.id, "scope": scope.as_str(), "token": token.token})
                );
            } else {
                println!(
                    "Token {} for tenant {tenant} ({}):\n{}\n\nIt is shown only now.",
                    token.info.id,
                    scope.as_str(),
                    token.token
                );
            }
        }
        TokensCommand::List { tenant } => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<18} {:<16} {:<6} {:<26} {:<8} DESCRIPTION",
                "ID", "TENANT", "SCOPE", "CREATED", "STATE"
            )?;
            for token in store.tokens(tenant.as_deref()).await? {
                let state = if token.revoked_at.is_some() {
                    "revoked"
                } else {
                    "live"
                };
                writeln!(
                    out,
                    "{:<18} {:<16} {:<6} {:<26} {:<8} {}",
                    token.id,
                    token.tenant,
                    token.scope.as_str(),
                    token
                        .created_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    state,
                    token.description.unwrap_or_default()
                )?;
            }
        }
        TokensCommand::Revoke { id } => {
            if !store.revoke_token(&id).await? {
                anyhow::bail!("no live token {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
