#!/bin/bash
# roundtrip.sh - one full round trip through the simulator with the real OpenSSH
# server: tokenize over REST, upload an evaluate batch with the sftp client
# (put as .part, then rename), scan, download the result file over SFTP, advance
# the virtual clock, and check that a verifying webhook receiver got signed
# order.completed / order.expired / order.cancelled events.
# Bounded (timeouts everywhere), cleans up after itself, prints
# "roundtrip: N passed, M failed" and exits non-zero on any failure.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PY="${PYTHON:-python3}"
MID="00000000-0000-4000-8000-000000000001"
pass=0
fail=0
sim_pid=""
rcv_pid=""

work="$(mktemp -d /tmp/ffsim-roundtrip.XXXXXX)"
chmod 755 "$work"

cleanup() {
    [ -n "$sim_pid" ] && kill -TERM "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
    [ -n "$rcv_pid" ] && kill -TERM "$rcv_pid" 2>/dev/null && wait "$rcv_pid" 2>/dev/null
    "$repo/test/sshd/ffsshd" stop "$work/sshd" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
[ -n "${FFSIM_KEEP:-}" ] && trap - EXIT
trap 'exit 1' INT TERM

ok() { pass=$((pass + 1)); echo "ok - $*"; }
bad() { fail=$((fail + 1)); echo "not ok - $*"; }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
finish() {
    echo "roundtrip: $pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    exit $?
}
abort() { bad "$*"; finish; }

wait_file() {  # wait_file PATH SECONDS
    local i=0
    while [ ! -s "$1" ] && [ "$i" -lt $(($2 * 10)) ]; do sleep 0.1; i=$((i + 1)); done
    [ -s "$1" ]
}

json() {  # json EXPR  (reads JSON from stdin as d)
    "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"
}

# --- 1. the SSH server -------------------------------------------------------
FFSSHD_PASSPHRASE="rt-passphrase" "$repo/test/sshd/ffsshd" start "$work/sshd" > "$work/sshd.env" 2> "$work/sshd.err" ||
    { cat "$work/sshd.err"; abort "ffsshd start"; }
# shellcheck disable=SC1091
. "$work/sshd/env"
ok "ffsshd started on port $FFSSHD_PORT"

# --- 2. the webhook receiver and the simulator ----------------------------------
KEY="$("$PY" -c 'import base64,os; print(base64.b64encode(os.urandom(64)).decode())')"
"$PY" "$here/webhook_receiver.py" --key "$KEY" --port 0 --port-file "$work/rcv.port" \
    --out "$work/events.jsonl" > "$work/rcv.log" 2>&1 &
rcv_pid=$!
wait_file "$work/rcv.port" 10 || abort "webhook receiver did not start"
RPORT="$(cat "$work/rcv.port")"

mkdir -p "$work/sftp"
"$PY" "$here/ffsim.py" --listen 127.0.0.1 --port 0 --port-file "$work/sim.port" --mid "$MID" \
    --sftp-root "$work/sftp" --webhook-url "http://127.0.0.1:$RPORT/webhooks/flexfactor" \
    --webhook-key "$KEY" --mit-mode managed --scan-interval 3600 > "$work/sim.log" 2>&1 &
sim_pid=$!
wait_file "$work/sim.port" 10 || { cat "$work/sim.log"; abort "ffsim did not start"; }
PORT="$(cat "$work/sim.port")"
BASE="http://127.0.0.1:$PORT"
check "ffsim printed where it listens" grep -q "^ffsim listening on $BASE\$" "$work/sim.log"

CURL=(curl -sS --max-time 20)

# --- 3. REST: token and tokenize ---------------------------------------------------
TOKEN="$("${CURL[@]}" -X POST -H 'Content-Type: application/json' \
    -d '{"AppKey":"test-app-key","AppSecret":"test-app-secret"}' "$BASE/v1/oauth2/token" | json 'd["accessToken"]')"
[ -n "$TOKEN" ] && ok "got an access token" || abort "no access token"
CARD="$("${CURL[@]}" -X POST -H 'Content-Type: application/json' \
    -d '{"payment_method":{"credit_card":{"first_name":"Jane","last_name":"Roe","number":"4242424242424242","verification_value":"123","month":"03","year":"2030"}}}' \
    "$BASE/v1/tokenize?mid=$MID&environment=test-tok-key" | json 'd["transaction"]["payment_method"]["token"]')"
[ ${#CARD} -eq 36 ] && ok "tokenized a card" || abort "tokenize failed"

# --- 4. the batch file, uploaded with sftp ------------------------------------------
NAME="evaluate_${MID}_test_1.jsonl"
EXPIRY="$("${CURL[@]}" "$BASE/_admin/clock" | json 'd["epoch"]')"
"$PY" - "$CARD" "$MID" "$EXPIRY" > "$work/$NAME" <<'PY'
import datetime, json, sys, uuid
card, mid, now = sys.argv[1], sys.argv[2], float(sys.argv[3])
expiry = datetime.datetime.fromtimestamp(now + 2 * 86400, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
for seq, amount in enumerate([4999, 4914, 4901, 4902], 1):
    print(json.dumps({
        "sequenceNumber": seq, "mid": mid, "isDeclined": True, "isMIT": True, "isRecurring": True,
        "orderId": "RT-%d" % seq, "idempotencyKey": str(uuid.uuid4()), "expiryDateUtc": expiry,
        "transaction": {"id": "gw-%d" % seq, "amount": amount, "currency": "USD",
                        "timestampUtc": "2026-01-15T10:00:00Z", "responseCode": "05",
                        "responseCodeSource": "nmi", "avsResultCode": "Y", "cvvResultCode": "M",
                        "cavvResultCode": "NA"},
        "payer": {"email": "jane@example.com"},
        "billingInformation": {"firstName": "Jane", "lastName": "Roe", "country": "US", "countryCode": "US",
                               "addressLine1": "1 Main St", "city": "Springfield"},
        "subscription": {"subscriptionId": "sub-1", "interval": "monthly", "price": amount, "currency": "USD"},
        "paymentMethod": {"cardNumber": card, "token": True},
    }, separators=(",", ":")))
PY
INBOUND="$work/sftp/$MID/inbound"
OUTBOUND="$work/sftp/$MID/outbound"
SFTP=(timeout 30 sftp -q -b - -i "$FFSSHD_CLIENT_KEY" -o "UserKnownHostsFile=$FFSSHD_KNOWN_HOSTS"
      -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=10 -P "$FFSSHD_PORT"
      "$FFSSHD_USER@127.0.0.1")
printf 'cd %s\nput %s %s.part\nrename %s.part %s\n' "$INBOUND" "$work/$NAME" "$NAME" "$NAME" "$NAME" |
    "${SFTP[@]}" > "$work/sftp-put.log" 2>&1
check "sftp upload (put .part, rename)" test -f "$INBOUND/$NAME"

SCAN="$("${CURL[@]}" -X POST "$BASE/_admin/scan")"
check "scan processed the file" test "$(echo "$SCAN" | json '[p["status"] for p in d["processed"] if p["file"]=="'"$NAME"'"]')" = "['processed']"

RESULT="${NAME%.jsonl}.result.jsonl"
printf 'get %s/%s %s\n' "$OUTBOUND" "$RESULT" "$work/$RESULT" | "${SFTP[@]}" > "$work/sftp-get.log" 2>&1
check "sftp download of the result file" test -s "$work/$RESULT"
STATUSES="$("$PY" -c 'import json,sys; print(" ".join(json.loads(l)["status"] for l in open(sys.argv[1])))' "$work/$RESULT" 2>/dev/null)"
check "result lines in input order with their statuses" test "$STATUSES" = "SUBMITTED SUBMITTED APPROVED DECLINED"
SEQS="$("$PY" -c 'import json,sys; print(" ".join(str(json.loads(l)["sequenceNumber"]) for l in open(sys.argv[1])))' "$work/$RESULT" 2>/dev/null)"
check "result sequence numbers 1..4" test "$SEQS" = "1 2 3 4"
OSK1="$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["orderSessionKey"])' "$work/$RESULT" 2>/dev/null)"

# --- 5. the virtual clock drives the life cycle and the webhooks ------------------
"${CURL[@]}" -X POST -d '{"seconds":61}' "$BASE/_admin/clock/advance" > /dev/null
events() { "$PY" -c 'import json,sys
ev = [json.loads(l) for l in open(sys.argv[1])] if len(sys.argv) > 1 else []
print(" ".join(sorted(e["payload"]["ExternalOrderId"] + ":" + e["payload"]["Event"] for e in ev if e["verified"])))' "$work/events.jsonl" 2>/dev/null; }
check "verified order.completed for RT-1 after 1 virtual minute" \
    bash -c "[[ \"$(events)\" == *RT-1:order.completed* ]]"
check "nothing expired yet" bash -c "[[ \"$(events)\" != *order.expired* ]]"
"${CURL[@]}" -X POST -d '{"seconds":172800}' "$BASE/_admin/clock/advance" > /dev/null
check "all expected verified events received" \
    test "$(events)" = "RT-1:order.completed RT-2:order.expired RT-3:order.completed RT-4:order.cancelled"
STATE="$("${CURL[@]}" -H "Authorization: Bearer $TOKEN" "$BASE/v1/orders/$OSK1" | json 'd["statusName"]')"
check "GET /v1/orders/{id} shows COMPLETED" test "$STATE" = "COMPLETED"
ATT="$("${CURL[@]}" "$BASE/_admin/webhooks" | json 'sorted(set(a["status"] for a in d["attempts"]))')"
check "every delivery answered 200 by the verifying receiver" test "$ATT" = "[200]"
IDEM="$("${CURL[@]}" "$BASE/_admin/idempotency" | json 'len(d["keys"]), d["acceptedMoreThanOnce"]')"
check "every idempotency key accepted exactly once" test "$IDEM" = "4 []"

# --- 6. a tampered signature is refused by the receiver -----------------------------
"${CURL[@]}" -X POST -d '{"wrong_signature":true}' "$BASE/_admin/webhooks/mode" > /dev/null
"${CURL[@]}" -X POST -d "{\"orderId\":\"$OSK1\"}" "$BASE/_admin/webhooks/resend" > "$work/resend.json"
check "receiver answers 401 to a wrong signature" test "$(json 'd["attempt"]["status"]' < "$work/resend.json")" = "401"

# --- 7. ffsshd: pinned host key lines, passphrase key, rekey is refused ----------------
check "known_hosts has the bracketed [127.0.0.1]:port form" \
    grep -qE "^\[127\.0\.0\.1\]:$FFSSHD_PORT ssh-ed25519 AAAA[A-Za-z0-9+/=]+\$" "$FFSSHD_KNOWN_HOSTS"
check "known_hosts_plain has the portless form" \
    grep -qE "^127\.0\.0\.1 ssh-ed25519 AAAA[A-Za-z0-9+/=]+\$" "$FFSSHD_KNOWN_HOSTS_PLAIN"
check "authorized_keys lists both client keys" test "$(wc -l < "$FFSSHD_DIR/authorized_keys")" -eq 2
check "client_key_pp needs its passphrase" bash -c \
    "! ssh-keygen -y -P wrong -f '$FFSSHD_DIR/client_key_pp' >/dev/null 2>&1 && ssh-keygen -y -P rt-passphrase -f '$FFSSHD_DIR/client_key_pp' >/dev/null 2>&1"
"$repo/test/sshd/ffsshd" rekey "$FFSSHD_DIR" > "$work/rekey.env" 2>&1
check "rekey keeps the port" grep -q "^FFSSHD_PORT=$FFSSHD_PORT\$" "$work/rekey.env"
printf 'ls\n' | timeout 30 sftp -b - -i "$FFSSHD_CLIENT_KEY" -o "UserKnownHostsFile=$FFSSHD_KNOWN_HOSTS" \
    -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=10 -P "$FFSSHD_PORT" \
    "$FFSSHD_USER@127.0.0.1" > "$work/sftp-rekey.log" 2>&1
rekey_rc=$?
check "a changed host key is refused by a pinned client" \
    bash -c "[ $rekey_rc -ne 0 ] && grep -q 'Host key verification failed' '$work/sftp-rekey.log'"

# --- 8. clean stop on SIGTERM --------------------------------------------------------
kill -TERM "$sim_pid"
for _ in $(seq 1 100); do kill -0 "$sim_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$sim_pid" 2>/dev/null; then bad "ffsim stops on SIGTERM"; else
    wait "$sim_pid"; rc=$?; sim_pid=""
    check "ffsim stops cleanly on SIGTERM (exit 0)" test "$rc" -eq 0
fi
finish
