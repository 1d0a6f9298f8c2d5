# bench/lib.sh -- what the benchmarks share: the root check, dependencies and
# build, a work directory the postgres account can write, running commands as
# postgres, free loopback ports, failures, timing and ratios.
#
# Sourced by bench/*/run.sh once they have parsed their options; they set
# $repo, $build (1: build and install first) and $keep (1: keep the work
# directory), and may set $bench_packages=0 (needs no nginx or wrk).  Sets
# $pgbin (bench_prepare), $work and $failed (bench_workdir).  PostgreSQL is
# the one of $PG_CONFIG, else of the pg_config on the PATH.

as_pg() { runuser -u postgres -- "$@"; }

# Complete request bodies (flexfactor-api.md 12a; the extension refuses an
# incomplete one with FF023): the named arguments that complete a call
# ff_decline(order_id, amount_cents, currency, card_token, transaction_id)
# or ff_payment(order_id, amount_cents, currency, transaction_id), for every
# benchmark.  The same values as the TAP suites' (test/perl/FlexFactorTest.pm
# $FF_DECLINE_ARGS, $FF_DECLINE_TIMES, $FF_PAYMENT_ARGS).
bench_billing_args="first_name => 'Jane', last_name => 'Roe', address_line1 => '1 Main St', city => 'Springfield', state => 'IL', zip_code => '62701', country_code => 'US'"
bench_decline_args="email => 'jane@example.com', $bench_billing_args, subscription_id => 'sub-9', subscription_interval => 'monthly', declined_at => '2026-11-20 10:00:00+00', expiry => date_trunc('day', now()) + interval '14 days'"
bench_payment_args="email => 'jane@example.com', paid_at => '2026-11-20 10:00:00+00', subscription_id => 'sub-9', subscription_interval => 'monthly', holder_name => 'Jane Roe', card_type => 'credit', card_brand => 'visa', card_country => 'US', expiration_month => 3, expiration_year => 2030, card_bin => '424242', card_last4 => '4242'"

# every argument a positive integer, or exit 2
require_counts() {
	local v
	for v in "$@"; do
		case "$v" in ''|*[!0-9]*|0) echo "run.sh: counts must be positive integers" >&2; exit 2 ;; esac
	done
}

# root; Debian packages; make && make install unless --no-build; the
# extension installed; sets pgbin.  $1: the command, for the message.
bench_prepare() {
	if [ "$(id -u)" != 0 ]; then
		echo "run.sh: run as root (bash $1, or sudo bash $1): it installs packages and the extension; PostgreSQL and the servers run as postgres" >&2
		exit 2
	fi
	if [ "${bench_packages:-1}" = 1 ]; then
		"$repo/tools/install-deps.sh" --bench || exit 1
	else
		"$repo/tools/install-deps.sh" || exit 1
	fi
	if [ "$build" = 1 ]; then
		echo "== build and install flexfactor"
		make -C "$repo" -s >/dev/null || exit 1
		make -C "$repo" -s install >/dev/null || exit 1
	fi
	local pgc=${PG_CONFIG:-pg_config}
	pgbin=$("$pgc" --bindir)
	if [ ! -f "$("$pgc" --pkglibdir)/flexfactor.so" ]; then
		echo "run.sh: flexfactor is not installed (run without --no-build)" >&2
		exit 1
	fi
}

# a fresh /tmp/<prefix>.XXXXXX owned by postgres; sets work and failed=0
bench_workdir() {
	work=$(mktemp -d "/tmp/$1.XXXXXX")
	chmod 0755 "$work"
	chown postgres: "$work"
	failed=0
}

# for the cleanup trap: stop the cluster in $work/pgdata if it runs, then
# keep the work directory (--keep, or after a failure) or remove it.
# $1: what the directory holds, for the message.
bench_stop_pg() {
	if [ -f "$work/pgdata/postmaster.pid" ]; then
		as_pg "$pgbin/pg_ctl" -D "$work/pgdata" -m fast -w -t 60 stop >/dev/null 2>&1
	fi
}
bench_remove_workdir() {
	if [ "$keep" = 1 ] || [ "$failed" != 0 ]; then
		echo "work directory kept: $work ($1)"
	else
		rm -rf "$work"
	fi
}

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# measurements run in $(...) subshells, so a failure is also left as a file
fail() { echo "FAILED: $*" >&2; [ -n "${work:-}" ] && touch "$work/failed"; failed=1; }

# a throwaway cluster in $work/pgdata on a free port (sets pg_port), its
# socket in $work, no TCP, preloading flexfactor for database "bench";
# arguments are added to initdb's; the caller appends its own settings to
# $work/pgdata/postgresql.conf, then calls bench_pg_start
bench_pg_init() {
	pg_port=$(free_port)
	as_pg "$pgbin/initdb" -D "$work/pgdata" -U postgres -A trust -E UTF8 "$@" >"$work/initdb.log" 2>&1 \
		|| { fail "initdb (see $work/initdb.log)"; exit 1; }
	cat >>"$work/pgdata/postgresql.conf" <<CONF
port = $pg_port
listen_addresses = ''
unix_socket_directories = '$work'
shared_preload_libraries = 'flexfactor'
flexfactor.database = 'bench'
CONF
}

# start it (log in $work/pg.log), on CPU $bench_cpu when set (bench_pin)
bench_pg_start() {
	as_pg $(pinned) "$pgbin/pg_ctl" -D "$work/pgdata" -l "$work/pg.log" -w -t 120 start >/dev/null \
		|| { fail "PostgreSQL did not start (see $work/pg.log)"; exit 1; }
}

# Pinning: on a 2-CPU machine shared with other work, a process that moves
# between CPUs gives bimodal figures.  bench_pin CPU|auto|none sets
# $bench_cpu (auto: the last CPU) and $pinning (what to print); "pinned"
# prints the taskset prefix for a command to run there.
bench_pin() {
	case "$1" in
		none) bench_cpu= ; pinning="not pinned (--no-pin)"; return ;;
		auto) bench_cpu=$(( $(nproc) - 1 )) ;;
		''|*[!0-9]*) echo "run.sh: --cpu takes a CPU number" >&2; exit 2 ;;
		*) bench_cpu=$1 ;;
	esac
	[ "$bench_cpu" -lt "$(nproc)" ] || { echo "run.sh: no CPU $bench_cpu" >&2; exit 2; }
	pinning="pinned to CPU $bench_cpu of $(nproc) (taskset)"
}
pinned() { [ -n "${bench_cpu:-}" ] && echo "taskset -c $bench_cpu"; }

# the backend's CPU time in ns, as a psql \gset variable c0, and the clock
# as t0; then the seconds of both since then, as "elapsed cpu" (Linux:
# /proc/<pid>/schedstat; other work on the machine does not inflate it)
bench_clock_start="SELECT split_part(pg_read_file('/proc/' || pg_backend_pid() || '/schedstat'), ' ', 1)::bigint AS c0, clock_timestamp() AS t0 \\gset"
bench_clock_since="SELECT extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) || ' ' || (split_part(pg_read_file('/proc/' || pg_backend_pid() || '/schedstat'), ' ', 1)::bigint - :c0) / 1e9;"

# start it, then database "bench" with the extension
bench_pg_start_with_extension() {
	bench_pg_start
	psql_ -d postgres -c 'CREATE DATABASE bench' || { fail "CREATE DATABASE"; exit 1; }
	psql_ -d bench -c 'CREATE EXTENSION flexfactor' || { fail "CREATE EXTENSION"; exit 1; }
}

# psql as postgres on the cluster's socket in $work, port $pg_port
psql_() { as_pg "$pgbin/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$work" -p "$pg_port" "$@"; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
min_of() { tr ' ' '\n' | grep -v '^$' | sort -g | head -1; }
