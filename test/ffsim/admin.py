# admin.py - the inspection and control API under /_admin (no auth, JSON in and out).
#
# Owns: every /_admin route: health, runtime config, request log, tokens and TTL,
# cards, orders, transmits, batches and idempotency views, scan-now, the virtual
# clock, REST fault rules, batch faults, webhook modes/resend/log, chargebacks, reset.
# Tests assert against what these return; see README.md for the JSON shapes.
import base64
import binascii
import os
import re
import shutil

import common
import engine
import faults
from api import Response, problem_response


def _bool(v):
    return v is True or (isinstance(v, str) and v.lower() in ("1", "true", "yes", "on"))


class Admin:
    def __init__(self, sim):
        self.sim = sim
        self.store = sim.store
        r = re.compile
        self.routes = [
            ("GET", r(r"^/_admin/health$"), self.health),
            ("GET", r(r"^/_admin/config$"), self.get_config),
            ("POST", r(r"^/_admin/config$"), self.set_config),
            ("GET", r(r"^/_admin/requests$"), self.requests),
            ("DELETE", r(r"^/_admin/requests$"), self.clear_requests),
            ("GET", r(r"^/_admin/tokens$"), self.tokens),
            ("POST", r(r"^/_admin/token-ttl$"), self.token_ttl),
            ("POST", r(r"^/_admin/tokens/revoke$"), self.revoke_tokens),
            ("GET", r(r"^/_admin/cards$"), self.cards),
            ("GET", r(r"^/_admin/orders$"), self.orders),
            ("GET", r(r"^/_admin/orders/([^/]+)$"), self.order),
            ("POST", r(r"^/_admin/orders/([^/]+)/chargeback$"), self.chargeback),
            ("POST", r(r"^/_admin/orders/([^/]+)/rescue$"), self.rescue),
            ("GET", r(r"^/_admin/transmits$"), self.transmits),
            ("GET", r(r"^/_admin/batches$"), self.batches),
            ("POST", r(r"^/_admin/batch-faults$"), self.batch_faults),
            ("GET", r(r"^/_admin/idempotency$"), self.idempotency),
            ("POST", r(r"^/_admin/scan$"), self.scan),
            ("GET", r(r"^/_admin/clock$"), self.get_clock),
            ("POST", r(r"^/_admin/clock/advance$"), self.advance),
            ("GET", r(r"^/_admin/faults$"), self.get_faults),
            ("POST", r(r"^/_admin/faults$"), self.add_fault),
            ("DELETE", r(r"^/_admin/faults$"), self.clear_faults),
            ("GET", r(r"^/_admin/webhooks$"), self.webhooks),
            ("DELETE", r(r"^/_admin/webhooks$"), self.clear_webhooks),
            ("GET", r(r"^/_admin/webhooks/mode$"), self.get_webhook_mode),
            ("POST", r(r"^/_admin/webhooks/mode$"), self.set_webhook_mode),
            ("POST", r(r"^/_admin/webhooks/resend$"), self.resend),
            ("POST", r(r"^/_admin/webhooks/payout$"), self.payout),
            ("POST", r(r"^/_admin/reset$"), self.reset),
        ]

    def handle(self, method, path, query, body):
        if len(path) > 1:
            path = path.rstrip("/")
        allowed = []
        for m, rx, fn in self.routes:
            mt = rx.match(path)
            if not mt:
                continue
            if m != method:
                allowed.append(m)
                continue
            obj = {}
            if body:
                try:
                    obj = common.loads(body)
                except (ValueError, UnicodeDecodeError) as e:
                    return self.bad("body is not valid JSON: %s" % e)
            try:
                return fn(query, obj, *mt.groups())
            except (ValueError, TypeError, KeyError) as e:
                return self.bad(str(e))
        if allowed:
            return problem_response(405, headers=[("Allow", ", ".join(sorted(set(allowed))))])
        return problem_response(404, detail="No such admin endpoint: %s %s" % (method, path))

    @staticmethod
    def ok(obj):
        return Response(200, obj)

    @staticmethod
    def bad(msg):
        return Response(400, {"error": msg})

    # ------------------------------------------------------------- general
    def health(self, q, b):
        st = self.store
        with st.lock:
            counts = {"orders": len(st.orders), "requests": len(st.requests),
                      "tokens": st.tokens_issued, "batches": len(st.batches),
                      "events": len(st.events), "pendingDeliveries": len(st.deliveries)}
        return self.ok({"ok": True, "listening": self.sim.url, "mid": st.config.mid,
                        "mitMode": st.config.mit_mode, "clock": self.sim.clock.describe(),
                        "counts": counts, "pid": os.getpid()})

    def get_config(self, q, b):
        return self.ok(self.store.config.public())

    def set_config(self, q, b):
        cfg = self.store.config
        mapping = {"mitMode": "mit_mode", "errorShape": "error_shape", "strict": "strict",
                   "acceptUnknownTokens": "accept_unknown_tokens", "webhookUrl": "webhook_url",
                   "webhookKey": "webhook_key", "asyncDelaySeconds": "async_delay",
                   "captureWindowSeconds": "capture_window", "webhookTimeoutSeconds": "webhook_timeout",
                   "tokenTtlSeconds": "token_ttl", "refundAnswer": "refund_answer",
                   "outcomes": "outcomes", "outcomeSeed": "outcome_seed",
                   "tokenExpires": "token_expires"}
        unknown = [k for k in b if k not in mapping]
        if unknown:
            return self.bad("unknown config keys: %s" % ", ".join(unknown))
        if "mitMode" in b and b["mitMode"] not in ("sync", "managed"):
            return self.bad("mitMode must be sync or managed")
        if "outcomes" in b and b["outcomes"] not in ("amount", "decline-code"):
            return self.bad("outcomes must be amount or decline-code")
        if "errorShape" in b and b["errorShape"] not in common.ERROR_SHAPES:
            return self.bad("errorShape must be one of %s" % ", ".join(common.ERROR_SHAPES))
        if "refundAnswer" in b and b["refundAnswer"] not in engine.REFUND_ANSWERS:
            return self.bad("refundAnswer must be one of %s" % ", ".join(engine.REFUND_ANSWERS))
        if "webhookKey" in b:
            try:
                base64.b64decode(b["webhookKey"], validate=True)
            except (binascii.Error, TypeError):
                return self.bad("webhookKey must be base64")
        with self.store.lock:
            for k, v in b.items():
                attr = mapping[k]
                if attr in ("strict", "accept_unknown_tokens"):
                    v = _bool(v)
                elif attr in ("async_delay", "capture_window", "webhook_timeout"):
                    v = float(v)
                elif attr in ("token_ttl", "outcome_seed"):
                    v = int(v)
                elif attr in ("webhook_url", "token_expires"):
                    v = str(v) if v else None
                setattr(cfg, attr, v)
        return self.ok(cfg.public())

    # -------------------------------------------------------------- request log
    def requests(self, q, b):
        path = (q.get("path") or [None])[0]
        prefix = (q.get("path_prefix") or [None])[0]
        method = (q.get("method") or [None])[0]
        since = int((q.get("since") or ["0"])[0])
        limit = int((q.get("limit") or ["0"])[0])
        with self.store.lock:
            items = [dict(r) for r in self.store.requests
                     if (path is None or r["path"] == path)
                     and (prefix is None or r["path"].startswith(prefix))
                     and (method is None or r["method"] == method.upper())
                     and r["seq"] > since]
        if limit > 0:
            items = items[-limit:]
        return self.ok(items)

    def clear_requests(self, q, b):
        with self.store.lock:
            n = len(self.store.requests)
            self.store.requests.clear()
        return self.ok({"cleared": n})

    # ------------------------------------------------------------------ tokens
    def tokens(self, q, b):
        with self.store.lock:
            items = [dict(t) for t in self.store.token_log]
            return self.ok({"count": self.store.tokens_issued, "ttlSeconds": self.store.config.token_ttl,
                            "tokens": items})

    def token_ttl(self, q, b):
        secs = int(b.get("seconds"))
        if secs < 1:
            return self.bad("seconds must be >= 1")
        with self.store.lock:
            self.store.config.token_ttl = secs
        return self.ok({"ttlSeconds": secs})

    def revoke_tokens(self, q, b):
        with self.store.lock:
            n = 0
            for t in self.store.tokens.values():
                if not t["revoked"]:
                    t["revoked"] = True
                    n += 1
        return self.ok({"revoked": n})

    def cards(self, q, b):
        with self.store.lock:
            items = [{"token": k, "last4": c["number"][-4:], "bin": c["number"][:6],
                      "month": c["month"], "year": c["year"]} for k, c in self.store.cards.items()]
        return self.ok({"count": len(items), "cards": items})

    # ------------------------------------------------------------------ orders
    def orders(self, q, b):
        ext = (q.get("externalOrderId") or q.get("orderId") or [None])[0]
        state = (q.get("state") or [None])[0]
        with self.store.lock:
            items = [self._order_json(o) for o in self.store.orders.values()
                     if (ext is None or o["externalOrderId"] == ext)
                     and (state is None or o["state"] == state.upper())]
        return self.ok({"count": len(items), "orders": items})

    def _order_json(self, o):
        d = {k: v for k, v in o.items() if k != "createdVts"}
        d["history"] = list(o["history"])
        d["refunds"] = list(o["refunds"])
        d["outcomeStatus"] = self.sim.engine.outcome_status(o)
        d["statusName"] = self.sim.engine.view(o)["statusName"]
        return d

    def order(self, q, b, osk):
        with self.store.lock:
            o = self.store.orders.get(osk)
            if o is None:
                return problem_response(404, "Not Found", "no order %s" % osk)
            return self.ok(self._order_json(o))

    def chargeback(self, q, b, osk):
        with self.store.lock:
            o = self.store.orders.get(osk)
        if o is None:
            return problem_response(404, "Not Found", "no order %s" % osk)
        amount = int(b.get("amount", o["amount"]))
        reason = str(b.get("reasonCode", "10.4"))
        ev = self.sim.webhooks.emit(o, "payment.chargeback.received", {"amount": amount, "reasonCode": reason},
                                    confirmation_id=None)
        return self.ok({"event": dict(ev)})

    def rescue(self, q, b, osk):
        """Sync MIT: a DECLINED MIT order is rescued in the background; the next
        /evaluate of its orderId answers APPROVED. {"notify": false} sends no
        order.completed (the merchant learns it from /evaluate alone)."""
        with self.store.lock:
            o = self.store.orders.get(osk)
        if o is None:
            return problem_response(404, "Not Found", "no order %s" % osk)
        why = self.sim.engine.rescue_sync(o, notify=_bool(b.get("notify", True)))
        if why is not None:
            return problem_response(409, "Conflict", why)
        with self.store.lock:
            return self.ok(self._order_json(o))

    def transmits(self, q, b):
        with self.store.lock:
            items = list(self.store.transmits.values())
        return self.ok({"count": len(items), "transmits": items})

    # ----------------------------------------------------------------- batches
    def batches(self, q, b):
        name = (q.get("file") or [None])[0]
        with self.store.lock:
            items = [dict(r) for r in self.store.batches if name is None or r["file"] == name]
            lines = sum(r["lineCount"] for r in items if r["status"] != "duplicate")
        return self.ok({"count": len(items), "linesReceived": lines, "batches": items})

    def batch_faults(self, q, b):
        n = int(b.get("reject_next", 0))
        if n < 0:
            return self.bad("reject_next must be >= 0")
        with self.store.lock:
            self.store.batch_reject_next = n
        return self.ok({"reject_next": n})

    def idempotency(self, q, b):
        kind = (q.get("kind") or [None])[0]
        with self.store.lock:
            items = []
            for ent in self.store.idem.values():
                if kind and ent["kind"] != kind:
                    continue
                items.append({k: ent[k] for k in ("mid", "key", "kind", "seen", "accepted", "replayed",
                                                  "conflicts", "rejected", "inProgressHits", "sources",
                                                  "created", "result")})
        dup = [e["key"] for e in items if e["accepted"] > 1]
        return self.ok({"count": len(items), "acceptedMoreThanOnce": dup, "keys": items})

    def scan(self, q, b):
        return self.ok({"processed": self.sim.batches.scan()})

    # ------------------------------------------------------------------- clock
    def get_clock(self, q, b):
        d = self.sim.clock.describe()
        d["nextTransition"] = self.sim.engine.next_transition_due()
        d["nextDelivery"] = self.sim.webhooks.next_due()
        return self.ok(d)

    def advance(self, q, b):
        secs = float(b.get("seconds", 0))
        if secs < 0:
            return self.bad("seconds must be >= 0")
        result = self.sim.advance(secs)
        result["clock"] = self.sim.clock.describe()
        return self.ok(result)

    # ------------------------------------------------------------------ faults
    def get_faults(self, q, b):
        with self.store.lock:
            return self.ok({"faults": [dict(f) for f in self.store.faults],
                            "batchRejectNext": self.store.batch_reject_next})

    def add_fault(self, q, b):
        specs = b if isinstance(b, list) else [b]
        added = []
        try:
            for spec in specs:
                added.append(faults.make_rule(spec, self.store.next_seq()))
        except faults.FaultError as e:
            return self.bad(str(e))
        with self.store.lock:
            self.store.faults.extend(added)
            return self.ok({"added": added, "faults": [dict(f) for f in self.store.faults]})

    def clear_faults(self, q, b):
        with self.store.lock:
            n = len(self.store.faults)
            self.store.faults = []
            self.store.batch_reject_next = 0
        return self.ok({"cleared": n})

    # ---------------------------------------------------------------- webhooks
    def webhooks(self, q, b):
        order_id = (q.get("orderId") or [None])[0]
        event = (q.get("event") or [None])[0]
        with self.store.lock:
            attempts = [dict(a) for a in self.store.attempts
                        if (order_id is None or a["orderId"] == order_id)
                        and (event is None or a["event"] == event)]
            events = [dict(e) for e in self.store.events.values()
                      if (order_id is None or e["orderId"] == order_id)
                      and (event is None or e["event"] == event)]
            pending = len(self.store.deliveries)
        return self.ok({"count": len(attempts), "attempts": attempts, "events": events,
                        "pendingDeliveries": pending, "mode": dict(self.store.webhook_mode)})

    def clear_webhooks(self, q, b):
        with self.store.lock:
            self.store.attempts.clear()
        return self.ok({"cleared": True})

    def get_webhook_mode(self, q, b):
        with self.store.lock:
            return self.ok(dict(self.store.webhook_mode))

    def set_webhook_mode(self, q, b):
        known = ("duplicate", "reorder", "delay_seconds", "wrong_signature", "stale_date")
        unknown = [k for k in b if k not in known]
        if unknown:
            return self.bad("unknown webhook mode keys: %s" % ", ".join(unknown))
        mode = {"duplicate": _bool(b.get("duplicate", False)), "reorder": _bool(b.get("reorder", False)),
                "delay_seconds": float(b.get("delay_seconds", 0) or 0),
                "wrong_signature": _bool(b.get("wrong_signature", False)),
                "stale_date": _bool(b.get("stale_date", False))}
        if mode["delay_seconds"] < 0:
            return self.bad("delay_seconds must be >= 0")
        with self.store.lock:
            self.store.webhook_mode = mode
        return self.ok(mode)

    def resend(self, q, b):
        order_id = b.get("orderId")
        if not order_id:
            return self.bad("orderId is required")
        with self.sim.tick_lock:
            att = self.sim.webhooks.resend(order_id, b.get("event"))
        if att is None:
            return problem_response(404, "Not Found", "no webhook event for order %s" % order_id)
        if "error" in att and att.get("attemptId") is None:
            return self.bad(att["error"])
        return self.ok({"attempt": att})

    def payout(self, q, b):
        """A signed payout.created / payout.updated delivery: an event without an
        order (OrderId and ExternalOrderId null, or left out with omitOrderId)."""
        event = b.get("event", "payout.created")
        if event not in ("payout.created", "payout.updated"):
            return self.bad("event must be payout.created or payout.updated")
        data = {"payoutId": b.get("payoutId") or common.new_guid(),
                "amount": common.loads(engine.dollars(int(b.get("amount", 125000)))),
                "currency": str(b.get("currency", "USD")),
                "status": str(b.get("status", "pending" if event == "payout.created" else "completed"))}
        ev = self.sim.webhooks.emit_unbound(event, data, omit_order_fields=_bool(b.get("omitOrderId", False)))
        return self.ok({"event": dict(ev)})

    # ------------------------------------------------------------------- reset
    def reset(self, q, b):
        with self.sim.tick_lock, self.sim.batches.lock:
            self.store.reset()
            self.sim.clock.reset()
            cleaned = []
            if _bool(b.get("files", False)):
                f = self.sim.batches.folders()
                if f:
                    for d in f[:2]:
                        for name in os.listdir(d):
                            p = os.path.join(d, name)
                            if os.path.isfile(p):
                                os.unlink(p)
                                cleaned.append(p)
                    shutil.rmtree(f[2], ignore_errors=True)
                    self.sim.batches.ensure_folders()
        return self.ok({"reset": True, "filesRemoved": len(cleaned)})
