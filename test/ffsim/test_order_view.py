# test_order_view.py - GET /v1/orders/{id} answers the documented fields only
# (flexfactor-api.md 4.5 + 12a): no isExpired; an expired managed-MIT order reads
# status 2 CANCELLED with its expiryDate passed, /outcome still says EXPIRED and the
# order.expired webhook is sent.
import unittest

import clock
from simtest import SimCase

DOCUMENTED = ["id", "correlationId", "referenceNumber", "status", "statusName", "orderPlacedDate",
              "expiryDate", "billingAddress", "shippingAddress", "firstName", "lastName", "email",
              "phone", "secondaryEmail", "currencyCode", "currencySymbol"]
AMOUNTS = ["amount", "refundedAmount"]   # the order's amounts in cents


class OrderView(SimCase):
    def test_fields_are_the_documented_ones(self):
        obj = self.evaluate(self.eval_body(amount=4999, order_id="VIEW-1", correlationId="corr-1",
                                           shippingInformation={"FirstName": "Jane", "city": "X"}))
        o = self.order(obj["orderSessionKey"])
        self.assertEqual(list(o), DOCUMENTED + AMOUNTS)
        self.assertEqual((o["id"], o["referenceNumber"], o["correlationId"]),
                         (obj["orderSessionKey"], "VIEW-1", "corr-1"))
        self.assertEqual((o["status"], o["statusName"]), (4, "PROCESSING"))
        self.assertIsInstance(o["status"], int)
        self.assertEqual((o["firstName"], o["lastName"], o["email"]), ("Jane", "Roe", "jane@example.com"))
        self.assertEqual(o["billingAddress"]["addressLine1"], "1 Main St")
        self.assertEqual(o["billingAddress"]["zipCode"], "62701")
        self.assertEqual(o["shippingAddress"], {"firstName": "Jane", "city": "X"})
        self.assertEqual((o["currencyCode"], o["currencySymbol"], o["amount"]), ("USD", "$", 4999))
        st, page = self.api("GET", "/v1/orders")
        self.assertEqual(list(page["items"][0]), DOCUMENTED + AMOUNTS)

    def test_expired_order_reads_cancelled_without_is_expired(self):
        osk = self.evaluate(self.eval_body(amount=4914, order_id="EXP-1",
                                           expiryDateUtc=self.expiry(2)))["orderSessionKey"]
        o = self.order(osk)
        self.assertEqual((o["status"], o["statusName"]), (4, "PROCESSING"))
        self.assertGreater(clock.parse_iso(o["expiryDate"]), self.sim.clock.now())
        self.advance(2 * 86400 + 1)
        o = self.order(osk)
        self.assertEqual((o["status"], o["statusName"]), (2, "CANCELLED"))
        self.assertNotIn("isExpired", o)
        self.assertLess(clock.parse_iso(o["expiryDate"]), self.sim.clock.now())
        st, out = self.api("POST", "/v1/outcome", {"orderSessionKey": osk})
        self.assertEqual(out["status"], "EXPIRED")
        ev = self.admin("GET", "/_admin/webhooks?orderId=" + osk)["events"]
        self.assertEqual([e["event"] for e in ev], ["order.expired"])
        self.assertEqual(self.admin("GET", "/_admin/orders/" + osk)["state"], "EXPIRED")
        st, page = self.api("GET", "/v1/orders?status=2")
        self.assertEqual([i["id"] for i in page["items"]], [osk])
        self.assertNotIn("isExpired", page["items"][0])


if __name__ == "__main__":
    unittest.main()
