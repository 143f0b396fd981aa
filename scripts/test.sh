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

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked
