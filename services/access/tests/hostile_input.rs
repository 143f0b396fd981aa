//! The policy path matcher under hostile input: the invariant the `policy_path` fuzz target
//! checks (`fuzz/fuzz_targets/policy_path.rs` includes this file), and the replay of every
//! input that once broke it (`fixtures/fuzz/policy_path/`, copied there by `scripts/fuzz.sh`).
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use rollcall_access::policy::Policies;
use rollcall_access::target::Target;

/// Applications to match against: exact and wildcard hosts, nested path prefixes (the longest
/// wins), a bypass, upper case in the file.
const POLICIES: &str = r#"
[[application]]
name = "wiki"
tenant = "test"
hosts = ["wiki.test", "*.wiki.test"]
[[application.policy]]
name = "everyone"
action = "allow"
include = [{ everyone = true }]

[[application]]
name = "wiki-admin"
tenant = "test"
hosts = ["wiki.test"]
paths = ["/admin", "/Settings/", "/a/b/c"]
[[application.policy]]
name = "admins"
action = "allow"
include = [{ group = "Admins" }]

[[application]]
name = "public"
tenant = "test"
hosts = ["WIKI.test", "[::1]"]
paths = ["/public/", "/admin/public"]
[[application.policy]]
name = "anyone"
action = "bypass"
include = [{ everyone = true }]
"#;

fn policies() -> &'static Policies {
    static PARSED: OnceLock<Policies> = OnceLock::new();
    PARSED.get_or_init(|| Policies::parse(POLICIES).expect("the fuzz policies parse"))
}

/// A host and a path (the input's first line, and the rest; the host is `wiki.test` if there
/// is one line), normalized as the access service does and matched against [`POLICIES`].
/// Nothing panics; the normal form is accepted and normalizes to itself, and meets the same
/// application.
pub fn policy_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (host, path) = text.split_once('\n').unwrap_or(("wiki.test", text));
    let _ = policies().application(host, path);
    let Ok(target) = Target::new(host, path) else {
        return;
    };
    let again = Target::new(target.host(), target.path())
        .unwrap_or_else(|e| panic!("the normal form {target:?} is refused: {e}"));
    assert_eq!(again, target, "normalizing twice changed the target");
    let app = |t: &Target| {
        policies()
            .application(t.host(), t.path())
            .map(|a| a.name.clone())
    };
    assert_eq!(app(&target), app(&again));
}

#[test]
fn no_input_that_once_broke_policy_matching_breaks_it_now() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fuzz/policy_path");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| policy_path(&bytes));
        assert!(outcome.is_ok(), "{} breaks an invariant", file.display());
    }
}
