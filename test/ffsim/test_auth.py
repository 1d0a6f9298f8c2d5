# test_auth.py - /v1/oauth2/token, bearer checks and /v1/tokenize.
import json
import time
import unittest

import jwt_hs256
from simtest import MID, SimCase


class TokenTest(SimCase):
    with_receiver = False

    def test_token_claims_and_expires_in_ms(self):
        t0 = time.time()
        status, obj = self.client.json("POST", "/v1/oauth2/token",
                                       {"AppKey": "test-app-key", "AppSecret": "test-app-secret"})
        self.assertEqual(status, 200)
        for k in ("accessToken", "refreshToken", "expires", "id", "session", "daysToEnforceMFA",
                  "skipAvailable", "success", "result", "status", "statusCode", "errors",
                  "customProperties"):
            self.assertIn(k, obj)
        self.assertTrue(obj["success"])
        claims = json.loads(jwt_hs256.b64url_decode(obj["accessToken"].split(".")[1]))
        header = json.loads(jwt_hs256.b64url_decode(obj["accessToken"].split(".")[0]))
        self.assertEqual(header["alg"], "HS256")
        self.assertEqual(claims["iss"], "Api-Client-Service")
        self.assertEqual(claims["custom:mid"], MID)
        self.assertEqual(claims["aud"], ["payments", "orders", "merchants", "eligibility-sftp",
                                         "eligibility", "contact"])
        self.assertEqual(claims["sub"], claims["unique_name"])
        self.assertIsInstance(claims["iat"], str)
        self.assertEqual(claims["exp"] - claims["nbf"], 600)
        self.assertEqual(obj["expires"], int(claims["iat"]) + 600000)
        self.assertAlmostEqual(obj["expires"] / 1000.0, t0 + 600, delta=5)

    def test_camel_case_keys_accepted(self):
        status, obj = self.client.json("POST", "/v1/oauth2/token",
                                       {"appKey": "test-app-key", "appsecret": "test-app-secret"})
        self.assertEqual(status, 200)

    def test_bad_credentials_400(self):
        status, obj = self.client.json("POST", "/v1/oauth2/token",
                                       {"AppKey": "test-app-key", "AppSecret": "nope"})
        self.assertEqual(status, 400)
        self.assertEqual(obj["status"], 400)
        status, obj = self.client.json("POST", "/v1/oauth2/token", {"AppKey": "x"})
        self.assertEqual(status, 400)
        self.assertEqual(obj["AppSecret"], ["The AppSecret field is required."])

    def test_missing_bearer_401_empty_body(self):
        status, resp, body = self.client.request("POST", "/v1/evaluate", {"a": 1})
        self.assertEqual(status, 401)
        self.assertEqual(body, b"")
        self.assertEqual(resp.getheader("WWW-Authenticate"), "Bearer")
        self.assertEqual(resp.getheader("Content-Length"), "0")

    def test_invalid_and_revoked_bearer_401(self):
        status, resp, body = self.client.request("GET", "/v1/orders", headers={"Authorization": "Bearer abc.def.ghi"})
        self.assertEqual(status, 401)
        self.assertIn("invalid_token", resp.getheader("WWW-Authenticate"))
        self.assertEqual(self.api("GET", "/v1/orders")[0], 200)
        # a bare token (no "Bearer ") is accepted like the older doc samples
        st, _ = self.client.json("GET", "/v1/orders", headers={"Authorization": self.token()})
        self.assertEqual(st, 200)
        self.admin("POST", "/_admin/tokens/revoke", {})
        self.assertEqual(self.api("GET", "/v1/orders")[0], 401)
        self._token = None
        self.assertEqual(self.api("GET", "/v1/orders")[0], 200)

    def test_ttl_shortened_and_expiry(self):
        self.admin("POST", "/_admin/token-ttl", {"seconds": 1})
        status, obj = self.client.json("POST", "/v1/oauth2/token",
                                       {"AppKey": "test-app-key", "AppSecret": "test-app-secret"})
        claims = json.loads(jwt_hs256.b64url_decode(obj["accessToken"].split(".")[1]))
        self.assertEqual(claims["exp"] - claims["nbf"], 1)
        self.assertEqual(obj["expires"] - int(claims["iat"]), 1000)
        # exp is whole seconds: wait (bounded, real time) until it has passed
        deadline = time.time() + 3
        while time.time() < claims["exp"] + 0.05 and time.time() < deadline:
            time.sleep(0.05)
        st, resp, _ = self.client.request("GET", "/v1/orders",
                                          headers={"Authorization": "Bearer " + obj["accessToken"]})
        self.assertEqual(st, 401)
        self.assertIn("expired", resp.getheader("WWW-Authenticate"))

    def test_tokens_listed_in_admin(self):
        self.token()
        self._token = None
        self.token()
        obj = self.admin("GET", "/_admin/tokens")
        self.assertEqual(obj["count"], 2)
        self.assertEqual(len(obj["tokens"]), 2)
        self.assertEqual(obj["ttlSeconds"], 600)


class TokenizeTest(SimCase):
    with_receiver = False

    def _tok(self, card, env="test-tok-key", mid=MID, ct="application/json"):
        return self.client.request("POST", "/v1/tokenize?mid=%s&environment=%s" % (mid, env),
                                   raw=json.dumps({"payment_method": {"credit_card": card}}).encode(),
                                   headers={"Content-Type": ct})

    CARD = {"first_name": "Jane", "last_name": "Roe", "number": "4111111111111111",
            "verification_value": "123", "month": "03", "year": "2030"}

    def test_tokenize_shape(self):
        st, _, body = self._tok(self.CARD, ct="application/*+json")
        self.assertEqual(st, 200)
        obj = json.loads(body)
        pm = obj["transaction"]["payment_method"]
        self.assertEqual(len(pm["token"]), 36)
        self.assertEqual(pm["last_four_digits"], "1111")
        self.assertEqual(pm["first_six_digits"], "41111111")
        self.assertEqual(pm["month"], 3)
        self.assertEqual(pm["year"], 2030)
        self.assertIsNone(pm["number"])
        self.assertTrue(obj["transaction"]["succeeded"])
        self.assertTrue(obj["success"])
        cards = self.admin("GET", "/_admin/cards")
        self.assertEqual(cards["cards"][0]["token"], pm["token"])

    def test_wrong_environment_401(self):
        st, _, _ = self._tok(self.CARD, env="wrong")
        self.assertEqual(st, 401)

    def test_luhn_and_missing_number_422(self):
        st, _, body = self._tok(dict(self.CARD, number="4111111111111112"))
        self.assertEqual(st, 422)
        self.assertIn("payment_method.credit_card.number", json.loads(body)["errors"])
        card = dict(self.CARD)
        del card["number"]
        st, _, _ = self._tok(card)
        self.assertEqual(st, 422)

    def test_missing_query_400(self):
        st, _, _ = self.client.request("POST", "/v1/tokenize", raw=b"{}",
                                       headers={"Content-Type": "application/json"})
        self.assertEqual(st, 400)


if __name__ == "__main__":
    unittest.main()
