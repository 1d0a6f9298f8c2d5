#!/usr/bin/env bash
# install-deps.sh: installs what flexfactor needs to build, test and demo on
# Debian 12, from Debian's packages only; with --bench, also what the
# benchmarks need (nginx-light, wrk).  Skips apt when every package is there.
#
# Run as root: apt-get needs it.  It changes nothing else on the host: no
# PostgreSQL cluster is stopped, started or reconfigured (the tests and the
# demo use throwaway clusters on free loopback ports), and, with --bench,
# nginx's package scripts are kept from starting a server on port 80 (the
# benchmark runs its own nginx on a free loopback port).
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
	libcurl4-openssl-dev libssh2-1-dev libssl-dev libmicrohttpd-dev
	openssh-server openssh-client
	libipc-run-perl
	python3 curl ca-certificates
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
	# nginx's postinst starts the packaged server (port 80); a policy-rc.d
	# that denies service starts prevents it, for the length of this install
	# only, and only when the host has no policy of its own
	policy=/usr/sbin/policy-rc.d
	if [[ " ${missing[*]} " == *" nginx-light "* ]] && [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# temporary, tools/install-deps.sh --bench\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# sshd's privilege-separation directory: test/sshd/ffsshd runs sshd as the
# postgres account, and OpenSSH checks the directory exists
if [ ! -d /run/sshd ]; then
	mkdir -p /run/sshd
	chmod 0755 /run/sshd
fi
