#!/usr/bin/env bash
# Makes sure PostgreSQL and NATS (with JetStream) answer at the URLs Rollcall and its tests use,
# starting them (and installing Debian's packages) only where they are missing.
# Usage: scripts/services.sh        (idempotent; prints what it did)
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() {
  local name=$1 host=$2 port=$3
  for _ in $(seq 1 100); do
    listening "$host" "$port" && { echo "services: $name is up on $host:$port"; return 0; }
    sleep 0.1
  done
  echo "services: $name did not come up on $host:$port" >&2
  return 1
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "services: $* missing and not root; install it (Debian: apt-get install $*)" >&2
    return 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if listening 127.0.0.1 5432; then
  echo "services: PostgreSQL already listening on 127.0.0.1:5432"
else
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  # Trust auth on loopback for the postgres user, as on the development machines.
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  grep -q '^host all postgres 127.0.0.1/32 trust' "$hba" 2>/dev/null ||
    sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba" 2>/dev/null || true
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for PostgreSQL 127.0.0.1 5432
fi

if listening 127.0.0.1 4222; then
  echo "services: NATS already listening on 127.0.0.1:4222"
else
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_for NATS 127.0.0.1 4222
fi
