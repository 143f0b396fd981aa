#!/usr/bin/env bash
# Fuzzes Rollcall's hostile-input invariants with cargo-fuzz (libFuzzer), each target for a
# bounded time, and copies every input that breaks one into the regression fixtures that
# `cargo test` replays. Not part of the test command (.ci/run): the fuzz crate is excluded from
# the workspace.
#
# Targets (fuzz/fuzz_targets/), the invariant each checks, and where its failing inputs go:
#   filter         filter parser + matcher          libs/scim/fixtures/fuzz/filter/
#   patch          PATCH engine                      libs/scim/fixtures/fuzz/patch/
#   scim_commands  SCIM JSON -> domain commands      services/scim-api/fixtures/fuzz/scim_commands/
#   policy_path    access policy path matcher        services/access/fixtures/fuzz/policy_path/
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]    (default: 60 seconds each, every target)
# Exits 1 if any target found an input; the inputs are then in the fixture directories above
# (fix the cause, keep the file: `cargo test` replays it from then on).
#
# Environment: ROLLCALL_FUZZ_SANITIZER (address where the toolchain ships its runtime, else none),
# ROLLCALL_FUZZ_TARGET_DIR (default ~/.cache/rollcall/fuzz-target: its own, because the
# instrumented build's flags would otherwise rebuild the workspace's shared cache),
# ROLLCALL_FUZZ_JOBS (parallel libFuzzer workers per target, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(filter patch scim_commands policy_path)
fi
jobs="${ROLLCALL_FUZZ_JOBS:-1}"
target_dir="${ROLLCALL_FUZZ_TARGET_DIR:-$HOME/.cache/rollcall/fuzz-target}"

regressions() {
  case "$1" in
    filter) echo libs/scim/fixtures/fuzz/filter ;;
    patch) echo libs/scim/fixtures/fuzz/patch ;;
    scim_commands) echo services/scim-api/fixtures/fuzz/scim_commands ;;
    policy_path) echo services/access/fixtures/fuzz/policy_path ;;
    *) echo "fuzz: unknown target $1" >&2; return 1 ;;
  esac
}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# libFuzzer's instrumentation takes unstable compiler flags; a stable toolchain allows them
# with RUSTC_BOOTSTRAP (the same compiler, not a nightly one).
if ! rustc -V | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi

# Fuzz the versions the workspace tests (cargo then adds libFuzzer's few crates).
if [ ! -f fuzz/Cargo.lock ] || [ Cargo.lock -nt fuzz/Cargo.lock ]; then
  cp Cargo.lock fuzz/Cargo.lock
fi

# AddressSanitizer where the toolchain ships its runtime (rustup's x86_64 Linux toolchains,
# stable included, do), none otherwise. Decided without building: a build that fails for
# another reason must fail, not switch sanitizers (and rebuild everything with other flags).
sanitizer="${ROLLCALL_FUZZ_SANITIZER:-}"
if [ -z "$sanitizer" ]; then
  if compgen -G "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/lib/*_rt.asan.a" >/dev/null; then
    sanitizer=address
  else
    echo "fuzz: this toolchain has no AddressSanitizer runtime; fuzzing without a sanitizer" >&2
    sanitizer=none
  fi
fi
echo "fuzz: sanitizer $sanitizer, $seconds s per target: ${targets[*]}"

# Seed corpora from the fixtures: one file per case, as each target reads them.
seed() {
  local target=$1 corpus=fuzz/corpus/$1
  mkdir -p "$corpus"
  python3 - "$target" "$corpus" <<'PY'
import glob, hashlib, json, os, sys

target, corpus = sys.argv[1], sys.argv[2]

def put(data):
    data = data if isinstance(data, bytes) else data.encode()
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(corpus, name), "wb") as out:
        out.write(data)

def load(path):
    with open(path) as f:
        return json.load(f)

fixtures = "libs/scim/fixtures"
if target == "filter":
    for case in load(f"{fixtures}/filters.json")["cases"]:
        put(case["filter"])
    paths = load(f"{fixtures}/paths.json")
    for text in paths["parse"] + paths["refuse"]:
        put(text)
if target in ("patch", "scim_commands"):
    for path in sorted(glob.glob(f"{fixtures}/patch/*.json")):
        for case in load(path):
            put(json.dumps({"type": case["type"], "before": case["before"], "request": case["request"]}))
if target == "scim_commands":
    for path in sorted(glob.glob(f"{fixtures}/create/*.json")):
        for case in load(path):
            put(json.dumps({"type": case["type"], "request": case["request"]}))
    for path in sorted(glob.glob(f"{fixtures}/fuzz/resource/*")):
        put(open(path, "rb").read())
if target == "policy_path":
    for line in ["wiki.test\n/", "wiki.test\n/admin/x", "WIKI.test:8443\n/Settings/a",
                 "x.wiki.test\n/public/%41dmin", "[::1]\n/admin/public/../public/", "wiki.test\n/a/b/c/./d?q=1"]:
        put(line)
PY
  # Every input that ever broke the target seeds it too.
  cp "$(regressions "$target")"/* "$corpus"/ 2>/dev/null || true
}

found=()
for target in "${targets[@]}"; do
  seed "$target"
  artifacts="fuzz/artifacts/$target"
  mkdir -p "$artifacts"
  before=$(mktemp)
  ls "$artifacts" >"$before"
  options=()
  [ -f "fuzz/dictionaries/$target.dict" ] && options+=("-dict=fuzz/dictionaries/$target.dict")
  [ "$jobs" -gt 1 ] && options+=("-jobs=$jobs" "-workers=$jobs")
  echo "fuzz: $target for $seconds s"
  # -timeout: an input taking 10 s is a hang, reported as one; -rss_limit_mb: 2 GiB is an
  # out-of-memory finding. A finding ends the run of this target with a non-zero exit.
  set +e
  cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$target" \
    "fuzz/corpus/$target" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "${options[@]}"
  status=$?
  set -e
  new_artifacts=$(ls "$artifacts" | grep -vxFf "$before" || true)
  if [ "$status" -ne 0 ] && [ -z "$new_artifacts" ]; then
    echo "fuzz: $target failed to build or run (exit $status) without a finding; see above" >&2
    exit "$status"
  fi
  for artifact in $new_artifacts; do
    destination="$(regressions "$target")/$artifact"
    cp "$artifacts/$artifact" "$destination"
    found+=("$destination")
  done
  rm -f "$before"
done

if [ "${#found[@]}" -gt 0 ]; then
  echo "fuzz: inputs that break an invariant (now regression fixtures; fix their cause):"
  printf '  %s\n' "${found[@]}"
  exit 1
fi
echo "fuzz: no target found an input that breaks its invariant"
