# test_evaluate.py - /v1/evaluate and /v1/transmit: validation, outcome rules, idempotency.
import json
import threading
import time
import unittest
import uuid

from simtest import Client, SimCase


class OutcomeRulesManaged(SimCase):
    with_receiver = False

    def test_unknown_token_amount_rules_mit_managed(self):
        cases = {1001: ("APPROVED", "COMPLETED"), 1002: ("DECLINED", "DECLINED"),
                 1013: ("SUBMITTED", "CANCELLED"), 1014: ("SUBMITTED", "EXPIRED"),
                 4999: ("SUBMITTED", "COMPLETED")}
        osks = {}
        for amount, (status, _) in cases.items():
            obj = self.evaluate(self.eval_body(amount=amount,
                                               expiryDateUtc=self._expiry(days=3)))
            self.assertEqual(obj["status"], status, amount)
            self.assertEqual(obj["orderSessionKey"], obj["orderId"])
            self.assertEqual(obj["result"], "Success")
            osks[amount] = obj["orderSessionKey"]
        self.advance(61)
        self.assertEqual(self.order(osks[4999])["statusName"], "COMPLETED")
        self.assertEqual(self.order(osks[1013])["statusName"], "CANCELLED")
        self.assertEqual(self.order(osks[1014])["statusName"], "PROCESSING")
        self.advance(3 * 86400)
        o = self.order(osks[1014])
        # expired: CANCELLED with its expiryDate passed, no invented flag (section 12a)
        self.assertEqual((o["statusName"], o["status"]), ("CANCELLED", 2))
        self.assertNotIn("isExpired", o)
        import clock
        self.assertLessEqual(clock.parse_iso(o["expiryDate"]), self.sim.clock.now())
        for amount, (_, final) in cases.items():
            st, out = self.api("POST", "/v1/outcome", {"orderSessionKey": osks[amount]})
            want = {"COMPLETED": "APPROVED"}.get(final, final)
            self.assertEqual(out["status"], want, amount)

    def _expiry(self, days):
        import clock
        return clock.iso(self.sim.clock.now() + days * 86400, micro=False)

    def test_known_cards(self):
        t4111 = self.tokenize("4111111111111111")
        t3184 = self.tokenize("4000002760003184")
        t2220 = self.tokenize("4000300011112220")
        t4242 = self.tokenize("4242424242424242")
        self.assertEqual(self.evaluate(self.eval_body(t2220, 4999))["status"], "DECLINED")
        self.assertEqual(self.evaluate(self.eval_body(t3184, 4999))["status"], "SUBMITTED")
        self.assertEqual(self.evaluate(self.eval_body(t3184, 4999, transactionType="AUTHORIZATION"))["status"],
                         "CAPTUREREQUIRED")
        cit = self.evaluate(self.eval_body(t4111, 4999, is_mit=False))
        self.assertEqual(cit["status"], "CHALLENGE")
        cit13 = self.evaluate(self.eval_body(t4111, 4913, is_mit=False))
        mit = self.evaluate(self.eval_body(t4111, 4999, expiryDateUtc=self._expiry(2)))
        self.assertEqual(mit["status"], "SUBMITTED")
        self.assertEqual(self.evaluate(self.eval_body(t4242, 4999, is_mit=False))["status"], "APPROVED")
        self.advance(60)
        self.assertEqual(self.order(cit["orderSessionKey"])["statusName"], "COMPLETED")
        self.assertEqual(self.order(cit13["orderSessionKey"])["statusName"], "CANCELLED")
        self.assertEqual(self.order(mit["orderSessionKey"])["statusName"], "PROCESSING")
        self.advance(2 * 86400)
        o = self.order(mit["orderSessionKey"])
        self.assertEqual((o["status"], o["statusName"]), (2, "CANCELLED"))
        self.assertNotIn("isExpired", o)
        st, out = self.api("POST", "/v1/outcome", {"orderSessionKey": mit["orderSessionKey"]})
        self.assertEqual(out["status"], "EXPIRED")

    def test_card_not_whitelisted(self):
        tok = self.tokenize("4012888888881881")
        st, obj = self.api("POST", "/v1/evaluate", self.eval_body(tok))
        self.assertEqual(st, 400)
        self.assertEqual(obj["PaymentMethod.CardNumber"], ["card not whitelisted in sandbox"])

    def test_raw_pan_allowed_when_whitelisted(self):
        body = self.eval_body(amount=4901, is_mit=False)
        body["paymentMethod"] = {"cardNumber": "4242424242424242", "token": False}
        self.assertEqual(self.evaluate(body)["status"], "APPROVED")

    def test_reject_unknown_tokens_when_configured(self):
        self.admin("POST", "/_admin/config", {"acceptUnknownTokens": False})
        st, obj = self.api("POST", "/v1/evaluate", self.eval_body())
        self.assertEqual(st, 400)
        self.assertIn("PaymentMethod.CardNumber", obj)


class OutcomeRulesSync(SimCase):
    with_receiver = False

    def runtime_config(self):
        return {"mitMode": "sync"}

    def test_sync_mit(self):
        self.assertEqual(self.evaluate(self.eval_body(amount=4999))["status"], "APPROVED")
        self.assertEqual(self.evaluate(self.eval_body(amount=4902))["status"], "DECLINED")
        t3184 = self.tokenize("4000002760003184")
        self.assertEqual(self.evaluate(self.eval_body(t3184, 4999))["status"], "APPROVED")
        a = self.evaluate(self.eval_body(amount=4913, order_id="SYNC-1"))
        self.assertEqual(a["status"], "SUBMITTED")
        # Sync-MIT retry: same orderId, new key -> same order, current state
        b = self.evaluate(self.eval_body(amount=4913, order_id="SYNC-1"))
        self.assertEqual(b["orderSessionKey"], a["orderSessionKey"])
        self.assertEqual(b["status"], "SUBMITTED")
        self.advance(60)
        c = self.evaluate(self.eval_body(amount=4913, order_id="SYNC-1"))
        self.assertEqual((c["orderSessionKey"], c["status"]), (a["orderSessionKey"], "CANCELLED"))
        self.assertEqual(len(self.admin("GET", "/_admin/orders?externalOrderId=SYNC-1")["orders"]), 1)

    def test_cit_repeated_order_id_creates_new_order(self):
        a = self.evaluate(self.eval_body(amount=4901, is_mit=False, order_id="CIT-1"))
        b = self.evaluate(self.eval_body(amount=4901, is_mit=False, order_id="CIT-1"))
        self.assertNotEqual(a["orderSessionKey"], b["orderSessionKey"])


class Validation(SimCase):
    with_receiver = False

    def test_problem_details_shape(self):
        self.admin("POST", "/_admin/config", {"errorShape": "problem"})
        body = self.eval_body(amount=5)
        del body["orderId"]
        del body["idempotencyKey"]
        st, resp, raw = self.client.request("POST", "/v1/evaluate", body, self.auth())
        self.assertEqual(st, 400)
        self.assertTrue(resp.getheader("Content-Type").startswith("application/problem+json"))
        obj = json.loads(raw)
        self.assertEqual(obj["title"], "One or more validation errors occurred.")
        self.assertEqual(obj["status"], 400)
        self.assertRegex(obj["traceId"], r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
        self.assertEqual(obj["errors"]["orderId"], ["Merchant's orderId is required"])
        self.assertEqual(obj["errors"]["idempotencyKey"], ["The IdempotencyKey field is required."])
        self.assertIn("transaction.amount", obj["errors"])
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 0)

    def test_flat_shape_is_the_default(self):
        self.assertEqual(self.admin("GET", "/_admin/config")["errorShape"], "flat")
        body = self.eval_body()
        del body["orderId"]
        body["transaction"] = {"amount": 4999, "currency": "USD"}
        st, obj = self.api("POST", "/v1/evaluate", body)
        self.assertEqual(st, 400)
        self.assertIsInstance(obj["TraceId"], list)
        self.assertEqual(obj["OrderId"], ["Merchant's orderId is required"])
        self.assertEqual(obj["Transaction.Id"], ["The Id field is required."])
        self.assertEqual(list(obj)[0], "TraceId")
        self.assertNotIn("title", obj)

    def test_lenient_requires_only_the_newest_minimum(self):
        minimal = {"isDeclined": True, "orderId": "LEN-1", "idempotencyKey": str(uuid.uuid4()),
                   "transaction": {"id": "t", "amount": 4901, "currency": "USD"},
                   "paymentMethod": {"cardNumber": str(uuid.uuid4()), "token": True}}
        st, obj = self.api("POST", "/v1/evaluate", minimal)
        self.assertEqual(st, 400)   # strict, the default
        for k in ("Mid", "IsMIT", "Payer", "BillingInformation", "Transaction.AvsResultCode",
                  "Transaction.CavvResultCode", "Transaction.TimestampUtc"):
            self.assertIn(k, obj)
        self.admin("POST", "/_admin/config", {"strict": False})
        self.assertEqual(self.evaluate(minimal)["status"], "APPROVED")
        self.assertEqual(self.admin("GET", "/_admin/config")["strict"], False)

    def test_case_insensitive_keys(self):
        def recase(o):
            if isinstance(o, dict):
                return {k.upper() if i % 2 else k[:1].upper() + k[1:]: recase(v)
                        for i, (k, v) in enumerate(o.items())}
            return o
        body = recase(self.eval_body(amount=4901, is_mit=False, order_id="CASE-1"))
        self.assertIn("ORDERID", body)
        self.assertEqual(self.evaluate(body)["status"], "APPROVED")
        o = self.admin("GET", "/_admin/orders?externalOrderId=CASE-1")["orders"][0]
        self.assertEqual(o["amount"], 4901)

    def test_content_types(self):
        body = json.dumps(self.eval_body(amount=4901)).encode()
        h = dict(self.auth(), **{"Content-Type": "application/*+json"})
        self.assertEqual(self.client.request("POST", "/v1/evaluate", raw=body, headers=h)[0], 200)
        h["Content-Type"] = "application/json; charset=utf-8"
        body = json.dumps(self.eval_body(amount=4901)).encode()
        self.assertEqual(self.client.request("POST", "/v1/evaluate", raw=body, headers=h)[0], 200)
        h["Content-Type"] = "text/plain"
        self.assertEqual(self.client.request("POST", "/v1/evaluate", raw=body, headers=h)[0], 415)

    def test_bad_json_400(self):
        h = dict(self.auth(), **{"Content-Type": "application/json"})
        st, _, raw = self.client.request("POST", "/v1/evaluate", raw=b"{nope", headers=h)
        self.assertEqual(st, 400)
        self.assertIn("$", json.loads(raw))

    def test_wrong_types(self):
        body = self.eval_body()
        body["transaction"]["amount"] = "4999"
        body["isMIT"] = "yes"
        st, obj = self.api("POST", "/v1/evaluate", body)
        self.assertEqual(st, 400)
        self.assertIn("Transaction.Amount", obj)
        self.assertIn("IsMIT", obj)

    def test_expiry_date_rules(self):
        for bad in ("not a date", "", "2001-01-01T00:00:00Z", "2999-01-01T00:00:00Z"):
            st, obj = self.api("POST", "/v1/evaluate", self.eval_body(expiryDateUtc=bad))
            self.assertEqual(st, 400)
            self.assertEqual(sorted(obj), ["ExpiryDateUtc", "TraceId"])
            self.assertEqual(obj["ExpiryDateUtc"], ["The field ExpiryDateUtc is invalid."])

    def test_mid_mismatch_403(self):
        st, obj = self.api("POST", "/v1/evaluate", self.eval_body(mid="11111111-1111-4111-8111-111111111111"))
        self.assertEqual(st, 403)

    def test_unknown_route_and_method(self):
        self.assertEqual(self.api("GET", "/v1/nothing")[0], 404)
        self.assertEqual(self.api("GET", "/v1/evaluate")[0], 405)
        # routes are case-insensitive, like ASP.NET
        self.assertEqual(self.api("POST", "/v1/Evaluate", self.eval_body(amount=4901))[0], 200)


class Idempotency(SimCase):
    with_receiver = False

    def test_replay_byte_for_byte_and_conflict(self):
        body = self.eval_body(amount=4999)
        st1, _, raw1 = self.client.request("POST", "/v1/evaluate", body, self.auth())
        st2, _, raw2 = self.client.request("POST", "/v1/evaluate", body, self.auth())
        self.assertEqual((st1, st2), (200, 200))
        self.assertEqual(raw1, raw2)
        # key order/casing differences are the same body
        recased = {k[:1].upper() + k[1:]: v for k, v in body.items()}
        self.assertEqual(self.client.request("POST", "/v1/evaluate", recased, self.auth())[2], raw1)
        other = dict(body, transaction=dict(body["transaction"], amount=5999))
        st3, obj3 = self.api("POST", "/v1/evaluate", other)
        self.assertEqual(st3, 409)
        self.assertEqual(obj3["title"], "Idempotency key reuse")
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 1)
        idem = self.admin("GET", "/_admin/idempotency")
        ent = [k for k in idem["keys"] if k["key"] == body["idempotencyKey"]][0]
        self.assertEqual((ent["seen"], ent["accepted"], ent["replayed"], ent["conflicts"]), (4, 1, 2, 1))

    def test_replay_window_24h(self):
        body = self.eval_body(amount=4999, is_mit=False)
        a = self.evaluate(body)
        self.advance(24 * 3600 + 1)
        b = self.evaluate(body)
        self.assertNotEqual(a["orderSessionKey"], b["orderSessionKey"])

    def test_in_progress_409(self):
        self.admin("POST", "/_admin/faults", {"endpoint": "/v1/evaluate", "mode": "hang", "seconds": 1.0})
        body = self.eval_body(amount=4999)
        res = {}
        tok = self.token()

        def first():
            c = Client(self.port)
            res["first"] = c.json("POST", "/v1/evaluate", body, {"Authorization": "Bearer " + tok})
            c.close()
        t = threading.Thread(target=first)
        t.start()
        deadline = time.time() + 5
        while time.time() < deadline:
            if any(k["key"] == body["idempotencyKey"] for k in self.admin("GET", "/_admin/idempotency")["keys"]):
                break
            time.sleep(0.02)
        st, obj = self.api("POST", "/v1/evaluate", body)
        t.join(10)
        self.assertEqual(st, 409)
        self.assertEqual(obj["title"], "Request in progress")
        self.assertEqual(res["first"][0], 200)

    def test_validation_failure_not_stored(self):
        body = self.eval_body(amount=5)
        self.assertEqual(self.api("POST", "/v1/evaluate", body)[0], 400)
        body["transaction"]["amount"] = 4999
        self.assertEqual(self.api("POST", "/v1/evaluate", body)[0], 200)
        ent = self.admin("GET", "/_admin/idempotency")["keys"][0]
        self.assertEqual((ent["seen"], ent["rejected"], ent["accepted"]), (2, 1, 1))


class Transmit(SimCase):
    with_receiver = False

    def test_transmit(self):
        body = self.transmit_body(order_id="TX-1")
        st, obj = self.api("POST", "/v1/transmit", body)
        self.assertEqual(st, 200, obj)
        self.assertEqual((obj["result"], obj["status"], obj["success"]), ("success", 0, True))
        self.assertEqual(len(obj["transmitId"]), 36)
        tx = self.admin("GET", "/_admin/transmits")["transmits"]
        self.assertEqual(tx[0]["orderId"], "TX-1")
        del body["orderId"]
        st, obj = self.api("POST", "/v1/transmit", body)
        self.assertEqual(st, 400)
        self.assertEqual(obj["OrderId"], ["Merchant's orderId is required"])


if __name__ == "__main__":
    unittest.main()
