//! `rollcall policies apply|export`: applications and their policies as events on the stream,
//! from and to a policy file (the TOML of `ROLLCALL_ACCESS_POLICIES`).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use rollcall_access::applications::{self, Plan};
use rollcall_access::directory::Directory;
use rollcall_access::policy::Policies;
use rollcall_eventlog::{Actor, EventLog};
use uuid::Uuid;

use crate::cli::Common;
use crate::connection::connect_nats;

/// The policies' commands.
#[derive(Debug, Subcommand)]
pub enum PoliciesCommand {
    /// Make the event stream hold exactly the applications of a policy file: print what
    /// changes (`+` configured, `~` changed, `-` removed), then append it as application
    /// events that every access service applies. Applications on the stream that the file
    /// does not declare are removed.
    Apply {
        /// The policy file (TOML, as for ROLLCALL_ACCESS_POLICIES).
        file: PathBuf,
        /// Print what would change; append nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who applies it (recorded as the events' actor).
        #[arg(long, env = "USER", default_value = "operator")]
        operator: String,
    },
    /// Print the applications on the event stream as a policy file (TOML).
    Export {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs a policies command.
pub async fn run(common: Common, command: PoliciesCommand) -> anyhow::Result<()> {
    let (client, log) = connect_nats(&common).await?;
    match command {
        PoliciesCommand::Apply {
            file,
            dry_run,
            operator,
        } => {
            // A dry run also says who gains and who loses access, from the state now.
            let directory = match dry_run {
                true => Some(
                    rollcall_access::feed::load(&client, log.namespace())
                        .await
                        .context("reading the access state")?,
                ),
                false => None,
            };
            let mut out = std::io::stdout().lock();
            apply(
                &log,
                &file,
                dry_run,
                &operator,
                directory.as_ref(),
                &mut out,
            )
            .await?;
            Ok(())
        }
        PoliciesCommand::Export { out } => {
            let text = export(&log).await?;
            match out {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display())),
                None => Ok(std::io::stdout().lock().write_all(text.as_bytes())?),
            }
        }
    }
}

/// Reads and checks `file`, prints what differs from the stream's applications to `out` and,
/// unless `dry_run`, appends it as events by `operator`. A dry run given the access state
/// also prints, per application, who gains and who loses access. A file that does not check
/// appends nothing. Returns the plan printed.
pub async fn apply(
    log: &EventLog,
    file: &Path,
    dry_run: bool,
    operator: &str,
    directory: Option<&Directory>,
    out: &mut impl Write,
) -> anyhow::Result<Plan> {
    let declared = rollcall_access::read_policy_file(file)?;
    let plan = if dry_run {
        let catalog = rollcall_access::folded::read::<applications::Catalog>(log)
            .await
            .context("reading the applications")?;
        let plan = catalog.plan(&declared);
        write!(out, "{}", plan.describe())?;
        if let Some(directory) = directory {
            let after = Policies::compile(&declared, 0)?;
            write!(
                out,
                "{}",
                who_changes(directory, &catalog.policies(), &after, &plan)
            )?;
        }
        plan
    } else {
        let actor = Actor::Operator {
            name: operator.to_owned(),
        };
        let request = format!("cli-{}", Uuid::now_v7());
        let (plan, sequence) = applications::apply_declared(log, &declared, &actor, &request)
            .await
            .map_err(anyhow::Error::msg)?;
        write!(out, "{}", plan.describe())?;
        if !plan.is_empty() {
            writeln!(
                out,
                "appended {} change(s) up to sequence {sequence}",
                plan.changes.len()
            )?;
        }
        plan
    };
    if dry_run && !plan.is_empty() {
        writeln!(out, "dry run: nothing appended")?;
    }
    if plan.is_empty() {
        writeln!(out, "no change: the stream holds this file's applications")?;
    }
    Ok(plan)
}

/// The applications on the stream as a policy file.
pub async fn export(log: &EventLog) -> anyhow::Result<String> {
    let catalog = rollcall_access::folded::read::<applications::Catalog>(log)
        .await
        .context("reading the applications")?;
    Ok(Policies::write_file(&catalog.declared())?)
}

/// Per changed application, who gains and who loses access (`before` and `after` the plan),
/// by the users' state now.
pub fn who_changes(
    directory: &Directory,
    before: &Policies,
    after: &Policies,
    plan: &Plan,
) -> String {
    let find = |policies: &'_ Policies, tenant: &str, name: &str| {
        policies
            .applications
            .iter()
            .find(|app| app.tenant == tenant && app.name == name)
            .map(|app| super::access::allowed(directory, app))
            .unwrap_or_default()
    };
    let mut text = String::new();
    for change in &plan.changes {
        let was = find(before, &change.tenant, &change.name);
        let will = find(after, &change.tenant, &change.name);
        let ids = |users: &[super::access::Allowed]| -> HashSet<Uuid> {
            users.iter().map(|u| u.id).collect()
        };
        let (had, has) = (ids(&was), ids(&will));
        let gains: Vec<_> = will.iter().filter(|u| !had.contains(&u.id)).collect();
        let losses: Vec<_> = was.iter().filter(|u| !has.contains(&u.id)).collect();
        if gains.is_empty() && losses.is_empty() {
            continue;
        }
        text.push_str(&format!(
            "  application {:?} of tenant {:?}: {} gain access, {} lose it\n",
            change.name,
            change.tenant,
            gains.len(),
            losses.len()
        ));
        for user in gains {
            text.push_str(&format!(
                "    + {} ({}) by policy {:?}\n",
                user.user_name, user.id, user.policy
            ));
        }
        for user in losses {
            text.push_str(&format!("    - {} ({})\n", user.user_name, user.id));
        }
    }
    text
}
