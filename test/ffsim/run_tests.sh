#!/bin/bash
# run_tests.sh - the simulator's test command: the unittest suites, then the
# OpenSSH round trip (roundtrip.sh) when /usr/sbin/sshd exists.
# Run from anywhere; exits non-zero on any failure.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
cd "$repo" || exit 2
rc=0
timeout 900 "$py" -m unittest discover -s test/ffsim -p 'test_*.py' -v || rc=1
if [ -x /usr/sbin/sshd ] && [ "${FFSIM_SKIP_ROUNDTRIP:-0}" != 1 ]; then
    timeout 300 bash "$here/roundtrip.sh" || rc=1
else
    echo "roundtrip: skipped (no /usr/sbin/sshd or FFSIM_SKIP_ROUNDTRIP=1)"
fi
exit $rc
