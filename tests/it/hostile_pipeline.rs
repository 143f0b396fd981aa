//! Poison events, oversize access state and faults: the pipeline goes on for every other tenant, and a 2xx is kept. Each test asserts the refusal and that another tenant is unaffected.

#[allow(unused_imports)]
use rollcall_it::TestEnv;
