#!/bin/bash
# run_tests.sh - the simulator's test command: the unittest suites, then the
# OpenSSH round trip (roundtrip.sh) when /usr/sbin/sshd exists. Prints unittest's
# normal summary, the round trip's, and a combined closing line
# "ffsim: N passed, M failed". Run from anywhere; exits non-zero on any failure.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
cd "$repo" || exit 2
log="$(mktemp /tmp/ffsim-tests.XXXXXX)"
trap 'rm -f "$log"' EXIT
rc=0
timeout 900 "$py" -m unittest discover -s test/ffsim -p 'test_*.py' -v 2>&1 | tee "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
ran="$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\} in.*/\1/p' "$log" | tail -n 1)"
bad=0
for n in $(sed -n 's/^FAILED (\(.*\))$/\1/p' "$log" | tail -n 1 | tr ',' '\n' | sed -n 's/.*=\([0-9]*\)/\1/p'); do
    bad=$((bad + n))
done
ran="${ran:-0}"
[ "$rc" -ne 0 ] && [ "$bad" -eq 0 ] && bad=1
passed=$((ran - bad)); [ "$passed" -lt 0 ] && passed=0
failed="$bad"
if [ -x /usr/sbin/sshd ] && [ "${FFSIM_SKIP_ROUNDTRIP:-0}" != 1 ]; then
    timeout 300 bash "$here/roundtrip.sh" 2>&1 | tee "$log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
    rp="$(sed -n 's/^roundtrip: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$log" | tail -n 1)"
    if [ -n "$rp" ]; then
        passed=$((passed + ${rp% *})); failed=$((failed + ${rp#* }))
    else
        failed=$((failed + 1))
    fi
else
    echo "roundtrip: skipped (no /usr/sbin/sshd or FFSIM_SKIP_ROUNDTRIP=1)"
fi
[ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
echo "ffsim: $passed passed, $failed failed"
exit $rc
