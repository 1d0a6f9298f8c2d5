#!/usr/bin/env bash
# bench/webhooks/run.sh -- the webhook listener: committed events per second
# under wrk, none lost, against pgbench's single-row INSERT rate.
#
# As root (PostgreSQL runs as the postgres account; loopback and a Unix
# socket only):
#   bash bench/webhooks/run.sh [--events M] [--orders N] [--connections C]
#                              [--threads T] [--max-seconds S] [--no-build] [--keep]
#
# In one run: a throwaway PostgreSQL 15 cluster that preloads flexfactor,
# synchronous_commit = on, the webhook listener on 127.0.0.1; an order book
# of N orders (default 2 x M) inserted directly into flexfactor.orders with
# their order_session_keys; M (default 40,000) distinct signed deliveries
# (order.completed for M different orders, unique nonces, fresh dates)
# precomputed by gen.py; wrk (Debian's) with deliver.lua posts each exactly
# once over C keep-alive connections (default 4) in T threads (default 2).
# Reported: events/s committed (rows in webhook_events / wall time from
# wrk's start until every delivery was answered), the listener's commits
# (one per group of deliveries, counted by received_at), the 2xx answers wrk
# counted against those rows (must be equal: nothing lost, nothing extra),
# latency, and the ratio to pgbench's single-row INSERT rate (pgbench -n
# -f insert.sql: one INSERT of a similar row into a plain table, same client
# count, and 1 client, synchronous_commit on) on the same cluster in the
# same run.  Diagnostic: ff_ingest_webhook() (the same checks, storage and
# application without HTTP) on M more deliveries from pgbench, 1 and C
# clients.  Exits non-zero when rows != 2xx answers, an event is missing or
# unapplied, or wrk does not finish within S seconds (default 300); the
# 2,000 events/s target is reported, not enforced.  Everything is stopped
# and removed on exit (--keep, or a failure, keeps the work directory).
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/bench/webhooks"

events=40000
orders=
connections=4
threads=2
build=1
keep=0
max_seconds=300
while [ $# -gt 0 ]; do
	case "$1" in
		--max-seconds) max_seconds=$2; shift ;;
		--events) events=$2; shift ;;
		--orders) orders=$2; shift ;;
		--connections) connections=$2; shift ;;
		--threads) threads=$2; shift ;;
		--no-build) build=0 ;;
		--keep) keep=1 ;;
		-h|--help) sed -n '2,29p' "$0"; exit 0 ;;
		*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
orders=${orders:-$((2 * events))}
. "$repo/bench/lib.sh"
require_counts "$events" "$orders" "$connections" "$threads"
[ "$orders" -ge $((2 * events)) ] || { echo "run.sh: --orders must be >= 2 x --events (one event per order, HTTP and SQL)" >&2; exit 2; }
[ "$connections" -ge "$threads" ] || { echo "run.sh: --connections must be >= --threads" >&2; exit 2; }

bench_prepare bench/webhooks/run.sh
command -v wrk >/dev/null || { echo "run.sh: wrk is not installed" >&2; exit 1; }

bench_workdir ffwebhookbench
wrk_pid=

cleanup() {
	[ -n "$wrk_pid" ] && kill "$wrk_pid" 2>/dev/null
	bench_stop_pg
	bench_remove_workdir "pg.log, wrk.out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

per_sec() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print 0 }'; }
field() { sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" | head -1; }

# ------------------------------------------------------------------ PostgreSQL
key='XRmKBxG5uvt1qWzqvp+T6CAbTo0MB89GTxXZD5cHA56RP7Mj4NbnHQOR1Y8uorUU9YQz8ujaVRUdm9vTSkPZSw=='
path=/flexfactor/webhook
wport=$(free_port)
bench_pg_init --locale=C
cat >>"$work/pgdata/postgresql.conf" <<EOF
max_connections = 40
shared_buffers = 256MB
max_wal_size = 8GB
checkpoint_timeout = 1h
synchronous_commit = on
flexfactor.batch_interval = 86400
flexfactor.webhook_listen_address = '127.0.0.1'
flexfactor.webhook_port = $wport
flexfactor.webhook_path = '$path'
flexfactor.webhook_key = '$key'
flexfactor.webhook_max_skew = 3600
EOF
bench_pg_start_with_extension
echo "== PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), synchronous_commit = $(psql_ -d bench -c 'SHOW synchronous_commit'), webhook listener on 127.0.0.1:$wport"

listening=0
for _ in $(seq 300); do
	if [ "$(psql_ -d bench -c "SELECT count(*) FROM flexfactor.ff_worker_status() WHERE role = 'listener' AND state = 'listening'")" = 1 ] \
		&& python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $wport), 1)" 2>/dev/null; then
		listening=1
		break
	fi
	sleep 0.1
done
[ $listening = 1 ] || { fail "the webhook listener did not start (see $work/pg.log)"; exit 1; }

# ------------------------------------------------------------------ order book
t0=$(now)
psql_ -d bench -c "INSERT INTO flexfactor.orders (order_id, order_session_key, idempotency_key, source,
                                                   amount_cents, currency, status)
                   SELECT 'B-' || i, md5('bench-' || i)::uuid, gen_random_uuid(), 'batch', 1503, 'USD', 'SUBMITTED'
                     FROM generate_series(1, $orders) i" \
	-c 'VACUUM ANALYZE flexfactor.orders' -c 'VACUUM ANALYZE flexfactor.order_events' -c 'CHECKPOINT' \
	|| { fail "order book"; exit 1; }
echo "== order book: $orders orders SUBMITTED ($(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s)"

# ------------------------------------------------------------------ deliveries
mkdir -p "$work/deliveries"
made=$(python3 "$here/gen.py" --port "$wport" --key "$key" --events "$events" --threads "$threads" \
	--out "$work/deliveries") || { fail "gen.py"; exit 1; }
[ "$made" = "$events" ] || { fail "gen.py made $made deliveries"; exit 1; }
chmod -R a+rX "$work/deliveries"
echo "== $events signed deliveries precomputed (order.completed, one per order, unique nonces)"

# ------------------------------------------------------------------ wrk
echo "== wrk: $threads threads, $connections connections, each delivery posted once"
export FFBENCH_DIR="$work/deliveries" FFBENCH_HOST="127.0.0.1:$wport" FFBENCH_PATH="$path"
t_start=$(now)
wrk -t "$threads" -c "$connections" -d 3600s --timeout 30s -s "$here/deliver.lua" \
	"http://127.0.0.1:$wport$path" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
t_end=
deadline=$(( $(date +%s) + max_seconds ))
while [ "$(date +%s)" -lt "$deadline" ]; do
	if [ "$(ls "$work/deliveries" | grep -c '^done\.')" -ge "$threads" ]; then
		t_end=$(now)
		break
	fi
	kill -0 "$wrk_pid" 2>/dev/null || break
	sleep 0.02
done
[ -n "$t_end" ] || { fail "not every delivery was answered within ${max_seconds}s"; t_end=$(now); }
kill -INT "$wrk_pid" 2>/dev/null	# ends wrk's -d sleep; its threads have stopped
for _ in $(seq 300); do kill -0 "$wrk_pid" 2>/dev/null || break; sleep 0.1; done
wait "$wrk_pid" 2>/dev/null
wrk_pid=
elapsed=$(awk -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.3f", b - a }')
line=$(grep '^FFBENCH ' "$work/wrk.out")
[ -n "$line" ] || { cat "$work/wrk.out" >&2; fail "no summary from wrk"; exit 1; }
ok=$(echo " $line" | field ok)
bad=$(echo " $line" | field failed)
fillers=$(echo " $line" | field extra)
sent=$(echo " $line" | field deliveries)
socket_errors=$(echo " $line" | field socket_errors)
p50=$(echo " $line" | field p50_us)
p99=$(echo " $line" | field p99_us)
pmax=$(echo " $line" | field max_us)

rows=$(psql_ -d bench -c "SELECT count(*) FROM flexfactor.webhook_events WHERE received_via = 'listener'")
applied=$(psql_ -d bench -c "SELECT count(*) FROM flexfactor.webhook_events WHERE apply_state = 'applied'")
approved=$(psql_ -d bench -c "SELECT count(*) FROM flexfactor.orders WHERE status = 'APPROVED'")
db_span=$(psql_ -d bench -c "SELECT round(extract(epoch FROM max(received_at) - min(received_at))::numeric, 3)
                              FROM flexfactor.webhook_events")
# the listener commits a group of deliveries per transaction; now() (received_at) is one per transaction
groups=$(psql_ -d bench -c "SELECT count(DISTINCT received_at) FROM flexfactor.webhook_events
                            WHERE received_via = 'listener'")
rejections=$(psql_ -d bench -c "SELECT string_agg(http_status || ' x' || n, ', ') FROM
                                (SELECT http_status, count(*) n FROM flexfactor.webhook_rejections GROUP BY 1) r")
rate=$(per_sec "$rows" "$elapsed")

# ------------------------------------------------------------------ SQL path
# diagnostic: the same verification, storage and application without HTTP,
# ff_ingest_webhook() on M more deliveries (orders B-<M+1>..B-<2M>) from
# pgbench, 1 client (serial, like the listener) and C clients
python3 "$here/gen.py" --port "$wport" --key "$key" --events "$events" --threads 1 --first $((events + 1)) \
	--copy --out "$work/deliveries" >/dev/null || { fail "gen.py --copy"; exit 1; }
chmod a+r "$work/deliveries/deliveries.copy"
psql_ -d bench -c 'CREATE TABLE bench_deliveries (id integer PRIMARY KEY, headers jsonb NOT NULL, body text NOT NULL)' \
	-c "\\copy bench_deliveries FROM '$work/deliveries/deliveries.copy'" \
	-c 'CREATE SEQUENCE bench_seq' -c 'VACUUM ANALYZE bench_deliveries' -c 'CHECKPOINT' \
	|| { fail "bench_deliveries"; exit 1; }
cat >"$work/ingest.sql" <<'EOF'
WITH n AS (SELECT nextval('bench_seq')::integer AS id)
SELECT flexfactor.ff_ingest_webhook(d.headers, d.body) FROM bench_deliveries d JOIN n USING (id);
EOF
chmod a+r "$work/ingest.sql"
half=$(( events / 2 ))
sql_per_client=$(( half / connections ))
sql1_tps=$(as_pg "$pgbin/pgbench" -n -h "$work" -p "$pg_port" -f "$work/ingest.sql" -c 1 -j 1 -t "$half" bench 2>&1 \
	| sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p')
sqlc_tps=$(as_pg "$pgbin/pgbench" -n -h "$work" -p "$pg_port" -f "$work/ingest.sql" -c "$connections" -j "$threads" \
	-t "$sql_per_client" bench 2>&1 | sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p')
sql_rows=$(psql_ -d bench -c "SELECT count(*) FILTER (WHERE apply_state = 'applied') || '/' || count(*)
                              FROM flexfactor.webhook_events WHERE received_via = 'sql'")
sql_expected=$(( half + sql_per_client * connections ))
[ "$sql_rows" = "$sql_expected/$sql_expected" ] || fail "SQL path: applied/stored $sql_rows, expected $sql_expected"

# ------------------------------------------------------------------ pgbench
psql_ -d bench -c 'CREATE TABLE bench_plain (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                       event text NOT NULL, order_session_key uuid, nonce text, body text NOT NULL,
                       received_at timestamptz NOT NULL DEFAULT now())' -c 'CHECKPOINT' \
	|| { fail "pgbench table"; exit 1; }
body=$(head -1 "$work/deliveries/deliveries.0.tsv" | cut -f6)
cat >"$work/insert.sql" <<EOF
INSERT INTO bench_plain (event, order_session_key, nonce, body)
VALUES ('order.completed', gen_random_uuid(), md5(random()::text), '$body');
EOF
chmod a+r "$work/insert.sql"
per_client=$(( (events + connections - 1) / connections ))
pgb() {
	as_pg "$pgbin/pgbench" -n -h "$work" -p "$pg_port" -f "$work/insert.sql" "$@" bench 2>&1 \
		| sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p'
}
tps=$(pgb -c "$connections" -j "$threads" -t "$per_client")
tps1=$(pgb -c 1 -j 1 -t "$per_client")
[ -n "$tps" ] && [ -n "$tps1" ] || fail "pgbench did not report tps"

# ------------------------------------------------------------------ summary
[ "$rows" = "$ok" ] || fail "rows in webhook_events ($rows) != 2xx answers counted by wrk ($ok)"
[ "$rows" = "$events" ] || fail "$rows events stored of $events deliveries"
[ "$applied" = "$events" ] && [ "$approved" = "$events" ] || fail "applied $applied, APPROVED $approved of $events"
target=2000
cat <<EOF

=============================== webhook listener benchmark
machine                     $(nproc) cores, $(uname -r), PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), synchronous_commit on
workload                    $events deliveries (order.completed, $orders orders), wrk -t $threads -c $connections
wall time                   ${elapsed} s (wrk start -> last answer); events' received_at span ${db_span} s
deliveries sent / answered  $sent / $(( ok + bad ))   (2xx $ok, other $bad, socket errors ${socket_errors:-0})
rows in webhook_events      $rows   (applied $applied, orders APPROVED $approved)
commits (groups)            $groups   (mean $(ratio "$rows" "$groups") deliveries per commit)
2xx answers == rows         $([ "$rows" = "$ok" ] && echo "yes: none lost, none extra" || echo "NO")
fillers (405, no event)     ${fillers:-0}   (rejections: ${rejections:-none})
latency per delivery        p50 $(awk -v u="$p50" 'BEGIN { printf "%.2f", u / 1000 }') ms, p99 $(awk -v u="$p99" 'BEGIN { printf "%.2f", u / 1000 }') ms, max $(awk -v u="$pmax" 'BEGIN { printf "%.2f", u / 1000 }') ms
events/s committed          $rate   (target >= $target: $([ "$rate" -ge $target ] && echo met || echo NOT met))
pgbench INSERT tps, -c $connections     ${tps:-n/a}
pgbench INSERT tps, -c 1     ${tps1:-n/a}
ratio listener / pgbench -c $connections  $(ratio "$rate" "${tps:-0}")
ratio listener / pgbench -c 1  $(ratio "$rate" "${tps1:-0}")
diagnostic: ff_ingest_webhook() from pgbench (no HTTP; same checks, storage, application)
  -c 1 (serial, like the listener)  ${sql1_tps:-n/a} tps   (listener / this: $(ratio "$rate" "${sql1_tps:-0}"))
  -c $connections                            ${sqlc_tps:-n/a} tps   (stored and applied: $sql_rows)
result                      $([ $failed = 0 ] && echo PASS || echo FAIL)
EOF
exit $failed
