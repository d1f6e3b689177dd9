#!/usr/bin/env bash
# Subscription benchmark (issue: following the log). Release binaries, the
# real server on SQLite and on PostgreSQL, rapport-loadgen on loopback:
#
# - catch-up: one SubscribeEvents from position 0 over a log written first
#   (target: >= 200,000 events/s), with ReadEvents paging as a reference;
# - live latency: one subscriber while unary ingest runs at 5,000
#   interactions/s (target: p99 < 50 ms from recording to receipt);
# - ingest with 100 subscribers, and with one deliberately slow subscriber,
#   against solo ingest runs interleaved in the same run (targets: >= 80%
#   and >= 90% of solo), as ratios, since the machine is shared and noisy.
#
#   bench/subscribe.sh
#   DURATION=10 BACKENDS=sqlite bench/subscribe.sh
#
# Needs: the Rust toolchain, PostgreSQL at $PG_URL (trust auth).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
PG_BASE="${PG_URL%/*}"
DURATION="${DURATION:-15}"
WARMUP="${WARMUP:-3}"
POPULATE="${POPULATE:-40}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PORT="${PORT:-50074}"
RESULTS="$(mktemp -d)"
SERVER_PID=""

cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS rapport_bench_subscribe WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

source bench/lib.sh

value() { # label field
  grep "^RESULT" "$RESULTS/out.txt" | grep "\"label\":\"$1\"" | sed "s/.*\"$2\":\([0-9.]*\).*/\1/"
}

machine
echo "== $(date -u +%FT%TZ), ${DURATION}s per case after ${WARMUP}s warm-up, log populated for ${POPULATE}s"

BATCH=(batch --batch-size 500 --concurrency 4)
# A timed run once the projectors have caught up with the run before.
case_() { settle "$1" >/dev/null; load "$@"; }
for backend in $BACKENDS; do
  case $backend in
    sqlite)
      DIR="$(mktemp -d)"; start_server "sqlite:$DIR/rapport.db" ;;
    postgres)
      psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS rapport_bench_subscribe WITH (FORCE)" >/dev/null
      psql "$PG_URL" -qAtc "CREATE DATABASE rapport_bench_subscribe" >/dev/null
      start_server "$PG_BASE/rapport_bench_subscribe" ;;
  esac
  b=$backend
  lg --mode batch --batch-size 500 --concurrency 4 --duration "$POPULATE" --warmup 0 --label "$b-populate"
  # The projectors catch up first: they would compete with the subscriber.
  "$LOADGEN" --addr "$ADDR" --mode catch-up --label "$b-projections" >/dev/null
  lg --mode follow --label "$b-catch-up"
  load "$b-live-5k" unary --concurrency 64 --rate 5000 --subscribers 1 --ack-latency
  # Every run with subscribers sits between two solo runs and is compared
  # with their mean: the log grows, so later runs are slower, and the
  # bracket cancels that drift. Each run starts once the projectors have
  # caught up with the one before (batch ingest outruns them), so that no
  # run pays for its predecessor's backlog (`case_`, above).
  case_ "$b-solo-1" "${BATCH[@]}"
  case_ "$b-100-subscribers" "${BATCH[@]}" --subscribers 100
  case_ "$b-solo-2" "${BATCH[@]}"
  case_ "$b-slow-subscriber" "${BATCH[@]}" --subscribers 1 --subscriber-pause-ms 10
  case_ "$b-solo-3" "${BATCH[@]}"
  # The same at unary ingest (one interaction per call, 64 in flight).
  case_ "$b-unary-solo-1" unary --concurrency 64
  case_ "$b-unary-100-subscribers" unary --concurrency 64 --subscribers 100
  case_ "$b-unary-solo-2" unary --concurrency 64
  # Multi-tenant: 100 communities, each subscriber following its own.
  case_ "$b-communities-solo-1" "${BATCH[@]}" --communities 100
  case_ "$b-100-community-subscribers" "${BATCH[@]}" --communities 100 --subscribers 100 --per-community
  case_ "$b-communities-solo-2" "${BATCH[@]}" --communities 100
  stop_server
  [ "$backend" = sqlite ] && rm -rf "$DIR"
done

echo
echo "== summary"
grep -v '^RESULT' "$RESULTS/out.txt" | grep -v -- '-populate:'
ratio() { # backend case solo-a solo-b
  awk -v x="$(value "$1-$2" interactions_per_s)" -v a="$(value "$1-$3" interactions_per_s)" \
      -v b="$(value "$1-$4" interactions_per_s)" 'BEGIN { printf "%.2f (solo %d and %d)", 2 * x / (a + b), a, b }'
}
for b in $BACKENDS; do
  echo "$b: catch-up $(value "$b-catch-up" events_per_s) events/s (target >= 200000)"
  echo "$b: live at 5,000/s, p99 commit-to-receipt between $(value "$b-live-5k-after-ack" p99_ms) ms (after the acknowledgement) and $(value "$b-live-5k-subscribers" p99_ms) ms (after recorded_at) (target < 50)"
  echo "$b: 100 subscribers, all events / solo = $(ratio "$b" 100-subscribers solo-1 solo-2) (target >= 0.80)"
  echo "$b: unary, 100 subscribers, all events / solo = $(ratio "$b" unary-100-subscribers unary-solo-1 unary-solo-2) (target >= 0.80)"
  echo "$b: 100 subscribers, one community each / solo = $(ratio "$b" 100-community-subscribers communities-solo-1 communities-solo-2) (target >= 0.80)"
  echo "$b: one slow subscriber / solo = $(ratio "$b" slow-subscriber solo-2 solo-3) (target >= 0.90)"
done
