//! `rollcall tenants create|list`.

use anyhow::Context;
use clap::Subcommand;
use rollcall_store::tenant::Scope;
use serde_json::json;

use crate::cli::Common;
use crate::connection::connect_store;

/// The tenants' commands.
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant and its first SCIM token; prints the SCIM URL and the token (once).
    Create {
        /// The tenant's name: a-z, 0-9, - and _.
        name: String,
        /// The SCIM base URL to print (default: from ROLLCALL_PUBLIC_URL, else the local address).
        #[arg(long, env = "ROLLCALL_PUBLIC_URL")]
        scim_url: Option<String>,
        /// Print JSON: {"tenant", "scim_url", "token"}.
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List,
}

fn default_scim_url() -> String {
    let addr = std::env::var("ROLLCALL_SCIM_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    format!("http://{addr}/scim/v2")
}

/// Runs a tenants command.
pub async fn run(common: Common, command: TenantsCommand) -> anyhow::Result<()> {
    let store = connect_store(&common).await?;
    match command {
        TenantsCommand::Create {
            name,
            scim_url,
            json,
        } => {
            rollcall_eventlog::namespace::check_name(&name).context("tenant name")?;
            if !store.create_tenant(&name).await? {
                anyhow::bail!("tenant {name:?} exists already; create another token with `rollcall tokens create --tenant {name}`");
            }
            let token = store
                .create_token(&name, Scope::Scim, Some("created with the tenant"))
                .await?;
            let scim_url = scim_url.unwrap_or_else(default_scim_url);
            if json {
                println!(
                    "{}",
                    json!({"tenant": name, "scim_url": scim_url, "token": token.token})
                );
            } else {
                println!("Tenant:     {name}\nSCIM URL:   {scim_url}\nToken:      {}\n\nThe token is shown only now. In Entra ID, paste the SCIM URL as Tenant URL and the token as Secret Token.", token.token);
            }
        }
        TenantsCommand::List => {
            for tenant in store.tenants().await? {
                println!("{tenant}");
            }
        }
    }
    Ok(())
}
