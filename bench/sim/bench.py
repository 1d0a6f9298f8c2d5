#!/usr/bin/env python3
# bench.py - requests/second of the FlexFactor simulator on loopback.
#
# Starts ffsim (port 0, throwaway SFTP root), then runs P client processes x T
# threads, each thread on its own keep-alive http.client connection, for a bounded
# time and request count. The default mix is the extension's hot path:
# 70% POST /v1/evaluate (fresh idempotency key, a decline that becomes an order),
# 20% GET /v1/orders/{id}, 10% POST /v1/transmit. Prints requests/second and
# latency percentiles; --min-rps makes it exit 1 below a floor.
#
#   python3 bench/sim/bench.py [--seconds 10] [--procs 3] [--threads 4] [--mix evaluate|get|mixed]
import argparse
import http.client
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
FFSIM = os.path.join(HERE, "..", "..", "test", "ffsim", "ffsim.py")
MID = "00000000-0000-4000-8000-000000000001"


def post_json(conn, path, body, token=None):
    h = {"Content-Type": "application/json"}
    if token:
        h["Authorization"] = "Bearer " + token
    conn.request("POST", path, body=json.dumps(body), headers=h)
    r = conn.getresponse()
    return r.status, r.read()


# Complete bodies, by the real service's rules (flexfactor-api.md 12a), which the
# simulator enforces: the five transaction codes, payer, billing address, and for a
# managed MIT recurring decline isRecurring, subscription and expiryDateUtc.
CODES = {"avsResultCode": "NA", "cvvResultCode": "NA", "cavvResultCode": "NA"}


def iso_utc(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def evaluate_body(card):
    amount = random.choice([1001, 1002, 4999, 4913])
    return {
        "isDeclined": True, "isMIT": True, "isRecurring": True, "mid": MID,
        "orderId": "B-" + uuid.uuid4().hex[:12], "idempotencyKey": str(uuid.uuid4()),
        "expiryDateUtc": iso_utc(time.time() + 14 * 86400),
        "transaction": dict(CODES, id="gw-1", amount=amount, currency="USD",
                            timestampUtc="2026-01-15T10:00:00Z", responseCode="05",
                            responseCodeSource="nmi"),
        "payer": {"email": "jane@example.com"},
        "billingInformation": {"firstName": "Jane", "lastName": "Roe", "country": "US",
                               "countryCode": "US", "addressLine1": "1 Main St",
                               "city": "Springfield", "state": "IL", "zipCode": "62701"},
        "paymentMethod": {"cardNumber": card, "token": True},
        "subscription": {"subscriptionId": "sub-9", "interval": "monthly", "price": amount,
                         "currency": "USD"},
    }


def transmit_body():
    return {"isDeclined": False, "isMIT": False, "mid": MID, "orderId": "T-" + uuid.uuid4().hex[:12],
            "transaction": dict(CODES, id="gw-2", amount=2500, currency="USD",
                                timestampUtc="2026-01-15T10:00:00Z", responseCode="00",
                                responseCodeSource="nmi"),
            "payer": {"email": "jane@example.com"},
            "paymentMethod": {"holderName": "Jane Roe", "cardType": "CREDIT", "cardBrand": "VISA",
                              "cardCountry": "US", "expirationMonth": 3, "expirationYear": 2030,
                              "cardBinNumber": "424242", "cardLast4Digits": "4242"}}


def worker_thread(port, token, card, osks, mix, deadline, max_requests, out):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat, errors, n = [], 0, 0
    auth = {"Authorization": "Bearer " + token}
    while time.perf_counter() < deadline and n < max_requests:
        r = random.random()
        t0 = time.perf_counter()
        try:
            if mix == "get" or (mix == "mixed" and 0.7 <= r < 0.9):
                conn.request("GET", "/v1/orders/" + random.choice(osks), headers=auth)
                resp = conn.getresponse()
                status = resp.status
                resp.read()
            elif mix == "mixed" and r >= 0.9:
                status, _ = post_json(conn, "/v1/transmit", transmit_body(), token)
            else:
                status, _ = post_json(conn, "/v1/evaluate", evaluate_body(card), token)
        except (OSError, http.client.HTTPException):
            status = None
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        lat.append(time.perf_counter() - t0)
        n += 1
        if status != 200:
            errors += 1
    conn.close()
    out.append((n, errors, lat))


def client_process(port, token, card, osks, mix, threads, seconds, max_requests, q):
    random.seed(os.getpid())
    results = []
    start = time.perf_counter()
    deadline = start + seconds
    ts = [threading.Thread(target=worker_thread,
                           args=(port, token, card, osks, mix, deadline, max_requests // threads, results))
          for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    n = sum(r[0] for r in results)
    e = sum(r[1] for r in results)
    lat = [x for r in results for x in r[2]]
    q.put((n, e, elapsed, lat))


def pct(sorted_lat, p):
    if not sorted_lat:
        return 0.0
    return sorted_lat[min(len(sorted_lat) - 1, int(p / 100.0 * len(sorted_lat)))] * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--max-requests", type=int, default=200000, help="upper bound on requests in total")
    ap.add_argument("--mix", choices=("mixed", "evaluate", "get"), default="mixed")
    ap.add_argument("--min-rps", type=float, default=0.0)
    ap.add_argument("--port", type=int, help="use an already running simulator on this port")
    a = ap.parse_args()
    a.seconds = min(a.seconds, 120.0)

    tmp = tempfile.mkdtemp(prefix="ffsim-bench-")
    proc = None
    try:
        port = a.port
        if port is None:
            pf = os.path.join(tmp, "port")
            proc = subprocess.Popen([sys.executable, FFSIM, "--port", "0", "--port-file", pf,
                                     "--sftp-root", os.path.join(tmp, "sftp"), "--scan-interval", "1",
                                     "--log-cap", "20000"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.time() + 10
            while not os.path.exists(pf) and time.time() < deadline:
                time.sleep(0.02)
            with open(pf) as f:
                port = int(f.read())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        st, body = post_json(conn, "/v1/oauth2/token", {"AppKey": "test-app-key", "AppSecret": "test-app-secret"})
        token = json.loads(body)["accessToken"]
        st, body = post_json(conn, "/v1/tokenize?mid=%s&environment=test-tok-key" % MID,
                             {"payment_method": {"credit_card": {
                                 "first_name": "J", "last_name": "R", "number": "4242424242424242",
                                 "month": "03", "year": "2030"}}})
        card = json.loads(body)["transaction"]["payment_method"]["token"]
        osks = []
        for _ in range(50):
            b = evaluate_body(card)
            st, body = post_json(conn, "/v1/evaluate", b, token)
            osks.append(json.loads(body)["orderSessionKey"])
        conn.close()

        q = multiprocessing.Queue()
        ps = [multiprocessing.Process(target=client_process,
                                      args=(port, token, card, osks, a.mix, a.threads, a.seconds,
                                            a.max_requests // a.procs, q))
              for _ in range(a.procs)]
        for p in ps:
            p.start()
        res = [q.get(timeout=a.seconds + 120) for _ in ps]
        for p in ps:
            p.join(timeout=30)
        n = sum(r[0] for r in res)
        errors = sum(r[1] for r in res)
        elapsed = max(r[2] for r in res)
        lat = sorted(x for r in res for x in r[3])
        rps = n / elapsed if elapsed else 0.0
        print("bench: mix=%s clients=%dx%d keep-alive, %d requests in %.2f s = %.0f req/s; "
              "latency p50 %.2f ms, p95 %.2f ms, p99 %.2f ms; non-200: %d"
              % (a.mix, a.procs, a.threads, n, elapsed, rps, pct(lat, 50), pct(lat, 95), pct(lat, 99), errors))
        if errors or rps < a.min_rps:
            return 1
        return 0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
