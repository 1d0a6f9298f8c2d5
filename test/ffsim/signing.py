# signing.py - the webhook authenticity scheme of flexfactor-api.md section 7.4.
#
# Owns: x-fc-content-sha512, the x-fc-authorization Signature (HMAC-SHA512 over
# "POST\n" + nonce;date;host;contentHash) and x-fc-signature (HMAC-SHA512 over the
# raw body), plus verification. Shared by the simulator and webhook_receiver.py.
import base64
import hashlib
import hmac

SIGNED_HEADERS = "x-fc-nonce;x-fc-date;host;x-fc-content-sha512"


def content_sha512(body):
    return base64.b64encode(hashlib.sha512(body).digest()).decode("ascii")


def string_to_sign(nonce, date, host, content_hash):
    return "POST\n" + nonce + ";" + date + ";" + host + ";" + content_hash


def authorization_signature(key_b64, nonce, date, host, body):
    key = base64.b64decode(key_b64)
    sts = string_to_sign(nonce, date, host, content_sha512(body)).encode("utf-8")
    return base64.b64encode(hmac.new(key, sts, hashlib.sha512).digest()).decode("ascii")


def body_signature(key_b64, body):
    key = base64.b64decode(key_b64)
    return base64.b64encode(hmac.new(key, body, hashlib.sha512).digest()).decode("ascii")


def authorization_header(signature):
    return "HMAC-SHA512 SignedHeaders=" + SIGNED_HEADERS + "&Signature=" + signature


def sign(key_b64, nonce, date, host, body):
    """Return the dict of x-fc-* headers for one delivery."""
    return {
        "x-fc-nonce": nonce,
        "x-fc-date": date,
        "x-fc-content-sha512": content_sha512(body),
        "x-fc-authorization": authorization_header(
            authorization_signature(key_b64, nonce, date, host, body)),
        "x-fc-signature": body_signature(key_b64, body),
    }


def parse_authorization(value):
    """Return (signed_headers, signature) from an x-fc-authorization value, or None."""
    if not value or not value.startswith("HMAC-SHA512 "):
        return None
    rest = value[len("HMAC-SHA512 "):]
    parts = {}
    for item in rest.split("&"):
        k, sep, v = item.partition("=")
        if not sep:
            return None
        parts[k.strip()] = v.strip()
    if "SignedHeaders" not in parts or "Signature" not in parts:
        return None
    return parts["SignedHeaders"], parts["Signature"]


def verify(key_b64, headers, host, body):
    """Verify a delivery. headers: mapping with lower-case x-fc-* names.
    Returns (ok, reason). Compares in constant time."""
    sha = headers.get("x-fc-content-sha512", "")
    if not hmac.compare_digest(sha.encode(), content_sha512(body).encode()):
        return False, "content sha512 mismatch"
    parsed = parse_authorization(headers.get("x-fc-authorization", ""))
    if parsed is None:
        return False, "malformed x-fc-authorization"
    signed, sig = parsed
    if signed != SIGNED_HEADERS:
        return False, "unexpected SignedHeaders"
    expect = authorization_signature(key_b64, headers.get("x-fc-nonce", ""),
                                     headers.get("x-fc-date", ""), host, body)
    if not hmac.compare_digest(sig.encode(), expect.encode()):
        return False, "authorization signature mismatch"
    bsig = headers.get("x-fc-signature", "")
    if not hmac.compare_digest(bsig.encode(), body_signature(key_b64, body).encode()):
        return False, "x-fc-signature mismatch"
    return True, "ok"
