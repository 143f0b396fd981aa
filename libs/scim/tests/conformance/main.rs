//! Conformance of rollcall-scim: every filter and PATCH example of RFC 7644 and every request
//! shape of ENTRA.md, run from the JSON fixtures in `libs/scim/fixtures/`, plus property tests of
//! the parsers.

// Test code may unwrap (STYLE.md §3); helpers outside #[test] functions need saying so.
#![allow(clippy::unwrap_used)]

mod fixtures;
mod properties;
