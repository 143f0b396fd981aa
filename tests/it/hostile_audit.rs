//! Hostile use of the audit API: pool exhaustion by unread exports, wrong ids, bad path values. Each test asserts the refusal and that another tenant is unaffected.

#[allow(unused_imports)]
use rollcall_it::TestEnv;
