# webhooks.py - signed webhook delivery (flexfactor-api.md sections 7.3-7.5).
#
# Owns: the PascalCase payload, the event queue, delivery over HTTP(S) with the x-fc-*
# headers of section 7.4, the retry schedule on the virtual clock (1 min, 5 min,
# 30 min, 2 h, 6 h, 24 h; IsResent:true with a fresh nonce/date/signature each
# time), the misbehaviour modes (duplicate, reorder, delay, wrong signature, stale
# date), manual resend, and the delivery-attempt log for /_admin/webhooks.
# Deliveries are made by whoever holds the simulator's tick lock (the background
# ticker, or POST /_admin/clock/advance), never while holding the store lock.
import base64
import hashlib
import heapq
import http.client
import os
import ssl
import time
import urllib.parse

import clock
import common
import signing

RETRY_DELAYS = [60, 300, 1800, 7200, 21600, 86400]
STALE_SECONDS = 600
USER_AGENT = "FlexFactor-Webhooks/1.0 (ffsim)"


def payload_bytes(event, timestamp, event_data, external_order_id, order_id,
                  confirmation_id, is_test_mode, is_resent, omit=()):
    """Compact JSON, keys in the order of section 7.3; keys named in omit are left out."""
    return common.dumpb({k: v for k, v in (
        ("Event", event),
        ("TimeStamp", timestamp),
        ("EventData", event_data),
        ("ExternalOrderId", external_order_id),
        ("OrderId", order_id),
        ("ConfirmationId", confirmation_id),
        ("IsTestMode", is_test_mode),
        ("IsResent", is_resent),
    ) if k not in omit})


def confirmation_id_unbound():
    return os.urandom(4).hex().upper()


def wrong_key(key_b64):
    return base64.b64encode(hashlib.sha512(b"ffsim-wrong-key:" + key_b64.encode()).digest()).decode()


class Webhooks:
    def __init__(self, store, vclock):
        self.store = store
        self.clock = vclock

    # -- queueing (called with or without the store lock) -------------------
    def emit(self, order, event, event_data=None, confirmation_id=None, omit=()):
        st = self.store
        with st.lock:
            now = self.clock.now()
            seq = st.next_seq()
            ev = {
                "eventId": "evt-%d" % seq,
                "seq": seq,
                "event": event,
                "orderId": order["id"],
                "externalOrderId": order["externalOrderId"],
                "confirmationId": confirmation_id or order["confirmationId"],
                "eventData": event_data,
                "timeStamp": clock.iso(now),
                "createdAt": clock.iso(now),
                "status": "pending",
                "attempts": 0,
                "omit": list(omit),
            }
            st.events[ev["eventId"]] = ev
            while len(st.events) > st.config.log_cap:
                st.events.popitem(last=False)
            if not st.config.webhook_url:
                ev["status"] = "no-target"
                return ev
            mode = st.webhook_mode
            due = now + float(mode.get("delay_seconds") or 0)
            self._push(ev, due, 1, False, False)
            if mode.get("duplicate"):
                self._push(ev, due, 1, False, True)
            return ev

    def emit_unbound(self, event, event_data, omit_order_fields=False):
        """An event that concerns no order (payout.created, payout.updated; section
        7.2): OrderId and ExternalOrderId are null, or absent with omit_order_fields.
        Signed and retried like every other event."""
        order = {"id": None, "externalOrderId": None, "confirmationId": None}
        return self.emit(order, event, event_data, confirmation_id=confirmation_id_unbound(),
                         omit=("ExternalOrderId", "OrderId") if omit_order_fields else ())

    def _push(self, ev, due, attempt, is_resent, duplicate):
        st = self.store
        seq = st.next_seq()
        d = {"deliveryId": "dlv-%d" % seq, "eventId": ev["eventId"], "attempt": attempt,
             "isResent": is_resent, "duplicate": duplicate}
        heapq.heappush(st.deliveries, (due, seq, d))

    def next_due(self):
        with self.store.lock:
            return self.store.deliveries[0][0] if self.store.deliveries else None

    def pending_count(self):
        with self.store.lock:
            return len(self.store.deliveries)

    # -- delivery (caller holds the tick lock) ------------------------------
    def deliver_due(self, now):
        """Send every delivery due at or before now. Returns the number sent."""
        st = self.store
        batch = []
        with st.lock:
            while st.deliveries and st.deliveries[0][0] <= now:
                batch.append(heapq.heappop(st.deliveries)[2])
            mode = dict(st.webhook_mode)
        if mode.get("reorder") and len(batch) > 1:
            batch.reverse()
            for d in batch:
                d["reordered"] = True
        for d in batch:
            with st.lock:
                ev = st.events.get(d["eventId"])
            if ev is None:
                continue
            att = self._send(ev, d["attempt"], d["isResent"], mode,
                             duplicate=d.get("duplicate", False), reordered=d.get("reordered", False),
                             delivery_id=d["deliveryId"])
            with st.lock:
                ok = att["status"] is not None and 200 <= att["status"] < 300
                if ok:
                    ev["status"] = "delivered"
                elif d["attempt"] - 1 < len(RETRY_DELAYS):
                    due = self.clock.now() + RETRY_DELAYS[d["attempt"] - 1]
                    self._push(ev, due, d["attempt"] + 1, True, d.get("duplicate", False))
                    if ev["status"] != "delivered":
                        ev["status"] = "retrying"
                elif ev["status"] != "delivered":
                    ev["status"] = "failed"
        return len(batch)

    def resend(self, order_id, event=None):
        """Deliver the latest event of an order again now, with IsResent:true."""
        st = self.store
        with st.lock:
            evs = [e for e in st.events.values()
                   if e["orderId"] == order_id and (event is None or e["event"] == event)]
            if not evs:
                return None
            ev = evs[-1]
            if not st.config.webhook_url:
                return {"error": "no webhook URL configured"}
            mode = dict(st.webhook_mode)
            attempt = ev["attempts"] + 1
        att = self._send(ev, attempt, True, mode, manual=True)
        with st.lock:
            if att["status"] is not None and 200 <= att["status"] < 300:
                ev["status"] = "delivered"
        return att

    def _send(self, ev, attempt, is_resent, mode, duplicate=False, reordered=False,
              manual=False, delivery_id=None):
        st = self.store
        with st.lock:
            url = st.config.webhook_url
            key = st.config.webhook_key
            timeout = float(st.config.webhook_timeout)
            ev["attempts"] += 1
            seq = st.next_seq()
        body = payload_bytes(ev["event"], ev["timeStamp"], ev["eventData"], ev["externalOrderId"],
                             ev["orderId"], ev["confirmationId"], True, is_resent, ev.get("omit", ()))
        u = urllib.parse.urlsplit(url)
        host = u.netloc
        path = (u.path or "/") + ("?" + u.query if u.query else "")
        nonce = os.urandom(16).hex()
        real = time.time()
        date = clock.rfc1123(real - STALE_SECONDS if mode.get("stale_date") else real)
        sign_key = wrong_key(key) if mode.get("wrong_signature") else key
        headers = {"Host": host, "Content-Type": "text/plain; charset=utf-8",
                   "Content-Length": str(len(body)), "User-Agent": USER_AGENT}
        headers.update(signing.sign(sign_key, nonce, date, host, body))
        att = {
            "attemptId": "att-%d" % seq, "deliveryId": delivery_id, "eventId": ev["eventId"],
            "event": ev["event"], "orderId": ev["orderId"], "externalOrderId": ev["externalOrderId"],
            "attempt": attempt, "isResent": is_resent, "duplicate": duplicate,
            "reordered": reordered, "manual": manual,
            "wrongSignature": bool(mode.get("wrong_signature")),
            "staleDate": bool(mode.get("stale_date")),
            "url": url, "headers": headers, "body": body.decode("utf-8"),
            "virtualTime": clock.iso(self.clock.now()), "realTime": real,
            "status": None, "error": None, "responseBody": None, "durationMs": None,
        }
        t0 = time.monotonic()
        conn = None
        try:
            if u.scheme == "https":
                conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout,
                                                   context=ssl._create_unverified_context())
            else:
                conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
            conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read(65536)
            att["status"] = resp.status
            att["responseBody"] = data[:2000].decode("utf-8", "replace")
        except Exception as e:  # noqa: BLE001 - every failure is just a failed attempt
            att["error"] = "%s: %s" % (type(e).__name__, e)
        finally:
            if conn is not None:
                conn.close()
        att["durationMs"] = round((time.monotonic() - t0) * 1000, 1)
        with st.lock:
            st.attempts.append(att)
        return att
