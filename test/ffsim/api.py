# api.py - the FlexFactor REST API under /v1 (flexfactor-api.md sections 2-4, 10, 11).
#
# Owns: routing of /v1 paths (case-insensitive, as ASP.NET), bearer-token checks
# (401 with an empty body and WWW-Authenticate), OAuth2 token issuing (HS256 JWT,
# `expires` in ms), /tokenize (snake_case, tokenization key in the query), content-type
# checks (application/json and application/*+json), JSON parsing errors, and turning
# engine Outcomes into HTTP answers in the selected error shape (problem | flat).
import os
import re
import time
import urllib.parse
import uuid

import clock
import common
import jwt_hs256
import validation

AUDIENCE = ["payments", "orders", "merchants", "eligibility-sftp", "eligibility", "contact"]
JSON_CT = "application/json; charset=utf-8"
PROBLEM_CT = "application/problem+json; charset=utf-8"
CT_RE = re.compile(r"^\s*application/(json|[^;\s]*\+json)\s*(;.*)?$", re.I)


class Response:
    def __init__(self, status, body=b"", content_type=JSON_CT, headers=None):
        self.status = status
        self.body = body if isinstance(body, bytes) else common.dumpb(body)
        self.content_type = content_type if self.body or status not in (204, 401) else None
        self.headers = headers or []


class Request:
    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query          # dict: lower-case name -> [values]
        self.headers = headers      # email.message.Message (case-insensitive get)
        self.body = body
        self.hang_seconds = 0.0
        self.hang_done = False
        self.stop_event = None

    def hang_point(self):
        """Hold the request here once (fault mode 'hang')."""
        if self.hang_seconds > 0 and not self.hang_done:
            self.hang_done = True
            if self.stop_event is not None:
                self.stop_event.wait(self.hang_seconds)
            else:
                time.sleep(self.hang_seconds)


def problem_response(status, title=None, detail=None, errors=None, headers=None):
    return Response(status, common.problem(status, title, detail, errors), PROBLEM_CT, headers)


class Api:
    def __init__(self, sim):
        self.sim = sim
        self.store = sim.store
        self.engine = sim.engine
        self.jwt_secret = os.urandom(32)
        r = re.compile
        self.routes = [
            ("POST", r(r"^/v1/oauth2/token/?$", re.I), self.token, False),
            ("POST", r(r"^/v1/tokenize/?$", re.I), self.tokenize, False),
            ("POST", r(r"^/v1/transmit/?$", re.I), self.transmit, True),
            ("POST", r(r"^/v1/evaluate/?$", re.I), self.evaluate, True),
            ("POST", r(r"^/v1/outcome/?$", re.I), self.outcome, True),
            ("GET", r(r"^/v1/orders/?$", re.I), self.orders, True),
            ("GET", r(r"^/v1/orders/([^/]+)/?$", re.I), self.order, True),
            ("POST", r(r"^/v1/capture/?$", re.I), self.capture, True),
            ("POST", r(r"^/v1/orders/([^/]+)/refund/?$", re.I), self.refund, True),
            ("POST", r(r"^/v1/orders/([^/]+)/cancel/?$", re.I), self.cancel, True),
            ("POST", r(r"^/v1/orders/([^/]+)/external-cancel/?$", re.I), self.external_cancel, True),
        ]

    # ------------------------------------------------------------- dispatch
    def handle(self, req):
        allowed = []
        for method, rx, fn, needs_auth in self.routes:
            m = rx.match(req.path)
            if not m:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            claims = None
            if needs_auth:
                claims, err = self.authenticate(req)
                if err is not None:
                    return err
            return fn(req, claims, *[common_unquote(g) for g in m.groups()])
        if allowed:
            return problem_response(405, headers=[("Allow", ", ".join(sorted(set(allowed))))])
        return problem_response(404, detail="No such endpoint: %s %s" % (req.method, req.path))

    # ----------------------------------------------------------------- auth
    def authenticate(self, req):
        value = (req.headers.get("Authorization") or "").strip()
        if not value:
            return None, Response(401, b"", headers=[("WWW-Authenticate", "Bearer")])
        token = value[7:].strip() if value.lower().startswith("bearer ") else value
        with self.store.lock:
            info = self.store.tokens.get(token)
        bad = [("WWW-Authenticate", 'Bearer error="invalid_token"')]
        if info is None or info.get("revoked"):
            return None, Response(401, b"", headers=bad)
        try:
            claims = jwt_hs256.decode(token, self.jwt_secret)
        except jwt_hs256.JWTError:
            return None, Response(401, b"", headers=bad)
        if time.time() >= claims.get("exp", 0):
            return None, Response(401, b"", headers=[(
                "WWW-Authenticate", 'Bearer error="invalid_token", error_description="The token expired at \'%s\'"'
                % clock.iso(claims.get("exp", 0), micro=False))])
        return claims, None

    def parse_json(self, req, allow_empty=False):
        """Returns (obj, error_response)."""
        if not req.body:
            if allow_empty:
                return None, None
            return None, self.validation({"": ["A non-empty request body is required."]})
        ct = req.headers.get("Content-Type")
        if not ct or not CT_RE.match(ct):
            return None, problem_response(415, detail="Content-Type must be application/json or application/*+json.")
        try:
            return common.loads(req.body), None
        except (ValueError, UnicodeDecodeError) as e:
            return None, self.validation({"$": ["The JSON value could not be parsed: %s" % e]})

    def validation(self, errors):
        """400 in the configured shape: flat (default, as recorded), wrapped (the
        recorded 2024 "status":"400" form) or problem (documented ProblemDetails)."""
        shape = self.store.config.error_shape
        ct = PROBLEM_CT if shape == "problem" else JSON_CT
        return Response(400, common.validation_body(errors, shape), ct)

    def from_outcome(self, oc):
        if oc.kind in ("ok", "replay", "failed"):
            return Response(oc.http_status, oc.body if isinstance(oc.body, bytes) else common.dumpb(oc.body))
        if oc.kind == "invalid":
            return self.validation(oc.errors)
        return problem_response(oc.http_status, oc.title, oc.detail)

    # ------------------------------------------------------------ endpoints
    def token(self, req, claims):
        obj, err = self.parse_json(req)
        if err:
            return err
        n = common.norm(obj) if isinstance(obj, dict) else {}
        errors = {}
        for f, name in (("appkey", "AppKey"), ("appsecret", "AppSecret")):
            if not isinstance(n.get(f), str) or not n.get(f):
                errors[name] = ["The %s field is required." % name]
        if errors:
            return self.validation(errors)
        cfg = self.store.config
        if n["appkey"] != cfg.app_key or n["appsecret"] != cfg.app_secret:
            return problem_response(400, "Bad Request", "Invalid AppKey or AppSecret.")
        now = time.time()
        ttl = int(cfg.token_ttl)
        iat_ms = int(now * 1000)
        client_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "ffsim-client:" + cfg.app_key))
        jti = common.new_guid()
        claims = {
            "sub": client_id, "unique_name": client_id, "jti": jti, "iat": str(iat_ms),
            "aud": AUDIENCE, "custom:mid": cfg.mid, "nbf": int(now), "exp": int(now) + ttl,
            "iss": "Api-Client-Service",
        }
        token = jwt_hs256.encode(claims, self.jwt_secret)
        expires = iat_ms + ttl * 1000
        st = self.store
        with st.lock:
            st.tokens_issued += 1
            info = {"jti": jti, "accessToken": token, "issuedAt": clock.iso(now), "expires": expires,
                    "exp": claims["exp"], "ttlSeconds": ttl, "revoked": False}
            st.tokens[token] = info
            st.token_log.append(info)
            while len(st.tokens) > st.config.log_cap:
                st.tokens.pop(next(iter(st.tokens)))
        # The recorded answer's bytes (TOKEN_TRANSCRIPT): these keys in this order,
        # compact; `expires` = iat ms + ttl (13 digits); the refresh token has the
        # recorded one's form (ASP.NET Identity prefix, 79 characters).
        resp = Response(200, common.envelope(
            accessToken=token, refreshToken=refresh_token(), expires=expires, id=client_id,
            session=None, daysToEnforceMFA=None, skipAvailable=None))
        if cfg.token_expires:
            # a test's absurd `expires` (1e999, 2^63-1), written as given
            resp.body = resp.body.replace(b'"expires":%d' % expires,
                                          b'"expires":' + cfg.token_expires.encode("ascii"), 1)
        return resp

    def tokenize(self, req, claims):
        cfg = self.store.config
        mid = (req.query.get("mid") or [""])[0]
        env = (req.query.get("environment") or [""])[0]
        errors = {}
        if not mid:
            errors["mid"] = ["The mid query parameter is required."]
        if not env:
            errors["environment"] = ["The environment query parameter (tokenization key) is required."]
        if errors:
            return self.validation(errors)
        if env != cfg.tokenization_key or mid != cfg.mid:
            return problem_response(401, detail="Unknown mid or tokenization key.")
        obj, err = self.parse_json(req)
        if err:
            return err
        errors, card = validation.validate_tokenize(common.norm(obj))
        if errors:
            return problem_response(422, "One or more validation errors occurred.", errors=errors)
        token = self.engine.vault(card)
        return Response(200, tokenize_answer(token, card, time.time_ns() // 100))

    def evaluate(self, req, claims):
        obj, err = self.parse_json(req)
        if err:
            return err
        oc = self.engine.evaluate(obj, claims["custom:mid"], "api", hang_point=req.hang_point)
        return self.from_outcome(oc)

    def transmit(self, req, claims):
        obj, err = self.parse_json(req)
        if err:
            return err
        return self.from_outcome(self.engine.transmit(obj, claims["custom:mid"], "api"))

    def outcome(self, req, claims):
        obj, err = self.parse_json(req)
        if err:
            return err
        n = common.norm(obj) if isinstance(obj, dict) else {}
        key = n.get("ordersessionkey")
        if not isinstance(key, str) or not key:
            return self.validation({"orderSessionKey": ["The OrderSessionKey field is required."]})
        o = self.engine.find(claims["custom:mid"], key)
        if o is None:
            return Response(200, common.envelope(status="NOTFOUND", confirmationId=None))
        with self.store.lock:
            body = common.envelope(status=self.engine.outcome_status(o), confirmationId=o["confirmationId"])
        return Response(200, body)

    def orders(self, req, claims):
        return Response(200, self.engine.list_orders(claims["custom:mid"], req.query))

    def order(self, req, claims, osk):
        o = self.engine.find(claims["custom:mid"], osk)
        if o is None:
            return problem_response(404, "Not Found", "Order %s was not found." % osk)
        with self.store.lock:
            return Response(200, self.engine.view(o))

    def capture(self, req, claims):
        obj, err = self.parse_json(req)
        if err:
            return err
        return self.from_outcome(self.engine.capture(claims["custom:mid"], obj, "api"))

    def refund(self, req, claims, osk):
        obj, err = self.parse_json(req)
        if err:
            return err
        return self.from_outcome(self.engine.refund(claims["custom:mid"], osk, obj, "api"))

    def cancel(self, req, claims, osk):
        obj, err = self.parse_json(req, allow_empty=True)
        if err:
            return err
        return self.from_outcome(self.engine.cancel(claims["custom:mid"], obj, "api", osk=osk))

    def external_cancel(self, req, claims, ext):
        obj, err = self.parse_json(req, allow_empty=True)
        if err:
            return err
        return self.from_outcome(self.engine.cancel(claims["custom:mid"], obj, "api", external=ext))


def common_unquote(s):
    return urllib.parse.unquote(s)


REFRESH_PREFIX = "AQAAAAEAACcQAAAAE"   # as in both recorded refresh tokens
REFRESH_LEN = 79                       # the recorded transcript's length
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def refresh_token():
    """An opaque refresh token of the recorded form (no endpoint accepts it)."""
    rnd = os.urandom(REFRESH_LEN - len(REFRESH_PREFIX))
    return REFRESH_PREFIX + "".join(_ALNUM[b % len(_ALNUM)] for b in rnd)


def dotnet_time(ticks):
    """A .NET round-trip UTC time from 100 ns ticks since the epoch:
    2024-05-14T13:44:25.3179186Z (7 fractional digits, as recorded)."""
    secs, frac = divmod(ticks, 10 ** 7)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%07dZ" % frac


def tokenize_answer(token, card, ticks):
    """The /v1/tokenize answer with the recorded answer's keys, order and values
    (fixtures: STORE_FIXTURE); the substitutions are the token, the four times (the
    recorded ones are 1, 19 and 20 ticks apart) and the card's own name, digits
    (first_six_digits holds 8 digits, as recorded), month, year and email."""
    pan = card["number"]
    return common.envelope(
        transaction={
            "on_test_gateway": True, "created_at": dotnet_time(ticks),
            "updated_at": dotnet_time(ticks + 1), "succeeded": True, "state": None, "token": None,
            "transaction_type": None, "order_id": None, "ip": None, "description": None,
            "email": None, "merchant_name_descriptor": None, "merchant_location_descriptor": None,
            "gateway_specific_fields": None, "gateway_specific_response_fields": None,
            "gateway_transaction_id": None, "gateway_latency_ms": None, "amount": 0,
            "currency_code": None, "retain_on_success": None, "payment_method_added": False,
            "message_key": None, "message": None, "response": None,
            "payment_method": {
                "token": token, "created_at": dotnet_time(ticks + 19),
                "updated_at": dotnet_time(ticks + 20), "email": card.get("email"), "data": None,
                "storage_state": None, "test": False, "metadata": None,
                "last_four_digits": pan[-4:], "first_six_digits": pan[:8], "card_type": None,
                "first_name": card["first_name"], "last_name": card["last_name"],
                "month": int(card["month"]), "year": int(card["year"]), "address1": None,
                "address2": None, "city": None, "state": None, "zip": None, "country": None,
                "phone_number": None, "company": None, "full_name": None,
                "payment_method_type": None, "errors": None, "fingerprint": None,
                "verification_value": None, "number": None,
            },
        },
        cardBinInfo=None)
