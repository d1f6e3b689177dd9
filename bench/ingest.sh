#!/usr/bin/env bash
# Ingest benchmark (issue: the interaction log). Builds release binaries,
# starts the real server on SQLite and on PostgreSQL, drives it with
# rapport-loadgen, and runs the pgbench baseline in the same run, so the
# figures can be compared as ratios on a shared, noisy machine.
#
#   bench/ingest.sh                # everything
#   DURATION=10 bench/ingest.sh    # shorter runs
#   GROWN=2000000 bench/ingest.sh  # each backend's cases again on a grown log
#
# GROWN: after a backend's cases on its new database, populate a generated
# community of that many interactions (200,000 members, power-law activity;
# the projectors live), let the projectors catch up, and run the same cases
# again. A log of millions ingests at a fraction of a new one's rate, and a
# new database alone would hide that (docs/performance.md, "Ingest with the
# projectors settled between cases").
#
# Needs: the Rust toolchain, PostgreSQL at $PG_URL (trust auth), pgbench.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
PG_BASE="${PG_URL%/*}"
DURATION="${DURATION:-20}"
GROWN="${GROWN:-0}"
WARMUP="${WARMUP:-3}"
PORT="${PORT:-50071}"
RESULTS="$(mktemp -d)"
SERVER_PID=""

cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS rapport_bench WITH (FORCE)" >/dev/null 2>&1 || true
  psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS rapport_bench_pgbench WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

source bench/lib.sh

machine
echo "== $(date -u +%FT%TZ), ${DURATION}s per case after ${WARMUP}s warm-up"

# Each case starts once the projectors have caught up with the one before
# (`settle`, bench/lib.sh).
cases() { # backend [label prefix]
  load "$1-$2batch500" batch --batch-size 500 --concurrency 4
  settle "$1-$2batch500"
  load "$1-$2unary64" unary --concurrency 64
  settle "$1-$2unary64"
  if [ "$GROWN" -gt 0 ] && [ -z "$2" ]; then
    lg --mode populate --total "$GROWN" --members 200000 --batch-size 1000 --concurrency 4 --label "$1-populate-$GROWN"
    settle "$1-populate-$GROWN"
    cases "$1" "grown-"
  fi
}

# --- SQLite
SQLITE_DIR="$(mktemp -d)"
start_server "sqlite:$SQLITE_DIR/rapport.db"
cases sqlite ""
stop_server
rm -rf "$SQLITE_DIR"

# --- PostgreSQL
psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS rapport_bench WITH (FORCE)" >/dev/null
psql "$PG_URL" -qAtc "CREATE DATABASE rapport_bench" >/dev/null
start_server "$PG_BASE/rapport_bench"
cases postgres ""
stop_server

# --- pgbench baseline: one single-row INSERT per transaction, 8 clients,
# into a table shaped like `events`.
psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS rapport_bench_pgbench WITH (FORCE)" >/dev/null
psql "$PG_URL" -qAtc "CREATE DATABASE rapport_bench_pgbench" >/dev/null
psql "$PG_BASE/rapport_bench_pgbench" -q <<'SQL'
CREATE TABLE events (
    position BIGSERIAL PRIMARY KEY, community_id TEXT NOT NULL, stream_id TEXT NOT NULL,
    stream_version BIGINT NOT NULL, event_type SMALLINT NOT NULL, channel TEXT, member_id TEXT NOT NULL,
    recorded_at BIGINT NOT NULL, payload BYTEA NOT NULL, personal BYTEA,
    UNIQUE (stream_id, stream_version));
CREATE INDEX events_by_community ON events (community_id, position);
SQL
cat >"$RESULTS/insert.sql" <<'SQL'
\set m random(1, 9000000000000000000)
INSERT INTO events (community_id, stream_id, stream_version, event_type, channel, member_id, recorded_at, payload, personal)
VALUES ('bench', 'member-' || :client_id || '-' || :m, :m, 3, 'forum', 'm' || :m, 1764000000000000,
        decode(repeat('ab', 60), 'hex'), decode(repeat('cd', 120), 'hex'));
SQL
if ! pgbench -n -c 8 -j 2 -T "$DURATION" -f "$RESULTS/insert.sql" "$PG_BASE/rapport_bench_pgbench" >"$RESULTS/pgbench.txt" 2>&1; then
  echo "pgbench failed:" >&2; grep -v '^progress' "$RESULTS/pgbench.txt" >&2; exit 1
fi
PGBENCH_TPS=$(awk '/^tps = /{print int($3)}' "$RESULTS/pgbench.txt" | tail -1)
echo "pgbench-insert-8-clients: ${PGBENCH_TPS} inserts/s" | tee -a "$RESULTS/out.txt"

rate() { grep "^RESULT" "$RESULTS/out.txt" | grep "\"$1\"" | sed 's/.*"interactions_per_s":\([0-9]*\).*/\1/'; }
PG_UNARY=$(rate postgres-unary64)
echo
echo "== summary"
grep -v '^RESULT' "$RESULTS/out.txt"
awk -v a="$PG_UNARY" -v b="$PGBENCH_TPS" 'BEGIN { printf "postgres unary / pgbench single-row inserts = %.2f\n", a / b }'
