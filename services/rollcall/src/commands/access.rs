//! `rollcall access explain|who`: the policy tester at the command line, on the access state
//! and the applications as NATS holds them now (what every access service decides with).

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use rollcall_access::applications;
use rollcall_access::decision::{self, Decision, Trial};
use rollcall_access::directory::Directory;
use rollcall_access::policy::Policies;
use rollcall_access::target::Target;
use rollcall_eventlog::EventLog;
use serde::Serialize;
use uuid::Uuid;

use crate::cli::Common;
use crate::connection::connect_nats;

/// The policy tester's commands.
#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Print the decision a session of a user would get for a URL now, with every policy of
    /// the application tried and why it matched or not.
    Explain {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The user: id, userName or externalId.
        #[arg(long)]
        user: String,
        /// The URL asked for (https://finance.example.com/x).
        #[arg(long)]
        url: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every user of a tenant allowed to reach a URL now, with the policy that lets each
    /// in.
    Who {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The URL.
        #[arg(long)]
        url: String,
        /// Print JSON (one object a line).
        #[arg(long)]
        json: bool,
    },
}

/// Runs a policy tester command.
pub async fn run(common: Common, command: AccessCommand) -> anyhow::Result<()> {
    let (client, log) = connect_nats(&common).await?;
    let mut out = std::io::stdout().lock();
    match command {
        AccessCommand::Explain {
            tenant,
            user,
            url,
            json,
        } => {
            let (decision, trials) = explain(&client, &log, &tenant, &user, &url).await?;
            if json {
                let answer = serde_json::json!({"decision": decision, "policies": trials});
                writeln!(out, "{answer}")?;
            } else {
                write!(out, "{}", describe(&decision, &trials))?;
            }
        }
        AccessCommand::Who { tenant, url, json } => {
            let allowed = who(&client, &log, &tenant, &url).await?;
            for user in &allowed {
                if json {
                    writeln!(out, "{}", serde_json::to_string(user)?)?;
                } else {
                    writeln!(out, "{}\t{}\t{}", user.id, user.user_name, user.policy)?;
                }
            }
            if !json {
                writeln!(out, "{} user(s) allowed", allowed.len())?;
            }
        }
    }
    Ok(())
}

/// The access state and policies as NATS holds them now.
pub async fn state(
    client: &async_nats::Client,
    log: &EventLog,
) -> anyhow::Result<(Directory, Policies)> {
    let directory = rollcall_access::feed::load(client, log.namespace())
        .await
        .context("reading the access state")?;
    let policies = rollcall_access::folded::read::<applications::Catalog>(log)
        .await
        .context("reading the applications")?
        .policies();
    Ok((directory, policies))
}

/// The host and path of `url`, as forward-auth would match them.
fn target(url: &str) -> anyhow::Result<Target> {
    let parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    let host = parsed
        .host_str()
        .with_context(|| format!("{url:?} has no host"))?;
    Ok(Target::new(host, parsed.path())?)
}

/// The decision a session of `user` would get for `url` now, with every policy tried.
pub async fn explain(
    client: &async_nats::Client,
    log: &EventLog,
    tenant: &str,
    user: &str,
    url: &str,
) -> anyhow::Result<(Decision, Vec<Trial>)> {
    let target = target(url)?;
    let (directory, policies) = state(client, log).await?;
    let (decided, trials) =
        decision::decide_for_user(&directory, &policies, &target, Some(tenant), user);
    Ok((decided.with_policy_version(policies.version), trials))
}

/// A decision and its trials as a person reads them.
pub fn describe(decision: &Decision, trials: &[Trial]) -> String {
    let mut text = format!(
        "{:?}: {} (policy version {})\n",
        decision.outcome, decision.reason, decision.policy_version
    );
    if let Some(application) = &decision.application {
        text.push_str(&format!("application: {application}\n"));
    }
    if let Some(identity) = &decision.identity {
        text.push_str(&format!(
            "user: {} ({}), groups: {}\n",
            identity.user_name,
            identity.id,
            identity.groups.join(", ")
        ));
    }
    for (n, trial) in trials.iter().enumerate() {
        let matched = if trial.matched {
            "matches"
        } else {
            "does not match"
        };
        text.push_str(&format!(
            "  {}. {:?} ({:?}) {matched}: {}\n",
            n + 1,
            trial.policy,
            trial.action,
            trial.why
        ));
    }
    text
}

/// A user allowed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allowed {
    /// The user's id.
    pub id: Uuid,
    /// Their userName.
    pub user_name: String,
    /// The policy that lets them in.
    pub policy: String,
}

/// Every user of `tenant` allowed to reach `url` now, by userName.
pub async fn who(
    client: &async_nats::Client,
    log: &EventLog,
    tenant: &str,
    url: &str,
) -> anyhow::Result<Vec<Allowed>> {
    let target = target(url)?;
    let (directory, policies) = state(client, log).await?;
    let application = policies
        .application(target.host(), target.path())
        .filter(|application| application.tenant == tenant)
        .with_context(|| format!("no application of tenant {tenant:?} serves {url}"))?;
    Ok(allowed(&directory, application))
}

/// Every user of the application's tenant that it lets in, by userName.
pub fn allowed(
    directory: &Directory,
    application: &rollcall_access::policy::Application,
) -> Vec<Allowed> {
    let mut allowed: Vec<Allowed> = directory
        .users(&application.tenant)
        .filter_map(|user| {
            let policy = decision::allowed_by(application, &user)?;
            Some(Allowed {
                id: user.id(),
                user_name: user.user_name().to_owned(),
                policy: policy.to_owned(),
            })
        })
        .collect();
    allowed.sort_by(|a, b| a.user_name.cmp(&b.user_name).then(a.id.cmp(&b.id)));
    allowed
}
