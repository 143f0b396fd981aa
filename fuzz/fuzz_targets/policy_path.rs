//! The access policy path matcher: a host and a path normalized as the access service does,
//! then matched against policies (the invariant: `services/access/tests/hostile_input.rs`).
#![no_main]

#[allow(dead_code)]
#[path = "../../services/access/tests/hostile_input.rs"]
mod hostile_input;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile_input::policy_path(data));
