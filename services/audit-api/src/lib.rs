//! The audit API: lifecycle history auditors can query, reconstruct at any instant, export and
//! verify.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod verify;

use rollcall_eventlog::LoadError;
use rollcall_store::StoreError;

/// An audit failure.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// NATS failed.
    #[error(transparent)]
    Log(#[from] LoadError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored data could not be read.
    #[error("{0}")]
    Corrupt(String),
}
