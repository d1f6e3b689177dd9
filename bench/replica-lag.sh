#!/usr/bin/env bash
# Read-your-writes across replicas (issue: projections and timelines). Two
# server processes on one PostgreSQL database: the first takes both
# projectors, the second runs none. A generated community of TOTAL
# interactions, then, while ingest runs at RATE interactions/s through the
# first, the lag probe writes through the first and reads back with
# `min_position` through the second, every 20 ms: of the timeline alone,
# then of a whole first page (which waits for the scores too). Then the
# same probes through the first alone, for comparison.
#
#   bench/replica-lag.sh
#   RATE=0 bench/replica-lag.sh             # the probe's writes alone
#   BIN_DIR=/tmp/bin bench/replica-lag.sh   # binaries built before
#
# Needs: the Rust toolchain, PostgreSQL at $PG_URL (trust auth), psql.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
TOTAL="${TOTAL:-200000}"
MEMBERS="${MEMBERS:-20000}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-30}"
PORT="${PORT:-50077}"
PORT2="${PORT2:-50078}"
DB=rapport_bench_replica_lag

source bench/lib.sh
SECOND_PID=""
cleanup() {
  [ -n "$SECOND_PID" ] && kill "$SECOND_PID" 2>/dev/null || true
  bench_cleanup
}
trap cleanup EXIT

# The lag probes for DURATION s each, writing through the first server and
# reading through read-addr, with ingest at RATE through the first.
probe() { # label read-addr
  local ingest=""
  if [ "$RATE" -gt 0 ]; then
    "$LOADGEN" --addr "$ADDR" --mode batch --batch-size 100 --concurrency 2 --rate "$RATE" \
      --duration "$((2 * DURATION + 2))" --warmup 0 --label "$1-ingest" >/dev/null &
    ingest=$!
  fi
  lg --mode lag --lag-of timeline --duration "$DURATION" --interval-ms 20 \
    --read-addr "$2" --label "$1-lag-timeline"
  lg --mode lag --lag-of all --duration "$DURATION" --interval-ms 20 \
    --read-addr "$2" --label "$1-lag-whole-page"
  [ -n "$ingest" ] && { kill "$ingest" 2>/dev/null || true; wait "$ingest" 2>/dev/null || true; }
}

machine
echo "== $(date -u +%FT%TZ), $TOTAL interactions, ${DURATION}s probes, ingest at $RATE/s"
psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
psql "$PG_URL" -qAtc "CREATE DATABASE $DB" >/dev/null
URL="${PG_URL%/*}/$DB"
start_server "$URL"
lg --mode populate --total "$TOTAL" --members "$MEMBERS" --batch-size 1000 --concurrency 4 --label populate
settle populate
# The first server leads both projectors by now; the second finds their
# locks taken.
"$SERVER" --listen "127.0.0.1:$PORT2" --admin-listen 127.0.0.1:0 --database-url "$URL" \
  >"$RESULTS/second.log" 2>&1 &
SECOND_PID=$!
for _ in $(seq 1 100); do
  if grep -q "database ready" "$RESULTS/second.log"; then break; fi
  sleep 0.1
done
sleep 2
probe other-replica "http://127.0.0.1:$PORT2"
probe same-replica "$ADDR"
summary
