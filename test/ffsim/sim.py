# sim.py - wires the simulator together and runs its threads.
#
# Owns: the Simulator object (config, store, clock, engine, webhooks, batches, API,
# admin, HTTP server), its background threads (HTTP server, clock ticker that
# applies due transitions and delivers due webhooks, inbound folder scanner),
# advance() for POST /_admin/clock/advance, and clean start/stop. Tests can run it
# in-process: Simulator(Config(...)).start() ... .stop().
import os
import sys
import threading
import time

import admin
import api
import batches
import clock
import engine
import httpserver
import store
import webhooks


class Simulator:
    def __init__(self, config, host="127.0.0.1", port=0, verbose=False):
        self.config = config
        self.host = host
        self.port = port
        self.verbose = verbose
        self.store = store.Store(config)
        self.clock = clock.VirtualClock(config.clock_mode)
        self.webhooks = webhooks.Webhooks(self.store, self.clock)
        self.engine = engine.Engine(self.store, self.clock, self.webhooks)
        self.batches = batches.Batches(self.store, self.clock, self.engine)
        self.api = api.Api(self)
        self.admin = admin.Admin(self)
        self.tick_lock = threading.RLock()
        self.stop_event = threading.Event()
        self.server = None
        self.threads = []
        self.url = None

    # ------------------------------------------------------------ lifecycle
    def start(self):
        self.batches.ensure_folders()
        self.server = httpserver.Server((self.host, self.port), self)
        self.port = self.server.server_address[1]
        self.url = "http://%s:%d" % (self.host, self.port)
        self._spawn("ffsim-http", self.server.serve_forever, 0.2)
        self._spawn("ffsim-ticker", self._ticker)
        self._spawn("ffsim-scanner", self._scanner)
        return self

    def _spawn(self, name, fn, *args):
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self):
        self.stop_event.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        for t in self.threads:
            t.join(timeout=15)

    # ------------------------------------------------------------- threads
    def _ticker(self):
        while not self.stop_event.wait(0.05):
            try:
                # In reorder mode deliveries wait for the next clock/advance call, which
                # sends everything queued at once in reverse order (deterministic tests).
                with self.store.lock:
                    deliver = not self.store.webhook_mode.get("reorder")
                if self._something_due(self.clock.now(), deliver):
                    with self.tick_lock:
                        self.run_due(self.clock.now(), deliver)
            except Exception as e:  # noqa: BLE001 - keep ticking
                print("ffsim: ticker error: %s: %s" % (type(e).__name__, e), file=sys.stderr)

    def _scanner(self):
        while not self.stop_event.wait(max(0.02, float(self.config.scan_interval))):
            try:
                if self.config.sftp_root:
                    self.batches.scan()
            except Exception as e:  # noqa: BLE001 - keep scanning
                print("ffsim: scanner error: %s: %s" % (type(e).__name__, e), file=sys.stderr)

    # ---------------------------------------------------------- time control
    def _something_due(self, now, deliver=True):
        a = self.engine.next_transition_due()
        b = self.webhooks.next_due() if deliver else None
        return (a is not None and a <= now) or (b is not None and b <= now)

    def run_due(self, now, deliver=True):
        """Apply transitions and deliver webhooks due at or before now (tick lock held)."""
        transitions, sent = [], 0
        for _ in range(100000):
            t = self.engine.apply_due(now)
            s = self.webhooks.deliver_due(now) if deliver else 0
            transitions += t
            sent += s
            if not t and not s:
                break
        return transitions, sent

    def advance(self, seconds):
        """Advance the virtual clock, firing everything that falls due on the way,
        in time order, from the calling thread. Returns what happened."""
        transitions, sent = [], 0
        with self.tick_lock:
            target = self.clock.now() + seconds
            for _ in range(1000000):
                dues = [d for d in (self.engine.next_transition_due(), self.webhooks.next_due())
                        if d is not None]
                nxt = min(dues) if dues else None
                if nxt is None or nxt > target:
                    break
                now = self.clock.set_at_least(nxt)
                t, s = self.run_due(now)
                transitions += t
                sent += s
            now = self.clock.set_at_least(target)
            t, s = self.run_due(now)
            transitions += t
            sent += s
        return {"advancedBy": seconds, "transitions": transitions, "deliveries": sent}


def wait_for_port_file(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().strip()
            if text.isdigit():
                return int(text)
        time.sleep(0.02)
    raise TimeoutError("no port file %s" % path)
