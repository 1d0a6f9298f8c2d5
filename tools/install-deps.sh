#!/usr/bin/env bash
# install-deps.sh: installs what flexfactor needs to build, test and demo on
# Debian 12, from Debian's packages only, including the tools that build the
# Debian package (debhelper, pg_buildext) and the high-availability suite's
# pg_auto_failover (postgresql-15-auto-failover, pg-auto-failover-cli) and
# HAProxy; with --bench, also what the benchmarks need (nginx-light, wrk).
# Skips apt when every package is there.
#
# Run as root: apt-get needs it.  It changes nothing else on the host: no
# PostgreSQL cluster is stopped, started or reconfigured (the tests and the
# demo use throwaway clusters on free loopback ports), and the package
# scripts of haproxy and nginx are kept from starting a system-wide server
# (the HA suite and the benchmark run their own on free loopback ports).
set -euo pipefail

bench=0
for arg in "$@"; do
	case "$arg" in
		--bench) bench=1 ;;
		*) echo "usage: $0 [--bench]" >&2; exit 2 ;;
	esac
done

packages=(
	build-essential
	postgresql-15 postgresql-server-dev-15 postgresql-contrib
	postgresql-15-cron
	postgresql-15-auto-failover pg-auto-failover-cli haproxy
	libcurl4-openssl-dev libssh2-1-dev libssl-dev libmicrohttpd-dev
	openssh-server openssh-client
	libipc-run-perl
	python3 curl ca-certificates
	debhelper postgresql-server-dev-all
)
[ $bench -eq 1 ] && packages+=(nginx-light wrk)

if [ "$(id -u)" != 0 ]; then
	echo "install-deps.sh: run as root: it installs Debian packages with apt-get" >&2
	exit 2
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	deny_starts=0
	[[ " ${missing[*]} " =~ \ (nginx-light|haproxy)\  ]] && deny_starts=1
	# postgresql-server-dev-all requires postgresql-common of exactly its own
	# version: the newest one would upgrade an installed postgresql-common,
	# whose postinst starts every cluster that is down.  Ask for the installed
	# postgresql-common's version; when the archive no longer has it, services
	# are kept from starting instead (below).
	common=$(dpkg-query -W -f='${Status} ${Version}' postgresql-common 2>/dev/null |
		awk '/install ok installed/ { print $4 }')
	for i in "${!missing[@]}"; do
		[ "${missing[$i]}" = postgresql-server-dev-all ] && [ -n "$common" ] || continue
		if apt-cache madison postgresql-server-dev-all | awk -F' [|] ' '{ print $2 }' | grep -qxF "$common"; then
			missing[$i]="postgresql-server-dev-all=$common"
		else
			deny_starts=1
		fi
	done
	# nginx's postinst starts the packaged server (port 80), haproxy's its
	# packaged configuration (a stats socket in /run/haproxy), postgresql-common's
	# the clusters; a policy-rc.d that denies service starts prevents it, for
	# the length of this install only, and only when the host has no policy of
	# its own.  (pg_auto_failover's packages start nothing: pg_autoctl runs
	# only when a test starts it.)
	policy=/usr/sbin/policy-rc.d
	if [ $deny_starts -eq 1 ] && [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# temporary, tools/install-deps.sh\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# sshd's privilege-separation directory: test/sshd/ffsshd runs sshd as the
# postgres account, and OpenSSH checks the directory exists
if [ ! -d /run/sshd ]; then
	mkdir -p /run/sshd
	chmod 0755 /run/sshd
fi
