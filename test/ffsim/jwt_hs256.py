# jwt_hs256.py - minimal HS256 JSON Web Tokens (encode and verify), stdlib only.
#
# Owns: the token format of POST /v1/oauth2/token (flexfactor-api.md section 2.2).
import base64
import hashlib
import hmac
import json


class JWTError(Exception):
    pass


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    if isinstance(text, str):
        text = text.encode("ascii")
    pad = (-len(text)) % 4
    return base64.urlsafe_b64decode(text + b"=" * pad)


def encode(claims, secret):
    """Return a compact HS256 JWT for the claims dict."""
    header = {"alg": "HS256", "typ": "JWT"}
    h = b64url(json.dumps(header, separators=(",", ":")).encode())
    p = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = (h + "." + p).encode("ascii")
    sig = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return h + "." + p + "." + b64url(sig)


def decode(token, secret):
    """Verify the signature and return the claims. Raises JWTError. Does not
    check exp/nbf: the caller does, against its own clock."""
    try:
        h, p, s = token.split(".")
    except ValueError:
        raise JWTError("malformed token")
    try:
        header = json.loads(b64url_decode(h))
        claims = json.loads(b64url_decode(p))
        sig = b64url_decode(s)
    except (ValueError, TypeError):
        raise JWTError("malformed token")
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise JWTError("unsupported alg")
    expect = hmac.new(secret, (h + "." + p).encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(expect, sig):
        raise JWTError("bad signature")
    if not isinstance(claims, dict):
        raise JWTError("malformed claims")
    return claims
