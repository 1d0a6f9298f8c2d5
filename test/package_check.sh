#!/usr/bin/env bash
# package_check.sh: the Debian package (debian/, docs/packaging.md) end to
# end on Debian's PostgreSQL 15.  dpkg-buildpackage (pg_buildext, warnings as
# errors) builds postgresql-15-flexfactor in a copy of the tree outside the
# checkout; apt installs it; the installed library and control file must
# belong to the package and match it; the pg_regress suites run, as the
# postgres account, against the installed package (no make install in
# between); apt removes it again.
#
# The host is left as it was: flexfactor files that a `make install` put into
# PostgreSQL 15's folders (test/run-all.sh's own, or a DBA's) are moved aside
# while the package is installed and put back after it is removed; when
# postgresql-15-flexfactor is already installed (a DBA's), nothing is done
# ("package: skipped").  Prints one "ok N - ..." / "not ok N - ..." line per
# check (each pg_regress test counts as one) and "package: N passed, M
# failed".  As root, after tools/install-deps.sh; test/run-all.sh runs it
# after the PostgreSQL 15 suites.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
pgv=15
pkg=postgresql-$pgv-flexfactor
pg_config=/usr/lib/postgresql/$pgv/bin/pg_config
as_pg() { (cd / && runuser -u postgres -- "$@"); }
apt_() { apt-get -y -qq -o DPkg::Lock::Timeout=300 "$@"; }
installed() { dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; }
present() {	# installed, or half-way (unpacked, half-configured ...)
	local s
	s=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)
	[ -n "$s" ] && [ "$s" != not-installed ] && [ "$s" != config-files ]
}

if [ "$(id -u)" != 0 ]; then
	echo "package_check.sh: run as root: it installs and removes a Debian package" >&2
	exit 2
fi
for tool in dpkg-buildpackage dh pg_buildext "$pg_config"; do
	command -v "$tool" >/dev/null ||
		{ echo "package_check.sh: $tool is missing: run tools/install-deps.sh" >&2; exit 2; }
done
# one package check at a time on a host (the package is host-wide)
exec 9>/run/lock/flexfactor-package-check.lock
flock -w 900 9 || { echo "package_check.sh: another package check holds the lock" >&2; exit 2; }
if present; then
	echo "package: skipped ($pkg $(dpkg-query -W -f='${Version} (${db:Status-Status})' "$pkg") is on this host; it is not replaced)"
	exit 0
fi

dir=$(mktemp -d /tmp/flexfactor-package.XXXXXX)
chmod 0755 "$dir"	# apt's download user reads the .deb from here
n=0
bad=0
check() {	# $1: 0 = ok; $2: what
	n=$((n + 1))
	if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; bad=$((bad + 1)); fi
}

libdir=$("$pg_config" --pkglibdir)
extdir=$("$pg_config" --sharedir)/extension
aside=$dir/aside
we_installed=0
cleanup() {
	local f
	if [ $we_installed = 1 ] && present; then
		apt_ remove "$pkg" >/dev/null 2>&1
	fi
	# put back what make install had put there, unless the package is still in its place
	if [ -d "$aside" ] && ! present; then
		(cd "$aside" && find . -type f) | while read -r f; do
			mkdir -p "$(dirname "${f#.}")"
			mv "$aside/$f" "${f#.}"
		done
	fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# a copy of the sources, without build products or the git metadata
copy_tree() {
	mkdir -p "$1"
	tar -C "$repo" --exclude=./.git --exclude=./demo/run --exclude='./tmp_check*' \
		--exclude=./results --exclude='./flexfactor--*.sql' --exclude='*.o' --exclude='*.so' \
		--exclude='*.bc' -cf - . |
		tar -C "$1" -xf -
}

copy_tree "$dir/src"
t0=$SECONDS
(cd "$dir/src" && dpkg-buildpackage -us -uc -b -j"$(nproc)") >"$dir/build.log" 2>&1
rc=$?
deb=$(ls "$dir/${pkg}_"*.deb 2>/dev/null | head -n 1)
[ $rc = 0 ] && [ -n "$deb" ]
check $? "dpkg-buildpackage builds $(basename "${deb:-$pkg}") with pg_buildext, warnings as errors ($((SECONDS - t0)) s)"
if [ -z "$deb" ]; then
	tail -n 60 "$dir/build.log"
	echo "package: $((n - bad)) passed, $bad failed"
	exit 1
fi
grep -q -- '-Werror ' "$dir/build.log"
check $? "the compiler ran with -Werror"

depends=$(dpkg-deb -f "$deb" Depends)
missing_deps=
for lib in 'postgresql-15' 'libcurl4(t64)?' 'libssh2-1(t64)?' 'libssl3(t64)?' 'libmicrohttpd12(t64)?'; do
	grep -qE "(^|, )$lib( |,|$)" <<<"$depends" || missing_deps="$missing_deps $lib"
done
[ -z "$missing_deps" ]
check $? "Depends carries PostgreSQL 15 and the shared libraries ($depends)${missing_deps:+; missing:$missing_deps}"

version=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$repo/flexfactor.control")
want="$libdir/flexfactor.so $extdir/flexfactor.control $extdir/flexfactor--$version.sql"
for f in "$repo"/sql/flexfactor--*.sql; do    # upgrade scripts, earlier releases' install scripts
	[ -e "$f" ] && want="$want $extdir/$(basename "$f")"
done
contents=$(dpkg-deb -c "$deb" | awk '{ print substr($6, 2) }')
absent=
for f in $want; do
	grep -qxF "$f" <<<"$contents" || absent="$absent $f"
done
[ -z "$absent" ]
check $? "the package holds the library, the control file and every flexfactor--*.sql ($(wc -w <<<"$want") files)${absent:+; absent:$absent}"

# the flexfactor files a make install left in PostgreSQL 15's folders go
# aside (put back by cleanup), so that only the package's are there
for f in "$libdir/flexfactor.so" "$libdir/bitcode/flexfactor.index.bc" \
	"$extdir/flexfactor.control" "$extdir"/flexfactor--*.sql; do
	[ -f "$f" ] && ! dpkg -S "$f" >/dev/null 2>&1 || continue
	mkdir -p "$aside$(dirname "$f")"
	mv "$f" "$aside$f"
done
if [ -d "$libdir/bitcode/flexfactor" ] && ! dpkg -S "$libdir/bitcode/flexfactor" >/dev/null 2>&1; then
	mkdir -p "$aside$libdir/bitcode"
	mv "$libdir/bitcode/flexfactor" "$aside$libdir/bitcode/"
fi
[ -d "$aside" ] && echo "# moved aside while the package is installed: $(cd "$aside" && find . -type f | wc -l) files a make install had put into PostgreSQL $pgv's folders"

we_installed=1
apt_ install --no-install-recommends "$deb" >"$dir/install.log" 2>&1
rc=$?
installed && [ $rc = 0 ]
check $? "apt-get install $(basename "$deb")"
[ $rc = 0 ] || tail -n 20 "$dir/install.log"

owners=$(dpkg -S "$libdir/flexfactor.so" "$extdir/flexfactor.control" 2>&1)
[ "$(grep -c "^$pkg: " <<<"$owners")" = 2 ]
check $? "dpkg -S: $libdir/flexfactor.so and $extdir/flexfactor.control belong to $pkg"
verify=$(dpkg --verify "$pkg" 2>&1)
[ -z "$verify" ]
check $? "dpkg --verify: the installed files are the package's, unchanged${verify:+ ($verify)}"

# pg_regress against the installed package, as the postgres account, on a
# copy of the sources that holds no build products
copy_tree "$dir/t"
[ -z "$(find "$dir/t" -name '*.so' -o -name '*.o' -o -name "flexfactor--$version.sql")" ]
check $? "the regression tree holds no build products"
chown -R postgres: "$dir/t"
as_pg make -C "$dir/t" installcheck TAP_TESTS= PG_CONFIG="$pg_config" >"$dir/regress.log" 2>&1
rc=$?
grep -E '^(test |ok |not ok )' "$dir/regress.log"
if m=$(grep -oP 'All \K[0-9]+(?= tests passed)' "$dir/regress.log"); then
	n=$((n + m))
elif read -r m all < <(grep -oP '[0-9]+ of [0-9]+(?= tests failed)' "$dir/regress.log" | sed 's/ of / /'); then
	n=$((n + all)); bad=$((bad + m))
else
	check 1 "pg_regress ran"
fi
echo "# pg_regress against the installed package: $(grep -oP '(All [0-9]+ tests passed|[0-9]+ of [0-9]+ tests failed)' "$dir/regress.log")"
if [ $rc != 0 ]; then
	cat "$dir/t/regression.diffs" 2>/dev/null | head -n 100
	tail -n 40 "$dir/t/tmp_check_regress/log/postmaster.log" 2>/dev/null
fi

if command -v lintian >/dev/null; then
	lintian "$deb" >"$dir/lintian.log" 2>&1
	check $? "lintian finds no error (warnings: $(grep -oP '^W: \S+ \K\S+' "$dir/lintian.log" | sort -u | paste -sd ' '))"
	grep '^E: ' "$dir/lintian.log"
fi

apt_ remove "$pkg" >"$dir/remove.log" 2>&1
! present && [ ! -e "$libdir/flexfactor.so" ] && [ ! -e "$extdir/flexfactor.control" ]
check $? "apt-get remove $pkg removes it and its files"
we_installed=0
if [ -d "$aside" ]; then
	k=$(find "$aside" -type f | wc -l)
	cleanup
	[ -z "$(find "$aside" -type f)" ] && [ -f "$libdir/flexfactor.so" ] && [ -f "$extdir/flexfactor.control" ]
	check $? "the $k files moved aside are back in PostgreSQL $pgv's folders"
fi
echo "# $SECONDS s in all; build, install and regression logs in $dir"
echo "package: $((n - bad)) passed, $bad failed"
[ $bad = 0 ]
