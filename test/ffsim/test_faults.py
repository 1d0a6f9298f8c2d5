# test_faults.py - REST fault injection through /_admin/faults.
import http.client
import json
import socket
import time
import unittest

from simtest import Client, SimCase


class Faults(SimCase):
    with_receiver = False

    def fault(self, **spec):
        return self.admin("POST", "/_admin/faults", spec)

    def test_500_next_n_then_normal(self):
        self.fault(endpoint="/v1/evaluate", mode="500", count=2)
        body = self.eval_body(amount=4901)
        st1, p1 = self.api("POST", "/v1/evaluate", body)
        st2, _ = self.api("POST", "/v1/evaluate", body)
        st3, ok = self.api("POST", "/v1/evaluate", body)
        self.assertEqual((st1, st2, st3), (500, 500, 200))
        self.assertEqual(p1["status"], 500)
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 1)
        log = self.admin("GET", "/_admin/requests?path=/v1/evaluate")
        self.assertEqual([r["status"] for r in log], [500, 500, 200])
        self.assertEqual([r["fault"] for r in log], ["500", "500", None])

    def test_429_retry_after(self):
        self.fault(endpoint="/v1/oauth2/token", mode="429", seconds=3)
        st, resp, _ = self.client.request("POST", "/v1/oauth2/token",
                                          {"AppKey": "test-app-key", "AppSecret": "test-app-secret"})
        self.assertEqual((st, resp.getheader("Retry-After")), (429, "3"))
        self.assertEqual(self.api("GET", "/v1/orders")[0], 200)

    def test_malformed_json(self):
        self.fault(endpoint="/v1/orders", mode="malformed")
        st, resp, raw = self.client.request("GET", "/v1/orders", headers=self.auth())
        self.assertEqual(st, 200)
        self.assertTrue(resp.getheader("Content-Type").startswith("application/json"))
        with self.assertRaises(ValueError):
            json.loads(raw)
        self.assertEqual(self.api("GET", "/v1/orders")[0], 200)  # the connection is still usable

    def test_timeout_no_answer_until_client_gives_up(self):
        self.fault(endpoint="/v1/evaluate", mode="timeout")
        tok = self.token()
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=0.5)
        t0 = time.time()
        with self.assertRaises(socket.timeout):
            c.request("POST", "/v1/evaluate", body=json.dumps(self.eval_body()),
                      headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
            c.getresponse()
        self.assertGreaterEqual(time.time() - t0, 0.45)
        c.close()
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 0)

    def test_timeout_after_processing_loses_the_answer(self):
        self.fault(endpoint="/v1/evaluate", mode="timeout", after=True, seconds=1)
        body = self.eval_body(amount=4999)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError)):
            c.request("POST", "/v1/evaluate", body=json.dumps(body),
                      headers=dict(self.auth(), **{"Content-Type": "application/json"}))
            c.getresponse()
        c.close()
        # the order exists; the retry with the same key learns the outcome
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 1)
        st, obj = self.api("POST", "/v1/evaluate", body)
        self.assertEqual((st, obj["status"]), (200, "SUBMITTED"))
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 1)

    def test_hang_then_answer(self):
        self.fault(endpoint="/v1/orders", mode="hang", seconds=0.4)
        t0 = time.time()
        st, _ = self.api("GET", "/v1/orders")
        self.assertEqual(st, 200)
        self.assertGreaterEqual(time.time() - t0, 0.35)

    def test_hang_is_bounded(self):
        obj = self.fault(endpoint="/v1/orders", mode="hang", seconds=100000)
        self.assertEqual(obj["added"][0]["seconds"], 120.0)
        self.admin("DELETE", "/_admin/faults")

    def test_drop_and_wildcard_and_method(self):
        self.fault(endpoint="/v1/orders/*", mode="drop", method="GET")
        c = Client(self.port, timeout=3)
        st, resp, raw = c.request("GET", "/v1/orders", headers=self.auth())  # not matched
        self.assertEqual(st, 200)
        c2 = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError)):
            c2.request("GET", "/v1/orders/abc", headers=self.auth())
            c2.getresponse()
        c2.close()
        c.close()

    def test_500_after_processing(self):
        self.fault(endpoint="/v1/evaluate", mode="500", after=True)
        st, _ = self.api("POST", "/v1/evaluate", self.eval_body(amount=4901))
        self.assertEqual(st, 500)
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 1)

    def test_invalid_specs_and_clear(self):
        self.assertEqual(self.client.json("POST", "/_admin/faults", {"endpoint": "/v1/x", "mode": "boom"})[0], 400)
        self.assertEqual(self.client.json("POST", "/_admin/faults", {"endpoint": "x", "mode": "500"})[0], 400)
        self.fault(endpoint="/v1/orders", mode="500", count=5)
        self.assertEqual(len(self.admin("GET", "/_admin/faults")["faults"]), 1)
        self.admin("DELETE", "/_admin/faults")
        self.assertEqual(self.api("GET", "/v1/orders")[0], 200)

    def test_admin_never_faulted(self):
        self.fault(endpoint="/*", mode="500", count=10)
        self.assertEqual(self.client.json("GET", "/_admin/health")[0], 200)
        self.admin("DELETE", "/_admin/faults")


if __name__ == "__main__":
    unittest.main()
