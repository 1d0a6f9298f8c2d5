#!/usr/bin/env bash
# run-all.sh: runs every flexfactor test suite, as README's test command and
# CI do.  As root it installs the dependencies, builds with warnings as
# errors and installs the extension; then, as the postgres account (which
# PostgreSQL requires), it runs on a copy of the tree:
#   pg_regress suites (make installcheck), TAP suites (make prove_installcheck),
#   and the FlexFactor simulator's own tests.
# Then it runs the demo (demo/run.sh --quick) as one more check, and checks
# its report's figures (test/check_demo_report.py), one check each.  It prints
# regression.diffs and server logs of failed suites, and ends with one line
# "N passed, N failed".
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
	echo "run-all.sh: run as root (sudo bash test/run-all.sh): it installs packages and the extension" >&2
	exit 2
fi

"$repo/tools/install-deps.sh" || exit 1

echo "== build (warnings are errors) and install"
make -C "$repo" -s clean >/dev/null
make -C "$repo" -s COPT='-Werror' || exit 1
make -C "$repo" -s check-version || exit 1
make -C "$repo" -s install >/dev/null || exit 1

work=$(mktemp -d /tmp/flexfactor-test.XXXXXX)
cp -a "$repo/." "$work/"
chown -R postgres: "$work"
as_pg() { runuser -u postgres -- "$@"; }

passed=0
failed=0
suite_failed=0

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

echo "== pg_regress suites"
as_pg make -C "$work" installcheck TAP_TESTS= >"$work/regress.log" 2>&1
rc=$?
cat "$work/regress.log" | grep -E '^(test |ok |not ok | *[0-9]+ of|All )' || true
count_regress "$work/regress.log"
if [ $rc -ne 0 ]; then
	suite_failed=1
	echo "---- regression.diffs"; cat "$work/regression.diffs" 2>/dev/null
	echo "---- server log"; tail -n 100 "$work"/tmp_check_regress/log/postmaster.log 2>/dev/null
fi

echo "== TAP suites"
as_pg make -C "$work" prove_installcheck >"$work/tap.log" 2>&1
rc=$?
grep -vE '^(echo|\+\+\+)' "$work/tap.log"
count_prove "$work/tap.log"
if [ $rc -ne 0 ]; then
	suite_failed=1
	for f in "$work"/tmp_check/log/*; do
		echo "---- $f (last 80 lines)"; tail -n 80 "$f"
	done
fi

if [ -x "$work/test/ffsim/run_tests.sh" ]; then
	echo "== FlexFactor simulator tests"
	(cd "$work" && as_pg bash test/ffsim/run_tests.sh) >"$work/ffsim.log" 2>&1
	rc=$?
	tail -n 60 "$work/ffsim.log"
	count_unittest "$work/ffsim.log"
	[ $rc -ne 0 ] && suite_failed=1
fi

echo "== the demo (README's main job), short mode, and its report checked"
# kept running (in the test tree) so that its figures can be checked against
# the database and the simulator's records, then stopped
demo_dir="$work/demo"
if FF_DEMO_DIR="$demo_dir" bash "$repo/demo/run.sh" --quick --keep >"$work/demo.log" 2>&1; then
	sed -n '/== report/,/^flexfactor ran/p' "$work/demo.log"
	passed=$((passed + 1))
	python3 "$repo/test/check_demo_report.py" "$demo_dir" >"$work/demo-check.log" 2>&1
	grep -E '^(not ok|demo report:)|Error|Traceback' "$work/demo-check.log" || true
	if n=$(grep -oP '^demo report: \K[0-9]+(?= passed)' "$work/demo-check.log"); then
		passed=$((passed + n))
		failed=$((failed + $(grep -oP '^demo report: [0-9]+ passed, \K[0-9]+' "$work/demo-check.log")))
	else
		tail -n 30 "$work/demo-check.log"
		failed=$((failed + 1))
	fi
else
	tail -n 60 "$work/demo.log"
	failed=$((failed + 1))
fi
FF_DEMO_DIR="$demo_dir" bash "$repo/demo/run.sh" --stop >/dev/null 2>&1

if [ $suite_failed -ne 0 ] && [ $failed -eq 0 ]; then
	failed=1		# a suite failed in a way its summary did not count
fi
echo "test tree kept in $work"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
