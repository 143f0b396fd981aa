//! Rollcall's composition root and operator commands. [`instance::Instance`] starts the chosen
//! [roles](role) over shared [connections](connection); `rollcall serve`
//! ([`commands::serve`]), the end-to-end tests and the benchmark ([`bench`]) all start Rollcall
//! through it. [`cli`] defines the command line; the `rollcall` binary only dispatches.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod connection;
pub mod instance;
pub mod migrate;
pub mod ops;
pub mod role;

pub use connection::{connect_nats, connect_store, Connections};
pub use instance::{Instance, InstanceHandle};
pub use role::{Role, Roles};
