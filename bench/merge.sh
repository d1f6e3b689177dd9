#!/usr/bin/env bash
# Merge benchmark (issue: members and identities). Builds release binaries
# and, on SQLite and on PostgreSQL:
#
#   1. populates the generated community (TOTAL interactions, MEMBERS
#      members) so the read models are not toy-sized, and waits until the
#      projectors have caught up;
#   2. records two members with PER_MEMBER interactions each (a fifth of
#      them exchanges with members of the community), then ROUNDS times
#      merges them and unmerges them, timing each from the call until the
#      change is visible in the timeline and in the score (reads with
#      min_position).
#
#   bench/merge.sh                                # 1 M community, 2 x 10,000
#   TOTAL=200000 MEMBERS=5000 bench/merge.sh      # a quick run
#
# Needs: the Rust toolchain, PostgreSQL at $PG_URL (trust auth), psql.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
TOTAL="${TOTAL:-1000000}"
MEMBERS="${MEMBERS:-20000}"
PER_MEMBER="${PER_MEMBER:-10000}"
ROUNDS="${ROUNDS:-5}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PORT="${PORT:-50074}"
DB=rapport_bench_merge

source bench/lib.sh
trap bench_cleanup EXIT

run_backend() { # name url
  local name=$1 url=$2
  echo "== $name"
  start_server "$url"
  lg --mode populate --total "$TOTAL" --members "$MEMBERS" --batch-size 1000 --concurrency 4 --label "$name-populate"
  lg --mode catch-up --label "$name-catch-up"
  lg --mode merge --per-member "$PER_MEMBER" --members "$MEMBERS" --rounds "$ROUNDS" --label "$name-merge"
  stop_server
}

machine
echo "== $(date -u +%FT%TZ), $TOTAL interactions, $MEMBERS members, 2 x $PER_MEMBER merged, $ROUNDS rounds"

each_backend

summary
