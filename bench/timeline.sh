#!/usr/bin/env bash
# Timeline benchmark (issue: projections and relationship timelines). Builds
# release binaries and, on SQLite and on PostgreSQL:
#
#   1. populates a generated community (TOTAL interactions, MEMBERS members,
#      power-law activity, contest bursts; see services/rapport-loadgen/src/community.rs)
#      with the projector running live, and waits until it has caught up;
#   2. reports the bytes on disk per interaction: the log, and the timeline;
#   3. rebuilds the timeline from position 0 and times it;
#   4. for DURATION seconds, ingests at RATE interactions/s while probing
#      GetTimeline first-page latency for a member with TOTAL/1000 entries
#      and the projection lag (write, then read with min_position): of the
#      timeline alone, and of a whole first page (which shows tier changes,
#      so it waits for the scores projection too). A read waits up to
#      LAG_DEADLINE seconds (30), so a projection far behind shows in the
#      figures instead of ending the run;
#   5. ingests at RATE again, probed by a reader without min_position that
#      polls until its write shows (a read with min_position ends the
#      projectors' linger; this one does not).
#
#   bench/timeline.sh                          # 10 million, as the issue asks
#   TOTAL=1000000 MEMBERS=20000 bench/timeline.sh   # a quick run
#   BACKENDS=sqlite bench/timeline.sh
#   BIN_DIR=/tmp/bin bench/timeline.sh         # binaries built before
#
# Needs: the Rust toolchain, PostgreSQL at $PG_URL (trust auth), psql, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/test}"
TOTAL="${TOTAL:-10000000}"
MEMBERS="${MEMBERS:-200000}"
RATE="${RATE:-5000}"
DURATION="${DURATION:-60}"
LAG_DEADLINE="${LAG_DEADLINE:-30}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PORT="${PORT:-50072}"
DB=rapport_bench_timeline

source bench/lib.sh
trap bench_cleanup EXIT

disk_sqlite() { # log db file (each read model has a file beside it)
  python3 - "$1" "${1%.db}-timeline.db" "${1%.db}-scores.db" "$TOTAL" <<'PY' | tee -a "$RESULTS/out.txt"
import os, sqlite3, sys
log_db, timeline_db, scores_db, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def sizes(path):
    return dict(sqlite3.connect(path).execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
log_sizes = sizes(log_db)
log = sum(v for k, v in log_sizes.items() if k in ("events", "events_by_community") or k.startswith("sqlite_autoindex_events"))
other = sum(log_sizes.values()) - log
timeline = sum(v for k, v in sizes(timeline_db).items() if k.startswith("timeline_"))
files = sum(os.path.getsize(f) for f in (log_db, timeline_db, scores_db) if os.path.exists(f))
print(f"sqlite disk: log {log/total:.0f} B/interaction, timeline {timeline/total:.0f} B/interaction, "
      f"identity/keys/members {other/total:.0f} B/interaction, files {files/2**30:.2f} GiB")
PY
}

disk_postgres() { # db url
  psql "$1" -qAt -v total="$TOTAL" <<'SQL' | tee -a "$RESULTS/out.txt"
SELECT format('postgres disk: log %s B/interaction, timeline %s B/interaction, identity/keys/members %s B/interaction, database %s',
  round(pg_total_relation_size('events') / :total::numeric),
  round(SUM(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname LIKE 'timeline_%') / :total::numeric),
  round((pg_total_relation_size('identities') + pg_total_relation_size('interaction_keys') + pg_total_relation_size('members')) / :total::numeric),
  pg_size_pretty(pg_database_size(current_database())))
FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace;
SQL
}

run_backend() { # name url
  local name=$1 url=$2
  echo "== $name"
  start_server "$url"
  lg --mode populate --total "$TOTAL" --members "$MEMBERS" --batch-size 1000 --concurrency 4 --label "$name-populate"
  lg --mode catch-up --label "$name-catch-up"
  if [ "$name" = sqlite ]; then disk_sqlite "$DATA_DIR/rapport.db"; else disk_postgres "$url"; fi
  lg --mode rebuild --label "$name-rebuild"
  # Ingest at RATE while probing reads and lag. Four calls in flight: with
  # two, the slow commits of a 10 M log (p99 over 100 ms) held the load
  # generator at 0.94-0.95 of RATE (docs/performance.md, "Probes at 10 M
  # on SQLite with the ingest held").
  "$LOADGEN" --addr "$ADDR" --mode batch --batch-size 100 --concurrency 4 --rate "$RATE" \
    --duration "$DURATION" --warmup 2 --label "$name-ingest-at-$RATE" >"$RESULTS/ingest.txt" &
  local ingest=$!
  sleep 2
  lg --mode timeline --duration "$DURATION" --label "$name-timeline-first-page" &
  local reads=$!
  lg --mode lag --lag-of all --lag-deadline-secs "$LAG_DEADLINE" --duration "$DURATION" \
    --interval-ms 20 --label "$name-lag-whole-page" &
  local whole=$!
  lg --mode lag --lag-of timeline --lag-deadline-secs "$LAG_DEADLINE" --duration "$DURATION" \
    --interval-ms 20 --label "$name-lag-timeline"
  wait "$whole"
  wait "$reads"
  wait "$ingest"
  tee -a "$RESULTS/out.txt" <"$RESULTS/ingest.txt"
  # The same ingest again, probed by a reader that does not pass
  # `min_position` (polls until its write shows): alone, because a read
  # with `min_position` ends the projectors' linger, which this reader
  # does not.
  "$LOADGEN" --addr "$ADDR" --mode batch --batch-size 100 --concurrency 4 --rate "$RATE" \
    --duration "$DURATION" --warmup 2 --label "$name-ingest-at-$RATE-polled" >"$RESULTS/ingest.txt" &
  ingest=$!
  sleep 2
  lg --mode lag --lag-of timeline --lag-poll --lag-deadline-secs "$LAG_DEADLINE" --duration "$DURATION" \
    --interval-ms 20 --label "$name-lag-timeline-polled"
  wait "$ingest"
  tee -a "$RESULTS/out.txt" <"$RESULTS/ingest.txt"
  stop_server
}

machine
echo "== $(date -u +%FT%TZ), $TOTAL interactions, $MEMBERS members, ${DURATION}s probes at $RATE interactions/s"

each_backend

summary
