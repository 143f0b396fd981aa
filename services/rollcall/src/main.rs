//! `rollcall`: runs Rollcall (`rollcall serve`) and its operator commands. The command line is
//! [`rollcall::cli`]; each command lives in [`rollcall::commands`] (the benchmark in
//! [`rollcall::bench`]).

use clap::Parser;
use rollcall::cli::{Cli, Command};
use rollcall::commands::{
    access, audit, migrate, oidc, policies, projector, revocations, serve, sessions, ssf, status,
    tenants, tokens, users,
};

/// mimalloc rather than the system allocator: the projector, the rebuild and the SCIM API
/// allocate and free many small JSON values across threads, where glibc's malloc spent half of
/// the rebuild's CPU time (measured with `perf`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { common, command } = Cli::parse();
    match command {
        Command::Serve(args) => serve::run(common, *args).await,
        Command::Tenants { command } => tenants::run(common, command).await,
        Command::Tokens { command } => tokens::run(common, command).await,
        Command::Status { json } => status::run(common, json).await,
        Command::Projector { command } => projector::run(common, command).await,
        Command::Access { command } => access::run(common, command).await,
        Command::Policies { command } => policies::run(common, command).await,
        Command::Sessions { command } => sessions::run(common, command).await,
        Command::Users { command } => users::run(common, command).await,
        Command::Migrate { command } => migrate::run(common, command).await,
        Command::Ssf { command } => ssf::run(common, command).await,
        Command::Revocations { command } => revocations::run(common, command).await,
        Command::Bench(args) => rollcall::bench::run(common, args).await,
        Command::Audit { command } => audit::run(common, command).await,
        Command::Oidc { command } => oidc::run(command).await,
    }
}
