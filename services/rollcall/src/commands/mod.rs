//! The operator commands, one module per command group. Each module holds its group's
//! subcommands (clap) and what they do; [`crate::cli::Command`] lists the groups.

pub mod access;
pub mod audit;
pub mod migrate;
pub mod oidc;
pub mod policies;
pub mod projector;
pub mod revocations;
pub mod serve;
pub mod sessions;
pub mod ssf;
pub mod status;
pub mod tenants;
pub mod tokens;
pub mod users;
