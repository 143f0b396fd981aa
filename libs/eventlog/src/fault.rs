//! Fault injection for the tests that kill a writer in the middle of a write: a named point
//! aborts the process (as `kill -9` would: no destructor, no flush, no goodbye to NATS or
//! PostgreSQL) when the environment variable `ROLLCALL_FAULT` names it. Debug builds only; in a
//! release build a point compiles to nothing and the variable is never read.
//!
//! A write is one message (see [`crate::envelope::encode_commit`]), so its points are the
//! moments around that one publish.

/// The variable naming the point to abort at.
pub const VARIABLE: &str = "ROLLCALL_FAULT";

/// The write is encoded; nothing is sent yet.
pub const APPEND_ENCODED: &str = "eventlog.append.encoded";

/// The write's message has been sent to the server (flushed); its acknowledgement is not
/// awaited yet.
pub const APPEND_SENT: &str = "eventlog.append.sent";

/// The stream acknowledged the write; the SCIM response is not sent yet.
pub const WRITE_APPENDED: &str = "scim.write.appended";

/// A rebuild batch's audit records are committed; its other rows and its checkpoint are not.
pub const REBUILD_JOURNAL_COMMITTED: &str = "projector.rebuild.journal-committed";

/// A rebuild batch's audit records are committed; the commit of its other rows fails (an
/// error, not an abort: the rebuild must stop, not apply the batch again event by event).
pub const REBUILD_ROWS_COMMIT_FAILS: &str = "projector.rebuild.rows-commit-fails";

/// Whether `ROLLCALL_FAULT` names `name` (always false in release builds).
pub fn armed(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var(VARIABLE).is_ok_and(|value| value == name)
}

/// Aborts the process here if `ROLLCALL_FAULT` names `name` (debug builds only).
#[inline]
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    if armed(name) {
        eprintln!("{VARIABLE}={name}: aborting the process at this fault point");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_nobody_named_is_not_armed() {
        assert!(!armed("eventlog.test.never-named"));
        point("eventlog.test.never-named");
    }
}
