//! Hostile SCIM values: control characters, oversize values and counts, events past NATS's max_payload, case folding. Each test asserts the refusal and that another tenant is unaffected.

#[allow(unused_imports)]
use rollcall_it::TestEnv;
