#!/usr/bin/env bash
# try-it.sh: try flexfactor on your own PostgreSQL cluster without FlexFactor
# credentials.  Starts, on 127.0.0.1 only, the FlexFactor simulator
# (test/ffsim) and a real OpenSSH SFTP server (test/sshd/ffsshd) for it, and
# prints the exact flexfactor settings to paste into that cluster's
# postgresql.conf (also written to DIR/flexfactor.conf, for an include).
#
#   bash tools/try-it.sh start [--dir DIR] [--user ACCOUNT] [--database DB]
#   bash tools/try-it.sh status [--dir DIR]
#   bash tools/try-it.sh stop [--dir DIR]
#
#   --dir       where everything lives (default /var/tmp/flexfactor-try-it)
#   --user      the account your PostgreSQL server runs as (default postgres):
#               the servers run as it, so the SFTP key and known_hosts files
#               are its own (mode 600) and the SFTP folders are its to write
#   --database  the database the flexfactor worker serves (default billing)
#
# As root (it starts the servers as --user with runuser), or as --user
# itself.  It installs nothing and touches no cluster: restarting yours with
# the settings, and CREATE EXTENSION, are yours to do.  The simulator runs
# on the real clock (rescues arrive a minute after a batch is read); its
# inspection API is printed too.  "stop" stops both servers and leaves DIR.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
[ $# -gt 0 ] && shift
dir=/var/tmp/flexfactor-try-it
user=postgres
database=billing
while [ $# -gt 0 ]; do
	case "$1" in
		--dir) dir=$2; shift 2 ;;
		--user) user=$2; shift 2 ;;
		--database) database=$2; shift 2 ;;
		*) cmd=usage; break ;;
	esac
done
case "$cmd" in start|stop|status) ;; *)
	sed -n '8,16p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2 ;;
esac
case "$dir" in /*) ;; *) dir=$(pwd)/$dir ;; esac

id "$user" >/dev/null 2>&1 || { echo "try-it.sh: no account $user (--user)" >&2; exit 2; }
if [ "$(id -un)" = "$user" ]; then
	as_user() { (cd / && "$@"); }
elif [ "$(id -u)" = 0 ]; then
	as_user() { (cd / && runuser -u "$user" -- "$@"); }
else
	echo "try-it.sh: run as root or as $user (the account your PostgreSQL server runs as)" >&2
	exit 2
fi

src=$dir/src	# a copy the account can read: the checkout may be closed to it
pidfile=$dir/sim.pid

sim_alive() { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

stop_all() {
	if sim_alive; then
		local pid
		pid=$(cat "$pidfile")
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	fi
	rm -f "$pidfile"
	[ -x "$src/test/sshd/ffsshd" ] && as_user "$src/test/sshd/ffsshd" stop "$dir/sshd" >/dev/null 2>&1 || true
}

case "$cmd" in
stop)
	stop_all
	echo "stopped the simulator and the SFTP server of $dir (the folder is kept)"
	exit 0
	;;
status)
	if sim_alive && as_user "$src/test/sshd/ffsshd" status "$dir/sshd" >/dev/null 2>&1; then
		echo "running: $(cat "$dir/sim.url") (simulator), SFTP on 127.0.0.1:$(sed -n 's/^FFSSHD_PORT=//p' "$dir/sshd/env")"
		echo "settings: $dir/flexfactor.conf"
		exit 0
	fi
	echo "not running in $dir" >&2
	exit 1
	;;
esac

for p in python3 /usr/sbin/sshd ssh-keygen; do
	command -v "$p" >/dev/null || { echo "try-it.sh: $p is missing (Debian: openssh-server, python3)" >&2; exit 1; }
done

stop_all
mkdir -p "$dir"
rm -rf "$src"
mkdir -p "$src/test"
cp -a "$repo/test/sshd" "$repo/test/ffsim" "$src/test/"
[ "$(id -u)" = 0 ] && chown -R "$user": "$dir"
chmod 0755 "$dir"

as_user "$src/test/sshd/ffsshd" start "$dir/sshd" >/dev/null
# shellcheck disable=SC1091
. "$dir/sshd/env"

mid=$(python3 -c 'import uuid; print(uuid.uuid4())')
key=$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(64)).decode())')
webhook_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
rm -f "$dir/sim.port"
# exec: the pid file names the simulator itself; setsid: it outlives this shell
as_user setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$pidfile" \
	python3 "$src/test/ffsim/ffsim.py" --port 0 --port-file "$dir/sim.port" \
	--sftp-root "$dir/sftp" --mid "$mid" --mit-mode managed --clock realtime \
	--outcomes decline-code --app-key try-it-app-key --app-secret try-it-app-secret \
	--tokenization-key try-it-tokenization-key \
	--webhook-url "http://127.0.0.1:$webhook_port/flexfactor/webhook" --webhook-key "$key" \
	</dev/null >"$dir/sim.log" 2>&1 &
for _ in $(seq 1 100); do [ -s "$dir/sim.port" ] && break; sleep 0.1; done
[ -s "$dir/sim.port" ] || { tail -n 20 "$dir/sim.log" >&2; stop_all; echo "try-it.sh: the simulator did not start" >&2; exit 1; }
sim=http://127.0.0.1:$(cat "$dir/sim.port")
echo "$sim" >"$dir/sim.url"

cat >"$dir/flexfactor.conf" <<CONF
# flexfactor against the local simulator of tools/try-it.sh ($dir)
shared_preload_libraries = 'flexfactor'	# add to what you preload already
flexfactor.database = '$database'
flexfactor.api_url = '$sim/v1/'
flexfactor.app_key = 'try-it-app-key'
flexfactor.app_secret = 'try-it-app-secret'
flexfactor.tokenization_key = 'try-it-tokenization-key'
flexfactor.mid = '$mid'
flexfactor.sftp_host = '127.0.0.1'
flexfactor.sftp_port = $FFSSHD_PORT
flexfactor.sftp_user = '$FFSSHD_USER'
flexfactor.sftp_private_key_file = '$FFSSHD_CLIENT_KEY'
flexfactor.sftp_known_hosts_file = '$FFSSHD_KNOWN_HOSTS'
flexfactor.sftp_inbound_dir = '$dir/sftp/$mid/inbound'
flexfactor.sftp_outbound_dir = '$dir/sftp/$mid/outbound'
flexfactor.sftp_processed_dir = '$dir/sftp/$mid/outbound/done'
flexfactor.webhook_listen_address = '127.0.0.1'
flexfactor.webhook_port = $webhook_port
flexfactor.webhook_key = '$key'
CONF
[ "$(id -u)" = 0 ] && chown "$user": "$dir/flexfactor.conf"
chmod 0600 "$dir/flexfactor.conf"	# it holds the webhook key

echo "FlexFactor simulator on $sim (log $dir/sim.log), OpenSSH SFTP on 127.0.0.1:$FFSSHD_PORT, as $user"
echo
echo "Settings for your cluster's postgresql.conf (or: include '$dir/flexfactor.conf'):"
echo
sed -n '2,$p' "$dir/flexfactor.conf"
echo
echo "Then restart PostgreSQL, and in database $database: CREATE EXTENSION flexfactor;"
echo "What FlexFactor received and decided:  curl -s $sim/_admin/orders"
echo "Two weeks later (rescue windows close): curl -s -X POST -d '{\"seconds\": 1209600}' $sim/_admin/clock/advance"
echo "Stop:  bash $repo/tools/try-it.sh stop$([ "$dir" = /var/tmp/flexfactor-try-it ] || echo " --dir $dir")"
