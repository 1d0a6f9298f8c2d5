#!/usr/bin/env bash
# demo/run.sh: README's first command.  Installs what is missing, builds and
# installs flexfactor, starts a throwaway PostgreSQL cluster that preloads it,
# creates the extension and shows the background workers at work.
#
#   sudo bash demo/run.sh           # run, report, stop everything
#   sudo bash demo/run.sh --keep    # leave the cluster running to explore
#
# Everything lives under $FF_DEMO_DIR (default /tmp/flexfactor-demo) and is
# removed at the start of the next run, so running it twice works.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
demo_dir=${FF_DEMO_DIR:-/tmp/flexfactor-demo}
keep=0
[ "${1:-}" = "--keep" ] && keep=1

if [ "$(id -u)" != 0 ]; then
	echo "demo: run as root (sudo bash demo/run.sh): it installs packages and the extension" >&2
	exit 2
fi

step() { printf '\n== %s\n' "$*"; }
as_pg() { runuser -u postgres -- "$@"; }
pgbin=/usr/lib/postgresql/15/bin

step "installing dependencies (Debian packages)"
"$repo/tools/install-deps.sh"

step "building and installing flexfactor"
make -C "$repo" -s >/dev/null
make -C "$repo" -s install >/dev/null
echo "installed flexfactor $(make -C "$repo" -s print-version)"

step "starting a throwaway PostgreSQL cluster in $demo_dir"
if [ -f "$demo_dir/data/postmaster.pid" ]; then
	as_pg "$pgbin/pg_ctl" -D "$demo_dir/data" -m immediate stop >/dev/null 2>&1 || true
fi
rm -rf "$demo_dir"
mkdir -p "$demo_dir"
chown postgres: "$demo_dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$pgbin/initdb" -D "$demo_dir/data" -A trust -U postgres >/dev/null
cat >>"$demo_dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$demo_dir'
shared_preload_libraries = 'flexfactor'
flexfactor.database = 'billing'
flexfactor.batch_interval = 1
CONF
as_pg "$pgbin/pg_ctl" -D "$demo_dir/data" -l "$demo_dir/postgresql.log" -w start >/dev/null
psql_demo() { as_pg psql -X -h "$demo_dir" -p "$port" -U postgres "$@"; }

cleanup() {
	if [ $keep -eq 0 ]; then
		step "stopping the demo cluster"
		as_pg "$pgbin/pg_ctl" -D "$demo_dir/data" -m fast -w stop >/dev/null || true
		echo "stopped; its files are in $demo_dir"
	fi
}
trap cleanup EXIT

step "creating the billing database and the extension"
psql_demo -d postgres -qc "CREATE DATABASE billing"
psql_demo -d billing -qc "CREATE EXTENSION flexfactor"

step "waiting for the flexfactor worker"
for _ in $(seq 1 60); do
	state=$(psql_demo -d billing -Atc "SELECT state FROM flexfactor.ff_worker_status() WHERE role = 'worker'")
	[ "$state" = "idle" ] && break
	sleep 0.5
done
psql_demo -d billing -c "SELECT role, pid, database, state, passes, last_error FROM flexfactor.ff_worker_status()"
psql_demo -d billing -c "SELECT backend_type, datname, application_name FROM pg_stat_activity WHERE backend_type LIKE 'flexfactor%'"
[ "$state" = "idle" ] || { echo "demo: the worker did not become idle" >&2; exit 1; }

step "done"
echo "flexfactor is loaded and its worker runs in database 'billing'."
if [ $keep -eq 1 ]; then
	echo "Explore it:  sudo -u postgres psql -h $demo_dir -p $port -d billing"
	echo "Stop it:     sudo -u postgres $pgbin/pg_ctl -D $demo_dir/data stop"
else
	echo "Re-run with --keep to leave the cluster running and explore it with psql."
fi
