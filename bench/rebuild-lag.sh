#!/usr/bin/env bash
# Projection lag during a rebuild (issue: projections and timelines). On
# SQLite and on PostgreSQL: populates a generated community (TOTAL
# interactions), then, while ingest runs at RATE interactions/s and the lag
# probe writes and reads back with `min_position` every 20 ms, rebuilds the
# timeline through the admin RPC; the probe runs before, during and after
# the rebuild. A read waits up to LAG_DEADLINE s, so a projection that
# stops for seconds shows in the figures (max) instead of failing the probe.
#
#   bench/rebuild-lag.sh                       # 1 million interactions
#   TOTAL=200000 BACKENDS=postgres bench/rebuild-lag.sh
#   BIN_DIR=/tmp/bin bench/rebuild-lag.sh      # binaries built before
#
# Needs: the Rust toolchain, PostgreSQL at $PG_URL (trust auth), psql.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
TOTAL="${TOTAL:-1000000}"
MEMBERS="${MEMBERS:-20000}"
RATE="${RATE:-5000}"
LAG_DEADLINE="${LAG_DEADLINE:-55}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PORT="${PORT:-50076}"
DB=rapport_bench_rebuild_lag

source bench/lib.sh
trap bench_cleanup EXIT

run_backend() { # name url
  local name=$1 url=$2
  echo "== $name"
  start_server "$url"
  lg --mode populate --total "$TOTAL" --members "$MEMBERS" --batch-size 1000 --concurrency 4 --label "$name-populate"
  settle "$name"
  # The rebuild starts 10 s into the probe; the probe ends 10 s after it.
  # Four calls in flight, as in bench/timeline.sh: two fall short of RATE
  # when commits slow down on a large log.
  "$LOADGEN" --addr "$ADDR" --mode batch --batch-size 100 --concurrency 4 --rate "$RATE" \
    --duration 100000 --warmup 0 --label "$name-ingest-at-$RATE" >"$RESULTS/ingest.txt" &
  local ingest=$!
  local probe_for=$((TOTAL / 25000 + 30))
  lg --mode lag --lag-of timeline --lag-deadline-secs "$LAG_DEADLINE" --interval-ms 20 \
    --duration "$probe_for" --label "$name-lag-during-rebuild" &
  local probe=$!
  sleep 10
  lg --mode rebuild --label "$name-rebuild-under-ingest"
  wait "$probe"
  kill "$ingest"; wait "$ingest" 2>/dev/null || true
  stop_server
}

machine
echo "== $(date -u +%FT%TZ), $TOTAL interactions, ingest at $RATE/s, lag probe through a timeline rebuild"

each_backend

summary
