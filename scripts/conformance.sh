#!/usr/bin/env bash
# SCIM 2.0 conformance: runs scim2-cli's compliance checks (scim2-tester) against a freshly
# started `rollcall serve` with an empty tenant, then removes everything it created.
# Usage: scripts/conformance.sh            (needs a built target/debug/rollcall, PostgreSQL, NATS)
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-$HOME/.cache/rollcall/target}"
rollcall="$target/debug/rollcall"
venv="${ROLLCALL_VENV:-$HOME/.cache/rollcall/venv}"
pg_server="${ROLLCALL_TEST_DATABASE_SERVER:-postgres://postgres@127.0.0.1:5432}"

if [ ! -x "$venv/bin/scim2" ]; then
  echo "conformance: installing scim2-cli into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check scim2-cli
fi

run="$(date +%s)$$"
namespace="conformance-$run"
database="rollcall_conformance_$run"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
access_port=$(free_port)
audit_port=$(free_port)
otlp_port=$(free_port)
otlp_log=$(mktemp)
scripts/otlp-receiver.py "$otlp_port" "$otlp_log" &
receiver=$!
log=$(mktemp)
export DATABASE_URL="$pg_server/$database" ROLLCALL_NAMESPACE="$namespace" ROLLCALL_SCIM_ADDR="127.0.0.1:$port" ROLLCALL_ACCESS_ADDR="127.0.0.1:$access_port" ROLLCALL_AUDIT_ADDR="127.0.0.1:$audit_port" RUST_LOG="${RUST_LOG:-warn}"

cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  kill "$receiver" 2>/dev/null || true
  rm -f "$otlp_log"
  psql "$pg_server/postgres" -qc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 || true
  stream=$(echo "$namespace" | tr 'a-z-' 'A-Z_')
  bucket_prefix="KV_$(echo "$namespace" | tr '-' '_')"
  scripts/nats-delete-streams.py "${stream}_EVENTS" "${bucket_prefix}_claims" "${bucket_prefix}_access" >/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT

OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" "$rollcall" serve >"$log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; echo "conformance: rollcall serve exited" >&2; exit 1; }
  sleep 0.1
done
token=$("$rollcall" tenants create conformance --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
echo "conformance: scim2 test against http://127.0.0.1:$port/scim/v2 (empty tenant)"
status=0
SCIM_CLI_HEADERS="Authorization: Bearer $token" "$venv/bin/scim2" --url "http://127.0.0.1:$port/scim/v2" test || status=$?
# The operator commands against the same installation.
"$rollcall" tokens list --tenant conformance | grep -q "conformance" || { echo "conformance: tokens list lacks the tenant's token" >&2; status=1; }
"$rollcall" status --json | python3 -c 'import json, sys; s = json.load(sys.stdin); assert s["head"] > 0 and s["projector"]["lag"] == 0, s' \
  || { echo "conformance: rollcall status did not show a caught-up projector" >&2; status=1; }
# What an access component sees on NATS: the state of the users the run left behind.
watched=$(timeout 3 "$rollcall" revocations watch --with-state 2>/dev/null | head -n 1 || true)
echo "$watched" | python3 -c 'import json, sys; line = json.loads(sys.stdin.read()); assert "key" in line, line' \
  || { echo "conformance: rollcall revocations watch printed nothing readable: $watched" >&2; status=1; }
# Tamper evidence over what the run wrote: verify, sign a checkpoint, verify against it.
read -r signing_key public_key < <("$rollcall" audit keygen | awk -F': +' '{print $2}' | paste -sd' ')
"$rollcall" audit verify --tenant conformance >/dev/null || { echo "conformance: rollcall audit verify failed" >&2; status=1; }
checkpoint=$(mktemp)
ROLLCALL_AUDIT_SIGNING_KEY="$signing_key" "$rollcall" audit checkpoint --tenant conformance >"$checkpoint"
"$rollcall" audit verify --tenant conformance --checkpoint "$checkpoint" --public-key "$public_key" | grep -q "signed checkpoint matches" \
  || { echo "conformance: the signed checkpoint did not verify" >&2; status=1; }
rm -f "$checkpoint"
# Spans were exported over OTLP: stop the server gracefully (it flushes), then look.
kill -TERM "$server" && wait "$server" 2>/dev/null || true
server=""
grep -q "^/v1/traces [1-9]" "$otlp_log" || { echo "conformance: no spans reached the OTLP endpoint" >&2; status=1; }
if [ "$status" -ne 0 ]; then
  echo "conformance: FAILED (scim2 exit $status); server log:" >&2
  tail -50 "$log" >&2
fi
exit "$status"
