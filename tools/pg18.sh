#!/usr/bin/env bash
# pg18.sh: provides PostgreSQL 18 for the tests and prints its pg_config.
# Debian 12 has no postgresql-18 package, but Debian's registry carries its
# source package (suite sid): this fetches that source with a private apt
# configuration (the machine's own package lists are untouched), builds it
# with TAP support into a cache directory outside the checkout and installs
# pgcrypto, which the tests use.  pg_cron (source package pg-cron) is built
# against it when the registry has its source; when it has not, the reason is
# kept in pg_cron.unavailable in its library directory, and the test that
# needs pg_cron prints it.  A later run finds the cache and only retries a
# missing pg_cron.  It installs what the build needs (bison and flex, since
# the tarball has no generated parser files; readline and zlib headers).
# Run as root; everything but the last line of output goes to stderr.
#   FF_PG18_CACHE  cache directory (default /var/cache/flexfactor/pg18)
set -euo pipefail

cache=${FF_PG18_CACHE:-/var/cache/flexfactor/pg18}
prefix=$cache/install
stamp=$prefix/.flexfactor-built
nocron=$prefix/lib/postgresql/pg_cron.unavailable	# pg_config --pkglibdir
aptdir=$cache/apt

log() { echo "pg18.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
	if [ -f "$stamp" ]; then
		echo "$prefix/bin/pg_config"
		exit 0
	fi
	log "run as root: it installs bison and flex and writes $cache"
	exit 2
fi

# A private apt configuration: one deb-src line for sid, from the mirror the
# machine's own sources name; its lists and caches live under $aptdir.
apt_private=(-o "Dir::Etc::sourcelist=$aptdir/sources.list" -o Dir::Etc::sourceparts=/dev/null
	-o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache=$aptdir/cache")
apt_sid_update() {
	local uri
	uri=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
	[ -n "$uri" ] || uri=http://deb.debian.org/debian
	mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial"
	echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri sid main" >"$aptdir/sources.list"
	log "reading the source package list of Debian sid from $uri"
	apt-get "${apt_private[@]}" update -qq >&2
}
# $1: source package, into the current directory
apt_source() {
	apt-get "${apt_private[@]}" source --download-only "$1" >apt-source.log 2>&1 || {
		grep -E '^E: ' apt-source.log >&2
		return 1
	}
}

build_pg() {
	local src pgtar pgsrc p missing=()
	for p in build-essential bison flex libreadline-dev zlib1g-dev libssl-dev libipc-run-perl; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
			{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
	fi
	src=$cache/src/postgresql-18
	rm -rf "$src" "$prefix"
	mkdir -p "$src"
	cd "$src"
	apt_source postgresql-18
	pgtar=$(ls postgresql-18_*.orig.tar.*)
	log "building $pgtar into $prefix (about 5 minutes on 2 cores)"
	tar -xf "$pgtar"
	pgsrc=$(ls -d postgresql-18*/)
	cd "$pgsrc"
	./configure --prefix="$prefix" --without-icu --with-openssl --enable-tap-tests \
		>"$src/configure.log" 2>&1 || { tail -n 30 "$src/configure.log" >&2; return 1; }
	# make install also installs pg_regress and the TAP modules (lib/pgxs/src/test)
	{ make -s -j"$(nproc)" && make -s install && make -s -C contrib/pgcrypto install; } \
		>"$src/make.log" 2>&1 || { tail -n 40 "$src/make.log" >&2; return 1; }
	cd "$cache"
	rm -rf "$src"
	"$prefix/bin/postgres" --version >"$stamp"
	log "built $(cat "$stamp")"
}

build_pg_cron() {
	local src crontar
	src=$cache/src/pg-cron
	rm -rf "$src"
	mkdir -p "$src"
	cd "$src"
	if ! apt_source pg-cron; then
		echo "Debian's registry did not serve the source package pg-cron (sid) on $(date -u +%F)" >"$nocron"
		log "no pg_cron for PostgreSQL 18: $(cat "$nocron")"
		cd "$cache"
		rm -rf "$src"
		return 0
	fi
	crontar=$(ls pg-cron_*.orig.tar.*)
	log "building $crontar against PostgreSQL 18"
	tar -xf "$crontar"
	make -s -C "$(ls -d */)" PG_CONFIG="$prefix/bin/pg_config" install >"$src/make.log" 2>&1 ||
		{ tail -n 30 "$src/make.log" >&2; return 1; }
	rm -f "$nocron"
	cd "$cache"
	rm -rf "$src"
}

mkdir -p "$cache"
if [ ! -f "$stamp" ]; then
	apt_sid_update
	build_pg
	build_pg_cron
elif [ -f "$nocron" ]; then
	apt_sid_update && build_pg_cron || log "pg_cron stays unavailable"
fi
echo "$prefix/bin/pg_config"
