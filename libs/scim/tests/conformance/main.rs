//! Conformance of rollcall-scim: every filter and PATCH example of RFC 7644 and every request
//! shape of ENTRA.md, run from the JSON fixtures in `libs/scim/fixtures/`, plus property tests of
//! the parsers and of the invariants hostile input must not break, and the replay of every input
//! a fuzzer once broke them with.

// Test code may unwrap (STYLE.md §3); helpers outside #[test] functions need saying so.
#![allow(clippy::unwrap_used)]

mod fixtures;
mod invariants;
mod properties;
mod regressions;
