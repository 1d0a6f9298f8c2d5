#!/usr/bin/env python3
# webhook_receiver.py - a small webhook receiver that verifies FlexFactor signatures.
#
# Owns: verifying x-fc-content-sha512, the x-fc-authorization Signature and
# x-fc-signature (flexfactor-api.md 7.4) against the raw body with the subscriber
# key, the 5-minute x-fc-date freshness rule (SIMULATOR ASSUMPTION of 7.4), and
# recording deliveries. Answers 200 when verified, 401 otherwise (or a scripted
# status, for tests). Verified events are appended to a JSON Lines file.
#
#   python3 webhook_receiver.py --key BASE64 [--port 0] [--port-file F] --out events.jsonl
# Also importable: Receiver(key).start() for in-process tests.
import argparse
import email.utils
import http.server
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import signing  # noqa: E402

MAX_SKEW = 300


class Receiver:
    def __init__(self, key, host="127.0.0.1", port=0, out=None, check_date=True):
        self.key = key
        self.out = out
        self.check_date = check_date
        self.lock = threading.Lock()
        self.received = []      # every request: dict(headers, body, verified, reason, status)
        self.script = []        # statuses to answer next (overrides verification answer)
        self.delay = 0.0        # seconds to wait before answering
        rcv = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                status, text = rcv.handle(dict((k.lower(), v) for k, v in self.headers.items()), body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer((host, port), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://%s:%d/webhooks/flexfactor" % (host, self.port)
        self.thread = None

    def handle(self, headers, body):
        ok, reason = signing.verify(self.key, headers, headers.get("host", ""), body)
        if ok and self.check_date:
            try:
                ts = email.utils.parsedate_to_datetime(headers.get("x-fc-date", "")).timestamp()
                if abs(time.time() - ts) > MAX_SKEW:
                    ok, reason = False, "stale x-fc-date"
            except (TypeError, ValueError):
                ok, reason = False, "bad x-fc-date"
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
            ok, reason = False, "body is not JSON"
        with self.lock:
            delay = self.delay
            status = self.script.pop(0) if self.script else (200 if ok else 401)
            rec = {"headers": headers, "body": body.decode("utf-8", "replace"), "payload": payload,
                   "verified": ok, "reason": reason, "status": status, "ts": time.time()}
            self.received.append(rec)
            if ok and self.out:
                with open(self.out, "a") as f:
                    f.write(json.dumps({"verified": True, "status": status, "payload": payload}) + "\n")
        if delay:
            time.sleep(delay)
        return status, reason

    def verified(self, event=None):
        with self.lock:
            return [r for r in self.received if r["verified"]
                    and (event is None or (r["payload"] or {}).get("Event") == event)]

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def main():
    p = argparse.ArgumentParser(description="verifying FlexFactor webhook receiver")
    p.add_argument("--key", required=True, help="base64 subscriber key")
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--out", required=True, help="JSON Lines file for verified events")
    p.add_argument("--no-date-check", action="store_true")
    a = p.parse_args()
    r = Receiver(a.key, a.listen, a.port, a.out, not a.no_date_check).start()
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % r.port)
        os.replace(tmp, a.port_file)
    print("webhook receiver listening on %s" % r.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    while not stop.wait(0.5):
        pass
    r.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
