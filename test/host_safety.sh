#!/usr/bin/env bash
# host_safety.sh: checks that README's test command leaves the host's own
# PostgreSQL alone.  test/run-all.sh calls it around everything it does:
#
#   host_safety.sh begin STATE   before: whether the Debian-packaged cluster
#                                15/main is online, its postmaster pid, the
#                                checksums of its configuration files and the
#                                state of the benchmark-only packages are kept
#                                in STATE
#   host_safety.sh check STATE   after: prints one "ok N - ..." / "not ok N - ..."
#                                line per check and "host safety: N passed, M
#                                failed": a cluster that was online is still
#                                online with the same postmaster, one that was
#                                down is still down, and its configuration is
#                                unchanged
#
# The cluster is never started, stopped, restarted or changed by this script.
# With no cluster 15/main (pg_lsclusters missing or no such cluster) there is
# nothing to check: "host safety: skipped".  Run as root.
set -uo pipefail

cmd=${1:-}
state=${2:-}
[ -n "$cmd" ] && [ -n "$state" ] || { echo "usage: $0 begin|check STATE" >&2; exit 2; }
ver=15
name=main

cluster_status() { pg_lsclusters -h 2>/dev/null | awk -v v=$ver -v n=$name '$1 == v && $2 == n { print $4 }'; }
datadir() { pg_lsclusters -h 2>/dev/null | awk -v v=$ver -v n=$name '$1 == v && $2 == n { print $6 }'; }
postmaster_pid() { head -n 1 "$(datadir)/postmaster.pid" 2>/dev/null; }
conf_sums() {
	sha256sum /etc/postgresql/$ver/$name/*.conf "$(datadir)/postgresql.auto.conf" 2>/dev/null | sort | sha256sum | cut -c1-16
}
bench_pkgs() {
	local p
	for p in nginx-light wrk; do
		printf '%s=%s ' "$p" "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -c 'install ok installed')"
	done
}

case "$cmd" in
begin)
	if ! command -v pg_lsclusters >/dev/null || [ -z "$(cluster_status)" ]; then
		echo "none" >"$state"
		echo "host safety: no cluster $ver/$name to watch yet"
		exit 0
	fi
	was=$(cluster_status)
	printf 'status=%s\npid=%s\nconf=%s\nbench=%s\n' \
		"$was" "$([ "$was" = online ] && postmaster_pid)" "$(conf_sums)" "$(bench_pkgs)" >"$state"
	echo "host safety: watching cluster $ver/$name ($was$([ "$was" = online ] && echo ", pid $(postmaster_pid)"))"
	;;
check)
	if [ ! -s "$state" ] || [ "$(cat "$state")" = none ]; then
		echo "host safety: skipped (no cluster $ver/$name on this host)"
		exit 0
	fi
	get() { sed -n "s/^$1=//p" "$state"; }
	n=0
	bad=0
	report() {	# $1: 0 = ok; $2: what
		n=$((n + 1))
		if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; bad=$((bad + 1)); fi
	}
	st=$(cluster_status)
	if [ "$(get status)" = online ]; then
		[ "$st" = online ]; report $? "cluster $ver/$name is still online ($st)"
		pid=$(postmaster_pid)
		[ "$pid" = "$(get pid)" ]; report $? "and was not restarted (postmaster pid $(get pid), now ${pid:-none})"
	else
		[ "$st" = "$(get status)" ]; report $? "cluster $ver/$name is still $(get status) ($st): nothing started it"
	fi
	[ "$(conf_sums)" = "$(get conf)" ]; report $? "its configuration files are unchanged"
	[ "$(bench_pkgs)" = "$(get bench)" ]; report $? "the benchmark-only packages are as they were (installed: $(bench_pkgs))"
	echo "host safety: $((n - bad)) passed, $bad failed"
	[ $bad -eq 0 ]
	;;
*)
	echo "usage: $0 begin|check STATE" >&2
	exit 2
	;;
esac
