#!/usr/bin/env bash
# install-deps.sh: installs everything flexfactor needs to build, test and
# demo on Debian 12, from Debian's packages only.  Run as root.  Skips apt
# when every package is already there.
set -euo pipefail

packages=(
	build-essential
	postgresql-15 postgresql-server-dev-15 postgresql-contrib
	postgresql-15-cron
	libcurl4-openssl-dev libssh2-1-dev libssl-dev libmicrohttpd-dev
	openssh-server openssh-client
	libipc-run-perl
	python3 curl ca-certificates
	nginx-light wrk
)

if [ "$(id -u)" != 0 ]; then
	echo "install-deps.sh: run as root (it uses apt-get)" >&2
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
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# the packaged cluster is not used by tests or the demo; keep it stopped
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q ' online'; then
	pg_ctlcluster 15 main stop 2>/dev/null || true
fi
# sshd's privilege-separation directory, needed even when run unprivileged
mkdir -p /run/sshd
chmod 0755 /run/sshd
