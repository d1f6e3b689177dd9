#!/usr/bin/env bash
# Advocate-score benchmark (issue: advocate scores). Builds release binaries
# and, on SQLite and on PostgreSQL:
#
#   1. populates the generated community of the timeline benchmark (TOTAL
#      interactions, MEMBERS members, power-law activity, contest bursts),
#      ending now, with every projector running live, and waits until they
#      have caught up;
#   2. probes ListAdvocates (top 100) and GetAdvocateScore (with its
#      explanation) latency for DURATION seconds each, one call at a time;
#   3. times a policy change until the whole community is re-scored, and a
#      PreviewScoringPolicy of the whole community.
#
#   bench/advocacy.sh                               # 10 million, as the issue asks
#   TOTAL=1000000 MEMBERS=20000 bench/advocacy.sh   # a quick run
#   BACKENDS=postgres BIN_DIR=/tmp/bin bench/advocacy.sh
#   REBUILD=0 bench/advocacy.sh                     # skip timing a rebuild of the scores
#   HEAVY_EVERY=100 TOTAL=1000000 bench/advocacy.sh # the heavy member's 10,000 interactions at 1 M
#
# Needs: the Rust toolchain, PostgreSQL at $PG_URL (trust auth), psql.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
TOTAL="${TOTAL:-10000000}"
MEMBERS="${MEMBERS:-200000}"
DURATION="${DURATION:-30}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PORT="${PORT:-50073}"
DB=rapport_bench_advocacy

source bench/lib.sh
trap bench_cleanup EXIT

run_backend() { # name url
  local name=$1 url=$2
  echo "== $name"
  start_server "$url"
  lg --mode populate --total "$TOTAL" --members "$MEMBERS" --heavy-every "${HEAVY_EVERY:-1000}" --batch-size 1000 --concurrency 4 --label "$name-populate"
  lg --mode catch-up --label "$name-catch-up"
  lg --mode advocates --duration "$DURATION" --label "$name-list-advocates-top-100"
  lg --mode scores --duration "$DURATION" --members "$MEMBERS" --label "$name-get-advocate-score"
  lg --mode rescore --label "$name-rescore-after-policy-change"
  lg --mode preview --label "$name-preview-policy"
  if [ "${REBUILD:-1}" = 1 ]; then
    lg --mode rebuild --projection scores --label "$name-scores-rebuild"
  fi
  stop_server
}

machine
echo "== $(date -u +%FT%TZ), $TOTAL interactions, $MEMBERS members, ${DURATION}s probes"

each_backend

summary
