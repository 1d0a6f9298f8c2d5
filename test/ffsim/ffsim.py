#!/usr/bin/env python3
# ffsim.py - entry point of the local FlexFactor sandbox simulator.
#
# Owns: the command line, start-up (folders, port file written atomically, the
# "ffsim listening on http://HOST:PORT" line) and clean shutdown on SIGTERM/SIGINT.
# Everything else lives in the modules next to this file (see README.md).
# Python 3 standard library only; works with Debian 12's /usr/bin/python3 (3.11).
import argparse
import base64
import binascii
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sim as simmod  # noqa: E402
import store  # noqa: E402


def parse_args(argv=None):
    d = store.Config()
    p = argparse.ArgumentParser(
        prog="ffsim.py", description="Local FlexFactor sandbox simulator (REST, SFTP batches, webhooks).")
    p.add_argument("--listen", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default 0)")
    p.add_argument("--port-file", help="write the chosen port here (atomically)")
    p.add_argument("--mid", default=d.mid, help="merchant id (default %(default)s)")
    p.add_argument("--app-key", default=d.app_key, help="AppKey accepted by /v1/oauth2/token")
    p.add_argument("--app-secret", default=d.app_secret, help="AppSecret accepted by /v1/oauth2/token")
    p.add_argument("--tokenization-key", default=d.tokenization_key,
                   help="the `environment` query value /v1/tokenize accepts")
    p.add_argument("--sftp-root", help="folder the SFTP server exposes; <root>/<mid>/inbound and outbound")
    p.add_argument("--webhook-url", help="where webhooks are POSTed (none: events are only recorded)")
    p.add_argument("--webhook-key", default=d.webhook_key,
                   help="base64 subscriber key for the HMAC-SHA512 signatures (default: the public test-vector key)")
    p.add_argument("--mit-mode", choices=("managed", "sync"), default=d.mit_mode)
    p.add_argument("--outcomes", choices=("amount", "decline-code"), default=d.outcomes,
                   help="how MIT outcomes are decided: amount (the sandbox's rules, default) or "
                        "decline-code (by the decline code, seeded per order; see README)")
    p.add_argument("--outcome-seed", type=int, default=d.outcome_seed,
                   help="seed of the per-order draw of --outcomes decline-code (default %(default)s)")
    p.add_argument("--error-shape", choices=("flat", "wrapped", "problem"), default=d.error_shape,
                   help="validation errors: flat (the recorded map, default), wrapped (the recorded "
                        "2024 {\"status\":\"400\",\"errors\":...} form) or problem (ProblemDetails)")
    p.add_argument("--lenient", dest="strict", action="store_false", default=d.strict,
                   help="EXPERIMENTS ONLY: require just the newest minimum fields instead of what "
                        "the real service enforces (the default)")
    p.add_argument("--strict", dest="strict_flag", action="store_true",
                   help="accepted for compatibility: strict is the default (no effect)")
    p.add_argument("--scan-interval", type=float, default=d.scan_interval,
                   help="seconds between inbound folder scans (default %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--accept-unknown-tokens", dest="accept_unknown", action="store_true", default=True,
                   help="treat card tokens not issued here as test cards (default)")
    g.add_argument("--reject-unknown-tokens", dest="accept_unknown", action="store_false",
                   help="reject card tokens that /v1/tokenize did not issue")
    p.add_argument("--clock", choices=("frozen", "realtime"), default=d.clock_mode,
                   help="virtual clock: frozen (moves only via /_admin/clock/advance) or realtime")
    p.add_argument("--async-delay", type=float, default=d.async_delay,
                   help="virtual seconds until an async order completes/cancels (default 60)")
    p.add_argument("--capture-window-minutes", type=float, default=d.capture_window / 60,
                   help="virtual minutes before an uncaptured order is voided (default 1440)")
    p.add_argument("--webhook-timeout", type=float, default=d.webhook_timeout,
                   help="seconds a receiver has to answer 2xx (default 10)")
    p.add_argument("--token-ttl", type=int, default=d.token_ttl, help="access token life in seconds (default 600)")
    p.add_argument("--log-cap", type=int, default=d.log_cap, help="entries kept per log (default 100000)")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    a = p.parse_args(argv)
    try:
        base64.b64decode(a.webhook_key, validate=True)
    except (binascii.Error, ValueError):
        p.error("--webhook-key must be base64")
    if a.sftp_root:
        a.sftp_root = os.path.abspath(a.sftp_root)
    return a


def config_from_args(a):
    return store.Config(
        mid=a.mid, app_key=a.app_key, app_secret=a.app_secret, tokenization_key=a.tokenization_key,
        sftp_root=a.sftp_root, webhook_url=a.webhook_url, webhook_key=a.webhook_key,
        mit_mode=a.mit_mode, error_shape=a.error_shape, strict=a.strict,
        accept_unknown_tokens=a.accept_unknown, async_delay=a.async_delay,
        capture_window=a.capture_window_minutes * 60, webhook_timeout=a.webhook_timeout,
        token_ttl=a.token_ttl, scan_interval=a.scan_interval, clock_mode=a.clock, log_cap=a.log_cap,
        outcomes=a.outcomes, outcome_seed=a.outcome_seed)


def write_port_file(path, port):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.replace(tmp, path)


def main(argv=None):
    a = parse_args(argv)
    s = simmod.Simulator(config_from_args(a), host=a.listen, port=a.port, verbose=a.verbose)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        s.start()
    except OSError as e:
        print("ffsim: cannot listen on %s:%d: %s" % (a.listen, a.port, e), file=sys.stderr)
        return 2
    if a.port_file:
        write_port_file(a.port_file, s.port)
    print("ffsim listening on %s" % s.url, flush=True)
    f = s.batches.folders()
    if f:
        print("ffsim sftp inbound %s outbound %s" % (f[0], f[1]), flush=True)
    print("ffsim mid %s mit-mode %s outcomes %s webhooks %s" % (a.mid, a.mit_mode, a.outcomes,
                                                               a.webhook_url or "(none)"), flush=True)
    if not a.strict:
        print("ffsim LENIENT validation (--lenient): for experiments only, the real service "
              "refuses bodies this accepts", flush=True)
    while not stop.wait(0.5):
        pass
    s.stop()
    if a.port_file:
        try:
            os.unlink(a.port_file)
        except OSError:
            pass
    print("ffsim stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
