# common.py - JSON helpers and response bodies shared by the REST API, batches and admin.
#
# Owns: JSON encoding (Decimal-aware, compact), request JSON parsing (floats as
# Decimal so dollar amounts stay exact), case-insensitive key normalisation (the real
# server is ASP.NET, which binds property names case-insensitively), the canonical
# body hash used by idempotency, the section-3 envelope, the validation error shapes
# (the recorded flat map, the recorded 2024 "status":"400" wrapper, the documented
# ProblemDetails; sections 10 and 12a) and the recorded response headers.
import decimal
import hashlib
import json
import os
import uuid


class _Encoder(json.JSONEncoder):
    def default(self, o):
        if isinstance(o, decimal.Decimal):
            if o == o.to_integral_value() and o.as_tuple().exponent >= 0:
                return int(o)
            return float(o)
        return super().default(o)


def dumps(obj):
    return json.dumps(obj, cls=_Encoder, separators=(",", ":"), ensure_ascii=False)


def dumpb(obj):
    return dumps(obj).encode("utf-8")


def loads(data):
    """Parse request JSON; floats become Decimal. Raises ValueError."""
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8")
    return json.loads(data, parse_float=decimal.Decimal)


def norm(obj):
    """Lower-case every object key recursively (for case-insensitive lookups)."""
    if isinstance(obj, dict):
        return {str(k).lower(): norm(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [norm(v) for v in obj]
    return obj


def canonical_hash(obj, drop=()):
    """sha256 of a canonical form of a parsed JSON body (keys lower-cased and sorted),
    without the top-level keys in drop (lower-case names)."""
    n = norm(obj)
    if isinstance(n, dict) and drop:
        n = {k: v for k, v in n.items() if k not in drop}
    text = json.dumps(n, cls=_Encoder, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_guid():
    return str(uuid.uuid4())


def trace_id():
    return "00-" + os.urandom(16).hex() + "-" + os.urandom(8).hex() + "-01"


def envelope(**fields):
    """The common response envelope of section 3, with fields merged first."""
    defaults = (("success", True), ("result", None), ("status", None),
                ("statusCode", None), ("errors", []), ("customProperties", {}))
    names = {k for k, _ in defaults}
    out = {k: v for k, v in fields.items() if k not in names}
    for k, v in defaults:
        out[k] = fields.get(k, v)
    return out


def error_tuple(message, code):
    """A business error as the serialised C# 4-tuple of section 3."""
    return {"item1": message, "item2": str(code), "item3": str(code), "item4": True}


PROBLEM_TYPES = {
    400: ("https://tools.ietf.org/html/rfc9110#section-15.5.1", "One or more validation errors occurred."),
    401: ("https://tools.ietf.org/html/rfc9110#section-15.5.2", "Unauthorized"),
    403: ("https://tools.ietf.org/html/rfc9110#section-15.5.4", "Forbidden"),
    404: ("https://tools.ietf.org/html/rfc9110#section-15.5.5", "Not Found"),
    405: ("https://tools.ietf.org/html/rfc9110#section-15.5.6", "Method Not Allowed"),
    409: ("https://tools.ietf.org/html/rfc9110#section-15.5.10", "Conflict"),
    415: ("https://tools.ietf.org/html/rfc9110#section-15.5.16", "Unsupported Media Type"),
    422: ("https://tools.ietf.org/html/rfc9110#section-15.5.21", "Unprocessable Entity"),
    429: ("https://tools.ietf.org/html/rfc6585#section-4", "Too Many Requests"),
    500: ("https://tools.ietf.org/html/rfc9110#section-15.6.1", "An error occurred while processing your request."),
}


def problem(status, title=None, detail=None, errors=None):
    """ProblemDetails body (dict) for an HTTP status."""
    typ, default_title = PROBLEM_TYPES.get(status, ("about:blank", "Error"))
    body = {"type": typ, "title": title or default_title, "status": status}
    if detail:
        body["detail"] = detail
    if errors is not None:
        body["errors"] = errors
    body["traceId"] = trace_id()
    return body


def pascal_path(path):
    """transaction.amount -> Transaction.Amount (the .NET keys of the recorded answers)."""
    return ".".join(p[:1].upper() + p[1:] for p in path.split("."))


ERROR_SHAPES = ("flat", "problem", "wrapped")


def validation_body(errors, shape, trace=None):
    """Validation failure body. errors: dict camelCase path -> [messages], in order.

    'flat' (default): the recorded sandbox answer [OBS], PascalCase .NET keys, the
        TraceId first as a one-element array:
        {"TraceId":["00-...-01"],"OrderId":["Merchant's orderId is required"],...}
    'wrapped': the recorded 2024 answer (ActiveMerchant's failed_purchase_response)
        [OBS]: the same keys under "errors" with "status" the STRING "400", the TraceId
        after the first field error, as recorded:
        {"status":"400","errors":{"OrderId":[...],"TraceId":["00-...-01"],"IsDeclined":[...],...}}
    'problem': the documented ASP.NET ValidationProblemDetails [DOC], camelCase keys.
    """
    trace = trace or trace_id()
    if shape in ("flat", "wrapped"):
        fields = [(pascal_path(path), list(msgs)) for path, msgs in errors.items()]
        if shape == "flat":
            return dict([("TraceId", [trace])] + fields)
        return {"status": "400", "errors": dict(fields[:1] + [("TraceId", [trace])] + fields[1:])}
    body = problem(400, errors={k: list(v) for k, v in errors.items()})
    body["traceId"] = trace
    return body


# The response headers the sandbox sent with its recorded answers (fixtures/SOURCES.txt,
# flexfactor-recorded.json RECORDED_HEADERS), replayed on every /v1 answer after
# Date, Content-Type, Content-Length (and Connection when closing). Date is now;
# the client's own Connection: close is not replayed.
RECORDED_HEADERS = [
    ("server", "Kestrel"),
    ("set-cookie", "AWSALB=n2vt9daKLxUPgxF+n3g+4uQDgxt1PNVOY/HwVuLZdkf0Ye8XkAFuEVrnu6xh/xf7k2ZYZHqaPthqR36D3JxPJIs7QfNbcfAhvxTlPEVx8t/IyB1Kb/Vinasi3vZD; Expires=Thu, 11 Apr 2024 13:29:08 GMT; Path=/"),
    ("set-cookie", "AWSALBCORS=n2vt9daKLxUPgxF+n3g+4uQDgxt1PNVOY/HwVuLZdkf0Ye8XkAFuEVrnu6xh/xf7k2ZYZHqaPthqR36D3JxPJIs7QfNbcfAhvxTlPEVx8t/IyB1Kb/Vinasi3vZD; Expires=Thu, 11 Apr 2024 13:29:08 GMT; Path=/; SameSite=None; Secure"),
    ("apigw-requestid", "Vs-twgfMoAMEaEQ="),
]
