#!/usr/bin/env bash
# run-all.sh: runs every flexfactor test suite, as README's test command and
# CI do, on PostgreSQL 15 (Debian's package) and then on PostgreSQL 18 (built
# once from Debian's source package by tools/pg18.sh, and cached); with
# PG_CONFIG=/path/to/pg_config, on that installation only.  FF_PG15_CONFIG
# replaces Debian's 15 (a private copy, say) in the two-version run.  As root it
# installs the dependencies; then, for each version, it builds with warnings
# as errors and installs the extension and, as the postgres account (which
# PostgreSQL requires), runs on a copy of the tree:
#   pg_regress suites (make installcheck), TAP suites (make prove_installcheck),
# the high-availability suite (make prove_ha: pg_auto_failover and HAProxy;
# on PostgreSQL 15 only, the one Debian packages pg_auto_failover for),
# the decline trigger benchmark in its quick mode (bench/trigger/run.sh
# --quick: its correctness checks only, never a timing) as one more check,
# then the demo (demo/run.sh --quick) as one more check, and checks its
# report's figures (test/check_demo_report.py), one check each; once, the
# "Try it on your own cluster" command (test/try_it_check.sh).  After the 15
# suites, in the two-version run, the Debian package (test/package_check.sh):
# built from a copy of the tree, installed with apt into Debian's 15 (the
# flexfactor files make install put there moved aside meanwhile), checked,
# the pg_regress suites run against it, and removed again.  The
# FlexFactor simulator's own tests (no PostgreSQL in them) run once.  Around
# all of it test/host_safety.sh checks that the host's own cluster 15/main
# stayed as it was (online and unrestarted, or down) and unchanged; it never
# starts or stops it.  It
# prints regression.diffs and server logs of failed suites, a subtotal per
# version, and ends with one line "N passed, N failed" for all of them.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
	echo "run-all.sh: run as root (bash test/run-all.sh, or sudo bash test/run-all.sh): it installs Debian packages and the extension, and runs the suites as the postgres account" >&2
	exit 2
fi

# the host's own cluster (15/main) must come through untouched: watched from
# before the dependencies are installed to the end (test/host_safety.sh)
host_state=$(mktemp /tmp/flexfactor-host-safety.XXXXXX)
"$repo/test/host_safety.sh" begin "$host_state"
trap 'rm -f "$host_state"' EXIT
"$repo/tools/install-deps.sh" || exit 1
# on a fresh host the packaged cluster appears only now
[ "$(cat "$host_state")" = none ] && "$repo/test/host_safety.sh" begin "$host_state"

# as the postgres account, from / (the caller's directory may be closed to it)
as_pg() { (cd / && runuser -u postgres -- "$@"); }
work=$(mktemp -d /tmp/flexfactor-test.XXXXXX)
chmod 0755 "$work"

passed=0
failed=0
skipped=0

sum_lines() { awk '{ s += $1 } END { print s + 0 }'; }

count_regress() {	# pg_regress summary: "All N tests passed." / "M of N tests failed."
	local log=$1 n m
	if n=$(grep -oP 'All \K[0-9]+(?= tests passed)' "$log"); then
		passed=$((passed + n))
	elif read -r m n < <(grep -oP '\K[0-9]+ of [0-9]+(?= tests failed)' "$log" | sed 's/ of / /'); then
		passed=$((passed + n - m)); failed=$((failed + m))
	else
		failed=$((failed + 1))
	fi
}

count_prove() {		# prove summary: "Files=F, Tests=N", failures in the report
	local log=$1 n bad
	n=$(grep -oP '^Files=[0-9]+, Tests=\K[0-9]+' "$log" || echo 0)
	bad=$(grep -oP 'Failed: \K[0-9]+' "$log" | sum_lines)
	[ -z "$bad" ] && bad=0
	dubious=$(grep -c 'Parse errors: No plan found' "$log" || true)
	passed=$((passed + n - bad)); failed=$((failed + bad + dubious))
	skipped=$((skipped + $(grep -c '\.\. skipped: ' "$log")))
}

count_summary() {	# "$2: N passed, M failed" in log $1; false when it has none
	local n
	n=$(grep -oP "^$2: \K[0-9]+(?= passed)" "$1") || return 1
	passed=$((passed + n))
	failed=$((failed + $(grep -oP "^$2: [0-9]+ passed, \K[0-9]+" "$1")))
}

count_unittest() {	# unittest: "Ran N tests", "FAILED (failures=a, errors=b)"
	local log=$1 n f e
	n=$(grep -oP '^Ran \K[0-9]+' "$log" | sum_lines)
	f=$(grep -oP 'FAILED \(.*failures=\K[0-9]+' "$log" | sum_lines)
	e=$(grep -oP 'FAILED \(.*errors=\K[0-9]+' "$log" | sum_lines)
	[ -z "$n" ] && n=0; [ -z "$f" ] && f=0; [ -z "$e" ] && e=0
	passed=$((passed + n - f - e)); failed=$((failed + f + e))
	local rp rf
	rp=$(grep -oP '^roundtrip: \K[0-9]+(?= passed)' "$log" || echo 0)
	rf=$(grep -oP '^roundtrip: [0-9]+ passed, \K[0-9]+(?= failed)' "$log" || echo 0)
	passed=$((passed + rp)); failed=$((failed + rf))
}

# make target $2 (a prove run) in tree $1 as the postgres account, output in
# $3, counted; the logs of a failed run printed.  Returns make's status.
run_prove() {
	local tree=$1 target=$2 log=$3 rc f
	as_pg make -C "$tree" "$target" PG_CONFIG="$PG_CONFIG" >"$log" 2>&1
	rc=$?
	grep -vE '^(echo|\+\+\+)' "$log"
	count_prove "$log"
	if [ $rc -ne 0 ]; then
		for f in "$tree"/tmp_check/log/*; do
			echo "---- $f (last 80 lines)"; tail -n 80 "$f"
		done
	fi
	return $rc
}

# $1: pg_config of the installation; $2: 1 to run the simulator's tests too
run_version() {
	local pg_config=$1 with_sim=$2 version w rc
	local passed0=$passed failed0=$failed suite_failed=0
	version=$("$pg_config" --version | awk '{print $2}')
	export PG_CONFIG=$pg_config
	w=$work/pg${version%%.*}

	echo "== PostgreSQL $version ($pg_config): build (warnings are errors) and install"
	make -C "$repo" -s clean >/dev/null
	if ! { make -C "$repo" -s COPT='-Werror' && make -C "$repo" -s check-version &&
		make -C "$repo" -s install >/dev/null; }; then
		failed=$((failed + 1))
		echo "PostgreSQL $version: the build failed, no suite run"
		return
	fi
	mkdir -p "$w"
	cp -a "$repo/." "$w/"
	chown -R postgres: "$w"

	echo "== PostgreSQL $version: pg_regress suites"
	as_pg make -C "$w" installcheck TAP_TESTS= PG_CONFIG="$pg_config" >"$w/regress.log" 2>&1
	rc=$?
	grep -E '^(test |ok |not ok | *[0-9]+ of|All |# ([0-9]+ of|All ))' "$w/regress.log" || true
	count_regress "$w/regress.log"
	if [ $rc -ne 0 ]; then
		suite_failed=1
		echo "---- regression.diffs"; cat "$w/regression.diffs" 2>/dev/null
		echo "---- server log"; tail -n 100 "$w"/tmp_check_regress/log/postmaster.log 2>/dev/null
	fi

	echo "== PostgreSQL $version: TAP suites"
	run_prove "$w" prove_installcheck "$w/tap.log" || suite_failed=1

	# its own tree: prove_installcheck starts by removing tmp_check
	echo "== PostgreSQL $version: high-availability suite (pg_auto_failover and HAProxy; test/ha/t, make prove_ha)"
	if [ -f "$("$pg_config" --sharedir)/extension/pgautofailover.control" ]; then
		local t_ha=$SECONDS
		mkdir -p "$w-ha"
		cp -a "$repo/." "$w-ha/"
		chown -R postgres: "$w-ha"
		run_prove "$w-ha" prove_ha "$w/ha.log" || suite_failed=1
		echo "high-availability suite: $((SECONDS - t_ha)) s"
	else
		echo "skipped on PostgreSQL $version: Debian packages pg_auto_failover (postgresql-15-auto-failover) for its own PostgreSQL 15 only, so this installation has no pgautofailover extension"
	fi

	if [ "$with_sim" = 1 ] && [ -x "$w/test/ffsim/run_tests.sh" ]; then
		echo "== FlexFactor simulator tests"
		as_pg bash "$w/test/ffsim/run_tests.sh" >"$w/ffsim.log" 2>&1
		rc=$?
		tail -n 60 "$w/ffsim.log"
		count_unittest "$w/ffsim.log"
		[ $rc -ne 0 ] && suite_failed=1
	fi

	# the benchmarks that need nothing more than PostgreSQL run in their
	# quick mode, for their correctness checks (bench/api needs nginx, which
	# only the benchmarks install)
	echo "== PostgreSQL $version: bench/trigger --quick (correctness only; its figures are not checked)"
	if bash "$repo/bench/trigger/run.sh" --quick --no-build >"$w/bench-trigger.log" 2>&1; then
		passed=$((passed + 1))
		grep -E '^correctness' "$w/bench-trigger.log"
	else
		failed=$((failed + 1))
		tail -n 40 "$w/bench-trigger.log"
	fi

	echo "== PostgreSQL $version: the demo (README's main job), short mode, and its report checked"
	# kept running (in the test tree) so that its figures can be checked against
	# the database and the simulator's records, then stopped
	local demo_dir="$w/demo"
	if FF_DEMO_DIR="$demo_dir" bash "$repo/demo/run.sh" --quick --keep >"$w/demo.log" 2>&1; then
		sed -n '/== report/,/^flexfactor ran/p' "$w/demo.log"
		passed=$((passed + 1))
		python3 "$repo/test/check_demo_report.py" "$demo_dir" >"$w/demo-check.log" 2>&1
		grep -E '^(not ok|demo report:)|Error|Traceback' "$w/demo-check.log" || true
		if ! count_summary "$w/demo-check.log" 'demo report'; then
			tail -n 30 "$w/demo-check.log"
			failed=$((failed + 1))
		fi
	else
		tail -n 60 "$w/demo.log"
		failed=$((failed + 1))
	fi
	FF_DEMO_DIR="$demo_dir" bash "$repo/demo/run.sh" --stop >/dev/null 2>&1

	if [ "$with_sim" = 1 ]; then
		echo "== PostgreSQL $version: README's \"Try it on your own cluster\" (tools/try-it.sh, test/try_it_check.sh)"
		bash "$repo/test/try_it_check.sh" >"$w/try-it.log" 2>&1
		cat "$w/try-it.log"
		count_summary "$w/try-it.log" 'try it' || failed=$((failed + 1))
	fi

	if [ $suite_failed -ne 0 ] && [ $failed -eq $failed0 ]; then
		failed=$((failed + 1))	# a suite failed in a way its summary did not count
	fi
	echo "-- PostgreSQL $version: $((passed - passed0)) tests passed and $((failed - failed0)) failed"
}

# the Debian package on Debian's PostgreSQL 15 (test/package_check.sh)
run_package() {
	echo "== the Debian package postgresql-15-flexfactor: build, install, pg_regress against it, remove (test/package_check.sh)"
	bash "$repo/test/package_check.sh" >"$work/package.log" 2>&1
	cat "$work/package.log"
	if count_summary "$work/package.log" package; then
		:
	elif grep -q '^package: skipped' "$work/package.log"; then
		skipped=$((skipped + 1))
	else
		failed=$((failed + 1))
	fi
}

if [ -n "${PG_CONFIG:-}" ]; then
	run_version "$PG_CONFIG" 1
else
	run_version "${FF_PG15_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" 1
	run_package
	echo "== PostgreSQL 18 (tools/pg18.sh: built from Debian's source package once, then cached)"
	t0=$SECONDS
	if pg18=$("$repo/tools/pg18.sh"); then
		echo "PostgreSQL 18 ready after $((SECONDS - t0)) s: $pg18"
		run_version "$pg18" 0
	else
		echo "PostgreSQL 18 could not be obtained or built: its suites did not run"
		failed=$((failed + 1))
	fi
fi

echo "== the host's own PostgreSQL cluster after all of it (test/host_safety.sh)"
"$repo/test/host_safety.sh" check "$host_state" >"$work/host-safety.log" 2>&1
cat "$work/host-safety.log"
if ! count_summary "$work/host-safety.log" 'host safety' &&
	! grep -q '^host safety: skipped' "$work/host-safety.log"; then
	failed=$((failed + 1))
fi
rm -f "$host_state"

echo "test trees kept in $work"
if [ $skipped -gt 0 ]; then
	echo "$passed passed, $failed failed, $skipped skipped"
else
	echo "$passed passed, $failed failed"
fi
[ $failed -eq 0 ]
