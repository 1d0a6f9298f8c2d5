#!/usr/bin/env bash
# bench/api/run.sh -- what the API functions cost compared with plain
# libcurl, and how fast the worker drains the /transmit queue.
#
# As root (PostgreSQL and nginx themselves run as the postgres account):
#   bash bench/api/run.sh [--quick] [--no-build] [--keep] [--cpu C | --no-pin]
#                         [--calls N] [--small-calls N] [--rows N] [--reps R]
#
# It starts nginx on a free loopback port serving fixed FlexFactor answers
# (token, /evaluate, /transmit) with keep-alive, builds plain_client.c,
# starts a throwaway PostgreSQL 15 cluster that preloads flexfactor and
# points it at nginx, then measures in the same run:
#   (a)  ff_evaluate() per call (N calls in one statement, each writing its
#        orders row) against the plain client making N POSTs of the same
#        body with the same headers, and against _api_call() alone
#        (flexfactor's transport: the same request, token and JSON answer,
#        no order): the bookkeeping is ff_evaluate minus _api_call, in
#        elapsed time and in the backend's CPU time;
#   (b)  N ff_transmit() rows committed in one transaction: time from commit
#        until all are delivered, rows/s; no row lost or doubled (queue
#        states, attempts, and nginx's access log);
#   (c)  (a) again with a small N, quick enough for CI;
#        And against the same bookkeeping hand-written in PL/pgSQL around
#        _api_call() (the order inserted before the request, updated after
#        it, on flexfactor.orders with its triggers).
#   (d)  the order write ff_evaluate makes, without HTTP: on
#        flexfactor.orders (with its triggers: order_events row, NOTIFY,
#        waiting-event check), and the bare INSERT on a table with the same
#        keys and nothing else, the floor of "record the order with its
#        answer".
# nginx, PostgreSQL and the plain client run on one CPU (taskset; the last
# one unless --cpu C, not at all with --no-pin): on a 2-CPU machine shared
# with other work, figures are bimodal otherwise.  The load average is
# printed before and after.  --quick runs only (c) and (b) with 2,000 rows.
# Exits non-zero when a correctness check fails (never because a target is
# missed: targets are reported).  Everything is stopped and removed on exit
# (--keep keeps the work directory with the logs).
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/bench/api"

quick=0
build=1
keep=0
calls=10000
small_calls=500
rows=20000
reps=3
cpu=auto
while [ $# -gt 0 ]; do
	case "$1" in
		--quick) quick=1 ;;
		--no-build) build=0 ;;
		--keep) keep=1 ;;
		--calls) calls=$2; shift ;;
		--small-calls) small_calls=$2; shift ;;
		--rows) rows=$2; shift ;;
		--reps) reps=$2; shift ;;
		--cpu) cpu=$2; shift ;;
		--no-pin) cpu=none ;;
		-h|--help) sed -n '2,32p' "$0"; exit 0 ;;
		*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
[ $quick = 1 ] && [ "$rows" = 20000 ] && rows=2000
. "$repo/bench/lib.sh"
require_counts "$calls" "$small_calls" "$rows" "$reps"
bench_pin "$cpu"
bench_prepare bench/api/run.sh
bench_workdir ffbench
nginx_pid_file="$work/nginx/nginx.pid"

cleanup() {
	if [ -s "$nginx_pid_file" ]; then
		kill -QUIT "$(cat "$nginx_pid_file")" 2>/dev/null
		for _ in $(seq 50); do [ -e "$nginx_pid_file" ] || break; sleep 0.1; done
	fi
	bench_stop_pg
	bench_remove_workdir "nginx/, pg.log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
load_before=$(cut -d' ' -f1-3 /proc/loadavg)


# ------------------------------------------------------------------ nginx
mid=00000000-0000-4000-8000-0000000be4c1
token=$(python3 -c 'import base64; print(base64.urlsafe_b64encode(bytes(range(256)) * 2).decode().rstrip("=")[:640])')
nginx_port=$(free_port)
mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $nginx_pid_file;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
    log_format bench '\$request_method \$uri \$status';
    access_log $work/nginx/access.log bench;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    default_type application/json;
    server_tokens off;
    server {
        listen 127.0.0.1:$nginx_port;
        # nginx answers 405 to a POST on a static file, so every answer is a return
        location = /v1/oauth2/token {
            return 200 '{"accessToken":"$token","refreshToken":"bench-refresh","expires":4102444800000,"id":"3f1c2b4a-5d6e-4f70-8a9b-0c1d2e3f4a5b","session":null,"daysToEnforceMFA":null,"skipAvailable":null,"success":true,"result":null,"status":null,"statusCode":null,"errors":[],"customProperties":{}}';
        }
        location = /v1/evaluate {
            return 200 '{"orderSessionKey":"\$request_id","senseKey":null,"orderId":"\$request_id","success":true,"result":"Success","status":"SUBMITTED","statusCode":null,"errors":[],"customProperties":{}}';
        }
        location = /v1/transmit {
            return 200 '{"transmitId":"\$request_id","success":true,"result":"success","status":0,"statusCode":null,"errors":[],"customProperties":{}}';
        }
        location / { return 404 '{"title":"Not Found","status":404}'; }
    }
}
EOF
chown -R postgres: "$work"
as_pg $(pinned) nginx -p "$work/nginx/" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" || { fail "nginx did not start"; exit 1; }
base="http://127.0.0.1:$nginx_port/v1/"
for _ in $(seq 100); do
	curl -s -o /dev/null -X POST "${base}oauth2/token" && break
	sleep 0.05
done
answer=$(curl -s -X POST -H 'Content-Type: application/json' -d '{}' "${base}evaluate")
case "$answer" in
	*'"status":"SUBMITTED"'*) ;;
	*) fail "nginx /v1/evaluate answered: $answer"; exit 1 ;;
esac
reuse=$(curl -sv -o /dev/null -o /dev/null -X POST -d '{}' "${base}evaluate" "${base}transmit" 2>&1 | grep -ci 're-using existing connection')
[ "${reuse:-0}" -ge 1 ] || { fail "nginx does not keep connections alive"; exit 1; }
echo "== nginx on 127.0.0.1:$nginx_port (keep-alive, fixed answers); nginx, PostgreSQL and the plain client $pinning"

access_count() {	# lines of the access log for "METHOD PATH STATUS"
	grep -c "^$1\$" "$work/nginx/access.log" 2>/dev/null || true
}

# ------------------------------------------------------------------ plain client
gcc -O2 -Wall -o "$work/plain_client" "$here/plain_client.c" -lcurl || { fail "plain_client did not build"; exit 1; }
chown postgres: "$work/plain_client"

# ------------------------------------------------------------------ PostgreSQL
bench_pg_init --no-sync
cat >>"$work/pgdata/postgresql.conf" <<EOF
max_connections = 20
flexfactor.api_url = '$base'
flexfactor.app_key = 'bench-app-key'
flexfactor.app_secret = 'bench-app-secret'
flexfactor.mid = '$mid'
flexfactor.tokenization_key = 'bench-tokenization-key'
flexfactor.batch_interval = 1
EOF
bench_pg_start_with_extension
echo "== PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on port $pg_port, flexfactor $(psql_ -d bench -c 'SELECT flexfactor.ff_version()')"

# the body ff_evaluate sends (a complete ff_decline + mid + idempotencyKey), for the plain client
psql_ -d bench -c "SELECT (flexfactor.ff_decline('B-0', 1999, 'USD', 'tok', 'tx-0', $bench_decline_args)
	|| jsonb_build_object('mid', current_setting('flexfactor.mid'),
	                      'idempotencyKey', gen_random_uuid()))::text" >"$work/body.json"
chown postgres: "$work/body.json"

# (a) and (c) compare ff_evaluate with this: its bookkeeping written by hand
# the usual way (see measure_plpgsql)
psql_ -d bench >/dev/null <<'EOF' || fail "bench_evaluate_plpgsql"
CREATE FUNCTION bench_evaluate_plpgsql(body jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    key uuid := gen_random_uuid();
    answer jsonb;
BEGIN
    INSERT INTO flexfactor.orders (order_id, transaction_id, idempotency_key, source, is_mit,
                                   amount_cents, currency)
    VALUES (body->>'orderId', body #>> '{transaction,id}', key, 'api', (body->>'isMIT')::boolean,
            (body #>> '{transaction,amount}')::bigint, upper(body #>> '{transaction,currency}'))
    ON CONFLICT (order_id) DO NOTHING;
    answer := flexfactor._api_call('POST', 'evaluate',
                  body || jsonb_build_object('mid', current_setting('flexfactor.mid'), 'idempotencyKey', key));
    UPDATE flexfactor.orders o
       SET order_session_key = (answer->>'orderSessionKey')::uuid,
           status = flexfactor.ff_next_status(o.status, upper(answer->>'status')),
           last_response = answer
     WHERE o.order_id = body->>'orderId';
    RETURN answer;
END
$$;
EOF

# ------------------------------------------------------------------ measurements
# ff_evaluate N: prints "elapsed cpu" seconds (the backend's CPU) for N calls
# in one statement; checks the count, the stored orders and that exactly N
# requests reached nginx
measure_evaluate() {
	local n=$1 prefix out before after secs count stored
	prefix="E$(date +%s%N)-"	# unique per run: every call inserts a new order
	before=$(access_count 'POST /v1/evaluate 200')
	out=$(psql_ -d bench <<EOF
$bench_clock_start
SELECT count(flexfactor.ff_evaluate(flexfactor.ff_decline('$prefix' || i, 1999, 'USD', 'tok', 'tx-$prefix' || i,
                                                         $bench_decline_args)))
  FROM generate_series(1, $n) i;
$bench_clock_since
SELECT count(*) FROM flexfactor.orders WHERE order_id LIKE '$prefix%' AND status = 'SUBMITTED';
EOF
	) || { fail "ff_evaluate run $prefix"; echo "0 0"; return; }
	count=$(sed -n 1p <<<"$out"); secs=$(sed -n 2p <<<"$out"); stored=$(sed -n 3p <<<"$out")
	after=$(access_count 'POST /v1/evaluate 200')
	[ "$count" = "$n" ] || fail "ff_evaluate returned $count answers for $n calls"
	[ "$stored" = "$n" ] || fail "$stored SUBMITTED orders stored for $n calls"
	[ $((after - before)) = "$n" ] || fail "nginx saw $((after - before)) evaluate requests for $n ff_evaluate calls"
	echo "$secs"
}

# _api_call N: the transport alone (token, HTTP, JSON answer), no orders
# row: "elapsed cpu"
measure_api_call() {
	local n=$1 out
	out=$(psql_ -d bench <<EOF
SELECT pg_read_file('$work/body.json')::jsonb AS b \\gset
$bench_clock_start
SELECT count(flexfactor._api_call('POST', 'evaluate', :'b')) FROM generate_series(1, $n) i;
$bench_clock_since
EOF
	) || { fail "_api_call run"; echo "0 0"; return; }
	[ "$(sed -n 1p <<<"$out")" = "$n" ] || fail "_api_call count"
	sed -n 2p <<<"$out"
}

# the same bookkeeping hand-written in PL/pgSQL around the same transport:
# the order inserted with its idempotency key before the request and
# updated with the answer after it (forward-only), on flexfactor.orders
# with its triggers (order_events row, NOTIFY); no body check, no lock on
# the order: "elapsed cpu" for N calls, checked like ff_evaluate's
measure_plpgsql() {
	local n=$1 prefix out secs count stored
	prefix="P$(date +%s%N)-"
	out=$(psql_ -d bench <<EOF
$bench_clock_start
SELECT count(bench_evaluate_plpgsql(flexfactor.ff_decline('$prefix' || i, 1999, 'USD', 'tok', 'tx-$prefix' || i,
                                                         $bench_decline_args)))
  FROM generate_series(1, $n) i;
$bench_clock_since
SELECT count(*) FROM flexfactor.orders WHERE order_id LIKE '$prefix%' AND status = 'SUBMITTED';
EOF
	) || { fail "PL/pgSQL run $prefix"; echo "0 0"; return; }
	count=$(sed -n 1p <<<"$out"); secs=$(sed -n 2p <<<"$out"); stored=$(sed -n 3p <<<"$out")
	[ "$count" = "$n" ] || fail "the PL/pgSQL version returned $count answers for $n calls"
	[ "$stored" = "$n" ] || fail "$stored SUBMITTED orders stored by the PL/pgSQL version for $n calls"
	echo "$secs"
}

# ff_decline N: building the bodies alone, as the ff_evaluate loop does: "elapsed cpu"
measure_body() {
	local n=$1 out
	out=$(psql_ -d bench <<EOF
$bench_clock_start
SELECT count(flexfactor.ff_decline('D-' || i, 1999, 'USD', 'tok', 'tx-' || i, $bench_decline_args))
  FROM generate_series(1, $n) i;
$bench_clock_since
EOF
	) || { fail "ff_decline run"; echo "0 0"; return; }
	sed -n 2p <<<"$out"
}

# the order write alone, N per statement, no HTTP: $1 = N, $2 = 'orders'
# (the statement ff_evaluate runs, on flexfactor.orders with its triggers:
# order_events row, NOTIFY, waiting-event check) or 'bare' (the same INSERT
# on a table with the same keys and nothing else: the least that "record
# the order with its answer" costs); "elapsed cpu"
measure_writes() {
	local n=$1 table=$2 prefix out
	prefix="W$(date +%s%N)-"
	out=$(psql_ -d bench <<EOF
$bench_clock_start
DO \$\$
DECLARE
    answer jsonb := '{"orderSessionKey": "e97b1ff1-4449-46da-bc6c-a76d23f16353", "status": "SUBMITTED",
                      "success": true, "result": {"decision": "SUBMITTED"}, "errors": []}';
BEGIN
    FOR i IN 1..$n LOOP
        IF '$table' = 'orders' THEN
            INSERT INTO flexfactor.orders (order_id, transaction_id, idempotency_key, source, is_mit,
                                           amount_cents, currency, expiry_date_utc, order_session_key,
                                           status, last_response)
            VALUES ('$prefix' || i, 'tx', gen_random_uuid(), 'api', true, 1999, upper('usd'), NULL,
                    gen_random_uuid(), flexfactor.ff_next_status('PENDING', upper('SUBMITTED')), answer)
            ON CONFLICT (order_id) DO NOTHING;
        ELSE
            INSERT INTO bench_bare_orders (order_id, transaction_id, idempotency_key, amount_cents, currency,
                                           order_session_key, status, last_response)
            VALUES ('$prefix' || i, 'tx', gen_random_uuid(), 1999, 'USD', gen_random_uuid(), 'SUBMITTED', answer)
            ON CONFLICT (order_id) DO NOTHING;
        END IF;
    END LOOP;
END
\$\$;
$bench_clock_since
EOF
	) || { fail "order writes ($table)"; echo "0 0"; return; }
	sed -n 1p <<<"$out"
}

measure_plain() {
	local n=$1 out
	out=$(as_pg $(pinned) "$work/plain_client" "${base}evaluate" "$n" "$work/body.json" "$token") \
		|| { fail "plain client: $out"; echo 0; return; }
	sed -n 's/.*elapsed_s=\([0-9.]*\).*/\1/p' <<<"$out"
}

us_per_call() { awk -v s="$1" -v n="$2" 'BEGIN { printf "%.1f", s * 1e6 / n }'; }

elapsed_of() { local x; for x in "$@"; do echo "${x%% *}"; done | min_of; }
cpu_of() { local x; for x in "$@"; do echo "${x##* }"; done | min_of; }

# compare N: best of $reps for ff_evaluate, _api_call, the plain client and
# the bodies alone, interleaved; elapsed and backend CPU seconds
compare() {
	local n=$1 e=() a=() p=() d=() l=() i
	for i in $(seq "$reps"); do
		p+=("$(measure_plain "$n")")
		e+=("$(measure_evaluate "$n")")
		a+=("$(measure_api_call "$n")")
		d+=("$(measure_body "$n")")
		l+=("$(measure_plpgsql "$n")")
	done
	cmp_plpgsql=$(elapsed_of "${l[@]}"); cmp_plpgsql_cpu=$(cpu_of "${l[@]}")
	cmp_eval=$(elapsed_of "${e[@]}"); cmp_eval_cpu=$(cpu_of "${e[@]}")
	cmp_api=$(elapsed_of "${a[@]}"); cmp_api_cpu=$(cpu_of "${a[@]}")
	cmp_body=$(elapsed_of "${d[@]}"); cmp_body_cpu=$(cpu_of "${d[@]}")
	cmp_plain=$(echo "${p[*]}" | min_of)
}

# the floor of the bookkeeping, best of $reps each (backend CPU)
floor() {
	local n=$1 w=() b=() i
	for i in $(seq "$reps"); do
		w+=("$(measure_writes "$n" orders)")
		b+=("$(measure_writes "$n" bare)")
	done
	floor_orders=$(cpu_of "${w[@]}")
	floor_bare=$(cpu_of "${b[@]}")
}

echo "== warm-up (token, connections, caches)"
token_before=$(access_count 'POST /v1/oauth2/token 200')
measure_evaluate 200 >/dev/null
measure_api_call 200 >/dev/null
measure_plain 200 >/dev/null

if [ $quick = 0 ]; then
	echo "== (a) ff_evaluate vs plain libcurl, N=$calls, best of $reps"
	compare "$calls"
	a=("$cmp_eval" "$cmp_eval_cpu" "$cmp_api" "$cmp_api_cpu" "$cmp_body" "$cmp_body_cpu" "$cmp_plain"
	   "$cmp_plpgsql" "$cmp_plpgsql_cpu")
	echo "== (d) the order writes alone, N=$calls, best of $reps"
	psql_ -d bench -c "CREATE TABLE bench_bare_orders (
	        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, order_id text NOT NULL UNIQUE,
	        order_session_key uuid UNIQUE, transaction_id text, idempotency_key uuid NOT NULL,
	        amount_cents bigint NOT NULL, currency text NOT NULL, status text NOT NULL DEFAULT 'PENDING',
	        last_response jsonb)" || fail "bench_bare_orders"
	floor "$calls"
fi

echo "== (c) ff_evaluate vs plain libcurl, N=$small_calls, best of $reps"
compare "$small_calls"
c=("$cmp_eval" "$cmp_eval_cpu" "$cmp_api" "$cmp_api_cpu" "$cmp_body" "$cmp_body_cpu" "$cmp_plain"
   "$cmp_plpgsql" "$cmp_plpgsql_cpu")

tokens=$(( $(access_count 'POST /v1/oauth2/token 200') - token_before ))
[ "$tokens" -le 1 ] || fail "$tokens token requests for all the calls (expected 1)"

echo "== (b) $rows ff_transmit rows in one transaction, commit to delivered"
tx_before=$(access_count 'POST /v1/transmit 200')
out=$(psql_ -d bench <<EOF
SELECT clock_timestamp() AS t0 \gset
BEGIN;
SELECT count(flexfactor.ff_transmit(flexfactor.ff_payment('T-' || i, 1999, 'USD', 'ttx-' || i, $bench_payment_args)))
  FROM generate_series(1, $rows) i;
COMMIT;
SELECT clock_timestamp() AS tc \gset
SELECT extract(epoch FROM :'tc'::timestamptz - :'t0'::timestamptz);
DO \$\$
DECLARE
    done bigint;
    started timestamptz := clock_timestamp();
BEGIN
    LOOP
        SELECT count(*) INTO done FROM flexfactor.transmit_queue
         WHERE state <> 'pending' AND payload->>'orderId' LIKE 'T-%';
        EXIT WHEN done >= $rows OR clock_timestamp() - started > interval '600 s';
        PERFORM pg_sleep(0.01);
    END LOOP;
END
\$\$;
SELECT extract(epoch FROM clock_timestamp() - :'tc'::timestamptz);
SELECT count(*) FILTER (WHERE state = 'delivered') || ' ' || count(*) FILTER (WHERE state = 'set_aside')
       || ' ' || count(*) FILTER (WHERE state = 'pending') || ' ' || coalesce(sum(attempts), 0)
       || ' ' || count(DISTINCT transmit_id)
  FROM flexfactor.transmit_queue WHERE payload->>'orderId' LIKE 'T-%';
EOF
) || fail "transmit run"
enq_count=$(sed -n 1p <<<"$out"); b_enqueue=$(sed -n 2p <<<"$out"); b_drain=$(sed -n 3p <<<"$out")
read -r b_delivered b_set_aside b_pending b_attempts b_distinct <<<"$(sed -n 4p <<<"$out")"
# nginx writes a line per answered request; let the last lines land
for _ in $(seq 50); do
	b_lines=$(( $(access_count 'POST /v1/transmit 200') - tx_before ))
	[ "$b_lines" -ge "$rows" ] && break
	sleep 0.1
done
[ "$enq_count" = "$rows" ] || fail "ff_transmit queued $enq_count rows, not $rows"
[ "$b_delivered" = "$rows" ] || fail "$b_delivered of $rows rows delivered (set aside $b_set_aside, pending $b_pending)"
[ "$b_attempts" = "$rows" ] || fail "$b_attempts attempts for $rows rows (retries?)"
[ "$b_lines" = "$rows" ] || fail "nginx logged $b_lines POST /v1/transmit for $rows rows (lost or doubled)"
[ "$b_distinct" = "$rows" ] || fail "$b_distinct distinct transmitIds for $rows rows"
b_rate=$(awk -v n="$rows" -v s="$b_drain" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "inf" }')

# ------------------------------------------------------------------ summary
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
[ -e "$work/failed" ] && failed=1
verdict() {	# value target op -> met / MISSED
	awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN {
		ok = (op == "le") ? (v <= t) : (v >= t); print (ok ? "met" : "MISSED") }'
}
minus() { awk -v a="$1" -v b="$2" -v c="$3" 'BEGIN { printf "%.1f", a - b - c }'; }
# label N, then the nine figures of compare(): the bookkeeping is what
# ff_evaluate (or the PL/pgSQL version) adds to the transport and to
# building its body
print_compare() {
	local label=$1 n=$2 e ec ap ac bd bc p bk bkc l lc lk lkc
	e=$(us_per_call "$3" "$n"); ec=$(us_per_call "$4" "$n")
	ap=$(us_per_call "$5" "$n"); ac=$(us_per_call "$6" "$n")
	bd=$(us_per_call "$7" "$n"); bc=$(us_per_call "$8" "$n")
	p=$(us_per_call "$9" "$n")
	l=$(us_per_call "${10}" "$n"); lc=$(us_per_call "${11}" "$n")
	bk=$(minus "$e" "$ap" "$bd"); bkc=$(minus "$ec" "$ac" "$bc")
	lk=$(minus "$l" "$ap" "$bd"); lkc=$(minus "$lc" "$ac" "$bc")
	printf '%s  N=%d calls, best of %d: elapsed us/call (the backend'"'"'s CPU us/call)\n' "$label" "$n" "$reps"
	printf '     ff_evaluate(ff_decline(...))    %8s   (%s)\n' "$e" "$ec"
	printf '     _api_call(), the transport      %8s   (%s)   same request, token, JSON answer; no order\n' "$ap" "$ac"
	printf '     ff_decline() alone, the body    %8s   (%s)\n' "$bd" "$bc"
	printf '     plain libcurl client            %8s\n' "$p"
	printf '     bookkeeping (first minus the next two) %s   (%s)   target <= 50 us: %s\n' "$bk" "$bkc" "$(verdict "$bk" 50 le)"
	printf '     ratio ff_evaluate / plain       %8sx          target <= 3x: %s;  _api_call / plain %sx\n' \
		"$(ratio "$3" "$9")" "$(verdict "$(ratio "$3" "$9")" 3 le)" "$(ratio "$5" "$9")"
	printf '     the same in PL/pgSQL            %8s   (%s)   order inserted before, updated after, around _api_call()\n' "$l" "$lc"
	printf '     its bookkeeping                 %8s   (%s)   ff_evaluate'"'"'s / its: %sx (CPU %sx)\n' \
		"$lk" "$lkc" "$(ratio "$bk" "$lk")" "$(ratio "$bkc" "$lkc")"
}
echo
echo "================ flexfactor API benchmark ================"
echo "host: $(nproc) CPUs, $(uname -r); nginx $(nginx -v 2>&1 | sed 's|.*/||'), libcurl $(curl-config --version | awk '{print $2}')"
echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'); nginx, PostgreSQL and the plain client $pinning"
echo "load average (1, 5, 15 min): before $load_before, after $load_after"
if [ $quick = 0 ]; then
	print_compare '(a)' "$calls" "${a[@]}"
	printf '(d)  the order write alone, no HTTP, N=%d, best of %d: the backend'"'"'s CPU us/call\n' "$calls" "$reps"
	printf '     on flexfactor.orders            %8s   (its triggers: order_events row, NOTIFY, waiting events)\n' \
		"$(us_per_call "$floor_orders" "$calls")"
	printf '     bare INSERT, same keys          %8s   (a table with the same keys and nothing else)\n' \
		"$(us_per_call "$floor_bare" "$calls")"
fi
printf '(b)  %d ff_transmit rows in one transaction\n' "$rows"
printf '     enqueue (one statement)  %8.3f s\n' "$b_enqueue"
printf '     commit -> all delivered  %8.3f s   = %s rows/s   target >= 2000/s: %s\n' \
	"$b_drain" "$b_rate" "$(verdict "$b_rate" 2000 ge)"
printf '     delivered %s, set aside %s, pending %s, attempts %s, nginx POST /v1/transmit %s\n' \
	"$b_delivered" "$b_set_aside" "$b_pending" "$b_attempts" "$b_lines"
print_compare '(c)' "$small_calls" "${c[@]}"
printf 'token requests during the run: %s\n' "$tokens"
if [ $failed = 0 ]; then
	echo "correctness: OK"
else
	echo "correctness: FAILED (see above)"
fi
echo "=========================================================="
exit $failed
