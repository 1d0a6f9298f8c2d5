#!/usr/bin/env bash
# bench/batch/run.sh -- the SFTP batch export: how fast against PostgreSQL's
# own COPY plus OpenSSH's sftp client, and whether memory grows with rows.
#
# As root (PostgreSQL and sshd run as the postgres account, loopback only):
#   bash bench/batch/run.sh [--rows N] [--big-rows M] [--reps R] [--worker]
#                           [--no-build] [--keep]
#
# It starts the real OpenSSH server (test/sshd/ffsshd) and a throwaway
# PostgreSQL 15 cluster that preloads flexfactor, both in a temporary
# directory, then in the same run:
#   (1) queues N declines (default 200,000) with ff_enqueue_decline() in one
#       statement and times ff_export_batch() in a fresh backend: fixing the
#       batches (2,000 lines each) and uploading them; then, the batches
#       reset to 'ready', the upload alone (best of R);
#       baseline: COPY (SELECT line FROM flexfactor.batch_file_lines(id)) TO
#       '<file>' for the same batches: the same JSON built from the same
#       rows, the same bytes (SHA-256 checked); and
#       OpenSSH's sftp uploading them (put as .part + rename, one
#       connection) (best of R each); prints times and ratios;
#   (2) peak memory of the ff_export_batch() backend, started fresh, for N
#       and M rows (default 1,000,000): VmHWM from /proc/<pid>/status and
#       the peak of RssAnon (private memory) sampled every 0.1 s;
#   (3) with --worker, the same for the background worker (cluster
#       restarted before each size, so the worker is fresh; its export pass
#       is started by a configuration reload).
# Exits non-zero when a correctness check fails (uploaded files must have
# the recorded SHA-256, every decline must be in exactly one uploaded
# batch); targets are reported, not enforced.  Everything is stopped and
# removed on exit (--keep keeps the work directory).
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)

rows=200000
big_rows=1000000
reps=3
worker=0
build=1
keep=0
while [ $# -gt 0 ]; do
	case "$1" in
		--rows) rows=$2; shift ;;
		--big-rows) big_rows=$2; shift ;;
		--reps) reps=$2; shift ;;
		--worker) worker=1 ;;
		--no-build) build=0 ;;
		--keep) keep=1 ;;
		-h|--help) sed -n '2,30p' "$0"; exit 0 ;;
		*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
. "$repo/bench/lib.sh"
require_counts "$rows" "$big_rows" "$reps"
bench_prepare bench/batch/run.sh
bench_workdir ffbatchbench
sampler_pid=

cleanup() {
	[ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
	bench_stop_pg
	if [ -f "$work/sshd/sshd.pid" ]; then
		as_pg bash "$repo/test/sshd/ffsshd" stop "$work/sshd" >/dev/null 2>&1
	fi
	bench_remove_workdir "pg.log, sshd/sshd.log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ------------------------------------------------------------------ sshd
mid=00000000-0000-4000-8000-0000000ba7c4
as_pg bash "$repo/test/sshd/ffsshd" start "$work/sshd" >"$work/sshd.env" 2>"$work/sshd.err" \
	|| { cat "$work/sshd.err" >&2; fail "ffsshd did not start"; exit 1; }
# shellcheck disable=SC1091
. "$work/sshd.env"
inbound="$work/sftp/$mid/inbound"
outbound="$work/sftp/$mid/outbound"	# stays empty: no result files in this benchmark
baseline_dir="$work/sftp/baseline"
mkdir -p "$inbound" "$outbound" "$baseline_dir" "$work/copy"
chown -R postgres: "$work/sftp" "$work/copy"
echo "== OpenSSH $(ssh -V 2>&1 | awk '{print $1}') sshd on 127.0.0.1:$FFSSHD_PORT (internal-sftp)"

# ------------------------------------------------------------------ PostgreSQL
bench_pg_init --locale=C
cat >>"$work/pgdata/postgresql.conf" <<EOF
max_connections = 20
shared_buffers = 128MB
max_wal_size = 8GB
checkpoint_timeout = 1h
flexfactor.mid = '$mid'
# the worker passes once at start and then only when woken (reload)
flexfactor.batch_interval = 86400
flexfactor.batch_max_rows = 2000
flexfactor.sftp_host = '127.0.0.1'
flexfactor.sftp_port = $FFSSHD_PORT
flexfactor.sftp_user = '$FFSSHD_USER'
flexfactor.sftp_private_key_file = '$FFSSHD_CLIENT_KEY'
flexfactor.sftp_known_hosts_file = '$FFSSHD_KNOWN_HOSTS'
flexfactor.sftp_inbound_dir = '$inbound'
flexfactor.sftp_outbound_dir = '$outbound'
flexfactor.sftp_timeout_ms = 60000
EOF
pg_restart() {
	as_pg "$pgbin/pg_ctl" -D "$work/pgdata" -m fast -w -t 120 stop >/dev/null || true
	bench_pg_start
}
bench_pg_start_with_extension
echo "== PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on a Unix socket in $work, flexfactor $(psql_ -d bench -c 'SELECT flexfactor.ff_version()')"

worker_passes() {
	psql_ -d bench -c "SELECT coalesce(sum(passes), 0) FROM flexfactor.ff_worker_status() WHERE role = 'worker'"
}
# the worker's first pass (nothing queued yet), so that it then sleeps
for _ in $(seq 300); do
	[ "$(worker_passes)" -ge 1 ] 2>/dev/null && break
	sleep 0.1
done

# ------------------------------------------------------------------ helpers
# queue N declines with ff_enqueue_decline() in one statement; prints seconds
enqueue() {
	local n=$1 t0 out
	t0=$(now)
	out=$(psql_ -d bench -c "SELECT count(flexfactor.ff_enqueue_decline(flexfactor.ff_decline(
	        'INV-' || i, 1000 + i % 9000, 'USD', md5(i::text)::uuid::text, 'gw-' || i,
	        decline_code => '51', email => 'c' || i || '@example.com',
	        expiry => '2030-01-01 00:00+00', subscription_id => 'SUB-' || i,
	        subscription_interval => 'monthly', $bench_billing_args,
	        declined_at => '2029-12-01 00:00+00')))
	      FROM generate_series(1, $n) i") || { fail "enqueue $n"; echo 0; return; }
	[ "$out" = "$n" ] || fail "enqueued $out of $n"
	psql_ -d bench -c 'VACUUM ANALYZE flexfactor.declines' -c 'CHECKPOINT' >/dev/null
	elapsed "$t0"
}

reset_tables() {
	psql_ -d bench -c 'SET client_min_messages = warning' \
		-c 'TRUNCATE flexfactor.batch_lines, flexfactor.declines, flexfactor.batches CASCADE' \
		-c 'CHECKPOINT' >/dev/null || fail "truncate"
	rm -f "$inbound"/* "$baseline_dir"/* "$work"/copy/*
}

# peak of RssAnon (kB) of pid $1, sampled every 0.1 s until it exits or
# $2 appears; written to $3
sample_rss() {
	local pid=$1 stop=$2 out=$3 peak=0 v
	while kill -0 "$pid" 2>/dev/null && [ ! -e "$stop" ]; do
		v=$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)
		[ -n "$v" ] && [ "$v" -gt "$peak" ] && peak=$v
		echo "$peak" >"$out"
		sleep 0.1
	done
}

worker_pid() { psql_ -d bench -c "SELECT pid FROM flexfactor.ff_worker_status() WHERE role = 'worker'"; }

# reset a process's VmHWM to its current RSS (Linux clear_refs, as root)
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
hwm_of() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

# ff_export_batch() in a fresh backend, measuring that backend and the
# worker (whichever does the work; both VmHWM reset first): sets exp_secs,
# exp_n, exp_hwm/exp_anon (backend, kB) and exp_whwm/exp_wanon (worker, kB)
export_fresh() {
	local tag=$1 pidf done_f out wpid
	pidf="$work/pid.$tag" done_f="$work/done.$tag"
	rm -f "$pidf" "$done_f"
	wpid=$(worker_pid)
	psql_ -d bench >"$work/export.$tag.out" 2>"$work/export.$tag.err" <<EOF &
\o $pidf
SELECT pg_backend_pid();
\o /dev/null
SELECT pg_sleep(1);
\o
SELECT clock_timestamp() AS t0 \gset
SELECT flexfactor.ff_export_batch();
SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz);
SELECT (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'VmHWM:\s+(\d+)'))[1];
SELECT (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'RssAnon:\s+(\d+)'))[1];
EOF
	local psql_pid=$!
	for _ in $(seq 100); do [ -s "$pidf" ] && break; sleep 0.05; done
	local bpid
	bpid=$(tr -dc '0-9' <"$pidf")
	reset_hwm "$bpid"
	[ -n "$wpid" ] && reset_hwm "$wpid"
	sample_rss "$bpid" "$done_f" "$work/anon.$tag" &
	sampler_pid=$!
	local wsampler=
	if [ -n "$wpid" ]; then
		sample_rss "$wpid" "$done_f" "$work/wanon.$tag" &
		wsampler=$!
	fi
	wait "$psql_pid" || fail "ff_export_batch ($tag): $(cat "$work/export.$tag.err")"
	[ -s "$work/export.$tag.err" ] && fail "ff_export_batch ($tag) warned: $(head -5 "$work/export.$tag.err")"
	touch "$done_f"
	wait "$sampler_pid" 2>/dev/null
	[ -n "$wsampler" ] && wait "$wsampler" 2>/dev/null
	sampler_pid=
	out=$(cat "$work/export.$tag.out")
	exp_n=$(sed -n 1p <<<"$out"); exp_secs=$(sed -n 2p <<<"$out")
	exp_hwm=$(sed -n 3p <<<"$out")
	local last_anon
	last_anon=$(sed -n 4p <<<"$out")
	exp_anon=$(cat "$work/anon.$tag" 2>/dev/null || echo 0)
	[ "${last_anon:-0}" -gt "${exp_anon:-0}" ] && exp_anon=$last_anon
	exp_whwm=0 exp_wanon=0
	if [ -n "$wpid" ]; then
		exp_whwm=$(hwm_of "$wpid")
		exp_wanon=$(cat "$work/wanon.$tag" 2>/dev/null || echo 0)
	fi
}

# every decline in exactly one uploaded batch, every file in $dir with the
# recorded SHA-256; $1 = expected declines, $2 = dir
check_uploaded() {
	local n=$1 dir=$2 expect got
	got=$(psql_ -d bench -c "SELECT count(*) FILTER (WHERE d.state = 'batched' AND b.state = 'uploaded')
	        || ' ' || count(*) FROM flexfactor.decline_status d LEFT JOIN flexfactor.batches b ON b.id = d.batch_id")
	[ "$got" = "$n $n" ] || fail "declines batched+uploaded / total: $got (expected $n $n)"
	got=$(psql_ -d bench -c "SELECT count(*) FROM (SELECT f.decline_id FROM flexfactor.batches b
	        CROSS JOIN LATERAL flexfactor.batch_file_lines(b.id) f GROUP BY f.decline_id HAVING count(*) > 1) x")
	[ "$got" = 0 ] || fail "$got declines are lines of more than one batch file"
	expect=$(psql_ -d bench -c "SELECT sha256 || '  ' || file_name FROM flexfactor.batches ORDER BY file_name")
	got=$(cd "$dir" && find . -maxdepth 1 -type f -name '*.jsonl' -printf '%f\n' | sort | xargs -r sha256sum)
	[ "$expect" = "$got" ] || fail "files in $dir differ from flexfactor.batches (names or SHA-256)"
}

batches_count() { psql_ -d bench -c 'SELECT count(*) FROM flexfactor.batches'; }

# ------------------------------------------------------------------ (1) speed
echo "== (1) $rows declines: ff_export_batch() vs COPY + sftp"
enq_secs=$(enqueue "$rows")
export_fresh small
full_secs=$exp_secs small_hwm=$exp_hwm small_anon=$exp_anon small_whwm=$exp_whwm small_wanon=$exp_wanon
nb=$(batches_count)
bytes=$(psql_ -d bench -c 'SELECT sum(byte_count) FROM flexfactor.batches')
[ "$exp_n" = "$nb" ] || fail "ff_export_batch returned $exp_n for $nb batches"
check_uploaded "$rows" "$inbound"

# the upload alone: the same batches back to 'ready', inbound emptied
up=()
for _ in $(seq "$reps"); do
	rm -f "$inbound"/*
	psql_ -d bench -c "UPDATE flexfactor.batches SET state = 'ready', attempts = 0, next_attempt_at = now(),
	                   uploaded_at = NULL" -c 'CHECKPOINT' >/dev/null
	t0=$(now)
	n=$(psql_ -d bench -c 'SELECT flexfactor.ff_export_batch()') || fail "upload-only export"
	up+=("$(elapsed "$t0")")
	[ "$n" = "$nb" ] || fail "upload-only export returned $n for $nb batches"
done
upload_secs=$(echo "${up[*]}" | min_of)
check_uploaded "$rows" "$inbound"

# baseline: COPY of the same lines to one file per batch, then sftp
psql_ -d bench -c "SELECT format('COPY (SELECT line FROM flexfactor.batch_file_lines(%s)) TO %L;',
                                 id, '$work/copy/' || file_name)
                     FROM flexfactor.batches ORDER BY id" >"$work/copy.sql"
{
	while read -r f; do
		printf 'put %s %s/%s.part\nrename %s/%s.part %s/%s\n' \
			"$work/copy/$f" "$baseline_dir" "$f" "$baseline_dir" "$f" "$baseline_dir" "$f"
	done < <(psql_ -d bench -c 'SELECT file_name FROM flexfactor.batches ORDER BY id')
} >"$work/sftp.batch"
chown postgres: "$work/copy.sql" "$work/sftp.batch"
cp_=() sf=()
for _ in $(seq "$reps"); do
	rm -f "$work"/copy/* "$baseline_dir"/*
	psql_ -d bench -c 'CHECKPOINT' >/dev/null
	t0=$(now)
	psql_ -d bench -f "$work/copy.sql" >/dev/null || fail "COPY baseline"
	cp_+=("$(elapsed "$t0")")
	t0=$(now)
	as_pg sftp -q -b "$work/sftp.batch" -i "$FFSSHD_CLIENT_KEY" -o "UserKnownHostsFile=$FFSSHD_KNOWN_HOSTS" \
		-o StrictHostKeyChecking=yes -o BatchMode=yes -P "$FFSSHD_PORT" "$FFSSHD_USER@127.0.0.1" \
		>"$work/sftp.out" 2>&1 || fail "sftp baseline: $(tail -3 "$work/sftp.out")"
	sf+=("$(elapsed "$t0")")
done
copy_secs=$(echo "${cp_[*]}" | min_of)
sftp_secs=$(echo "${sf[*]}" | min_of)
# the baseline moved the same bytes
expect=$(psql_ -d bench -c "SELECT sha256 || '  ' || file_name FROM flexfactor.batches ORDER BY file_name")
got=$(cd "$baseline_dir" && find . -maxdepth 1 -type f -name '*.jsonl' -printf '%f\n' | sort | xargs -r sha256sum)
[ "$expect" = "$got" ] || fail "the baseline's files are not the same bytes"
base_secs=$(awk -v a="$copy_secs" -v b="$sftp_secs" 'BEGIN { printf "%.3f", a + b }')

# ------------------------------------------------------------------ (2) memory, big
echo "== (2) $big_rows declines: ff_export_batch() memory"
reset_tables
big_enq_secs=$(enqueue "$big_rows")
export_fresh big
big_secs=$exp_secs big_hwm=$exp_hwm big_anon=$exp_anon big_whwm=$exp_whwm big_wanon=$exp_wanon
big_nb=$(batches_count)
[ "$exp_n" = "$big_nb" ] || fail "ff_export_batch returned $exp_n for $big_nb batches"
check_uploaded "$big_rows" "$inbound"

# ------------------------------------------------------------------ (3) the worker
worker_measure() {	# $1 rows -> w_secs, w_hwm, w_anon
	local n=$1 wpid t0 passes
	reset_tables
	enqueue "$n" >/dev/null
	# export off while the worker starts (its first pass), on again by reload
	psql_ -d bench -c "ALTER SYSTEM SET flexfactor.sftp_host = ''" >/dev/null
	pg_restart
	for _ in $(seq 600); do
		[ "$(worker_passes 2>/dev/null)" -ge 1 ] 2>/dev/null && break
		sleep 0.1
	done
	wpid=$(psql_ -d bench -c "SELECT pid FROM flexfactor.ff_worker_status() WHERE role = 'worker'")
	passes=$(worker_passes)
	rm -f "$work/done.worker"
	sample_rss "$wpid" "$work/done.worker" "$work/anon.worker" &
	sampler_pid=$!
	t0=$(now)
	psql_ -d bench -c 'ALTER SYSTEM RESET flexfactor.sftp_host' -c 'ALTER SYSTEM SET flexfactor.batch_interval = 1' \
		-c 'SELECT pg_reload_conf()' >/dev/null
	for _ in $(seq 6000); do
		[ "$(psql_ -d bench -c "SELECT count(*) FROM flexfactor.batches WHERE state = 'uploaded'
		        HAVING count(*) = (SELECT count(*) FROM flexfactor.batches)
		           AND NOT EXISTS (SELECT FROM flexfactor.queue_status WHERE queue = 'declines' AND state = 'pending')")" != '' ] && break
		sleep 0.1
	done
	w_secs=$(elapsed "$t0")
	touch "$work/done.worker"
	wait "$sampler_pid" 2>/dev/null
	sampler_pid=
	w_hwm=$(hwm_of "$wpid")
	w_anon=$(cat "$work/anon.worker")
	psql_ -d bench -c 'ALTER SYSTEM RESET flexfactor.batch_interval' -c 'SELECT pg_reload_conf()' >/dev/null
	[ "$(worker_passes)" -gt "$passes" ] || fail "the worker did not run its pass"
	check_uploaded "$n" "$inbound"
}
if [ $worker = 1 ]; then
	echo "== (3) the worker: $rows and $big_rows declines"
	worker_measure "$rows"
	ws_secs=$w_secs ws_hwm=$w_hwm ws_anon=$w_anon
	worker_measure "$big_rows"
	wb_secs=$w_secs wb_hwm=$w_hwm wb_anon=$w_anon
fi

# ------------------------------------------------------------------ summary
[ -e "$work/failed" ] && failed=1
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v <= t ? "met" : "MISSED") }'; }
full_ratio=$(ratio "$full_secs" "$base_secs")
up_ratio=$(ratio "$upload_secs" "$sftp_secs")
echo
echo "================ flexfactor SFTP batch export benchmark ================"
echo "host: $(nproc) CPUs, $(uname -r); $(ssh -V 2>&1 | cut -d, -f1); libssh2 $(dpkg-query -W -f='${Version}' libssh2-1 2>/dev/null)"
printf '(1)  %d declines -> %d files of <= 2,000 lines, %s MB\n' "$rows" "$nb" "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')"
printf '     queued with ff_enqueue_decline() in one statement: %.1f s (not part of the comparison)\n' "$enq_secs"
printf '     ff_export_batch(): fix batches + upload   %8.2f s\n' "$full_secs"
printf '     ff_export_batch(): upload only (best/%d)   %8.2f s\n' "$reps" "$upload_secs"
printf '     baseline COPY ... TO files (best/%d)       %8.2f s\n' "$reps" "$copy_secs"
printf '     baseline sftp put+rename (best/%d)         %8.2f s\n' "$reps" "$sftp_secs"
printf '     baseline total                            %8.2f s\n' "$base_secs"
printf '     ratio ff_export_batch / baseline          %8sx   target <= 1.3x: %s\n' "$full_ratio" "$(verdict "$full_ratio" 1.3)"
printf '     ratio upload only / sftp                  %8sx\n' "$up_ratio"
printf '(2)  peak memory during ff_export_batch() (VmHWM reset first; RssAnon = private memory, sampled)\n'
printf '     %9d rows, %7.2f s (%d files)\n' "$rows" "$full_secs" "$nb"
printf '        calling backend (fresh): VmHWM %7s MB, peak RssAnon %7s MB\n' "$(mb "$small_hwm")" "$(mb "$small_anon")"
printf '        worker:                  VmHWM %7s MB, peak RssAnon %7s MB\n' "$(mb "$small_whwm")" "$(mb "$small_wanon")"
printf '     %9d rows, %7.2f s (%d files; queued in %.1f s)\n' "$big_rows" "$big_secs" "$big_nb" "$big_enq_secs"
printf '        calling backend (fresh): VmHWM %7s MB, peak RssAnon %7s MB\n' "$(mb "$big_hwm")" "$(mb "$big_anon")"
printf '        worker:                  VmHWM %7s MB, peak RssAnon %7s MB\n' "$(mb "$big_whwm")" "$(mb "$big_wanon")"
printf '     ratio %d/%d rows   target: flat (~1.0x)\n' "$big_rows" "$rows"
printf '        calling backend: VmHWM %sx, RssAnon %sx\n' "$(ratio "$big_hwm" "$small_hwm")" "$(ratio "$big_anon" "$small_anon")"
printf '        worker:          VmHWM %sx, RssAnon %sx\n' "$(ratio "$big_whwm" "$small_whwm")" "$(ratio "$big_wanon" "$small_wanon")"
if [ $worker = 1 ]; then
	printf '(3)  the worker (fresh after a restart), one export pass\n'
	printf '     %9d rows: VmHWM %7s MB, peak RssAnon %7s MB, %7.2f s\n' "$rows" "$(mb "$ws_hwm")" "$(mb "$ws_anon")" "$ws_secs"
	printf '     %9d rows: VmHWM %7s MB, peak RssAnon %7s MB, %7.2f s\n' "$big_rows" "$(mb "$wb_hwm")" "$(mb "$wb_anon")" "$wb_secs"
	printf '     ratio: VmHWM %sx, RssAnon %sx\n' "$(ratio "$wb_hwm" "$ws_hwm")" "$(ratio "$wb_anon" "$ws_anon")"
fi
if [ $failed = 0 ]; then
	echo "correctness: OK (every decline in exactly one uploaded batch; every file has its recorded SHA-256)"
else
	echo "correctness: FAILED (see above)"
fi
echo "========================================================================="
exit $failed
