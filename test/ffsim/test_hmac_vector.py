# test_hmac_vector.py - reproduces the public webhook test vector of
# flexfactor-api.md section 7.4 byte for byte (content sha, Signature, x-fc-signature).
import unittest

import signing

KEY = "XRmKBxG5uvt1qWzqvp+T6CAbTo0MB89GTxXZD5cHA56RP7Mj4NbnHQOR1Y8uorUU9YQz8ujaVRUdm9vTSkPZSw=="
HOST = "fctestwebhook.free.beeceptor.com"
NONCE = "5f1c2de28a76457c9cb79d1740f2260a"
DATE = "Mon, 20 Mar 2023 17:16:40 GMT"
BODY = (b'{"Event":"order.completed","TimeStamp":"2023-03-20T17:16:40.898703Z","EventData":null,'
        b'"ExternalOrderId":"a9735210-1349-49bf-bfde-b737dd07872a",'
        b'"OrderId":"ac9674ed-cbfe-49aa-bc8b-eb1d2b74c429","ConfirmationId":"22ACD1D9",'
        b'"IsTestMode":true,"IsResent":false}')
SHA = "pLs0Op5VWqQM3ZIumqC2NP6MDqcnwFN1znp/oCuw9LcYd8PtvLC8ProyPg8ZDadsRc36NskT3QGKn/PkNqwWfg=="
AUTH_SIG = "+HXN8ZewgINLk+uC/UI92HSWmLK7gZOECPxOGEM91ATyfyzScMF/+osEK5B0UjO7OFqahDvesSo8jmUWMZtQnA=="
BODY_SIG = "SbzcEwAKsViWqrB8+suZMjOdadswbUjLHtIKjDQJYle31xbB8Vr0pVTDaNP28/y+NDynpyFyKKnXmWZy8uJVig=="


class HmacVectorTest(unittest.TestCase):
    def test_body_is_255_bytes(self):
        self.assertEqual(len(BODY), 255)

    def test_content_sha512(self):
        self.assertEqual(signing.content_sha512(BODY), SHA)

    def test_authorization_signature(self):
        self.assertEqual(signing.authorization_signature(KEY, NONCE, DATE, HOST, BODY), AUTH_SIG)

    def test_body_signature(self):
        self.assertEqual(signing.body_signature(KEY, BODY), BODY_SIG)

    def test_headers_exact(self):
        h = signing.sign(KEY, NONCE, DATE, HOST, BODY)
        self.assertEqual(h["x-fc-authorization"],
                         "HMAC-SHA512 SignedHeaders=x-fc-nonce;x-fc-date;host;x-fc-content-sha512"
                         "&Signature=" + AUTH_SIG)
        self.assertEqual(h["x-fc-signature"], BODY_SIG)
        self.assertEqual(h["x-fc-content-sha512"], SHA)
        self.assertEqual(h["x-fc-nonce"], NONCE)
        self.assertEqual(h["x-fc-date"], DATE)

    def test_verify_accepts_vector_and_rejects_tampering(self):
        h = signing.sign(KEY, NONCE, DATE, HOST, BODY)
        self.assertEqual(signing.verify(KEY, h, HOST, BODY), (True, "ok"))
        ok, reason = signing.verify(KEY, h, HOST, BODY.replace(b"true", b"fals"))
        self.assertFalse(ok)
        ok, reason = signing.verify(KEY, h, "other.example:80", BODY)
        self.assertFalse(ok)
        self.assertIn("authorization", reason)
        bad = dict(h, **{"x-fc-signature": BODY_SIG[:-4] + "AAA="})
        self.assertFalse(signing.verify(KEY, bad, HOST, BODY)[0])

    def test_sim_payload_serialisation_matches_vector(self):
        import webhooks
        body = webhooks.payload_bytes("order.completed", "2023-03-20T17:16:40.898703Z", None,
                                      "a9735210-1349-49bf-bfde-b737dd07872a",
                                      "ac9674ed-cbfe-49aa-bc8b-eb1d2b74c429", "22ACD1D9",
                                      True, False)
        self.assertEqual(body, BODY)


if __name__ == "__main__":
    unittest.main()
