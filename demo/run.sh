#!/usr/bin/env bash
# demo/run.sh: README's first command -- the whole MIT rescue flow, locally.
#
#   bash demo/run.sh            # 10,000 subscriptions; report; stop everything
#   bash demo/run.sh --quick    # 1,000 subscriptions (what CI runs)
#   bash demo/run.sh --keep     # leave it all running to explore with psql
#   bash demo/run.sh --stop     # stop what --keep left running
#
# As root (apt-get, make install, and runuser to start the servers as the
# postgres account); it touches no cluster but its own.  It installs what is missing (Debian packages), builds and installs
# flexfactor, and starts, all on loopback under $FF_DEMO_DIR (default
# /tmp/flexfactor-demo): the real OpenSSH server (test/sshd/ffsshd), the
# FlexFactor simulator (test/ffsim) and a throwaway PostgreSQL cluster that
# preloads flexfactor.  Then a billing run declines ~8 % of the charges; the
# trigger queues them, the worker uploads the batches over SFTP, the
# simulator answers with result files and, as its clock moves on, signed
# webhooks that the listener stores; the callback marks rescued invoices paid.
# Running it again starts from scratch.  PG_CONFIG=/path/to/pg_config picks
# the PostgreSQL installation (default: the pg_config on PATH, Debian's 15).
#
# Besides printing it, the report is written to $FF_DEMO_DIR/report.json, and
# $FF_DEMO_DIR/demo.env says where the cluster and the simulator listen;
# test/check_demo_report.py checks the one against the other (run-all.sh).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
demo_dir=${FF_DEMO_DIR:-/tmp/flexfactor-demo}
src=$demo_dir/src	# the copy of what runs as postgres
keep=0
stop_only=0
subscriptions=10000
for arg in "$@"; do
	case "$arg" in
		--keep) keep=1 ;;
		--quick) subscriptions=1000 ;;
		--stop) stop_only=1 ;;
		*) echo "usage: $0 [--quick] [--keep] | --stop" >&2; exit 2 ;;
	esac
done
if [ "$(id -u)" != 0 ]; then
	echo "demo: run as root (bash demo/run.sh, or sudo bash demo/run.sh): it installs Debian packages and the extension, and starts the servers as the postgres account" >&2
	exit 2
fi

MID=9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f
KEY='XRmKBxG5uvt1qWzqvp+T6CAbTo0MB89GTxXZD5cHA56RP7Mj4NbnHQOR1Y8uorUU9YQz8ujaVRUdm9vTSkPZSw=='
export PG_CONFIG=${PG_CONFIG:-pg_config}	# make's too
pgbin=$("$PG_CONFIG" --bindir 2>/dev/null || true)
step() { printf '\n== %s\n' "$*"; }
# as the postgres account, from / (the caller's directory may be closed to it)
as_pg() { (cd / && runuser -u postgres -- "$@"); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

stop_all() {
	[ -f "$demo_dir/data/postmaster.pid" ] && as_pg "$pgbin/pg_ctl" -D "$demo_dir/data" -m fast -w stop >/dev/null 2>&1 || true
	if [ -f "$demo_dir/sim.pid" ]; then
		local pid
		pid=$(cat "$demo_dir/sim.pid")
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	fi
	[ -d "$demo_dir/sshd" ] && as_pg "$src/test/sshd/ffsshd" stop "$demo_dir/sshd" >/dev/null 2>&1 || true
}

if [ $stop_only -eq 1 ]; then
	stop_all
	echo "stopped what ran in $demo_dir"
	exit 0
fi

step "installing dependencies (Debian packages)"
"$repo/tools/install-deps.sh"

pgbin=$("$PG_CONFIG" --bindir)	# there now

step "building and installing flexfactor"
make -C "$repo" -s >/dev/null
make -C "$repo" -s install >/dev/null
echo "installed flexfactor $(make -C "$repo" -s print-version)"

step "starting OpenSSH, the FlexFactor simulator and PostgreSQL in $demo_dir"
stop_all
rm -rf "$demo_dir"
mkdir -p "$demo_dir"
# what the postgres account runs or reads, copied where it can: the checkout
# may be in a directory it cannot enter (root's home is mode 700 on Debian)
mkdir -p "$src/test" "$src/demo"
cp -a "$repo/test/sshd" "$repo/test/ffsim" "$src/test/"
cp -a "$repo/examples" "$src/"
cp -a "$repo/demo/billing.sql" "$src/demo/"
chown -R postgres: "$demo_dir"
trap '[ $keep -eq 1 ] || { step "stopping everything"; stop_all; echo "stopped; logs are in $demo_dir"; }' EXIT

as_pg "$src/test/sshd/ffsshd" start "$demo_dir/sshd" >/dev/null
# shellcheck disable=SC1091
. "$demo_dir/sshd/env"
echo "OpenSSH (SFTP) on 127.0.0.1:$FFSSHD_PORT"

webhook_port=$(free_port)
# exec: the pid file names the simulator itself, not a shell or runuser above it
as_pg sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$demo_dir/sim.pid" \
	python3 "$src/test/ffsim/ffsim.py" --port 0 --port-file "$demo_dir/sim.port" \
	--sftp-root "$demo_dir/sftp" --mid "$MID" --scan-interval 0.5 --mit-mode managed \
	--outcomes decline-code --outcome-seed 42 \
	--webhook-url "http://127.0.0.1:$webhook_port/flexfactor/webhook" --webhook-key "$KEY" \
	>"$demo_dir/sim.log" 2>&1 &
for _ in $(seq 1 100); do [ -s "$demo_dir/sim.port" ] && break; sleep 0.1; done
sim_port=$(cat "$demo_dir/sim.port")
sim="http://127.0.0.1:$sim_port"
echo "FlexFactor simulator on $sim"

pg_port=$(free_port)
as_pg "$pgbin/initdb" -D "$demo_dir/data" -A trust -U postgres >/dev/null
cat >>"$demo_dir/data/postgresql.conf" <<CONF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$demo_dir'
shared_preload_libraries = 'flexfactor'
flexfactor.database = 'billing'
flexfactor.batch_interval = 1
flexfactor.api_url = '$sim/v1/'
flexfactor.app_key = 'test-app-key'
flexfactor.app_secret = 'test-app-secret'
flexfactor.mid = '$MID'
flexfactor.sftp_host = '127.0.0.1'
flexfactor.sftp_port = $FFSSHD_PORT
flexfactor.sftp_user = '$FFSSHD_USER'
flexfactor.sftp_private_key_file = '$FFSSHD_CLIENT_KEY'
flexfactor.sftp_known_hosts_file = '$FFSSHD_KNOWN_HOSTS'
flexfactor.sftp_inbound_dir = '$demo_dir/sftp/$MID/inbound'
flexfactor.sftp_outbound_dir = '$demo_dir/sftp/$MID/outbound'
flexfactor.sftp_processed_dir = '$demo_dir/sftp/$MID/outbound/done'
flexfactor.webhook_listen_address = '127.0.0.1'
flexfactor.webhook_port = $webhook_port
flexfactor.webhook_key = '$KEY'
CONF
as_pg "$pgbin/pg_ctl" -D "$demo_dir/data" -l "$demo_dir/postgresql.log" -w start >/dev/null
psql_demo() { as_pg "$pgbin/psql" -X -q -h "$demo_dir" -p "$pg_port" -U postgres "$@"; }
value() { psql_demo -d billing -At -c "$1"; }
echo "PostgreSQL on 127.0.0.1:$pg_port"
cat >"$demo_dir/demo.env" <<ENV
FF_DEMO_PGHOST=$demo_dir
FF_DEMO_PGPORT=$pg_port
FF_DEMO_SIM=$sim
FF_DEMO_MID=$MID
FF_DEMO_SUBSCRIPTIONS=$subscriptions
ENV

psql_demo -d postgres -c "CREATE DATABASE billing"
psql_demo -d billing -c "CREATE EXTENSION flexfactor; CREATE EXTENSION pgcrypto"
for _ in $(seq 1 60); do
	[ "$(value "SELECT count(*) FROM flexfactor.ff_worker_status() WHERE pid IS NOT NULL")" = 3 ] && break
	sleep 0.5
done
psql_demo -d billing -c "SELECT role, pid, state FROM flexfactor.ff_worker_status()"

# wait (bounded) until a query returns 't', printing its progress line
wait_for() {
	local what=$1 done_sql=$2 progress_sql=$3 limit=${4:-300}
	for _ in $(seq 1 "$limit"); do
		printf '\r   %s: %s   ' "$what" "$(value "$progress_sql")"
		[ "$(value "$done_sql")" = t ] && { echo; return 0; }
		sleep 1
	done
	echo; echo "demo: timed out waiting for: $what" >&2; exit 1
}

step "billing run: $subscriptions subscriptions charged, ~8 % declined by the card processor"
# the billing schema, trigger and callback of the example integration
# (examples/; its pg_cron job is left out: here the worker exports every second)
psql_demo -d billing -v ON_ERROR_STOP=1 -c 'SET client_min_messages = warning' \
	-f "$src/examples/01_billing_schema.sql" \
	-f "$src/examples/02_flexfactor.sql" >/dev/null
psql_demo -d billing -v ON_ERROR_STOP=1 -v subscriptions="$subscriptions" -v decline_pct=8 \
	-f "$src/demo/billing.sql"
psql_demo -d billing -c "SELECT status, decline_code, count(*) FROM billing.payments GROUP BY 1, 2 ORDER BY 1, 2"
declines=$(value "SELECT count(*) FROM flexfactor.declines")
echo "the trigger queued $declines declined recurring charges for FlexFactor"

step "the worker exports them as SFTP batch files"
uploaded="FROM flexfactor.batches WHERE kind = 'evaluate' AND state IN ('uploaded', 'answered')"
wait_for "batches uploaded" \
	"SELECT coalesce(sum(line_count), 0) = $declines $uploaded" \
	"SELECT coalesce(sum(line_count), 0) || ' of $declines declines in ' || count(*) || ' files' $uploaded"
psql_demo -d billing -c "SELECT id, file_name, line_count, byte_count, state FROM flexfactor.batch_status ORDER BY id"

step "FlexFactor answers with result files; the worker reads them"
wait_for "orders from result files" \
	"SELECT count(*) = $declines FROM flexfactor.orders" \
	"SELECT count(*) || ' of $declines orders' FROM flexfactor.orders"
psql_demo -d billing -c "SELECT status, count(*) FROM flexfactor.orders GROUP BY 1 ORDER BY 1"

step "a minute later FlexFactor has rescued most soft declines (signed webhooks to the listener)"
curl -s -X POST -d '{"seconds": 61}' "$sim/_admin/clock/advance" >/dev/null
rescued=$(curl -s "$sim/_admin/orders?state=COMPLETED" | python3 -c 'import json, sys; print(json.load(sys.stdin)["count"])')
wait_for "rescues stored" \
	"SELECT count(*) = $rescued FROM flexfactor.orders WHERE status = 'APPROVED'" \
	"SELECT count(*) || ' of $rescued rescued orders' FROM flexfactor.orders WHERE status = 'APPROVED'" 60

step "customers who cancelled their subscription meanwhile: the merchant cancels those rescues (ff_cancel)"
value "SELECT count(flexfactor.ff_cancel(o.order_session_key::text))
         FROM flexfactor.orders o JOIN billing.invoices i ON i.invoice_no = o.order_id
        WHERE o.status = 'SUBMITTED' AND i.subscription_id % 6 = 0" | sed 's/$/ rescues cancelled/'

step "two weeks later the rescue window closes for the rest"
curl -s -X POST -d '{"seconds": 1296000}' "$sim/_admin/clock/advance" >/dev/null
wait_for "orders decided" \
	"SELECT count(*) = 0 FROM flexfactor.orders WHERE flexfactor.ff_status_rank(status) < 10" \
	"SELECT count(*) FILTER (WHERE flexfactor.ff_status_rank(status) >= 10) || ' of $declines orders decided' FROM flexfactor.orders" 60

# every event FlexFactor sent (declines, cancellations included) stored
events=$(curl -s "$sim/_admin/webhooks" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["events"]))')
wait_for "webhooks stored" \
	"SELECT count(*) >= $events FROM flexfactor.webhook_events" \
	"SELECT count(*) || ' of $events webhook events' FROM flexfactor.webhook_events" 60

step "report"
# the figures once, as JSON (report.json), and printed from that same JSON.
# charges and card_declines: the billing run; then what FlexFactor did with
# the declines: rescued (approved), declined at once, expired (rescue window
# closed), cancelled (by the merchant), still pending; recovery by count
# (rescued / decided) and by value (amount rescued / amount decided)
report=$(value "
WITH o AS (SELECT o.*, p.decline_code FROM flexfactor.orders o
             JOIN billing.payments p ON p.invoice_no = o.order_id AND p.status = 'declined'),
     s AS (SELECT sum(submitted) AS submitted, sum(approved) AS rescued, sum(declined) AS declined,
                  sum(expired) AS expired, sum(cancelled) AS cancelled, sum(pending) AS pending,
                  sum(submitted_cents) AS submitted_cents, sum(recovered_cents) AS recovered_cents
             FROM flexfactor.recovery_stats),
     d AS (SELECT sum(amount_cents) AS decided_cents FROM o WHERE flexfactor.ff_status_rank(status) >= 10)
SELECT json_build_object(
         'charges', (SELECT count(*) FROM billing.payments WHERE status <> 'recovered'),
         'card_declines', (SELECT count(*) FROM billing.payments WHERE status = 'declined'),
         'batch_files', (SELECT count(*) FROM flexfactor.batches WHERE kind = 'evaluate'),
         'lines_sent', (SELECT coalesce(sum(line_count), 0) FROM flexfactor.batches WHERE kind = 'evaluate'),
         'webhooks', (SELECT count(*) FROM flexfactor.webhook_events),
         'submitted', s.submitted, 'rescued', s.rescued, 'declined', s.declined, 'expired', s.expired,
         'cancelled', s.cancelled, 'pending', s.pending,
         'recovery_pct', round(100.0 * s.rescued / nullif(s.submitted - s.pending, 0), 1),
         'recovery_value_pct', round(100.0 * s.recovered_cents / nullif(d.decided_cents, 0), 1),
         'submitted_cents', s.submitted_cents, 'recovered_cents', s.recovered_cents,
         'recovered', to_char(s.recovered_cents / 100.0, 'FM\$999,999,990.00'),
         'by_code', (SELECT json_object_agg(decline_code, json_build_object(
                                'submitted', n, 'rescued', r, 'declined', dd, 'expired', e, 'cancelled', c))
                       FROM (SELECT decline_code, count(*) AS n,
                                    count(*) FILTER (WHERE status IN ('APPROVED', 'REFUNDED')) AS r,
                                    count(*) FILTER (WHERE status IN ('DECLINED', 'REJECTED')) AS dd,
                                    count(*) FILTER (WHERE status = 'EXPIRED') AS e,
                                    count(*) FILTER (WHERE status = 'CANCELLED') AS c
                               FROM o GROUP BY 1) g))
  FROM s, d")
printf '%s\n' "$report" >"$demo_dir/report.json"
psql_demo -d billing -v report="$report" <<'SQL'
\pset footer off
SELECT charges, card_declines, batch_files, lines_sent, webhooks
  FROM json_to_record(:'report') AS r(charges bigint, card_declines bigint, batch_files bigint,
                                      lines_sent bigint, webhooks bigint);
SELECT submitted, rescued, declined, expired, cancelled, pending,
       recovery_pct AS "recovery % (count)", recovery_value_pct AS "recovery % (value)", recovered
  FROM json_to_record(:'report') AS r(submitted bigint, rescued bigint, declined bigint, expired bigint,
                                      cancelled bigint, pending bigint, recovery_pct numeric,
                                      recovery_value_pct numeric, recovered text);
-- soft declines (a temporary state of the account) are rescued far more
-- often than hard ones (the card itself is wrong): test/ffsim/README.md
SELECT c.key AS decline_code,
       CASE c.key WHEN '51' THEN 'insufficient funds' WHEN '05' THEN 'do not honor'
                  WHEN '61' THEN 'exceeds amount limit' WHEN '65' THEN 'exceeds frequency limit'
                  WHEN '54' THEN 'expired card' WHEN '14' THEN 'invalid card number' END AS reason,
       CASE WHEN c.key IN ('54', '14') THEN 'hard' ELSE 'soft' END AS kind,
       (c.value->>'submitted')::int AS submitted, (c.value->>'rescued')::int AS rescued,
       (c.value->>'declined')::int AS declined, (c.value->>'expired')::int AS expired,
       (c.value->>'cancelled')::int AS cancelled,
       round(100.0 * (c.value->>'rescued')::int / (c.value->>'submitted')::int, 1) AS "rescued %"
  FROM json_each(:'report'::json->'by_code') c ORDER BY 3 DESC, 9 DESC;
SELECT status AS invoice_status, count(*) AS invoices,
       to_char(sum(amount_cents) / 100.0, 'FM$999,999,990.00') AS amount
  FROM billing.invoices GROUP BY 1 ORDER BY 1;
SELECT o.order_id, o.status, to_char(o.amount_cents / 100.0, 'FM$990.00') AS amount,
       o.order_session_key, i.status AS invoice, s.status AS subscription
  FROM flexfactor.orders o JOIN billing.invoices i ON i.invoice_no = o.order_id
  JOIN billing.subscriptions s ON s.id = i.subscription_id
 ORDER BY o.order_id LIMIT 6;
SQL

echo "flexfactor ran the whole flow: declines out by SFTP, results and webhooks back, invoices updated."
if [ $keep -eq 1 ]; then
	echo "Explore it:  runuser -u postgres -- psql -h $demo_dir -p $pg_port -d billing"
	echo "             e.g. SELECT * FROM flexfactor.queue_status; SELECT * FROM flexfactor.order_outcomes LIMIT 10;"
	echo "Stop it:     ${FF_DEMO_DIR:+FF_DEMO_DIR=$demo_dir }bash $repo/demo/run.sh --stop   (as root)"
else
	echo "Re-run with --keep to leave everything running and explore it with psql."
fi
