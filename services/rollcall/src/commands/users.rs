//! `rollcall users`: a person's data under the GDPR. `erase` (Art. 17: crypto-shredding, the
//! record stays provable), `export` (Art. 15: a subject access request, as JSON), and
//! `rewrap-keys` (the users' data keys under a new key-encryption key).

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use rollcall_domain::user::{self, User, UserEvent};
use rollcall_domain::EventKind;
use rollcall_eventlog::Actor;
use rollcall_store::personal_key::Freshness;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cli::Common;
use crate::connection::{connect_nats, connect_store, install_keks};

/// The users' commands.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Erases a user's personal data for good: destroys the user's data key, so that the
    /// personal fields of its events (names, emails, phone numbers, addresses, titles,
    /// manager, externalId, userName; and the provider account it signed in as) never open
    /// again wherever they are stored; records `user.erased` (the user is gone: SCIM answers
    /// 404, the read models and the access state drop it, its sessions end); clears the SCIM
    /// request log's copies. The audit history keeps every event, its personal fields reading
    /// `[erased]`, and `rollcall audit verify` still passes. Safe to run again (an erasure
    /// stopped halfway is finished).
    Erase {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The user's id.
        #[arg(long)]
        user: Uuid,
        /// Why, for the record (a ticket number; no personal data).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        kek: rollcall_access::keys::KekConfig,
    },
    /// Prints a person's data as JSON (a subject access request): the user's attributes now,
    /// its groups, every event of its history with its values, the provider accounts it signed
    /// in as, and the SCIM requests about it.
    Export {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The user's id.
        #[arg(long)]
        user: Uuid,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "PATH")]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        kek: rollcall_access::keys::KekConfig,
    },
    /// Wraps every user's data key under the current KEK, after a rotation: give the new KEK
    /// as ROLLCALL_KEK and the old one as ROLLCALL_KEK_PREVIOUS (to the services too, which
    /// then read both), run this, then drop ROLLCALL_KEK_PREVIOUS.
    RewrapKeys {
        #[command(flatten)]
        kek: rollcall_access::keys::KekConfig,
    },
}

/// Runs a users command.
pub async fn run(common: Common, command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Erase {
            tenant,
            user,
            reason,
            kek,
        } => {
            let (_, log) = connect_nats(&common).await?;
            let store = connect_store(&common).await?;
            install_keks(&store, &kek, false).await?;
            let claims = rollcall_eventlog::Claims::open(log.jetstream(), log.namespace()).await?;
            let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
            let erasure = rollcall_scim_api::operator::erase_user(
                &log,
                &store,
                &claims,
                &tenant,
                user,
                &reason,
                Actor::Operator { name: operator },
            )
            .await
            .map_err(|error| anyhow::anyhow!("{}", error.to_scim().detail))?;
            if erasure.clear_events > 0 {
                eprintln!(
                    "warning: {} events of this user were written before personal fields were sealed and stay readable in the event stream until `rollcall migrate encrypt-pii`",
                    erasure.clear_events
                );
            }
            match erasure.sequence {
                Some(sequence) => println!(
                    "erased user {user} of tenant {tenant}: user.erased at stream sequence {sequence}; its data key is destroyed; {} SCIM request log entries cleared. The projector drops it from the read models and the access state as it applies the event.",
                    erasure.request_log_entries
                ),
                None => println!(
                    "user {user} of tenant {tenant} was erased before; its data key is gone, {} SCIM request log entries cleared now",
                    erasure.request_log_entries
                ),
            }
            Ok(())
        }
        UsersCommand::Export {
            tenant,
            user,
            output,
            kek,
        } => {
            let (_, log) = connect_nats(&common).await?;
            let store = connect_store(&common).await?;
            install_keks(&store, &kek, false).await?;
            let document = export(&log, &store, &tenant, user).await?;
            let text = serde_json::to_string_pretty(&document)?;
            match output {
                Some(path) => std::fs::write(&path, text + "\n")
                    .with_context(|| format!("writing {}", path.display()))?,
                None => writeln!(std::io::stdout(), "{text}")?,
            }
            Ok(())
        }
        UsersCommand::RewrapKeys { kek } => {
            let store = connect_store(&common).await?;
            install_keks(&store, &kek, false).await?;
            let moved = store
                .rewrap_data_keys(1000, |moved| eprintln!("{moved} data keys wrapped again…"))
                .await?;
            println!(
                "{moved} data keys wrapped under KEK {}; ROLLCALL_KEK_PREVIOUS can go",
                store.kek_in_use().unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// A person's data as JSON.
pub async fn export(
    log: &rollcall_eventlog::EventLog,
    store: &rollcall_store::Store,
    tenant: &str,
    user: Uuid,
) -> anyhow::Result<Value> {
    let subject = log
        .namespace()
        .aggregate_subject(tenant, UserEvent::AGGREGATE, &user);
    let mut history = log.load(&subject, 0).await?;
    if history.events.is_empty() {
        anyhow::bail!("tenant {tenant} has no user {user}");
    }
    rollcall_personal::open_all(store, &mut history.events, Freshness::Fresh).await?;
    let mut state = User::default();
    let mut events = Vec::new();
    for envelope in &history.events {
        let event = UserEvent::from_payload(
            &envelope.event_type,
            envelope.schema_version,
            &envelope.payload,
        )
        .map_err(|reason| anyhow::anyhow!("event {}: {reason}", envelope.event_id))?;
        state = user::evolve(state, &event);
        events.push(json!({
            "event_id": envelope.event_id,
            "type": envelope.event_type,
            "occurred_at": rollcall_eventlog::chain::canonical_time(envelope.occurred_at),
            "actor": envelope.actor,
            "request_id": envelope.request_id,
            "payload": envelope.payload,
        }));
    }
    let status = match &state {
        User::Absent => "never created",
        User::Active(_) => "active",
        User::Inactive(_) => "inactive",
        User::Deleted => "deleted",
        User::Erased => "erased",
    };
    let groups: Vec<Value> = store
        .groups_of_users(tenant, &[user])
        .await?
        .into_iter()
        .map(|(_, id, name)| json!({"id": id, "displayName": name}))
        .collect();
    let mut links = store.audit_identity_links(tenant, user).await?;
    rollcall_personal::open_all(store, &mut links, Freshness::Fresh).await?;
    let links: Vec<Value> = links
        .iter()
        .map(|row| {
            json!({
                "issuer": row.payload.0.get("issuer"),
                "subject": row.payload.0.get("subject"),
                "linked_at": rollcall_eventlog::chain::canonical_time(row.occurred_at),
            })
        })
        .collect();
    let requests: Vec<Value> = store
        .requests_about(tenant, user)
        .await?
        .into_iter()
        .map(|row| {
            json!({
                "at": rollcall_eventlog::chain::canonical_time(row.at),
                "method": row.method,
                "path": row.path,
                "filter": row.filter,
                "status": row.status,
                "request_id": row.request_id,
            })
        })
        .collect();
    Ok(json!({
        "tenant": tenant,
        "id": user,
        "status": status,
        "attributes": state.attributes(),
        "groups": groups,
        "identity_links": links,
        "events": events,
        "scim_requests": requests,
        "exported_at": rollcall_eventlog::chain::canonical_time(time::OffsetDateTime::now_utc()),
    }))
}
