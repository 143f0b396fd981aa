//! The command line: the `rollcall` command, the settings every command shares ([`Common`])
//! and the commands. Each command group's subcommands and code live in
//! [`crate::commands`]; the benchmark's in [`crate::bench`].

use clap::{Args, Parser, Subcommand};

use crate::commands::{
    access, audit, migrate, oidc, policies, projector, revocations, serve, sessions, ssf, tenants,
    tokens, users,
};

/// Rollcall: identity lifecycle from Entra ID (SCIM 2.0) to immutable events, read models and
/// immediate access decisions.
#[derive(Debug, Parser)]
#[command(name = "rollcall", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
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
    /// NATS URL, or a comma-separated list of the servers of a cluster (JetStream must be
    /// enabled).
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
    /// Servers of a JetStream cluster that keep each stream, key-value bucket and consumer:
    /// 1 on a single server, 3 on a three-node cluster. Existing streams kept by fewer are
    /// raised to it at start; none is ever lowered automatically.
    #[arg(long, env = "ROLLCALL_REPLICAS", default_value_t = 1, global = true)]
    pub replicas: usize,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Rollcall's services in this process: every role, or those --roles names.
    Serve(Box<serve::ServeArgs>),
    /// Manage tenants.
    Tenants {
        #[command(subcommand)]
        command: tenants::TenantsCommand,
    },
    /// Manage API tokens.
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
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
        command: projector::ProjectorCommand,
    },
    /// The policy tester: why a user may or may not reach a URL, and who may.
    Access {
        #[command(subcommand)]
        command: access::AccessCommand,
    },
    /// Applications and their policies on the event stream: apply a policy file, export.
    Policies {
        #[command(subcommand)]
        command: policies::PoliciesCommand,
    },
    /// One-off migrations of the installation's data (sealing personal fields of old events).
    Migrate {
        #[command(subcommand)]
        command: migrate::MigrateCommand,
    },
    /// A person's data (GDPR): erase a user, export a user's data, rewrap data keys.
    Users {
        #[command(subcommand)]
        command: users::UsersCommand,
    },
    /// Revoke users' sessions.
    Sessions {
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
    /// Follow the revocation and access-state contract on NATS.
    Revocations {
        #[command(subcommand)]
        command: revocations::RevocationsCommand,
    },
    /// Measure Rollcall next to the machine's limits (a private in-process instance).
    Bench(crate::bench::BenchArgs),
    /// Tamper evidence: verify the audit history, sign checkpoints.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Shared Signals (SSF, CAEP, RISC): streams, signing keys, and a receiver to try them.
    Ssf {
        #[command(subcommand)]
        command: ssf::SsfCommand,
    },
    /// Sign-in with Entra ID (OpenID Connect).
    Oidc {
        #[command(subcommand)]
        command: oidc::OidcCommand,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tenants_create_takes_a_name_and_json() {
        let cli = Cli::try_parse_from(["rollcall", "tenants", "create", "acme", "--json"]).unwrap();
        assert!(
            matches!(cli.command, Command::Tenants { command: tenants::TenantsCommand::Create { ref name, json: true, .. } } if name == "acme")
        );
    }

    #[test]
    fn a_rebuild_of_no_events_is_refused_by_the_benchmark() {
        let bench = |events: &str| {
            Cli::try_parse_from([
                "rollcall",
                "bench",
                "--only",
                "rebuild",
                "--rebuild-events",
                events,
            ])
        };
        let refused = bench("0")
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(refused.contains("--rebuild-events"), "{refused}");
        assert!(bench("300000").is_ok());
    }
}
