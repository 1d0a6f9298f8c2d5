# test_admin.py - the inspection API: request log, health, config, reset, bounds.
import unittest

from simtest import MID, SimCase


class Admin(SimCase):
    with_receiver = False

    def test_request_log(self):
        body = self.eval_body(amount=4901)
        self.api("POST", "/v1/evaluate", body, headers={"X-Test": "yes"})
        log = self.admin("GET", "/_admin/requests?path=/v1/evaluate")
        self.assertEqual(len(log), 1)
        r = log[0]
        self.assertEqual((r["method"], r["path"], r["status"]), ("POST", "/v1/evaluate", 200))
        self.assertEqual(r["headers"]["X-Test"], "yes")
        self.assertTrue(r["headers"]["Authorization"].startswith("Bearer "))
        import json
        self.assertEqual(json.loads(r["body"])["orderId"], body["orderId"])
        self.assertIn("ts", r)
        self.api("GET", "/v1/orders?pageSize=3")
        q = self.admin("GET", "/_admin/requests?path=/v1/orders")[0]
        self.assertEqual(q["query"], "pageSize=3")
        self.assertEqual(len(self.admin("GET", "/_admin/requests?method=GET")), 1)
        self.assertEqual(len(self.admin("GET", "/_admin/requests?limit=1")), 1)
        self.admin("DELETE", "/_admin/requests")
        self.assertEqual(self.admin("GET", "/_admin/requests"), [])

    def test_health_and_config(self):
        h = self.admin("GET", "/_admin/health")
        self.assertTrue(h["ok"])
        self.assertEqual(h["mid"], MID)
        cfg = self.admin("GET", "/_admin/config")
        self.assertNotIn("appSecret", cfg)
        self.assertNotIn("webhookKey", cfg)
        self.assertEqual(self.client.json("POST", "/_admin/config", {"mitMode": "bogus"})[0], 400)
        self.assertEqual(self.client.json("POST", "/_admin/config", {"nope": 1})[0], 400)
        self.assertEqual(self.admin("POST", "/_admin/config", {"mitMode": "sync"})["mitMode"], "sync")

    def test_reset_forgets_everything(self):
        self.evaluate(self.eval_body(amount=4901))
        self.advance(100)
        self.admin("POST", "/_admin/reset", {})
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 0)
        self.assertEqual(self.admin("GET", "/_admin/tokens")["count"], 0)
        self.assertEqual(self.admin("GET", "/_admin/idempotency")["count"], 0)
        self.assertEqual(self.admin("GET", "/_admin/clock")["advancedSeconds"], 0)
        self._token = None
        self.assertEqual(self.api("GET", "/v1/orders")[0], 200)

    def test_clock(self):
        c0 = self.admin("GET", "/_admin/clock")
        self.assertEqual(c0["mode"], "frozen")
        c1 = self.advance(90)["clock"]
        self.assertAlmostEqual(c1["epoch"] - c0["epoch"], 90, places=3)
        self.assertEqual(self.client.json("POST", "/_admin/clock/advance", {"seconds": -1})[0], 400)

    def test_unknown_admin_route(self):
        self.assertEqual(self.client.json("GET", "/_admin/nothing")[0], 404)
        self.assertEqual(self.client.json("PUT", "/_admin/health")[0], 405)


class LogCap(SimCase):
    with_receiver = False
    config = {"log_cap": 5}

    def test_request_log_is_bounded(self):
        for _ in range(12):
            self.api("GET", "/v1/orders")
        self.assertEqual(len(self.admin("GET", "/_admin/requests")), 5)


if __name__ == "__main__":
    unittest.main()
