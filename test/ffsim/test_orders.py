# test_orders.py - GET /orders(/{id}), /outcome, /refund (dollars), /cancel,
# /external-cancel and /capture, with the webhooks each state change sends.
import unittest
import uuid

from simtest import SimCase


class Orders(SimCase):
    def events(self, osk):
        return [(e["event"], e["status"]) for e in
                self.admin("GET", "/_admin/webhooks?orderId=" + osk)["events"]]

    def test_get_order_shape_and_404(self):
        obj = self.evaluate(self.eval_body(amount=4999, order_id="ORD-1"))
        o = self.order(obj["orderSessionKey"])
        self.assertEqual((o["id"], o["status"], o["statusName"]), (obj["orderSessionKey"], 4, "PROCESSING"))
        self.assertEqual(o["referenceNumber"], "ORD-1")
        self.assertEqual(o["currencyCode"], "USD")
        self.assertEqual(o["currencySymbol"], "$")
        st, p = self.api("GET", "/v1/orders/" + str(uuid.uuid4()))
        self.assertEqual((st, p["title"]), (404, "Not Found"))

    def test_list_paging_and_filter(self):
        for i in range(12):
            self.evaluate(self.eval_body(amount=1001 + (i % 2), order_id="L-%02d" % i))
        st, page = self.api("GET", "/v1/orders?pageSize=5&pageNumber=2")
        self.assertEqual(st, 200)
        self.assertEqual((page["totalItemCount"], page["pageCount"], len(page["items"])), (12, 3, 5))
        self.assertEqual((page["firstItemOnPage"], page["lastItemOnPage"]), (6, 10))
        self.assertTrue(page["hasNextPage"] and page["hasPreviousPage"])
        st, done = self.api("GET", "/v1/orders?status=7&pageSize=100")
        self.assertEqual(done["totalItemCount"], 6)
        self.assertTrue(all(i["statusName"] == "COMPLETED" for i in done["items"]))
        st, q = self.api("GET", "/v1/orders?query=L-03")
        self.assertEqual(q["totalItemCount"], 1)
        self.assertEqual(page["statuses"]["7"], "COMPLETED")

    def test_outcome_notfound(self):
        st, obj = self.api("POST", "/v1/outcome", {"orderSessionKey": str(uuid.uuid4())})
        self.assertEqual((st, obj["status"]), (200, "NOTFOUND"))

    def test_refund_dollars_partial_full_and_2001(self):
        osk = self.evaluate(self.eval_body(amount=4901, is_mit=False))["orderSessionKey"]
        st, r1 = self.api("POST", "/v1/orders/%s/refund" % osk, {"amountToRefund": 12.00, "refundMessage": "a"})
        self.assertEqual((st, r1["status"], r1["success"]), (200, "SUCCESS", True))
        self.assertTrue(r1["transactionId"])
        o = self.order(osk)
        self.assertEqual((o["statusName"], o["status"], o["refundedAmount"]), ("RETURNED", 6, 1200))
        st, r2 = self.api("POST", "/v1/orders/%s/refund" % osk, {"amountToRefund": 37.02, "refundMessage": "b"})
        self.assertEqual(r2["status"], "FAILED")
        self.assertEqual(r2["responseCode"], "2001")
        self.assertEqual(r2["responseMessage"],
                         "Amount to refund (37.02) is greater than maximum refund amount in (37.01))")
        self.assertEqual(r2["errors"][0]["item2"], "2001")
        self.assertFalse(r2["success"])
        st, r3 = self.api("POST", "/v1/orders/%s/refund" % osk, {"amountToRefund": "37.01", "refundMessage": "c"})
        self.assertEqual(r3["status"], "SUCCESS")
        st, r4 = self.api("POST", "/v1/orders/%s/refund" % osk, {"amountToRefund": 1, "refundMessage": "d"})
        self.assertIn("maximum refund amount in (0.00))", r4["responseMessage"])
        self.advance(0)
        refunds = self.admin("GET", "/_admin/webhooks?orderId=%s&event=order.refunded" % osk)["events"]
        self.assertEqual([e["eventData"]["amount"] for e in refunds], [12.0, 37.01])
        self.assertNotEqual(refunds[0]["confirmationId"], refunds[1]["confirmationId"])

    def test_refund_rules(self):
        pending = self.evaluate(self.eval_body(amount=4999))["orderSessionKey"]
        st, r = self.api("POST", "/v1/orders/%s/refund" % pending, {"amountToRefund": 1.00})
        self.assertEqual((st, r["responseCode"]), (200, "2001"))
        self.assertEqual(self.api("POST", "/v1/orders/%s/refund" % uuid.uuid4(), {"amountToRefund": 1})[0], 404)
        done = self.evaluate(self.eval_body(amount=4901, is_mit=False))["orderSessionKey"]
        self.assertEqual(self.api("POST", "/v1/orders/%s/refund" % done, {"amountToRefund": 1.001})[0], 400)
        self.assertEqual(self.api("POST", "/v1/orders/%s/refund" % done, {})[0], 400)
        # identical repeated call without a key is de-duplicated per order
        a = self.api("POST", "/v1/orders/%s/refund" % done, {"amountToRefund": 5, "refundMessage": "x"})[1]
        b = self.api("POST", "/v1/orders/%s/refund" % done, {"amountToRefund": 5, "refundMessage": "x"})[1]
        self.assertEqual(a["transactionId"], b["transactionId"])
        self.assertEqual(self.order(done)["refundedAmount"], 500)
        # with an idempotency key: replay, and 409 on a different body
        k = str(uuid.uuid4())
        c = self.api("POST", "/v1/orders/%s/refund" % done, {"amountToRefund": 2, "idempotencyKey": k})[1]
        d = self.api("POST", "/v1/orders/%s/refund" % done, {"amountToRefund": 2, "idempotencyKey": k})[1]
        self.assertEqual(c, d)
        self.assertEqual(self.api("POST", "/v1/orders/%s/refund" % done,
                                  {"amountToRefund": 3, "idempotencyKey": k})[0], 409)
        self.assertEqual(self.order(done)["refundedAmount"], 700)

    def test_cancel_rules_and_webhook(self):
        osk = self.evaluate(self.eval_body(amount=4999))["orderSessionKey"]
        st, obj = self.api("POST", "/v1/orders/%s/cancel" % osk, {})
        self.assertEqual((st, obj), (200, {}))
        self.assertEqual(self.order(osk)["statusName"], "CANCELLED")
        # already cancelled: 200 {} again, and no more transitions later
        self.assertEqual(self.api("POST", "/v1/orders/%s/cancel" % osk)[0], 200)
        self.advance(120)
        self.assertEqual(self.order(osk)["statusName"], "CANCELLED")
        self.assertEqual(self.events(osk), [("order.cancelled", "delivered")])
        done = self.evaluate(self.eval_body(amount=4901))["orderSessionKey"]
        st, p = self.api("POST", "/v1/orders/%s/cancel" % done, {})
        self.assertEqual(st, 409)
        cit = self.evaluate(self.eval_body(amount=4999, is_mit=False,
                                           card_token=self.tokenize()))["orderSessionKey"]
        self.assertEqual(self.api("POST", "/v1/orders/%s/cancel" % cit, {})[0], 409)  # CIT challenge
        self.assertEqual(self.api("POST", "/v1/orders/%s/cancel" % uuid.uuid4(), {})[0], 404)

    def test_external_cancel(self):
        osk = self.evaluate(self.eval_body(amount=4999, order_id="EXT-9"))["orderSessionKey"]
        st, obj = self.api("POST", "/v1/orders/EXT-9/external-cancel", {})
        self.assertEqual((st, obj), (200, {}))
        self.assertEqual(self.order(osk)["statusName"], "CANCELLED")
        self.assertEqual(self.api("POST", "/v1/orders/%s/cancel" % osk, {})[0], 200)  # collapses
        self.assertEqual(self.api("POST", "/v1/orders/NOPE/external-cancel", {})[0], 404)

    def test_capture(self):
        t = self.tokenize("4000002760003184")
        osk = self.evaluate(self.eval_body(t, 4999, is_mit=False, transactionType="AUTHORIZATION"))["orderSessionKey"]
        self.assertEqual(self.order(osk)["statusName"], "CAPTUREREQUIRED")
        st, bad = self.api("POST", "/v1/capture", {"orderId": osk, "amount": 99999, "currency": "USD",
                                                   "idempotencyKey": str(uuid.uuid4())})
        self.assertEqual((st, bad["status"]), (200, "FAILED"))
        st, ok = self.api("POST", "/v1/capture", {"orderId": osk, "amount": 4999, "currency": "USD",
                                                  "idempotencyKey": str(uuid.uuid4())})
        self.assertEqual((ok["status"], ok["captureStatus"]), ("SUCCESS", "SUCCESS"))
        self.assertEqual(self.order(osk)["statusName"], "COMPLETED")
        self.advance(0)
        self.assertEqual([e for e, _ in self.events(osk)], ["order.capturerequired", "order.completed"])
        self.assertEqual(self.api("POST", "/v1/capture", {"orderId": str(uuid.uuid4()), "amount": 1,
                                                          "idempotencyKey": str(uuid.uuid4())})[0], 404)

    def test_capture_window_voids(self):
        t = self.tokenize("4000002760003184")
        osk = self.evaluate(self.eval_body(t, 4999, transactionType="AUTHORIZATION"))["orderSessionKey"]
        self.advance(1440 * 60)
        self.assertEqual(self.order(osk)["statusName"], "CANCELLED")
        self.assertEqual([e for e, _ in self.events(osk)], ["order.capturerequired", "order.cancelled"])


if __name__ == "__main__":
    unittest.main()
