#!/usr/bin/env bash
# try_it_check.sh: README's "Try it on your own cluster", end to end.
# tools/try-it.sh starts the simulator and the SFTP server; a throwaway
# cluster (standing for the DBA's, on a free port, Unix socket only) takes
# the printed settings by an include, runs the example integration's billing
# run, and its declines must go out by SFTP, come back as orders, and be
# rescued by signed webhooks; "stop" must stop both servers.  Prints one
# "ok N - ..." / "not ok N - ..." line per check and "try it: N passed, M
# failed".  As root, with PG_CONFIG naming an installation that has
# flexfactor installed (run-all.sh runs it after the demo).
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
pgbin=$("${PG_CONFIG:-pg_config}" --bindir)
dir=$(mktemp -d /tmp/flexfactor-try-it-check.XXXXXX)
chmod 0755 "$dir"
chown postgres: "$dir"
as_pg() { (cd / && runuser -u postgres -- "$@"); }
n=0
bad=0
check() {	# $1: 0 = ok; $2: what
	n=$((n + 1))
	if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; bad=$((bad + 1)); fi
}
cleanup() {
	[ -f "$dir/pg/postmaster.pid" ] && as_pg "$pgbin/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null 2>&1
	bash "$repo/tools/try-it.sh" stop --dir "$dir/try" >/dev/null 2>&1
}
trap cleanup EXIT

bash "$repo/tools/try-it.sh" start --dir "$dir/try" --database billing >"$dir/start.log" 2>&1
check $? "try-it.sh start prints the settings ($(grep -c '^flexfactor\.' "$dir/start.log") flexfactor.* lines)"
sim=$(cat "$dir/try/sim.url" 2>/dev/null)
key=$(sed -n "s/^flexfactor.sftp_private_key_file = '\(.*\)'$/\1/p" "$dir/start.log")
[ -n "$key" ] && as_pg test -r "$key" && [ "$(stat -c '%U %a' "$key")" = "postgres 600" ]
check $? "the SFTP key it names is the postgres account's own, mode 600 ($key)"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$pgbin/initdb" -D "$dir/pg" -A trust -U postgres >/dev/null
cat >>"$dir/pg/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$dir'
include '$dir/try/flexfactor.conf'
flexfactor.batch_interval = 1
CONF
as_pg "$pgbin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w start >/dev/null
check $? "a cluster with those settings (include) starts"
psql_() { as_pg "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres "$@"; }
value() { psql_ -d billing -At -c "$1"; }
cp -a "$repo/examples" "$repo/demo/billing.sql" "$dir/"
chown -R postgres: "$dir/examples" "$dir/billing.sql"
psql_ -d postgres -c 'CREATE DATABASE billing' &&
	psql_ -d billing -c 'SET client_min_messages = warning' -c 'CREATE EXTENSION flexfactor' -c 'CREATE EXTENSION pgcrypto' \
		-f "$dir/examples/01_billing_schema.sql" -f "$dir/examples/02_flexfactor.sql" >/dev/null &&
	psql_ -d billing -v subscriptions=300 -v decline_pct=8 -f "$dir/billing.sql" >/dev/null
check $? "CREATE EXTENSION, the example integration and a billing run of 300 subscriptions"

declines=$(value 'SELECT count(*) FROM flexfactor.declines')
wait_true() {	# $1: SQL returning t; $2: seconds
	for _ in $(seq 1 $(($2 * 5))); do
		[ "$(value "$1" 2>/dev/null)" = t ] && return 0
		sleep 0.2
	done
	return 1
}
wait_true "SELECT count(*) = $declines AND $declines > 0 FROM flexfactor.orders" 60
check $? "the $declines declines went out by SFTP and came back as orders ($(value 'SELECT count(*) FROM flexfactor.orders'))"
curl -s -X POST -d '{"seconds": 61}' "$sim/_admin/clock/advance" >/dev/null
rescued=$(curl -s "$sim/_admin/orders?state=COMPLETED" | python3 -c 'import json, sys; print(json.load(sys.stdin)["count"])')
wait_true "SELECT count(*) = $rescued AND $rescued > 0 FROM flexfactor.orders WHERE status = 'APPROVED'" 60
check $? "signed webhooks reached the cluster's listener: $rescued rescues stored ($(value "SELECT count(*) FROM flexfactor.orders WHERE status = 'APPROVED'"))"

simpid=$(cat "$dir/try/sim.pid")
sshpid=$(cat "$dir/try/sshd/sshd.pid")
bash "$repo/tools/try-it.sh" stop --dir "$dir/try" >/dev/null
sleep 0.2
! kill -0 "$simpid" 2>/dev/null && ! kill -0 "$sshpid" 2>/dev/null
check $? "try-it.sh stop stopped the simulator ($simpid) and sshd ($sshpid)"

echo "try it: $((n - bad)) passed, $bad failed"
if [ $bad -eq 0 ]; then
	cleanup
	rm -rf "$dir"
else
	echo "kept for a look: $dir"
	exit 1
fi
