#!/usr/bin/env bash
# Ingest with personal data encrypted against without (issue #5: within 15%),
# in one run: the binaries from before encryption ($OLD_BIN) and the current
# ones ($NEW_BIN, built here when unset), alternating, a fresh database per
# case, on SQLite and PostgreSQL.
#
#   git worktree add /tmp/pre-crypto 4391ed3
#   (cd /tmp/pre-crypto && cargo build --release -p rapport-server -p rapport-loadgen)
#   mkdir -p /tmp/ab-old && cp /tmp/pre-crypto/target/release/rapport-{server,loadgen} /tmp/ab-old/
#   OLD_BIN=/tmp/ab-old bench/encryption.sh
#
# (A target directory of its own for the old tree: sharing this one leaves
# rapport-proto's build script pointing at the other checkout's protos.)
#
# Needs: PostgreSQL at $PG_URL (trust auth), psql.
set -euo pipefail
cd "$(dirname "$0")/.."

OLD_BIN="${OLD_BIN:?the binaries from before encryption}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
PG_BASE="${PG_URL%/*}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
ROUNDS="${ROUNDS:-2}"
PORT="${PORT:-50076}"
RESULTS="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS rapport_bench_crypto WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

BIN_DIR="${NEW_BIN:-}"
source bench/lib.sh
NEW_DIR=$BIN_DIR
machine
echo "== $(date -u +%FT%TZ), ${DURATION}s per case after ${WARMUP}s warm-up, $ROUNDS rounds"

for round in $(seq 1 "$ROUNDS"); do
  for backend in sqlite postgres; do
    for build in plain encrypted; do
      if [ "$build" = plain ]; then SERVER=$OLD_BIN/rapport-server; else SERVER=$NEW_DIR/rapport-server; fi
      if [ "$backend" = sqlite ]; then
        DIR="$(mktemp -d)"; URL="sqlite:$DIR/rapport.db"
      else
        psql "$PG_URL" -qAtc "DROP DATABASE IF EXISTS rapport_bench_crypto WITH (FORCE)" >/dev/null
        psql "$PG_URL" -qAtc "CREATE DATABASE rapport_bench_crypto" >/dev/null
        URL="$PG_BASE/rapport_bench_crypto"
      fi
      start_server "$URL"
      load "r$round-$backend-$build-unary64" unary --concurrency 64
      load "r$round-$backend-$build-batch500" batch --batch-size 500 --concurrency 4
      stop_server
      [ "$backend" = sqlite ] && rm -rf "$DIR"
    done
  done
done
