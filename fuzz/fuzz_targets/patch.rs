//! The PATCH engine: `{"type", "before", "request"}` cases. Applying any PATCH to any document
//! the schema accepts never panics and yields a document the schema accepts as it stands
//! (`invariants::patch`).
#![no_main]

#[allow(dead_code)]
#[path = "../../libs/scim/tests/conformance/invariants.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|data: &[u8]| invariants::patch(data));
