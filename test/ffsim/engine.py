# engine.py - the business core shared by the REST API and the SFTP batches.
#
# Owns: card vaulting, the idempotency store (24 h replay, 409 on a different body
# or while in progress; flexfactor-api.md 4.3.6), evaluate/transmit processing, the
# order model and its state machine (section 6), scheduled transitions on the
# virtual clock (managed MIT life cycle, section 8), refund/cancel/capture rules
# (sections 4.7-4.9), the order views of GET /orders, and which webhook each state
# change emits. Transport-neutral: returns Outcome objects that api.py turns into
# HTTP answers and batches.py into result lines.
import heapq
import os
import re
import time

import clock
import common
import outcomes
import validation

IDEM_WINDOW = 24 * 3600
# refundAnswer (per merchant): current = success with responseMessage "APPROVED"
# (the sandbox since 2025-02); declined2024 = the same successful refund answered
# with responseMessage "DECLINED" (2024-04..2025-02); refusedNNN = every refund
# refused with the recorded 2001 body, served with HTTP NNN (200 or 4xx).
REFUND_ANSWERS = ("current", "declined2024", "refused200", "refused400", "refused409", "refused422")
REFUND_REFUSED = re.compile(r"^refused(\d{3})$")
PENDING_STATES = ("PROCESSING", "CAPTUREREQUIRED")
STATE_ENUM = {  # internal state -> (order status int, statusName) of section 4.5
    "PROCESSING": (4, "PROCESSING"),
    "CAPTUREREQUIRED": (5, "CAPTUREREQUIRED"),
    "COMPLETED": (7, "COMPLETED"),
    "DECLINED": (2, "CANCELLED"),
    "CANCELLED": (2, "CANCELLED"),
    "EXPIRED": (2, "CANCELLED"),
    "RETURNED": (6, "RETURNED"),
}
STATUS_NAMES = {"0": "DRAFT", "1": "ONHOLD", "2": "CANCELLED", "3": "PROBLEM", "4": "PROCESSING",
                "5": "CAPTUREREQUIRED", "6": "RETURNED", "7": "COMPLETED"}
STATE_EVENTS = {"COMPLETED": "order.completed", "DECLINED": "order.cancelled",
                "CANCELLED": "order.cancelled", "EXPIRED": "order.expired",
                "CAPTUREREQUIRED": "order.capturerequired"}
CURRENCY_SYMBOLS = {"USD": "$", "EUR": "\u20ac", "GBP": "\u00a3", "CAD": "$", "AUD": "$"}


class Outcome:
    """kind: ok | replay | invalid | forbidden | notfound | conflict | inflight | failed"""

    def __init__(self, kind, http_status=200, body=None, errors=None, title=None, detail=None,
                 result=None):
        self.kind = kind
        self.http_status = http_status
        self.body = body          # bytes (exact answer) or dict
        self.errors = errors      # validation errors dict
        self.title = title
        self.detail = detail
        self.result = result      # dict for batch lines: orderSessionKey/transmitId, status


def confirmation_id():
    return os.urandom(4).hex().upper()


class Engine:
    def __init__(self, store, vclock, webhooks):
        self.store = store
        self.clock = vclock
        self.webhooks = webhooks

    # ------------------------------------------------------------------ cards
    def vault(self, card):
        token = common.new_guid()
        with self.store.lock:
            self.store.cards[token] = card
        return token

    def resolve_card(self, n, batch):
        """Returns (pan_or_None, errors). pan None means an accepted unknown token."""
        pm = n.get("paymentmethod") or {}
        number = pm.get("cardnumber")
        is_token = pm.get("token") is True
        cfg = self.store.config
        if is_token or batch:
            with self.store.lock:
                card = self.store.cards.get(number)
            if card is None:
                if cfg.accept_unknown_tokens:
                    return None, {}
                return None, {"paymentMethod.cardNumber": ["Unknown card token: it was not issued by /tokenize."]}
            pan = card["number"]
        else:
            pan = number.replace(" ", "")
            if not validation.luhn_ok(pan):
                return None, {"paymentMethod.cardNumber": ["The card number is invalid."]}
        if not outcomes.card_allowed(pan):
            return None, {"paymentMethod.cardNumber": ["card not whitelisted in sandbox"]}
        return pan, {}

    # ------------------------------------------------------------ idempotency
    def _idem_entry(self, mid, key, kind):
        st = self.store
        ent = st.idem.get((mid, key))
        if ent is None:
            ent = {"mid": mid, "key": key, "kind": kind, "hash": None, "state": None,
                   "seen": 0, "accepted": 0, "replayed": 0, "conflicts": 0, "rejected": 0,
                   "inProgressHits": 0, "sources": [], "created": None, "createdVts": None,
                   "response": None, "result": None}
            st.idem[(mid, key)] = ent
        return ent

    def idem_note_rejected(self, mid, key, kind, source):
        if not isinstance(key, str) or not key:
            return
        with self.store.lock:
            ent = self._idem_entry(mid, key, kind)
            ent["seen"] += 1
            ent["rejected"] += 1
            if len(ent["sources"]) < 20:
                ent["sources"].append(source)

    def idem_begin(self, mid, key, kind, h, source):
        """Returns (verdict, entry); verdict in new | replay | conflict | inflight."""
        now = self.clock.now()
        with self.store.lock:
            ent = self._idem_entry(mid, key, kind)
            ent["seen"] += 1
            if len(ent["sources"]) < 20:
                ent["sources"].append(source)
            fresh = ent["state"] is None or (ent["state"] == "done" and now - ent["createdVts"] > IDEM_WINDOW)
            if fresh:
                ent.update(state="inflight", hash=h, createdVts=now, created=clock.iso(now),
                           kind=kind, response=None, result=None)
                return "new", ent
            if ent["hash"] != h:
                ent["conflicts"] += 1
                return "conflict", ent
            if ent["state"] == "inflight":
                ent["inProgressHits"] += 1
                return "inflight", ent
            ent["replayed"] += 1
            return "replay", ent

    def idem_finish(self, ent, response, result):
        with self.store.lock:
            ent["state"] = "done"
            ent["accepted"] += 1
            ent["response"] = response
            ent["result"] = result

    def idem_abort(self, ent):
        with self.store.lock:
            ent["state"] = None
            ent["rejected"] += 1

    def _idem_outcome(self, verdict, ent):
        if verdict == "conflict":
            return Outcome("conflict", 409, title="Idempotency key reuse",
                           detail="The idempotency key was already used with a different request body.")
        if verdict == "inflight":
            return Outcome("inflight", 409, title="Request in progress",
                           detail="A request with this idempotency key is still being processed.")
        status, body = ent["response"]
        return Outcome("replay", status, body=body, result=ent["result"])

    # --------------------------------------------------------------- evaluate
    def evaluate(self, raw, token_mid, source, batch=False, hang_point=None, position=None):
        """raw: parsed request body (original casing). token_mid: the caller's MID
        (bearer token claim, or the batch folder's MID). position: a batch line's
        1-based line number (its sequenceNumber must equal it)."""
        n = common.norm(raw)
        cfg = self.store.config
        if not isinstance(n, dict):
            return Outcome("invalid", 400, errors={"$": ["The request body must be a JSON object."]})
        body_mid = n.get("mid")
        key = n.get("idempotencykey")
        if isinstance(body_mid, str) and body_mid.strip() and body_mid != token_mid:
            return Outcome("forbidden", 403, title="Forbidden",
                           detail="The mid does not belong to this merchant.")
        now = self.clock.now()
        errors, expiry = validation.validate_evaluate(
            n, cfg.strict, cfg.mit_mode == "managed", now, time.time(), batch=batch, position=position)
        pan = None
        if not errors:
            pan, cerr = self.resolve_card(n, batch)
            errors.update(cerr)
        if errors:
            self.idem_note_rejected(token_mid, key, "evaluate", source)
            return Outcome("invalid", 400, errors=errors)
        h = common.canonical_hash(raw, drop=("sequencenumber",))
        verdict, ent = self.idem_begin(token_mid, key, "evaluate", h, source)
        if verdict != "new":
            return self._idem_outcome(verdict, ent)
        try:
            if hang_point:
                hang_point()
            osk, status = self._evaluate_new(n, token_mid, pan, expiry, source, batch)
        except Exception:
            self.idem_abort(ent)
            raise
        body = common.dumpb(common.envelope(
            orderSessionKey=osk, senseKey=n.get("sensekey"), orderId=osk, result="Success",
            status=status))
        result = {"orderSessionKey": osk, "status": status}
        self.idem_finish(ent, (200, body), result)
        return Outcome("ok", 200, body=body, result=result)

    def _evaluate_new(self, n, mid, pan, expiry, source, batch):
        st = self.store
        cfg = st.config
        ext = n.get("orderid")
        is_mit = n.get("ismit") is True or batch
        with st.lock:
            if is_mit:
                existing = [st.orders[i] for i in st.orders_by_ext.get((mid, ext), [])
                            if i in st.orders and st.orders[i]["isMIT"]]
                if existing:
                    # Sync-MIT retry semantics: a new key for a known MIT orderId
                    # returns the existing order's current state.
                    o = existing[-1]
                    o["evaluateCalls"] += 1
                    return o["id"], self.current_status(o)
            now = self.clock.now()
            txn = n.get("transaction") or {}
            auth = str(n.get("transactiontype") or "").upper() == "AUTHORIZATION"
            if cfg.outcomes == "decline-code" and is_mit and not auth:
                d = outcomes.decide_by_code(txn.get("responsecode"),
                                            outcomes.draw(cfg.outcome_seed, mid, ext),
                                            cfg.mit_mode == "managed", expiry, now,
                                            async_delay=float(cfg.async_delay))
            else:
                d = outcomes.decide(pan, txn.get("amount"), is_mit, auth, cfg.mit_mode, expiry, now,
                                    async_delay=float(cfg.async_delay),
                                    capture_window=float(cfg.capture_window))
            osk = common.new_guid()
            bill = n.get("billinginformation") or {}
            payer = n.get("payer") or {}
            pm = n.get("paymentmethod") or {}
            o = {
                "id": osk, "mid": mid, "externalOrderId": ext,
                "idempotencyKey": n.get("idempotencykey"), "source": source,
                "isMIT": is_mit, "isRecurring": n.get("isrecurring") is True,
                "transactionType": "AUTHORIZATION" if auth else "PURCHASE",
                "amount": txn.get("amount"), "currency": str(txn.get("currency") or "").upper(),
                "evaluateStatus": d.status, "state": d.state, "rule": d.rule,
                "declineCode": txn.get("responsecode"),
                "finalState": d.final, "finalDue": clock.iso(d.final_due) if d.final_due else None,
                "expiryDate": clock.iso(expiry) if expiry else None,
                "createdAt": clock.iso(now), "createdVts": now, "updatedAt": clock.iso(now),
                "confirmationId": confirmation_id(),
                "capturedAmount": txn.get("amount") if d.state == "COMPLETED" else 0,
                "refundedAmount": 0, "refunds": [],
                "cardToken": pm.get("cardnumber") if (pm.get("token") is True or batch) else None,
                "cardLast4": pan[-4:] if pan else None,
                "knownCard": pan is not None,
                "correlationId": n.get("correlationid"),
                "email": payer.get("email"), "phone": payer.get("phone"),
                "firstName": bill.get("firstname"), "lastName": bill.get("lastname"),
                "billingAddress": n.get("billinginformation"),
                "shippingAddress": n.get("shippinginformation"),
                "evaluateCalls": 1,
                "history": [{"at": clock.iso(now), "state": d.state, "reason": "evaluate:" + d.status}],
            }
            st.orders[osk] = o
            st.orders_by_ext.setdefault((mid, ext), []).append(osk)
            if d.final:
                heapq.heappush(st.transitions, (d.final_due, st.next_seq(), osk, d.final))
            ev = STATE_EVENTS.get(d.state)
        if ev:
            self.webhooks.emit(o, ev)
        return osk, d.status

    @staticmethod
    def current_status(o):
        """The status a repeated /evaluate (same MIT orderId) reports."""
        s = o["state"]
        if s == "PROCESSING":
            return o["evaluateStatus"]
        return {"COMPLETED": "APPROVED", "RETURNED": "APPROVED"}.get(s, s)

    @staticmethod
    def outcome_status(o):
        s = o["state"]
        if s == "PROCESSING":
            return "SUBMITTED" if o["isMIT"] else "PROCESSING"
        if s == "CAPTUREREQUIRED":
            return "PROCESSING"
        return {"COMPLETED": "APPROVED", "RETURNED": "APPROVED"}.get(s, s)

    # --------------------------------------------------------------- transmit
    def transmit(self, raw, token_mid, source, batch=False, position=None):
        n = common.norm(raw)
        cfg = self.store.config
        if not isinstance(n, dict):
            return Outcome("invalid", 400, errors={"$": ["The request body must be a JSON object."]})
        body_mid = n.get("mid")
        if isinstance(body_mid, str) and body_mid.strip() and body_mid != token_mid:
            return Outcome("forbidden", 403, title="Forbidden",
                           detail="The mid does not belong to this merchant.")
        errors = validation.validate_transmit(n, cfg.strict, batch=batch, position=position)
        key = n.get("idempotencykey")
        if errors:
            self.idem_note_rejected(token_mid, key, "transmit", source)
            return Outcome("invalid", 400, errors=errors)
        ent = None
        if isinstance(key, str) and key:
            verdict, ent = self.idem_begin(token_mid, key, "transmit",
                                           common.canonical_hash(raw, drop=("sequencenumber",)), source)
            if verdict != "new":
                return self._idem_outcome(verdict, ent)
        tid = common.new_guid()
        now = self.clock.now()
        txn = n.get("transaction") or {}
        with self.store.lock:
            self.store.transmits[tid] = {
                "transmitId": tid, "mid": token_mid, "orderId": n.get("orderid"),
                "amount": txn.get("amount"), "currency": txn.get("currency"),
                "isDeclined": n.get("isdeclined"), "source": source, "receivedAt": clock.iso(now),
                "body": raw,
            }
            while len(self.store.transmits) > self.store.config.log_cap:
                self.store.transmits.popitem(last=False)
        body = common.dumpb(common.envelope(transmitId=tid, result="success", status=0))
        result = {"transmitId": tid, "status": "SUCCESS"}
        if ent is not None:
            self.idem_finish(ent, (200, body), result)
        return Outcome("ok", 200, body=body, result=result)

    # ------------------------------------------------------------ transitions
    def next_transition_due(self):
        with self.store.lock:
            return self.store.transitions[0][0] if self.store.transitions else None

    def apply_due(self, now):
        """Apply every scheduled transition due at or before now; returns them."""
        done = []
        st = self.store
        while True:
            with st.lock:
                if not st.transitions or st.transitions[0][0] > now:
                    break
                due, _, osk, target = heapq.heappop(st.transitions)
                o = st.orders.get(osk)
                if o is None or o["state"] not in PENDING_STATES:
                    continue
                self._set_state(o, target, "scheduled")
                if target == "COMPLETED":
                    o["capturedAmount"] = o["amount"]
                done.append({"orderId": osk, "state": target, "due": clock.iso(due)})
            ev = STATE_EVENTS.get(target)
            if ev:
                self.webhooks.emit(o, ev)
        return done

    def rescue_sync(self, o, notify=True):
        """Sync (unmanaged) MIT, flexfactor-api.md 4.3.4 and 12a: FlexFactor keeps
        working after answering DECLINED, and the next /evaluate of the same
        orderId reports the rescue. Moves a DECLINED MIT order to COMPLETED (a
        later /evaluate answers APPROVED); with notify, sends order.completed.
        Returns None, or why the order cannot be rescued."""
        with self.store.lock:
            if not o["isMIT"] or o["state"] != "DECLINED":
                return "only a DECLINED MIT order can be rescued later (this one is %s%s)" % (
                    "MIT " if o["isMIT"] else "CIT ", o["state"])
            o["capturedAmount"] = o["amount"]
            self._set_state(o, "COMPLETED", "sync-mit rescue")
        if notify:
            self.webhooks.emit(o, "order.completed")
        return None

    def _set_state(self, o, state, reason):
        now = self.clock.now()
        o["state"] = state
        o["updatedAt"] = clock.iso(now)
        o["history"].append({"at": clock.iso(now), "state": state, "reason": reason})

    # ---------------------------------------------------------- order access
    def find(self, mid, osk):
        with self.store.lock:
            o = self.store.orders.get(osk)
            return o if o is not None and o["mid"] == mid else None

    def find_external(self, mid, ext):
        with self.store.lock:
            ids = self.store.orders_by_ext.get((mid, ext), [])
            orders = [self.store.orders[i] for i in ids if i in self.store.orders]
            return orders[-1] if orders else None

    # camelCase names of the address fields (the order keeps the request's
    # lower-cased object; answers use the documented casing).
    ADDRESS_KEYS = {k.lower(): k for k in (
        "firstName", "lastName", "country", "countryCode", "addressLine1", "addressLine2", "state",
        "city", "zipCode", "phone", "email")}

    @classmethod
    def _address(cls, a):
        if not isinstance(a, dict):
            return a
        return {cls.ADDRESS_KEYS.get(k, k): v for k, v in a.items()}

    def view(self, o):
        """GET /v1/orders/{id}: the documented fields of section 4.5 only (no invented
        status flags: an expired order is status 2 CANCELLED with its expiryDate
        passed, section 12a), plus the order's amounts in cents (`amount`,
        `refundedAmount`), which the docs' cut-off table announces but does not name."""
        num, name = STATE_ENUM[o["state"]]
        # An order without expiryDateUtc that expires does so at its default deadline.
        expiry = o["expiryDate"] or (o["finalDue"] if o["finalState"] == "EXPIRED" else None)
        return {
            "id": o["id"], "correlationId": o["correlationId"], "referenceNumber": o["externalOrderId"],
            "status": num, "statusName": name, "orderPlacedDate": o["createdAt"],
            "expiryDate": expiry, "billingAddress": self._address(o["billingAddress"]),
            "shippingAddress": self._address(o["shippingAddress"]), "firstName": o["firstName"],
            "lastName": o["lastName"], "email": o["email"], "phone": o["phone"],
            "secondaryEmail": None, "currencyCode": o["currency"],
            "currencySymbol": CURRENCY_SYMBOLS.get(o["currency"], ""),
            "amount": o["amount"], "refundedAmount": o["refundedAmount"],
        }

    def list_orders(self, mid, q):
        """GET /v1/orders with the documented filters; q: dict of lists (lower-case keys)."""
        def first(name, default=None):
            v = q.get(name)
            return v[0] if v else default
        statuses = set()
        for v in q.get("status", []):
            for part in v.split(","):
                if part.strip().lstrip("-").isdigit():
                    statuses.add(int(part))
        text = (first("query") or "").lower()
        t_from = clock.parse_iso(first("from")) if first("from") else None
        t_to = clock.parse_iso(first("to")) if first("to") else None
        qmid = first("mid")
        with self.store.lock:
            items = [o for o in self.store.orders.values() if o["mid"] == mid]
            items = [o for o in items if not qmid or o["mid"] == qmid]
            if statuses:
                items = [o for o in items if STATE_ENUM[o["state"]][0] in statuses]
            if text:
                items = [o for o in items if text in (o["id"] + " " + str(o["externalOrderId"]) + " "
                                                      + str(o["email"])).lower()]
            if t_from is not None:
                items = [o for o in items if o["createdVts"] >= t_from]
            if t_to is not None:
                items = [o for o in items if o["createdVts"] <= t_to]
            order_by = (first("orderby") or "createdOn").lower()
            desc = (first("sort") or "desc").lower() == "desc"
            keyf = (lambda o: o["amount"]) if order_by == "amount" else (lambda o: o["createdVts"])
            items.sort(key=keyf, reverse=desc)
            views = [self.view(o) for o in items]
        try:
            size = max(1, min(1000, int(first("pagesize", "10"))))
        except ValueError:
            size = 10
        try:
            page = max(1, int(first("pagenumber", "1")))
        except ValueError:
            page = 1
        total = len(views)
        pages = (total + size - 1) // size
        chunk = views[(page - 1) * size: page * size]
        first_item = (page - 1) * size + 1 if chunk else 0
        return {
            "firstItemOnPage": first_item, "hasNextPage": page < pages, "hasPreviousPage": page > 1,
            "isFirstPage": page == 1, "isLastPage": page >= pages,
            "lastItemOnPage": first_item + len(chunk) - 1 if chunk else 0,
            "pageCount": pages, "pageNumber": page, "pageSize": size,
            "totalItemCount": total, "items": chunk, "statuses": STATUS_NAMES,
        }

    # ---------------------------------------------------- refund/cancel/capture
    def _optional_idem(self, mid, n, raw, kind, source):
        key = n.get("idempotencykey")
        if not isinstance(key, str) or not key:
            return None, None
        verdict, ent = self.idem_begin(mid, key, kind, common.canonical_hash(raw), source)
        if verdict != "new":
            return ent, self._idem_outcome(verdict, ent)
        return ent, None

    def refund(self, mid, osk, raw, source):
        n = common.norm(raw) if raw is not None else {}
        if not isinstance(n, dict):
            return Outcome("invalid", 400, errors={"$": ["The request body must be a JSON object."]})
        o = self.find(mid, osk)
        if o is None:
            return Outcome("notfound", 404, title="Not Found", detail="Order %s was not found." % osk)
        if "amounttorefund" not in n or n.get("amounttorefund") is None:
            return Outcome("invalid", 400, errors={"amountToRefund": ["The AmountToRefund field is required."]})
        cents = validation.parse_dollars(n.get("amounttorefund"))
        if cents is None:
            return Outcome("invalid", 400, errors={"amountToRefund": [
                "The field AmountToRefund must be a decimal number of dollars with at most 2 decimals."]})
        if cents <= 0:
            return Outcome("invalid", 400, errors={"amountToRefund": [
                "The field AmountToRefund must be greater than 0."]})
        ent, early = self._optional_idem(mid, n, raw, "refund", source)
        if early:
            return early
        h = common.canonical_hash(raw)
        now = self.clock.now()
        emit = None
        mode = self.store.config.refund_answer
        http_status = 200
        with self.store.lock:
            prev = self.store.refund_dedupe.get(osk)
            if ent is None and prev and prev[0] == h and now - prev[2] <= IDEM_WINDOW:
                # No key: identical repeated refund calls are de-duplicated per order.
                return Outcome("replay", 200, body=prev[1])
            refundable = o["state"] in ("COMPLETED", "RETURNED")
            left = (o["capturedAmount"] or 0) - o["refundedAmount"] if refundable else 0
            forced = REFUND_REFUSED.match(mode)
            if cents > left or forced:
                # the recorded refusal (REFUND_2001_FIXTURE); a forced one says
                # what a merchant whose refunds are not enabled was told
                msg = "Amount to refund (%s) is greater than maximum refund amount in (%s))" % (
                    dollars(cents), dollars(max(left, 0) if not forced else 0))
                body = common.dumpb(common.envelope(
                    responseCode="2001", responseMessage=msg, transactionId=None, success=False,
                    status="FAILED", errors=[common.error_tuple(msg, "2001")]))
                kind = "failed"
                if forced:
                    http_status = int(forced.group(1))
            else:
                tid = common.new_guid()
                o["refundedAmount"] += cents
                o["refunds"].append({"at": clock.iso(now), "amount": cents, "transactionId": tid,
                                     "message": n.get("refundmessage")})
                self._set_state(o, "RETURNED", "refund")
                # since 2025-02 the sandbox says "APPROVED"; from 2024-04 it said
                # "DECLINED" for the same successful refund (flexfactor-api.md 12a)
                body = common.dumpb(common.envelope(
                    status="SUCCESS", responseCode=None,
                    responseMessage="DECLINED" if mode == "declined2024" else "APPROVED",
                    transactionId=tid))
                emit = {"amount": common.loads(dollars(cents)), "refundTransactionId": tid}
                kind = "ok"
                # only a refund that happened is de-duplicated: a refused call is
                # decided again when repeated
                self.store.refund_dedupe[osk] = (h, body, now)
        if ent is not None:
            if kind == "ok" or http_status == 200:
                self.idem_finish(ent, (http_status, body), {"status": "SUCCESS" if kind == "ok" else "FAILED"})
            else:
                self.idem_abort(ent)
        if emit is not None:
            self.webhooks.emit(o, "order.refunded", emit, confirmation_id=confirmation_id())
        return Outcome(kind, http_status, body=body)

    def cancel(self, mid, raw, source, osk=None, external=None):
        n = common.norm(raw) if raw is not None else {}
        if not isinstance(n, dict):
            n = {}
        o = self.find(mid, osk) if osk is not None else self.find_external(mid, external)
        if o is None:
            return Outcome("notfound", 404, title="Not Found",
                           detail="Order %s was not found." % (osk or external))
        ent, early = self._optional_idem(mid, n, raw if isinstance(raw, dict) else {}, "cancel", source)
        if early:
            return early
        emit = False
        with self.store.lock:
            s = o["state"]
            if s == "CANCELLED":
                out = Outcome("ok", 200, body=b"{}")
            elif s == "CAPTUREREQUIRED" or (o["isMIT"] and s == "PROCESSING"):
                self._set_state(o, "CANCELLED", "merchant cancel")
                out = Outcome("ok", 200, body=b"{}")
                emit = True
            else:
                out = Outcome("conflict", 409, title="Order cannot be cancelled",
                              detail="Order %s is in state %s." % (o["id"], STATE_ENUM[s][1]
                                                                    if s != "DECLINED" else "DECLINED"))
        if ent is not None:
            if out.kind == "ok":
                self.idem_finish(ent, (200, out.body), {"status": "CANCELLED"})
            else:
                self.idem_abort(ent)
        if emit:
            self.webhooks.emit(o, "order.cancelled")
        return out

    def capture(self, mid, raw, source):
        n = common.norm(raw)
        if not isinstance(n, dict):
            return Outcome("invalid", 400, errors={"$": ["The request body must be a JSON object."]})
        errors = {}
        if not isinstance(n.get("orderid"), str) or not n.get("orderid"):
            errors["orderId"] = ["The OrderId field is required."]
        amt = n.get("amount")
        if not (isinstance(amt, int) and not isinstance(amt, bool)):
            errors["amount"] = ["The Amount field is required and must be an integer (cents)."]
        if self.store.config.strict and not n.get("idempotencykey"):
            errors["idempotencyKey"] = ["The IdempotencyKey field is required."]
        if errors:
            return Outcome("invalid", 400, errors=errors)
        o = self.find(mid, n["orderid"])
        if o is None:
            return Outcome("notfound", 404, title="Not Found", detail="Order %s was not found." % n["orderid"])
        ent, early = self._optional_idem(mid, n, raw, "capture", source)
        if early:
            return early
        emit = False
        with self.store.lock:
            if o["state"] == "CAPTUREREQUIRED" and 0 < amt <= o["amount"]:
                o["capturedAmount"] = amt
                self._set_state(o, "COMPLETED", "capture")
                body = common.dumpb(common.envelope(status="SUCCESS", captureStatus="SUCCESS",
                                                    orderId=o["id"]))
                emit = True
            else:
                why = ("Order is not awaiting capture (state %s)" % o["state"]
                       if o["state"] != "CAPTUREREQUIRED" else
                       "Capture amount must be between 1 and the authorised amount (%d)" % o["amount"])
                body = common.dumpb(common.envelope(status="FAILED", captureStatus="FAILED",
                                                    orderId=o["id"], success=False,
                                                    errors=[common.error_tuple(why, "2002")]))
        if ent is not None:
            self.idem_finish(ent, (200, body), {"status": "SUCCESS" if emit else "FAILED"})
        if emit:
            self.webhooks.emit(o, "order.completed")
        return Outcome("ok" if emit else "failed", 200, body=body)


def dollars(cents):
    return "%d.%02d" % (cents // 100, cents % 100) if cents >= 0 else "-" + dollars(-cents)
