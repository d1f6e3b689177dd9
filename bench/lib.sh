# Shared by the benchmark scripts (source it): the binaries, starting and
# stopping the server, running the load generator against it. Expects PORT
# (and DURATION and WARMUP for `load`); sets SERVER, LOADGEN, ADDR,
# SERVER_PID, DATA_DIR, and RESULTS unless the script set it first.

# BIN_DIR: run binaries built elsewhere (e.g. a copy, so that a rebuild of the
# tree during a long run does not change them).
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -q -p rapport-server -p rapport-loadgen
  BIN_DIR=target/release
fi
SERVER=$BIN_DIR/rapport-server
LOADGEN=$BIN_DIR/rapport-loadgen
ADDR="http://127.0.0.1:$PORT"
SERVER_PID=""
DATA_DIR=""
RESULTS="${RESULTS:-$(mktemp -d)}"

# A benchmark's own master key (PostgreSQL needs one; SQLite would make its own).
export RAPPORT_MASTER_KEY="${RAPPORT_MASTER_KEY:-$(head -c 32 /dev/urandom | base64)}"

start_server() { # url: starts the server on it and waits until the database is ready
  "$SERVER" --listen "127.0.0.1:$PORT" --admin-listen 127.0.0.1:0 --database-url "$1" >"$RESULTS/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if grep -q "database ready" "$RESULTS/server.log"; then return; fi
    sleep 0.1
  done
  echo "server did not become ready" >&2; cat "$RESULTS/server.log" >&2; exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=""
}

# The load generator against the server; its output is kept in out.txt.
lg() { "$LOADGEN" --addr "$ADDR" "$@" | tee -a "$RESULTS/out.txt"; }

# Waits until the projectors have caught up and prints how long that took.
# A case run right after batch ingest would otherwise share the machine with
# the projectors' backlog of the case before (hundreds of thousands of
# events, ~15 s of work); how long they take after a case also shows
# whether they keep up with its rate.
settle() { # label
  lg --mode catch-up --label "$1: projections"
}

load() { # label mode extra-args...: a timed ingest run
  local label=$1 mode=$2; shift 2
  lg --mode "$mode" --duration "$DURATION" --warmup "$WARMUP" --label "$label" "$@"
}

machine() {
  echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
}

# What a script that runs `each_backend` leaves behind, however it ends:
# its server, its SQLite directory, its PostgreSQL database. Such a script
# sets DB and runs `trap bench_cleanup EXIT`.
bench_cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "${DATA_DIR:-}" ] && rm -rf "$DATA_DIR"
  psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}

# Runs `run_backend NAME URL` for each of BACKENDS: SQLite in a new
# directory (in DATA_DIR meanwhile, for `bench_cleanup`), PostgreSQL in a
# new database DB on PG_URL's server, dropped after.
each_backend() {
  local db=$DB backend
  for backend in $BACKENDS; do
    case $backend in
      sqlite)
        DATA_DIR="$(mktemp -d)"
        run_backend sqlite "sqlite:$DATA_DIR/rapport.db"
        rm -rf "$DATA_DIR"; DATA_DIR="" ;;
      postgres)
        psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
        psql "$PG_URL" -qAtc "CREATE DATABASE $db" >/dev/null
        run_backend postgres "${PG_URL%/*}/$db"
        psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null ;;
      *) echo "unknown backend $backend (sqlite, postgres)" >&2; exit 2 ;;
    esac
  done
}

# The run's figures, without the machine-readable RESULT lines.
summary() {
  echo
  echo "== summary"
  grep -v '^RESULT' "$RESULTS/out.txt"
}
