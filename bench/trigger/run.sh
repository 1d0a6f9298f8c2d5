#!/usr/bin/env bash
# bench/trigger/run.sh -- what the decline trigger adds to the merchant's own
# insert of charge attempts.
#
# As root (PostgreSQL runs as the postgres account, on a Unix socket only):
#   bash bench/trigger/run.sh [--quick] [--rows N] [--reps R]
#                             [--cpu C | --no-pin] [--no-build] [--keep]
#
# It starts a throwaway cluster that preloads flexfactor, creates the billing
# schema of bench/trigger/billing.sql (README's payments table, the trigger
# as examples/ writes it with declined_if/recurring_if and an enrich
# function), and measures in the same run, interleaved, best of R:
#   (1) INSERT ... SELECT of N charge attempts (8.3 % declined renewals) into
#       the table without the trigger, and into the same table with it;
#       the ratio, and the time added per queued decline;
#   (2) what a queued decline costs at the least, whoever does it: the
#       enrich function alone for those rows, and one multi-row INSERT of
#       the same queue rows into a copy of flexfactor.declines;
#   (3) N attempts none of which is a decline, without and with the
#       trigger: the cost of a row the trigger does not queue.
# Times are of the statement alone (its AFTER triggers included, in an open
# transaction: the commit is not timed): the CPU time of the backend that
# runs it (/proc/<pid>/schedstat, which other work on the machine does not
# inflate), and the elapsed time.  Ratios are of CPU times.  Each run starts from empty tables
# after a CHECKPOINT.  On a machine of 2 CPUs the figures are bimodal when
# the backend moves between CPUs that other work also uses: by default the
# whole cluster is pinned to the last CPU (taskset); --cpu C picks another,
# --no-pin leaves it to the scheduler.  The load average is printed before
# and after.  --quick (N = 6,000, R = 1) checks correctness only: its
# figures mean nothing.  Exits non-zero when a correctness check fails
# (every declined renewal queued once, with its details; nothing else
# queued; the same attempt written again queues nothing more), never because
# a target is missed.
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/bench/trigger"

quick=0
build=1
keep=0
rows=
reps=
cpu=auto
while [ $# -gt 0 ]; do
	case "$1" in
		--quick) quick=1 ;;
		--rows) rows=$2; shift ;;
		--reps) reps=$2; shift ;;
		--cpu) cpu=$2; shift ;;
		--no-pin) cpu=none ;;
		--no-build) build=0 ;;
		--keep) keep=1 ;;
		-h|--help) sed -n '2,31p' "$0"; exit 0 ;;
		*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
if [ $quick = 1 ]; then
	rows=${rows:-6000}; reps=${reps:-1}
else
	rows=${rows:-100000}; reps=${reps:-5}
fi
. "$repo/bench/lib.sh"
require_counts "$rows" "$reps"
bench_pin "$cpu"
bench_packages=0
bench_prepare bench/trigger/run.sh
bench_workdir fftriggerbench

cleanup() {
	bench_stop_pg
	bench_remove_workdir "pg.log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ PostgreSQL
bench_pg_init --no-sync
cat >>"$work/pgdata/postgresql.conf" <<EOF
max_connections = 20
shared_buffers = 256MB
max_wal_size = 8GB
checkpoint_timeout = 1h
flexfactor.mid = '00000000-0000-4000-8000-00000000719e'
flexfactor.batch_interval = 86400
EOF
bench_pg_start
[ -n "$bench_cpu" ] && pinning="the whole cluster $pinning; the client only waits on each statement"
psql_ -d postgres -c 'CREATE DATABASE bench' || { fail "CREATE DATABASE"; exit 1; }
psql_ -d bench -c 'CREATE EXTENSION flexfactor' || { fail "CREATE EXTENSION"; exit 1; }
psql_ -d bench <"$here/billing.sql" >/dev/null || { fail "bench/trigger/billing.sql"; exit 1; }
psql_ -d bench -c 'CREATE TABLE bench_queue_copy (LIKE flexfactor.declines INCLUDING ALL)' \
	|| { fail "bench_queue_copy"; exit 1; }
version=$(psql_ -d bench -c "SELECT current_setting('server_version') || ', flexfactor ' || flexfactor.ff_version()")
echo "== PostgreSQL $version; $pinning"

# ------------------------------------------------------------------ measurements
# insert TABLE DECLINES: N attempts into billing.TABLE, emptied first (and
# the queue with it); prints "elapsed cpu" seconds of the statement
insert() {
	local table=$1 declines=$2 out empty=billing.$1
	[ "$table" = payments ] && empty="billing.payments, flexfactor.declines, flexfactor.batch_lines"
	out=$(psql_ -d bench <<EOF
SET client_min_messages = warning;
TRUNCATE $empty;
CHECKPOINT;
BEGIN;
$bench_clock_start
INSERT INTO billing.$table (invoice_no, customer_id, subscription_id, amount, currency, card_token,
                            status, is_recurring, decline_code, processor, avs_result, cvv_result, cavv_result)
SELECT * FROM billing.run($rows, $declines);
$bench_clock_since
COMMIT;
EOF
	) || { fail "insert into $table"; echo 0; return; }
	tail -n 1 <<<"$out"
}

# after a run with the trigger: the queue must hold every declined renewal once
check_queue() {
	local out
	out=$(psql_ -d bench -F ' ' -c "SELECT * FROM billing.check_queue($rows)") || { fail "check_queue"; return; }
	read -r q_queued q_expected q_distinct q_matching q_complete <<<"$out"
	[ "$q_queued" = "$q_expected" ] || fail "$q_queued declines queued, $q_expected expected"
	[ "$q_distinct" = "$q_queued" ] || fail "$q_distinct distinct orders in $q_queued queued declines"
	[ "$q_matching" = "$q_queued" ] || fail "$q_matching of $q_queued queued declines match a declined renewal"
	[ "$q_complete" = "$q_queued" ] || fail "$q_complete of $q_queued queued declines carry the enrich function's details"
}

# the best (least) elapsed and CPU seconds of a list of "elapsed cpu"
best_wall() { local x; for x in "$@"; do echo "${x%% *}"; done | min_of; }
best_cpu() { local x; for x in "$@"; do echo "${x##* }"; done | min_of; }

declare -a t_plain t_trigger t_enrich t_floor t_paid_plain t_paid_trigger
echo "== warm-up"
insert payments_plain true >/dev/null
insert payments true >/dev/null

echo "== (1) $rows attempts, 8.3 % declined renewals: without / with the trigger, best of $reps"
for i in $(seq "$reps"); do
	if [ $((i % 2)) = 1 ]; then
		t_plain+=("$(insert payments_plain true)")
		t_trigger+=("$(insert payments true)")
		check_queue
	else
		t_trigger+=("$(insert payments true)")
		check_queue
		t_plain+=("$(insert payments_plain true)")
	fi
done
declines=$q_queued

echo "== (2) the least a queued decline costs: the enrich function alone, a bare INSERT of the queue rows"
for i in $(seq "$reps"); do
	out=$(psql_ -d bench <<EOF
SET client_min_messages = warning;
TRUNCATE bench_queue_copy;
CHECKPOINT;
BEGIN;
$bench_clock_start
SELECT count(billing.flexfactor_details(p)) FROM billing.payments p WHERE p.status = 'declined' AND p.is_recurring;
$bench_clock_since
$bench_clock_start
INSERT INTO bench_queue_copy (order_id, transaction_id, idempotency_key, payload)
SELECT order_id, transaction_id, idempotency_key, payload FROM flexfactor.declines ORDER BY id;
$bench_clock_since
COMMIT;
EOF
	) || { fail "floors"; break; }
	[ "$(sed -n 1p <<<"$out")" = "$declines" ] || fail "the enrich function answered $(sed -n 1p <<<"$out") rows, not $declines"
	t_enrich+=("$(sed -n 2p <<<"$out")")
	t_floor+=("$(sed -n 3p <<<"$out")")
done

# the same attempt written again (paid, then declined again) queues nothing more
again=$(psql_ -d bench <<EOF
SET client_min_messages = warning;
UPDATE billing.payments SET status = 'paid' WHERE id IN (SELECT id FROM billing.payments WHERE status = 'declined' AND is_recurring LIMIT 100);
UPDATE billing.payments SET status = 'declined' WHERE id IN (SELECT id FROM billing.payments WHERE status = 'paid' AND decline_code IS NOT NULL);
SELECT count(*) FROM flexfactor.declines;
EOF
) || fail "writing declines again"
[ "$(tail -n 1 <<<"$again")" = "$declines" ] || fail "writing 100 declines again changed the queue from $declines to $(tail -n 1 <<<"$again") rows"

echo "== (3) $rows attempts, none a decline: without / with the trigger, best of $reps"
for i in $(seq "$reps"); do
	t_paid_plain+=("$(insert payments_plain false)")
	t_paid_trigger+=("$(insert payments false)")
	n=$(psql_ -d bench -c 'SELECT count(*) FROM flexfactor.declines') || fail "count"
	[ "$n" = 0 ] || fail "$n declines queued from paid attempts"
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ summary
[ -e "$work/failed" ] && failed=1
us() { awk -v s="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", s * 1e6 / n; else print "n/a" }'; }
diff_us() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { if (n > 0) printf "%.1f", (a - b) * 1e6 / n; else print "n/a" }'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v <= t ? "met" : "MISSED") }'; }

plain=$(best_cpu "${t_plain[@]}"); trigger=$(best_cpu "${t_trigger[@]}")
plain_w=$(best_wall "${t_plain[@]}"); trigger_w=$(best_wall "${t_trigger[@]}")
enrich=$(best_cpu "${t_enrich[@]}"); floor_insert=$(best_cpu "${t_floor[@]}")
paid_plain=$(best_cpu "${t_paid_plain[@]}"); paid_trigger=$(best_cpu "${t_paid_trigger[@]}")
r=$(ratio "$trigger" "$plain")
echo
echo "================ flexfactor decline trigger benchmark ================"
echo "host: $(nproc) CPUs, $(uname -r); PostgreSQL $version"
echo "pinning: $pinning"
echo "load average (1, 5, 15 min): before $load_before, after $load_after"
[ $quick = 1 ] && echo "QUICK MODE: correctness only, the figures below mean nothing"
printf 'rows %d per INSERT ... SELECT, %d declined renewals queued (%.1f %%), best of %d\n' \
	"$rows" "$declines" "$(awk -v d="$declines" -v n="$rows" 'BEGIN { print 100 * d / n }')" "$reps"
printf 'times: CPU of the backend for the statement (elapsed in brackets); ratios of CPU times\n'
printf '(1)  without the trigger          %8.3f s   (%.3f s)\n' "$plain" "$plain_w"
printf '     with the trigger             %8.3f s   (%.3f s)\n' "$trigger" "$trigger_w"
printf '     ratio with / without         %8sx          target <= 1.15x: %s   (elapsed: %sx)\n' \
	"$r" "$(verdict "$r" 1.15)" "$(ratio "$trigger_w" "$plain_w")"
printf '     added per queued decline     %8s us\n' "$(diff_us "$trigger" "$plain" "$declines")"
printf '(2)  the least a queued decline costs, same rows\n'
printf '     the enrich function alone    %8s us   (the DBA'"'"'s function, run with the writer'"'"'s rights)\n' \
	"$(us "$enrich" "$declines")"
printf '     bare INSERT of the queue rows%8s us   (one statement, into a copy of flexfactor.declines)\n' \
	"$(us "$floor_insert" "$declines")"
printf '     the two, as a ratio          %8sx          (without + both) / without: the floor of (1)\n' \
	"$(awk -v p="$plain" -v e="$enrich" -v f="$floor_insert" 'BEGIN { printf "%.2f", (p + e + f) / p }')"
printf '     flexfactor'"'"'s own work        %8s us   per decline: (1) minus both\n' \
	"$(awk -v t="$trigger" -v p="$plain" -v e="$enrich" -v f="$floor_insert" -v n="$declines" \
		'BEGIN { printf "%.1f", (t - p - e - f) * 1e6 / n }')"
printf '(3)  %d attempts, none a decline: without %.3f s, with %.3f s: %s us per row not queued (%sx)\n' \
	"$rows" "$paid_plain" "$paid_trigger" "$(diff_us "$paid_trigger" "$paid_plain" "$rows")" \
	"$(ratio "$paid_trigger" "$paid_plain")"
if [ $failed = 0 ]; then
	echo "correctness: OK (every declined renewal queued once with its details, nothing else; written again: queued once)"
else
	echo "correctness: FAILED (see above)"
fi
echo "======================================================================="
exit $failed
