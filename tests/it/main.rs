//! End-to-end tests of Rollcall against the real NATS and PostgreSQL on this machine, over
//! real HTTP. One module per behaviour.
#![allow(clippy::unwrap_used)]

mod access;
mod access_as_of;
mod atomic_writes;
mod audit;
mod browser;
mod cluster;
mod concurrency;
mod entra_groups;
mod entra_users;
mod hostile_access;
mod hostile_audit;
mod hostile_filters;
mod hostile_pipeline;
mod hostile_scim_input;
mod lookup_index;
mod metrics;
mod partitions;
mod personal_data;
mod policies;
mod projector;
mod replicas;
mod roles;
mod security;
mod session_keys;
mod signin;
mod ssf;
