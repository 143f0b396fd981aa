//! `rollcall revocations watch`: the revocation and access-state contract on NATS, as an access
//! component sees it.

use std::io::Write;

use clap::Subcommand;
use serde_json::json;

use crate::cli::Common;
use crate::connection::connect_nats;

/// The revocations' commands.
#[derive(Debug, Subcommand)]
pub enum RevocationsCommand {
    /// Print the access state (users, groups, checkpoint) and every revocation as they change,
    /// one JSON object a line, as an access component would see them.
    Watch {
        /// Start with the complete current access state before following changes.
        #[arg(long)]
        with_state: bool,
    },
}

/// Runs a revocations command.
pub async fn run(common: Common, command: RevocationsCommand) -> anyhow::Result<()> {
    match command {
        RevocationsCommand::Watch { with_state } => watch(common, with_state).await,
    }
}

async fn watch(common: Common, with_state: bool) -> anyhow::Result<()> {
    use futures::StreamExt;
    let (client, log) = connect_nats(&common).await?;
    let namespace = log.namespace().clone();
    let jetstream = async_nats::jetstream::new(client.clone());
    let bucket = rollcall_eventlog::access::open_bucket(&jetstream, &namespace).await?;
    let mut revocations = client.subscribe(namespace.all_revocations()).await?;
    let mut entries = if with_state {
        bucket.watch_with_history(">").await?
    } else {
        bucket.watch(">").await?
    };
    let mut out = std::io::stdout().lock();
    loop {
        tokio::select! {
            Some(message) = revocations.next() => {
                let data: serde_json::Value = serde_json::from_slice(&message.payload).unwrap_or(serde_json::Value::Null);
                writeln!(out, "{}", json!({"subject": message.subject.as_str(), "revocation": data}))?;
            }
            Some(entry) = entries.next() => {
                let entry = entry?;
                let value: serde_json::Value = serde_json::from_slice(&entry.value).unwrap_or(serde_json::Value::Null);
                let operation = format!("{:?}", entry.operation).to_lowercase();
                writeln!(out, "{}", json!({"key": entry.key, "operation": operation, "value": value}))?;
            }
            else => return Ok(()),
        }
        out.flush()?;
    }
}
