//! Hostile requests to the access service: spoofed proxy headers, path variants, redirect variants, forged identity headers. Each test asserts the refusal and that another tenant is unaffected.

#[allow(unused_imports)]
use rollcall_it::TestEnv;
