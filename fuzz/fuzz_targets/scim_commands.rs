//! SCIM JSON → domain commands: create cases (`{"type", "request"}`) and PATCH cases
//! (`{"type", "before", "request"}`) through rollcall-scim, scim-api's `mapping` and the
//! domain's `decide` (the invariant: `services/scim-api/tests/hostile_input.rs`).
#![no_main]

#[allow(dead_code)]
#[path = "../../services/scim-api/tests/hostile_input.rs"]
mod hostile_input;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile_input::scim_commands(data));
