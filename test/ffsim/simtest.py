# simtest.py - helpers for the simulator's unittest suites (not a test module itself).
#
# Owns: SimCase, a TestCase base that starts one in-process simulator (port 0,
# 127.0.0.1, temporary SFTP root) and one verifying webhook receiver per class,
# resets state before each test, and offers small keep-alive HTTP helpers.
import http.client
import json
import os
import shutil
import tempfile
import unittest
import uuid

import sim as simmod
import store
import webhook_receiver

MID = "00000000-0000-4000-8000-000000000001"
KEY = "XRmKBxG5uvt1qWzqvp+T6CAbTo0MB89GTxXZD5cHA56RP7Mj4NbnHQOR1Y8uorUU9YQz8ujaVRUdm9vTSkPZSw=="
TIMEOUT = 15


class Client:
    """A keep-alive JSON client (one connection, reconnects when needed)."""

    def __init__(self, port, timeout=TIMEOUT):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, headers=None, raw=None):
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=hdrs)
                resp = self.conn.getresponse()
                payload = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, resp, payload
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise

    def json(self, method, path, body=None, headers=None):
        status, resp, payload = self.request(method, path, body, headers)
        return status, (json.loads(payload) if payload else None)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class SimCase(unittest.TestCase):
    config = {}           # extra store.Config fields for the class
    with_receiver = True

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ffsim-test-")
        cls.receiver = None
        kw = dict(sftp_root=os.path.join(cls.tmp, "sftp"), scan_interval=3600.0)
        if cls.with_receiver:
            cls.receiver = webhook_receiver.Receiver(KEY).start()
            kw["webhook_url"] = cls.receiver.url
            kw["webhook_timeout"] = 3.0
        kw.update(cls.config)
        cls.sim = simmod.Simulator(store.Config(**kw)).start()
        cls.port = cls.sim.port
        cls.client = Client(cls.port)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.sim.stop()
        if cls.receiver:
            cls.receiver.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        # The defaults of store.Config (strict rules, the recorded flat error map),
        # restored before every test since a test may switch them.
        d = store.Config()
        base = dict(mitMode="managed", errorShape=d.error_shape, strict=d.strict, acceptUnknownTokens=True,
                    tokenTtlSeconds=600, asyncDelaySeconds=60)
        base.update({k: v for k, v in self.runtime_config().items()})
        self.admin("POST", "/_admin/reset", {"files": True})
        self.admin("POST", "/_admin/config", base)
        if self.receiver:
            with self.receiver.lock:
                self.receiver.received.clear()
                self.receiver.script.clear()
                self.receiver.delay = 0.0
        self._token = None

    def runtime_config(self):
        return {}

    # -- helpers ------------------------------------------------------------
    def admin(self, method, path, body=None):
        status, obj = self.client.json(method, path, body)
        self.assertEqual(status, 200, "admin %s %s -> %s %s" % (method, path, status, obj))
        return obj

    def token(self):
        if self._token is None:
            status, obj = self.client.json("POST", "/v1/oauth2/token",
                                           {"AppKey": "test-app-key", "AppSecret": "test-app-secret"})
            self.assertEqual(status, 200)
            self._token = obj["accessToken"]
        return self._token

    def auth(self):
        return {"Authorization": "Bearer " + self.token()}

    def api(self, method, path, body=None, headers=None, auth=True):
        h = dict(self.auth() if auth else {})
        h.update(headers or {})
        return self.client.json(method, path, body, h)

    def tokenize(self, pan="4111111111111111"):
        status, obj = self.client.json(
            "POST", "/v1/tokenize?mid=%s&environment=test-tok-key" % MID,
            {"payment_method": {"email": "j@example.com", "credit_card": {
                "first_name": "Jane", "last_name": "Roe", "number": pan,
                "verification_value": "123", "month": "03", "year": "2030"}}})
        self.assertEqual(status, 200, obj)
        return obj["transaction"]["payment_method"]["token"]

    def expiry(self, days=7):
        """An expiryDateUtc `days` ahead of the virtual clock (whole seconds, Z)."""
        import clock
        return clock.iso(self.sim.clock.now() + days * 86400, micro=False)

    def eval_body(self, card_token=None, amount=4999, is_mit=True, order_id=None, key=None, **extra):
        """A complete /evaluate body (the shape of flexfactor-api.md 4.3.3) that the
        strict rules accept: CIT, or managed-MIT recurring with isRecurring,
        subscription and an expiryDateUtc 7 virtual days ahead (the deadline an MIT
        order without one used to get). extra keys replace root keys."""
        order_id = order_id or "PG-" + uuid.uuid4().hex[:10]
        body = {
            "isDeclined": True, "isMIT": is_mit, "mid": MID,
            "orderId": order_id,
            "idempotencyKey": key or str(uuid.uuid4()),
            "customerIp": "203.0.113.7",
            "transaction": {
                "id": "gw-1", "amount": amount, "currency": "USD",
                "timestampUtc": "2026-01-15T10:00:00Z", "timezoneUtcOffset": 0,
                "responseCode": "05", "responseCodeSource": "nmi", "responseStatus": "DECLINED",
                "avsResultCode": "Y", "cvvResultCode": "M", "cavvResultCode": "NA",
                "cardNotPresent": True},
            "payer": {"email": "jane@example.com", "phone": "+15555550100"},
            "billingInformation": {
                "firstName": "Jane", "lastName": "Roe", "country": "United States", "countryCode": "US",
                "addressLine1": "1 Main St", "city": "Springfield", "state": "IL", "zipCode": "62701"},
            "paymentMethod": {
                "cardNumber": card_token or str(uuid.uuid4()), "token": True,
                "holderName": "Jane Roe", "cardBrand": "VISA", "cardType": "CREDIT",
                "expirationMonth": 3, "expirationYear": 2030, "cardBinNumber": "411111",
                "cardLast4Digits": "1111"},
        }
        if is_mit:
            body["isRecurring"] = True
            body["expiryDateUtc"] = self.expiry(7)
            body["subscription"] = {"subscriptionId": "sub-" + order_id, "interval": "monthly",
                                    "price": amount, "currency": "USD"}
        body.update(extra)
        return body

    @staticmethod
    def transmit_body(order_id=None, is_mit=False, **extra):
        """A complete /transmit body (section 4.2 + 12a) that the strict rules accept."""
        order_id = order_id or "TX-" + uuid.uuid4().hex[:10]
        body = {
            "isDeclined": False, "isMIT": is_mit, "mid": MID, "orderId": order_id,
            "transaction": {
                "id": "t-" + order_id, "amount": 2500, "currency": "USD",
                "timestampUtc": "2026-01-15T10:00:00Z", "responseCode": "00", "responseCodeSource": "nmi",
                "avsResultCode": "Y", "cvvResultCode": "M", "cavvResultCode": "NA"},
            "payer": {"email": "a@example.com"},
            "paymentMethod": {
                "holderName": "Jane Roe", "cardType": "CREDIT", "cardBrand": "VISA", "cardCountry": "US",
                "expirationMonth": 3, "expirationYear": 2030, "cardBinNumber": "411111",
                "cardLast4Digits": "1111"},
        }
        if is_mit:
            body["isRecurring"] = True
            body["subscription"] = {"subscriptionId": "sub-" + order_id, "interval": "monthly",
                                    "price": 2500, "currency": "USD"}
        body.update(extra)
        return body

    def evaluate(self, body, expect=200):
        status, obj = self.api("POST", "/v1/evaluate", body)
        self.assertEqual(status, expect, obj)
        return obj

    def advance(self, seconds):
        return self.admin("POST", "/_admin/clock/advance", {"seconds": seconds})

    def order(self, osk):
        status, obj = self.api("GET", "/v1/orders/" + osk)
        self.assertEqual(status, 200, obj)
        return obj
