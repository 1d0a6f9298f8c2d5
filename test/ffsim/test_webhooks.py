# test_webhooks.py - delivery, exact headers, signatures, retries on the virtual
# clock and the misbehaviour modes (duplicate, reorder, delay, wrong signature,
# stale date), resend.
import email.utils
import time
import unittest

import signing
import webhooks
from simtest import KEY, SimCase


class Webhooks(SimCase):
    def completed_order(self, amount=4901):
        return self.evaluate(self.eval_body(amount=amount, order_id="WH-%d" % amount))["orderSessionKey"]

    def test_exact_headers_and_signature(self):
        osk = self.completed_order()
        self.advance(0)
        got = self.receiver.received
        self.assertEqual(len(got), 1)
        r = got[0]
        self.assertTrue(r["verified"], r["reason"])
        h = r["headers"]
        self.assertEqual(h["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(h["host"], "127.0.0.1:%d" % self.receiver.port)
        self.assertRegex(h["x-fc-nonce"], r"^[0-9a-f]{32}$")
        self.assertLess(abs(email.utils.parsedate_to_datetime(h["x-fc-date"]).timestamp() - time.time()), 10)
        self.assertTrue(h["x-fc-authorization"].startswith(
            "HMAC-SHA512 SignedHeaders=x-fc-nonce;x-fc-date;host;x-fc-content-sha512&Signature="))
        body = r["body"].encode()
        self.assertEqual(h["x-fc-content-sha512"], signing.content_sha512(body))
        self.assertEqual(h["x-fc-signature"], signing.body_signature(KEY, body))
        p = r["payload"]
        self.assertEqual(list(p.keys()), ["Event", "TimeStamp", "EventData", "ExternalOrderId", "OrderId",
                                          "ConfirmationId", "IsTestMode", "IsResent"])
        self.assertEqual((p["Event"], p["OrderId"], p["ExternalOrderId"], p["IsResent"], p["IsTestMode"]),
                         ("order.completed", osk, "WH-4901", False, True))
        self.assertRegex(p["ConfirmationId"], r"^[0-9A-F]{8}$")
        self.assertNotIn(b" ", body.replace(b"order.completed", b""))  # compact JSON
        att = self.admin("GET", "/_admin/webhooks")["attempts"][0]
        self.assertEqual((att["status"], att["attempt"], att["isResent"]), (200, 1, False))
        self.assertEqual(att["headers"]["x-fc-signature"], h["x-fc-signature"])

    def test_background_delivery_without_advance(self):
        self.completed_order()
        deadline = time.time() + 5
        while not self.receiver.received and time.time() < deadline:
            time.sleep(0.02)
        self.assertEqual(len(self.receiver.verified("order.completed")), 1)

    def test_retry_schedule_on_virtual_clock(self):
        with self.receiver.lock:
            self.receiver.script = [500, 503, 500]
        osk = self.completed_order()
        self.advance(0)
        self.advance(59)
        self.assertEqual(len(self.receiver.received), 1)
        self.advance(1)      # +1 min
        self.assertEqual(len(self.receiver.received), 2)
        self.advance(300)    # +5 min
        self.advance(1800)   # +30 min -> 4th attempt succeeds
        rs = self.receiver.received
        self.assertEqual([r["status"] for r in rs], [500, 503, 500, 200])
        self.assertEqual([r["payload"]["IsResent"] for r in rs], [False, True, True, True])
        self.assertEqual(len({r["headers"]["x-fc-nonce"] for r in rs}), 4)
        self.assertTrue(all(r["verified"] for r in rs))
        atts = self.admin("GET", "/_admin/webhooks?orderId=" + osk)
        self.assertEqual([a["attempt"] for a in atts["attempts"]], [1, 2, 3, 4])
        self.assertEqual(atts["events"][0]["status"], "delivered")
        self.advance(86400 * 2)
        self.assertEqual(len(self.receiver.received), 4)

    def test_gives_up_after_schedule(self):
        with self.receiver.lock:
            self.receiver.script = [500] * 20
        osk = self.completed_order()
        self.advance(sum(webhooks.RETRY_DELAYS) + 10)
        self.assertEqual(len(self.receiver.received), 1 + len(webhooks.RETRY_DELAYS))
        ev = self.admin("GET", "/_admin/webhooks?orderId=" + osk)["events"][0]
        self.assertEqual(ev["status"], "failed")

    def test_timeout_counts_as_failure(self):
        self.admin("POST", "/_admin/config", {"webhookTimeoutSeconds": 0.3})
        self.receiver.delay = 1.0
        osk = self.completed_order()
        self.advance(0)
        self.receiver.delay = 0.0
        att = self.admin("GET", "/_admin/webhooks?orderId=" + osk)["attempts"]
        self.assertIsNone(att[0]["status"])
        self.assertIn("timed out", att[0]["error"])
        self.advance(60)
        att = self.admin("GET", "/_admin/webhooks?orderId=" + osk)["attempts"]
        self.assertEqual((att[-1]["status"], att[-1]["isResent"]), (200, True))
        self.admin("POST", "/_admin/config", {"webhookTimeoutSeconds": 3})

    def test_duplicate_mode(self):
        self.admin("POST", "/_admin/webhooks/mode", {"duplicate": True})
        osk = self.completed_order()
        self.advance(0)
        got = self.receiver.verified("order.completed")
        self.assertEqual(len(got), 2)
        self.assertEqual(got[0]["body"], got[1]["body"])
        self.assertNotEqual(got[0]["headers"]["x-fc-nonce"], got[1]["headers"]["x-fc-nonce"])

    def test_reorder_mode(self):
        self.admin("POST", "/_admin/webhooks/mode", {"reorder": True})
        osk = self.evaluate(self.eval_body(amount=4901))["orderSessionKey"]
        self.api("POST", "/v1/orders/%s/refund" % osk, {"amountToRefund": 1})
        time.sleep(0.2)  # the background ticker must NOT deliver in reorder mode
        self.assertEqual(self.receiver.received, [])
        self.advance(0)
        events = [r["payload"]["Event"] for r in self.receiver.verified()]
        self.assertEqual(events, ["order.refunded", "order.completed"])
        atts = self.admin("GET", "/_admin/webhooks?orderId=" + osk)["attempts"]
        self.assertTrue(all(a["reordered"] for a in atts))

    def test_delay_mode(self):
        self.admin("POST", "/_admin/webhooks/mode", {"delay_seconds": 30})
        self.completed_order()
        self.advance(29)
        self.assertEqual(self.receiver.received, [])
        self.advance(1)
        self.assertEqual(len(self.receiver.verified()), 1)

    def test_wrong_signature_refused_then_retried(self):
        self.admin("POST", "/_admin/webhooks/mode", {"wrong_signature": True})
        osk = self.completed_order()
        self.advance(0)
        r = self.receiver.received[0]
        self.assertFalse(r["verified"])
        self.assertEqual(r["status"], 401)
        self.admin("POST", "/_admin/webhooks/mode", {})
        self.advance(60)
        self.assertTrue(self.receiver.received[-1]["verified"])
        self.assertTrue(self.receiver.received[-1]["payload"]["IsResent"])

    def test_stale_date(self):
        self.admin("POST", "/_admin/webhooks/mode", {"stale_date": True})
        self.completed_order()
        self.advance(0)
        r = self.receiver.received[0]
        self.assertEqual((r["verified"], r["reason"]), (False, "stale x-fc-date"))
        # the signature itself is valid over the stale date
        h = r["headers"]
        self.assertTrue(signing.verify(KEY, h, h["host"], r["body"].encode())[0])

    def test_resend(self):
        osk = self.completed_order()
        self.advance(0)
        obj = self.admin("POST", "/_admin/webhooks/resend", {"orderId": osk})
        self.assertEqual((obj["attempt"]["status"], obj["attempt"]["isResent"]), (200, True))
        got = self.receiver.verified("order.completed")
        self.assertEqual([g["payload"]["IsResent"] for g in got], [False, True])
        self.assertEqual(self.client.json("POST", "/_admin/webhooks/resend", {"orderId": "nope"})[0], 404)

    def test_chargeback_event(self):
        osk = self.completed_order()
        self.admin("POST", "/_admin/orders/%s/chargeback" % osk, {"amount": 4901, "reasonCode": "10.4"})
        self.advance(0)
        cb = self.receiver.verified("payment.chargeback.received")[0]["payload"]
        self.assertEqual(cb["EventData"], {"amount": 4901, "reasonCode": "10.4"})

    def test_no_target(self):
        self.admin("POST", "/_admin/config", {"webhookUrl": ""})
        try:
            osk = self.completed_order()
            self.advance(0)
            ev = self.admin("GET", "/_admin/webhooks?orderId=" + osk)["events"][0]
            self.assertEqual(ev["status"], "no-target")
        finally:
            self.admin("POST", "/_admin/config", {"webhookUrl": self.receiver.url})


if __name__ == "__main__":
    unittest.main()
