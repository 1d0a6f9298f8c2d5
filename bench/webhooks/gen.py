#!/usr/bin/env python3
"""gen.py - precompute signed FlexFactor webhook deliveries for bench/webhooks.

Writes <out>/deliveries.<t>.tsv for t = 0..threads-1: the events are split in
contiguous slices, one line per delivery:
    nonce TAB x-fc-date TAB x-fc-content-sha512 TAB x-fc-authorization TAB x-fc-signature TAB body
Each delivery is order.completed for a distinct order B-<i> (i = 1..events)
whose orderSessionKey is md5('bench-<i>') read as a UUID, exactly what
run.sh stores in flexfactor.orders; each has its own nonce and the current
date, signed for the Host header "127.0.0.1:<port>" with the scheme of
flexfactor-api.md section 7.4.  Python standard library only.
"""
import argparse
import base64
import email.utils
import hashlib
import hmac
import json
import os
import time


def order_key(i):
    h = hashlib.md5(("bench-%d" % i).encode()).hexdigest()
    return "%s-%s-%s-%s-%s" % (h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True, help="base64 subscriber key")
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--first", type=int, default=1, help="number of the first order (B-<first>)")
    p.add_argument("--copy", action="store_true",
                   help="write <out>/deliveries.copy instead: id TAB headers jsonb TAB body, for COPY")
    a = p.parse_args()

    key = base64.b64decode(a.key)
    host = "127.0.0.1:%d" % a.port
    date = email.utils.formatdate(time.time(), usegmt=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    per = [a.events // a.threads + (1 if t < a.events % a.threads else 0) for t in range(a.threads)]
    if a.copy:
        per = [a.events]
    i = a.first - 1
    for t in range(len(per)):
        name = "deliveries.copy" if a.copy else "deliveries.%d.tsv" % t
        with open(os.path.join(a.out, name), "w", encoding="ascii") as f:
            for _ in range(per[t]):
                i += 1
                body = json.dumps({
                    "Event": "order.completed", "TimeStamp": stamp, "EventData": None,
                    "ExternalOrderId": "B-%d" % i, "OrderId": order_key(i),
                    "ConfirmationId": "%08X" % i, "IsTestMode": True, "IsResent": False,
                }, separators=(",", ":")).encode()
                nonce = os.urandom(16).hex()
                content = base64.b64encode(hashlib.sha512(body).digest()).decode()
                to_sign = ("POST\n%s;%s;%s;%s" % (nonce, date, host, content)).encode()
                auth = base64.b64encode(hmac.new(key, to_sign, hashlib.sha512).digest()).decode()
                sig = base64.b64encode(hmac.new(key, body, hashlib.sha512).digest()).decode()
                auth = ("HMAC-SHA512 SignedHeaders=x-fc-nonce;x-fc-date;host;x-fc-content-sha512"
                        "&Signature=" + auth)
                if a.copy:
                    headers = json.dumps({"host": host, "x-fc-nonce": nonce, "x-fc-date": date,
                                          "x-fc-content-sha512": content, "x-fc-authorization": auth,
                                          "x-fc-signature": sig}, separators=(",", ":"))
                    # COPY text format: backslashes doubled (JSON has none here but be exact)
                    row = [str(i - a.first + 1), headers, body.decode()]
                    f.write("\t".join(v.replace("\\", "\\\\") for v in row) + "\n")
                else:
                    f.write("\t".join([nonce, date, content, auth, sig, body.decode()]) + "\n")
    print(i - a.first + 1)


if __name__ == "__main__":
    main()
