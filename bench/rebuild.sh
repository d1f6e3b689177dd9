#!/usr/bin/env bash
# Timeline rebuild benchmark (issue: projections and relationship timelines,
# "Rebuild speed ≥ 100,000 events/s"). Builds release binaries and, on SQLite
# and on PostgreSQL:
#
#   1. populates a generated community (TOTAL interactions, MEMBERS members)
#      with both projectors held back (SQLite: their files write-locked by
#      another process; PostgreSQL: their leader locks held by another
#      session), so the populate measures nothing but fills the log;
#   2. RUNS times: removes the timeline read model (SQLite: its file;
#      PostgreSQL: its tables and generations), holds the scores projector
#      back the same way (an idle neighbour, as on a server whose scores are
#      caught up), starts the server and times the timeline's build from
#      position 0 — "building the read model" to "now serving reads" in the
#      server's log — with the end of the bulk phase (`finish_bulk`) apart.
#
# SQLite runs drop the kernel's page cache first when they may (root), so
# each reads the log from disk like the first start of a new replica.
#
#   bench/rebuild.sh                               # 10 million, as the issue asks
#   TOTAL=1000000 MEMBERS=20000 bench/rebuild.sh   # a quick run
#   BACKENDS=postgres RUNS=5 bench/rebuild.sh
#   BASE_BIN_DIR=/tmp/before BACKENDS=postgres bench/rebuild.sh
#
# BASE_BIN_DIR: a directory with the binaries of a baseline (a copy of
# target/release built at another commit). Each run then builds twice, the
# baseline's server first ("base" in the labels), so a change is measured
# against what it replaces in one run of this shared machine.
#
# Needs: the Rust toolchain, PostgreSQL at $PG_URL (trust auth), psql, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
TOTAL="${TOTAL:-10000000}"
MEMBERS="${MEMBERS:-200000}"
RUNS="${RUNS:-3}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PORT="${PORT:-50073}"
DB=rapport_bench_rebuild
HOLDER_PID=""

source bench/lib.sh
trap 'release; bench_cleanup' EXIT

# The leader lock keys of the projectors (rapport-projections, runner.rs:
# the first eight bytes of SHA-256 of "rapport projector NAME").
lock_key() {
  python3 -c "import hashlib,sys; print(int.from_bytes(hashlib.sha256(f'rapport projector {sys.argv[1]}'.encode()).digest()[:8], 'big', signed=True))" "$1"
}

# Holds projectors back until `release`: SQLite files (write locks) or
# PostgreSQL leader locks, by a process of its own.
hold_files() { # file...
  python3 -c '
import signal, sqlite3, sys
held = []
for path in sys.argv[1:]:
    c = sqlite3.connect(path, timeout=60, isolation_level=None)
    c.execute("BEGIN IMMEDIATE")
    held.append(c)
print("held", flush=True)
signal.sigwait([signal.SIGTERM, signal.SIGINT])
' "$@" >"$RESULTS/holder.out" 2>&1 &
  HOLDER_PID=$!
  wait_held
}

hold_leaders() { # url name...
  local url=$1; shift
  local sql="" name
  for name in "$@"; do sql+="SELECT pg_advisory_lock($(lock_key "$name"));"; done
  # psql holds the session (and its locks) until its input, a FIFO this
  # shell keeps open on descriptor 3, is closed by `release`.
  rm -f "$RESULTS/holder.fifo"; mkfifo "$RESULTS/holder.fifo"
  psql "$url" -qAt <"$RESULTS/holder.fifo" >"$RESULTS/holder.out" 2>&1 &
  HOLDER_PID=$!
  exec 3>"$RESULTS/holder.fifo"
  echo "$sql SELECT 'held';" >&3
  wait_held
}

wait_held() {
  for _ in $(seq 1 300); do
    if grep -q held "$RESULTS/holder.out"; then return; fi
    sleep 0.1
  done
  echo "could not hold the projectors back:" >&2; cat "$RESULTS/holder.out" >&2; exit 1
}

release() {
  if [ -n "$HOLDER_PID" ]; then
    # psql ends at the end of its input; the SQLite holder on a signal.
    if [ -e "$RESULTS/holder.fifo" ]; then exec 3>&-; rm -f "$RESULTS/holder.fifo"
    else kill "$HOLDER_PID" 2>/dev/null || true; fi
    # A psql still waiting for a lock reads no input: stop it too.
    for _ in $(seq 1 50); do kill -0 "$HOLDER_PID" 2>/dev/null || break; sleep 0.1; done
    kill "$HOLDER_PID" 2>/dev/null || true
    wait "$HOLDER_PID" 2>/dev/null || true
    HOLDER_PID=""
  fi
}

# Waits until the server's log says the timeline serves reads.
wait_built() {
  until grep -q 'now serving reads projection="timeline"' "$RESULTS/server.log"; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "the server stopped:" >&2; tail "$RESULTS/server.log" >&2; exit 1
    fi
    sleep 0.2
  done
}

# One line of figures from the server's log.
report() { # label
  python3 - "$RESULTS/server.log" "$1" <<'PY' | tee -a "$RESULTS/out.txt"
import datetime, json, re, sys
log, label = sys.argv[1], sys.argv[2]
def at(line):
    return datetime.datetime.fromisoformat(re.match(r"(\S+?)Z", line).group(1))
start = end = finish = position = None
for line in open(log):
    if 'projection="timeline"' not in line:
        continue
    if "building the read model" in line and start is None:
        start = at(line)
    elif "bulk phase finished" in line:
        finish = int(re.search(r"elapsed_ms=(\d+)", line).group(1)) / 1000
    elif "now serving reads" in line:
        end = at(line)
        position = int(re.search(r"position=(\d+)", line).group(1))
seconds = (end - start).total_seconds()
print(f"{label}: {position} events in {seconds:.1f} s: {position / seconds:.0f} events/s "
      f"(bulk phase {seconds - finish:.1f} s, finish_bulk {finish:.1f} s)")
print("RESULT " + json.dumps({"label": label, "events": position, "seconds": round(seconds, 2),
      "events_per_s": round(position / seconds), "finish_bulk_s": finish}))
PY
}

drop_page_cache() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}

run_backend() { # name url
  local name=$1 url=$2 run
  echo "== $name"
  # The leader locks are taken before the server starts, or its projectors
  # would take them first; the SQLite files exist once it has started.
  if [ "$name" = sqlite ]; then
    start_server "$url"
    hold_files "$DATA_DIR/rapport-timeline.db" "$DATA_DIR/rapport-scores.db"
  else
    hold_leaders "$url" timeline scores
    start_server "$url"
  fi
  lg --mode populate --total "$TOTAL" --members "$MEMBERS" --batch-size 1000 --concurrency 4 --label "$name-populate"
  stop_server
  release
  # A log grown over months has been vacuumed; one populated a minute ago
  # has not, and the first build would set its hint bits and meet
  # autovacuum on the way (docs/performance.md, "`bench/rebuild.sh` at 10 M").
  if [ "$name" = postgres ]; then psql "$url" -qAtc "VACUUM ANALYZE"; fi
  local servers=("$SERVER") labels=("$name-rebuild") current=$SERVER i
  if [ -n "${BASE_BIN_DIR:-}" ]; then
    servers=("$BASE_BIN_DIR/rapport-server" "$SERVER")
    labels=("$name-base-rebuild" "$name-rebuild")
  fi
  for run in $(seq 1 "$RUNS"); do
    for i in "${!servers[@]}"; do
      SERVER=${servers[$i]}
      if [ "$name" = sqlite ]; then
        rm -f "$DATA_DIR"/rapport-timeline.db*
        drop_page_cache
        hold_files "$DATA_DIR/rapport-scores.db"
      else
        local tables
        tables=$(psql "$url" -qAtc "SELECT string_agg(tablename, ', ') FROM pg_tables \
          WHERE schemaname = 'public' AND tablename LIKE 'timeline\_%'")
        if [ -n "$tables" ]; then psql "$url" -qAtc "DROP TABLE $tables"; fi
        psql "$url" -qAtc "DELETE FROM projection_generations WHERE name = 'timeline'" >/dev/null
        psql "$url" -qAtc "CHECKPOINT"
        hold_leaders "$url" scores
      fi
      start_server "$url"
      wait_built
      report "${labels[$i]}-$run"
      stop_server
      release
    done
  done
  SERVER=$current
}

machine
echo "== $(date -u +%FT%TZ), $TOTAL interactions, $MEMBERS members, $RUNS builds per backend"

each_backend

summary
