//! Every input that once broke an invariant of [`crate::invariants`], replayed: the files in
//! `fixtures/fuzz/<target>/` (a fuzzer's crash inputs, copied there by `scripts/fuzz.sh`, and
//! hand-made hostile inputs), each fed as raw bytes to the invariant of its target.

use std::path::{Path, PathBuf};

use crate::invariants;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fuzz")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

/// Replays every input of `target` on a thread with a small stack (256 KiB, an eighth of a
/// test thread's), so that an input that makes some walk recurse along its length fails here.
fn replay(target: &'static str, invariant: fn(&[u8])) {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            for (path, bytes) in inputs(target) {
                let outcome = std::panic::catch_unwind(|| invariant(&bytes));
                assert!(outcome.is_ok(), "{} breaks an invariant", path.display());
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn no_filter_that_once_broke_an_invariant_breaks_one_now() {
    replay("filter", invariants::filter);
}

#[test]
fn no_patch_that_once_broke_an_invariant_breaks_one_now() {
    replay("patch", invariants::patch);
}

#[test]
fn no_resource_that_once_broke_an_invariant_breaks_one_now() {
    replay("resource", |bytes| {
        invariants::resource(bytes);
    });
}
