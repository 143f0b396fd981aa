//! Hostile filters and quadratic inputs: long and/or chains, deep nesting, huge multi-valued attributes. Each test asserts the refusal and that another tenant is unaffected.

#[allow(unused_imports)]
use rollcall_it::TestEnv;
