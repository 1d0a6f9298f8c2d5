# test_order_semantics.py - the order life cycle as the real service shows it
# (flexfactor-api.md 4.3.4, 4.7, 4.8, 7.2 and 12a): the refund answer shapes of
# the per-merchant refundAnswer setting, sync-MIT rescue after a DECLINED
# answer (a later /evaluate of the same orderId answers APPROVED), and signed
# payout.* deliveries that carry no order.
import json
import unittest
import uuid

from simtest import SimCase

RECORDED_2001_KEYS = ["responseCode", "responseMessage", "transactionId", "success", "result", "status",
                      "statusCode", "errors", "customProperties"]


class RefundAnswers(SimCase):
    def runtime_config(self):
        return {"refundAnswer": "current"}

    def approved(self, amount=4901):
        return self.evaluate(self.eval_body(amount=amount, is_mit=False))["orderSessionKey"]

    def refund(self, osk, dollars):
        return self.api("POST", "/v1/orders/%s/refund" % osk, {"amountToRefund": dollars})

    def refunded_events(self, osk):
        self.advance(0)
        return self.admin("GET", "/_admin/webhooks?orderId=%s&event=order.refunded" % osk)["events"]

    def test_current_answer_says_approved(self):
        self.assertEqual(self.admin("GET", "/_admin/config")["refundAnswer"], "current")
        osk = self.approved()
        st, r = self.refund(osk, 10)
        self.assertEqual((st, r["success"], r["status"], r["responseMessage"], r["responseCode"]),
                         (200, True, "SUCCESS", "APPROVED", None))
        self.assertEqual(self.order(osk)["refundedAmount"], 1000)
        self.assertEqual(len(self.refunded_events(osk)), 1)

    def test_declined2024_refunds_but_says_declined(self):
        self.admin("POST", "/_admin/config", {"refundAnswer": "declined2024"})
        osk = self.approved()
        st, r = self.refund(osk, 10)
        self.assertEqual((st, r["success"], r["status"], r["responseMessage"]),
                         (200, True, "SUCCESS", "DECLINED"))
        self.assertTrue(r["transactionId"])
        o = self.order(osk)
        self.assertEqual((o["statusName"], o["refundedAmount"]), ("RETURNED", 1000))
        ev = self.refunded_events(osk)
        self.assertEqual([e["eventData"]["refundTransactionId"] for e in ev], [r["transactionId"]])

    def check_refused(self, mode, http_status):
        self.admin("POST", "/_admin/config", {"refundAnswer": mode})
        osk = self.approved()
        st, r = self.refund(osk, 10)
        self.assertEqual(st, http_status)
        self.assertEqual(list(r.keys()), RECORDED_2001_KEYS)
        self.assertEqual((r["success"], r["status"], r["responseCode"], r["transactionId"]),
                         (False, "FAILED", "2001", None))
        self.assertEqual(r["responseMessage"],
                         "Amount to refund (10.00) is greater than maximum refund amount in (0.00))")
        self.assertEqual(r["errors"], [{"item1": r["responseMessage"], "item2": "2001", "item3": "2001",
                                        "item4": True}])
        o = self.order(osk)
        self.assertEqual((o["statusName"], o["refundedAmount"]), ("COMPLETED", 0))
        self.assertEqual(self.refunded_events(osk), [])
        # a refused call is not de-duplicated: the same call later is decided again
        self.admin("POST", "/_admin/config", {"refundAnswer": "current"})
        st, r = self.refund(osk, 10)
        self.assertEqual((st, r["status"]), (200, "SUCCESS"))
        self.assertEqual(self.order(osk)["refundedAmount"], 1000)

    def test_refused_with_200(self):
        self.check_refused("refused200", 200)

    def test_refused_with_400(self):
        self.check_refused("refused400", 400)

    def test_refused_with_422(self):
        self.check_refused("refused422", 422)

    def test_unknown_setting_refused(self):
        st, r = self.client.json("POST", "/_admin/config", {"refundAnswer": "sometimes"})
        self.assertEqual(st, 400)
        self.assertIn("refundAnswer must be one of", r["error"])
        self.assertEqual(self.admin("GET", "/_admin/config")["refundAnswer"], "current")


class SyncMitRescue(SimCase):
    def runtime_config(self):
        return {"mitMode": "sync"}

    def evaluate_again(self, order_id, amount=4902):
        return self.evaluate(self.eval_body(amount=amount, order_id=order_id))

    def test_declined_then_approved(self):
        first = self.evaluate_again("SYNC-1")
        self.assertEqual(first["status"], "DECLINED")
        osk = first["orderSessionKey"]
        again = self.evaluate_again("SYNC-1")
        self.assertEqual((again["status"], again["orderSessionKey"]), ("DECLINED", osk))
        o = self.admin("POST", "/_admin/orders/%s/rescue" % osk, {"notify": False})
        self.assertEqual((o["state"], o["statusName"], o["capturedAmount"]), ("COMPLETED", "COMPLETED", 4902))
        later = self.evaluate_again("SYNC-1")
        self.assertEqual((later["status"], later["orderSessionKey"]), ("APPROVED", osk))
        self.assertEqual(self.order(osk)["statusName"], "COMPLETED")
        self.assertEqual(len(self.admin("GET", "/_admin/orders?externalOrderId=SYNC-1")["orders"]), 1)
        self.advance(0)
        self.assertEqual([e["event"] for e in self.admin("GET", "/_admin/webhooks?orderId=" + osk)["events"]],
                         ["order.cancelled"])   # the decline's; notify false sent no order.completed
        # rescued money can be refunded
        st, r = self.api("POST", "/v1/orders/%s/refund" % osk, {"amountToRefund": 49.02})
        self.assertEqual((st, r["status"]), (200, "SUCCESS"))

    def test_rescue_notifies_by_default(self):
        osk = self.evaluate_again("SYNC-2")["orderSessionKey"]
        self.admin("POST", "/_admin/orders/%s/rescue" % osk, {})
        self.advance(0)
        self.assertEqual([e["event"] for e in self.admin("GET", "/_admin/webhooks?orderId=" + osk)["events"]],
                         ["order.cancelled", "order.completed"])

    def test_only_declined_mit_orders(self):
        osk = self.evaluate_again("SYNC-3", amount=4901)["orderSessionKey"]    # APPROVED
        st, p = self.client.json("POST", "/_admin/orders/%s/rescue" % osk, {})
        self.assertEqual(st, 409)
        self.assertIn("only a DECLINED MIT order", p["detail"])
        cit = self.evaluate(self.eval_body(amount=4902, is_mit=False))["orderSessionKey"]
        self.assertEqual(self.client.json("POST", "/_admin/orders/%s/rescue" % cit, {})[0], 409)
        self.assertEqual(self.client.json("POST", "/_admin/orders/%s/rescue" % uuid.uuid4(), {})[0], 404)


class PayoutWebhooks(SimCase):
    def test_payout_created_without_order(self):
        ev = self.admin("POST", "/_admin/webhooks/payout", {"event": "payout.created", "amount": 125050})["event"]
        self.assertEqual((ev["event"], ev["orderId"], ev["externalOrderId"]), ("payout.created", None, None))
        self.advance(0)
        got = self.receiver.verified("payout.created")
        self.assertEqual(len(got), 1)
        p = got[0]["payload"]
        self.assertEqual(list(p.keys()), ["Event", "TimeStamp", "EventData", "ExternalOrderId", "OrderId",
                                          "ConfirmationId", "IsTestMode", "IsResent"])
        self.assertIsNone(p["OrderId"])
        self.assertIsNone(p["ExternalOrderId"])
        self.assertEqual((p["EventData"]["amount"], p["EventData"]["status"]), (1250.5, "pending"))
        w = self.admin("GET", "/_admin/webhooks?event=payout.created")
        self.assertEqual([(a["attempt"], a["status"]) for a in w["attempts"]], [(1, 200)])

    def test_payout_updated_without_order_fields(self):
        self.admin("POST", "/_admin/webhooks/payout", {"event": "payout.updated", "omitOrderId": True})
        self.advance(0)
        got = self.receiver.verified("payout.updated")
        self.assertEqual(len(got), 1)
        p = json.loads(got[0]["body"])
        self.assertNotIn("OrderId", p)
        self.assertNotIn("ExternalOrderId", p)
        self.assertEqual(p["EventData"]["status"], "completed")

    def test_payout_retried_like_any_event(self):
        with self.receiver.lock:
            self.receiver.script = [400]
        self.admin("POST", "/_admin/webhooks/payout", {"event": "payout.created"})
        self.advance(0)
        self.advance(60)
        w = self.admin("GET", "/_admin/webhooks?event=payout.created")
        self.assertEqual([(a["attempt"], a["isResent"], a["status"]) for a in w["attempts"]],
                         [(1, False, 400), (2, True, 200)])

    def test_only_payout_events(self):
        st, r = self.client.json("POST", "/_admin/webhooks/payout", {"event": "order.completed"})
        self.assertEqual(st, 400)


if __name__ == "__main__":
    unittest.main()
