//! rollcall-eventlog: Rollcall's immutable event log on NATS JetStream (2.9 or later).
//!
//! - one stream per installation namespace, file storage, `deny_delete` and `deny_purge`;
//! - subjects `<namespace>.events.<tenant>.<user|group>.<aggregate id>`;
//! - append with `Nats-Expected-Last-Subject-Sequence` (optimistic concurrency per aggregate)
//!   and `Nats-Msg-Id` = event id (the duplicate window absorbs retried publishes); a write of
//!   several events is one message (a commit), so it lands whole or not at all;
//! - set-wide rules (a userName per tenant) as claims in a key-value bucket, created only if
//!   absent;
//! - durable consumers whose position is reconciled with the consumer's own checkpoint;
//! - one server or a cluster (`NATS_URL` a comma-separated list; streams and buckets kept by
//!   [`Namespace::replicas`] servers).
#![warn(missing_docs)]

pub mod access;
pub mod chain;
pub mod claims;
pub mod connect;
pub mod consumer;
pub mod envelope;
pub mod fault;
pub mod kv;
pub mod log;
pub mod namespace;
pub mod partition;
pub mod quarantine;
mod replicas;

pub use claims::{Claim, Claims};
pub use connect::{connect, ConnectError};
pub use envelope::{Actor, Envelope};
pub use log::{AppendError, EventLog, LoadError, Loaded};
pub use namespace::Namespace;
