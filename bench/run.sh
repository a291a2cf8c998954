#!/usr/bin/env bash
# Entry point of `npm run bench`: runs the relay benchmark, the load benchmark, the parallel-query benchmark, the
# TPC-H one, all 22 queries, the fault benchmark and the query-cache one (`--only relay|load|parallel|tpch|fault|cache` runs one; parallel and
# tpch are parts of parallel-bench.js, with the same set-up). The fault benchmark (a node killed and recovered under
# pgbench, through parapool and through pgpool-II) is part of the full run: about 3 minutes, against more than 10
# for the rest, for the figures the failover work is judged by. `--only fuzz` runs the protocol fuzzer at bench
# scale (1,000,000 messages; --messages N), which the full run leaves out: it measures robustness, not speed. The
# relay and fault benchmarks compare against PgBouncer and pgpool-II, which are installed from Debian's packages
# when missing (with pgpool-II's recovery extension for the fault benchmark), so that a fresh machine needs nothing
# installed by hand. Each option goes to the benchmarks that know it (`--duration 20` to the relay one, `--sf 0.02`
# and `--runs 5` to the load, parallel and tpch ones, `--stream-rows N` to the parallel one, `--kill-at S` and the
# like to the fault one, which takes its own length with --fault-duration S); --docs and --keep go to all.
set -euo pipefail

cd "$(dirname "$0")/.."

usage="usage: bash bench/run.sh [--only relay|load|parallel|tpch|fault|fuzz] [options of the benchmarks run]
  relay options:    --duration S --warmup S --clients N --threads N --scale N
  load options:     --sf SF --pgbench-scale N --runs N
  parallel options: --sf SF --runs N --stream-rows N
  tpch options:     --sf SF --runs N
  fault options:    --fault-duration S --kill-at S --recover-at S --fault-clients N --fault-scale N --targets parapool,pgpool
  fuzz options:     --messages N --seed S
  cache options:    --cache-duration S --cache-clients N --cache-scale N
  all:              --docs FILE --keep
  node dist/bench/<relay|load|parallel|fault>-bench.js --help describes each (tpch is parallel-bench.js --part tpch)"

only=""
relay_only_options=""
load_only_options=""
parallel_only_options=""
# Options that the load and the parallel benchmark both take (each with its own default).
shared_options=""
relay_args=()
load_args=()
# Options of both parts of parallel-bench.js (parallel and tpch), and those of the parallel part alone.
parallel_args=()
stream_args=()
fuzz_args=()
fuzz_only_options=""
fault_args=()
fault_only_options=""
cache_args=()
cache_only_options=""
while [ $# -gt 0 ]; do
  case "$1" in
    --only)
      [ $# -ge 2 ] || { echo "bench: --only needs relay, load, parallel, tpch, fault, fuzz or cache" >&2; exit 2; }
      case "$2" in
        relay|load|parallel|tpch|fault|fuzz|cache) only="$2" ;;
        *) echo "bench: --only needs relay, load, parallel, tpch, fault, fuzz or cache, not \"$2\"" >&2; exit 2 ;;
      esac
      shift 2 ;;
    --cache-duration|--cache-clients|--cache-scale)
      [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
      cache_args+=("$1" "$2"); cache_only_options+=" $1"; shift 2 ;;
    --duration|--warmup|--clients|--threads|--scale)
      [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
      relay_args+=("$1" "$2"); relay_only_options+=" $1"; shift 2 ;;
    --pgbench-scale)
      [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
      load_args+=("$1" "$2"); load_only_options+=" $1"; shift 2 ;;
    --sf|--runs)
      [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
      load_args+=("$1" "$2"); parallel_args+=("$1" "$2"); shared_options+=" $1"; shift 2 ;;
    # The fault benchmark's --duration, --clients and --scale would clash with the relay benchmark's: they go by
    # names of their own here.
    --fault-duration|--fault-clients|--fault-scale)
      [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
      fault_args+=("--${1#--fault-}" "$2"); fault_only_options+=" $1"; shift 2 ;;
    --kill-at|--recover-at|--targets)
      [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
      fault_args+=("$1" "$2"); fault_only_options+=" $1"; shift 2 ;;
    --messages|--seed)
      [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
      fuzz_args+=("$1" "$2"); fuzz_only_options+=" $1"; shift 2 ;;
    --stream-rows)
      [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
      stream_args+=("$1" "$2"); parallel_only_options+=" $1"; shift 2 ;;
    --docs)
      [ $# -ge 2 ] || { echo "bench: $1 needs a value" >&2; exit 2; }
      relay_args+=("$1" "$2"); load_args+=("$1" "$2"); parallel_args+=("$1" "$2"); fuzz_args+=("$1" "$2"); fault_args+=("$1" "$2"); cache_args+=("$1" "$2"); shift 2 ;;
    --keep)
      relay_args+=("$1"); load_args+=("$1"); parallel_args+=("$1"); fault_args+=("$1"); cache_args+=("$1"); shift ;;
    -h|--help)
      echo "$usage"; exit 0 ;;
    *)
      echo "bench: unknown argument \"$1\"" >&2; echo "$usage" >&2; exit 2 ;;
  esac
done

# Options for a benchmark that is not run are a mistake worth stopping for, not something to drop silently.
if [ -n "$only" ] && [ "$only" != "cache" ] && [ -n "$cache_only_options" ]; then
  echo "bench:$cache_only_options: the cache benchmark's options, but --only $only skips it" >&2; exit 2
fi
if [ "$only" != "fuzz" ] && [ -n "$fuzz_only_options" ]; then
  echo "bench:$fuzz_only_options: the fuzz benchmark's options, but it runs only with --only fuzz" >&2; exit 2
fi
if [ "$only" = "fuzz" ] && [ -n "$relay_only_options$load_only_options$shared_options$parallel_only_options" ]; then
  echo "bench:$relay_only_options$load_only_options$shared_options$parallel_only_options: options of other benchmarks, but --only fuzz skips them" >&2; exit 2
fi
if [ -n "$only" ] && [ "$only" != "fault" ] && [ -n "$fault_only_options" ]; then
  echo "bench:$fault_only_options: the fault benchmark's options, but --only $only skips it" >&2; exit 2
fi
if [ "$only" = "fault" ] && [ -n "$relay_only_options$load_only_options$shared_options$parallel_only_options" ]; then
  echo "bench:$relay_only_options$load_only_options$shared_options$parallel_only_options: options of other benchmarks, but --only fault skips them" >&2; exit 2
fi
if [ "$only" = "relay" ] && [ -n "$load_only_options$shared_options" ]; then
  echo "bench:$load_only_options$shared_options: options of the load or parallel benchmark, but --only relay skips them" >&2; exit 2
fi
if [ "$only" != "" ] && [ "$only" != "relay" ] && [ -n "$relay_only_options" ]; then
  echo "bench:$relay_only_options: the relay benchmark's options, but --only $only skips it" >&2; exit 2
fi
if [ "$only" != "" ] && [ "$only" != "parallel" ] && [ -n "$parallel_only_options" ]; then
  echo "bench:$parallel_only_options: the parallel benchmark's options, but --only $only skips it" >&2; exit 2
fi
if { [ "$only" = "parallel" ] || [ "$only" = "tpch" ]; } && [ -n "$load_only_options" ]; then
  echo "bench:$load_only_options: the load benchmark's options, but --only $only skips it" >&2; exit 2
fi

needs_build() {
  if [ ! -f "dist/bench/$1.js" ]; then
    echo "bench: dist/bench/$1.js is missing; build first (npm run bench does)" >&2
    return 1
  fi
}

# The benchmark runs in the background so that a SIGTERM or SIGHUP sent to this script alone reaches it at once
# and it can stop what it started. SIGINT is not passed on: Ctrl-C already reaches the whole process group, and a
# second SIGINT tells a benchmark to exit without cleaning up.
child=""
on_signal() {
  if [ -n "$child" ]; then
    [ "$1" = INT ] || kill -s "$1" "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  exit 130
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
trap 'on_signal HUP' HUP

run_node() {
  local status=0
  node "$@" &
  child=$!
  wait "$child" || status=$?
  child=""
  return "$status"
}

# Installs the Debian packages named when the check before them fails; apt-get update runs once per invocation.
apt_updated=""
install_packages() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench: $* missing, and installing them needs root (apt-get install $*)" >&2
    return 1
  fi
  echo "bench: installing $* from Debian packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$apt_updated" ]; then
    apt-get update -qq || { echo "bench: apt-get update failed" >&2; return 1; }
    apt_updated=1
  fi
  apt-get install -y -qq "$@" >/dev/null || { echo "bench: apt-get install $* failed" >&2; return 1; }
}

# Debian puts pgpool and pgbouncer in /usr/sbin, which a non-login root shell may lack on PATH.
export PATH="$PATH:/usr/sbin:/sbin"

ensure_programs() {
  local packages=() program
  command -v pgbouncer >/dev/null 2>&1 || packages+=(pgbouncer)
  command -v pgpool >/dev/null 2>&1 || packages+=(pgpool2)
  [ ${#packages[@]} -eq 0 ] || install_packages "${packages[@]}" || return 1
  for program in pgbouncer pgpool; do
    command -v "$program" >/dev/null 2>&1 || { echo "bench: $program is still not on PATH after installing" >&2; return 1; }
  done
}

run_relay() {
  needs_build relay-bench || return 1
  ensure_programs || return 1
  run_node dist/bench/relay-bench.js ${relay_args[@]+"${relay_args[@]}"}
}

run_fault() {
  needs_build fault-bench || return 1
  ensure_programs || return 1
  # pgpool-II's online recovery runs its scripts through the pgpool_recovery extension in the main node, built
  # for the server's major version: the newest installed, as the benchmark picks it unless PARAPOOL_PG_BIN says.
  local bin major
  bin=${PARAPOOL_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
  major=$(basename "$(dirname "$bin")")
  if [ ! -f "$bin/../lib/pgpool-recovery.so" ]; then
    install_packages "postgresql-$major-pgpool2" || return 1
  fi
  run_node dist/bench/fault-bench.js ${fault_args[@]+"${fault_args[@]}"}
}

run_load() {
  needs_build load-bench || return 1
  run_node dist/bench/load-bench.js ${load_args[@]+"${load_args[@]}"}
}

# The parallel-query benchmark, with --part parallel or --part tpch: each part generates its data at its own default
# scale factor unless --sf says otherwise.
run_parallel() {
  needs_build parallel-bench || return 1
  run_node dist/bench/parallel-bench.js "$@" ${parallel_args[@]+"${parallel_args[@]}"}
}

run_cache() {
  needs_build cache-bench || return 1
  run_node dist/bench/cache-bench.js ${cache_args[@]+"${cache_args[@]}"}
}

run_fuzz() {
  needs_build fuzz-bench || return 1
  run_node dist/bench/fuzz-bench.js ${fuzz_args[@]+"${fuzz_args[@]}"}
}

case "$only" in
  fuzz) run_fuzz; exit ;;
  cache) run_cache; exit ;;
  fault) run_fault; exit ;;
  relay) run_relay; exit ;;
  load) run_load; exit ;;
  parallel) run_parallel --part parallel ${stream_args[@]+"${stream_args[@]}"}; exit ;;
  tpch) run_parallel --part tpch; exit ;;
esac

# Each benchmark runs even when one before it failed: they measure different things, and each writes its own
# section. The exit status still reports any failure.
failed=()
run_relay || failed+=("relay (exit $?)")
run_load || failed+=("load (exit $?)")
run_parallel --part parallel ${stream_args[@]+"${stream_args[@]}"} || failed+=("parallel (exit $?)")
run_parallel --part tpch || failed+=("tpch (exit $?)")
run_fault || failed+=("fault (exit $?)")
run_cache || failed+=("cache (exit $?)")
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench: failed: ${failed[*]}" >&2
  exit 1
fi
