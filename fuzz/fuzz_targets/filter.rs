//! The filter parser and matcher: any bytes as a filter, a PATCH path and an attribute path.
//! Parsing never panics, what parses prints back to the same AST, and checking, matching and
//! running it as a query never panic (`invariants::filter`).
#![no_main]

#[allow(dead_code)]
#[path = "../../libs/scim/tests/conformance/invariants.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariants::filter(data));
