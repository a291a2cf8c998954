#!/usr/bin/env bash
# Entry point of `npm run bench`: makes sure the peers we compare against (PgBouncer, pgpool-II) are installed,
# then runs the relay benchmark, passing on its arguments (for example `--duration 20`).
# The peers come from Debian's packages so that a fresh machine needs nothing installed by hand.
set -euo pipefail

cd "$(dirname "$0")/.."

# Debian puts pgpool in /usr/sbin, which a non-login root shell may lack on PATH.
export PATH="$PATH:/usr/sbin:/sbin"

if ! command -v pgbouncer >/dev/null 2>&1 || ! command -v pgpool >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench: pgbouncer or pgpool is missing and installing them needs root (apt-get install pgbouncer pgpool2)" >&2
    exit 1
  fi
  echo "bench: installing pgbouncer and pgpool2 from Debian packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || { echo "bench: apt-get update failed" >&2; exit 1; }
  apt-get install -y -qq pgbouncer pgpool2 >/dev/null || { echo "bench: apt-get install pgbouncer pgpool2 failed" >&2; exit 1; }
  for program in pgbouncer pgpool; do
    command -v "$program" >/dev/null 2>&1 || { echo "bench: $program is still not on PATH after installing" >&2; exit 1; }
  done
fi

if [ ! -f dist/bench/relay-bench.js ]; then
  echo "bench: dist/bench/relay-bench.js is missing; build first (npm run bench does)" >&2
  exit 1
fi

exec node dist/bench/relay-bench.js "$@"
