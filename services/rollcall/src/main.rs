//! `rollcall`: runs Rollcall (`rollcall serve`) and its operator commands.

use std::io::Write;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rollcall_eventlog::{EventLog, Namespace};
use rollcall_store::tenant::Scope;
use rollcall_store::Store;
use serde_json::json;

mod bench;
mod quarantine;
mod serve;

/// Rollcall: identity lifecycle from Entra ID (SCIM 2.0) to immutable events, read models and
/// immediate access decisions.
#[derive(Debug, Parser)]
#[command(name = "rollcall", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

/// Where Rollcall's state lives; shared by every command.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// PostgreSQL URL (the database is created if missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/rollcall",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,
    /// NATS URL (JetStream must be enabled).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// Prefix of the stream, subjects and key-value buckets; installations sharing a NATS
    /// server need different namespaces.
    #[arg(
        long,
        env = "ROLLCALL_NAMESPACE",
        default_value = "rollcall",
        global = true
    )]
    pub namespace: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every Rollcall service in this process.
    Serve(Box<serve::ServeArgs>),
    /// Manage tenants.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Manage API tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Show the event stream's head, the projector's checkpoint and its lag.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Projection maintenance.
    Projector {
        #[command(subcommand)]
        command: ProjectorCommand,
    },
    /// Revoke users' sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Follow the revocation and access-state contract on NATS.
    Revocations {
        #[command(subcommand)]
        command: RevocationsCommand,
    },
    /// Measure Rollcall next to the machine's limits (a private in-process instance).
    Bench(bench::BenchArgs),
    /// Tamper evidence: verify the audit history, sign checkpoints.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Sign-in with Entra ID (OpenID Connect).
    Oidc {
        #[command(subcommand)]
        command: OidcCommand,
    },
}

#[derive(Debug, Subcommand)]
enum OidcCommand {
    /// Check the sign-in configuration before anyone signs in: the settings, the provider's
    /// discovery document and keys, and a client-credentials round trip that proves the client
    /// id and secret (or private key). Prints the redirect URI to register. Exits 1 on a problem.
    Check {
        #[command(flatten)]
        oidc: rollcall_access::oidc::OidcConfig,
        /// Domain of the session cookie.
        #[arg(long = "cookie-domain", env = "ROLLCALL_COOKIE_DOMAIN")]
        cookie_domain: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
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

#[derive(Debug, Subcommand)]
enum SessionsCommand {
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
    },
}

#[derive(Debug, Subcommand)]
enum RevocationsCommand {
    /// Print the access state (users, groups, checkpoint) and every revocation as they change,
    /// one JSON object a line, as an access component would see them.
    Watch {
        /// Start with the complete current access state before following changes.
        #[arg(long)]
        with_state: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
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

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a token; prints it once.
    Create {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// What the token may do.
        #[arg(long, default_value = "scim", value_parser = ["scim", "audit"])]
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

#[derive(Debug, Subcommand)]
enum ProjectorCommand {
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

fn default_scim_url() -> String {
    let addr = std::env::var("ROLLCALL_SCIM_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    format!("http://{addr}/scim/v2")
}

async fn connect_nats(common: &Common) -> anyhow::Result<(async_nats::Client, EventLog)> {
    let namespace = Namespace::new(&common.namespace).context("ROLLCALL_NAMESPACE")?;
    let client = async_nats::connect(&common.nats_url)
        .await
        .with_context(|| {
            format!(
                "connecting to NATS at {} (start it with: nats-server -js)",
                common.nats_url
            )
        })?;
    let log = EventLog::open(client.clone(), namespace)
        .await
        .context("opening the event stream")?;
    Ok((client, log))
}

async fn connect_store(common: &Common) -> anyhow::Result<Store> {
    Store::connect(&common.database_url)
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::serve(cli.common, *args).await,
        Command::Tenants { command } => tenants(cli.common, command).await,
        Command::Tokens { command } => tokens(cli.common, command).await,
        Command::Status { json } => status(cli.common, json).await,
        Command::Projector {
            command: ProjectorCommand::Rebuild { batch },
        } => rebuild(cli.common, batch).await,
        Command::Projector {
            command: ProjectorCommand::Quarantine { command },
        } => quarantine::run(cli.common, command).await,
        Command::Sessions {
            command:
                SessionsCommand::Revoke {
                    tenant,
                    user,
                    session,
                    reason,
                },
        } => {
            let (_, log) = connect_nats(&cli.common).await?;
            let operator = std::env::var("USER").unwrap_or_else(|_| "operator".into());
            let sequence = rollcall_scim_api::operator::revoke_sessions(
                &log,
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
        Command::Revocations {
            command: RevocationsCommand::Watch { with_state },
        } => watch(cli.common, with_state).await,
        Command::Bench(args) => bench::run(cli.common, args).await,
        Command::Audit { command } => audit(cli.common, command).await,
        Command::Oidc {
            command:
                OidcCommand::Check {
                    oidc,
                    cookie_domain,
                },
        } => oidc_check(&oidc, cookie_domain.as_deref()).await,
    }
}

async fn oidc_check(
    config: &rollcall_access::oidc::OidcConfig,
    cookie_domain: Option<&str>,
) -> anyhow::Result<()> {
    let rp = match rollcall_access::oidc::RelyingParty::from_config(config, cookie_domain) {
        Ok(Some(rp)) => rp,
        Ok(None) => anyhow::bail!("sign-in is not configured: set ROLLCALL_OIDC_ISSUER (Entra ID: https://login.microsoftonline.com/<tenant id>/v2.0)"),
        Err(problem) => anyhow::bail!("{problem}"),
    };
    println!(
        "Checking sign-in with {} as client {}",
        rp.issuer(),
        config.client_id.as_deref().unwrap_or_default()
    );
    let lines = rp.check().await;
    for (ok, line) in &lines {
        println!("  {} {line}", if *ok { "ok  " } else { "FAIL" });
    }
    if lines.iter().any(|(ok, _)| !ok) {
        anyhow::bail!("the sign-in configuration has problems (above)");
    }
    println!("Sign-in is ready.");
    Ok(())
}

async fn tenants(common: Common, command: TenantsCommand) -> anyhow::Result<()> {
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

async fn tokens(common: Common, command: TokensCommand) -> anyhow::Result<()> {
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

async fn status(common: Common, json: bool) -> anyhow::Result<()> {
    let (_, log) = connect_nats(&common).await?;
    let store = connect_store(&common).await?;
    let head = log.head().await?;
    let checkpoint = store.checkpoint(rollcall_projector::DEFAULT_NAME).await?;
    let lag = head.saturating_sub(checkpoint);
    let quarantined = store.quarantine(false).await?;
    let failed = quarantined
        .iter()
        .filter(|row| row.status == "failed")
        .count();
    if json {
        println!(
            "{}",
            json!({"stream": log.namespace().stream(), "head": head, "projector": {"checkpoint": checkpoint, "lag": lag,
                   "quarantine": {"failed": failed, "held": quarantined.len() - failed,
                                  "sequences": quarantined.iter().map(|row| row.sequence).collect::<Vec<_>>()}}})
        );
    } else {
        println!("stream               {}\nstream head          {head}\nprojector checkpoint {checkpoint}\nprojector lag        {lag}", log.namespace().stream());
        if quarantined.is_empty() {
            println!("quarantine           empty");
        } else {
            println!(
                "quarantine           {failed} failed, {} held: see `rollcall projector quarantine list`",
                quarantined.len() - failed
            );
        }
    }
    Ok(())
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

async fn audit(common: Common, command: AuditCommand) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[tokio::test]
    async fn oidc_check_reads_its_settings_and_refuses_a_secret_id() {
        let cli = Cli::try_parse_from([
            "rollcall",
            "oidc",
            "check",
            "--oidc-issuer",
            "https://login.microsoftonline.com/0a1b2c3d-0000-0000-0000-000000000000/v2.0",
            "--oidc-client-id",
            "app",
            "--oidc-client-secret",
            "7f0e8a52-3c1d-4b6e-9a8f-2d5c4b3a1e0f",
            "--oidc-redirect-url",
            "https://auth.example.com/oauth2/callback",
        ])
        .unwrap();
        let Command::Oidc {
            command:
                OidcCommand::Check {
                    oidc,
                    cookie_domain,
                },
        } = cli.command
        else {
            panic!("not oidc check");
        };
        assert_eq!(oidc.client_id.as_deref(), Some("app"));
        // A GUID is the secret's ID, not its value: refused before any network call.
        let error = oidc_check(&oidc, cookie_domain.as_deref())
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("Value"), "{error}");
        let unset = oidc_check(&rollcall_access::oidc::OidcConfig::default(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(unset.contains("not configured"), "{unset}");
    }

    #[test]
    fn tenants_create_takes_a_name_and_json() {
        let cli = Cli::try_parse_from(["rollcall", "tenants", "create", "acme", "--json"]).unwrap();
        assert!(
            matches!(cli.command, Command::Tenants { command: TenantsCommand::Create { ref name, json: true, .. } } if name == "acme")
        );
    }
}
