# faults.py - fault injection rules for the REST API (set through /_admin/faults).
#
# Owns: parsing/validating a fault rule, matching the next N calls of an endpoint,
# and the bounds on how long a fault may hold a connection.
# Modes:
#   500        answer 500 with a ProblemDetails body
#   429        answer 429 with Retry-After
#   timeout    send no answer at all until the client gives up (closes) or `seconds`
#              pass (default 120, at most 600); then the connection is closed
#   hang       hold the request for `seconds` (default 5, at most 120), then answer normally
#   malformed  answer 200 application/json with a truncated, unparsable JSON body
#   poison     answer 200 with well-formed JSON that PostgreSQL's jsonb refuses (1e1000000)
#   drop       close the connection at once without any answer
#   badutf8    answer 200 application/json whose strings hold bytes that are not UTF-8
#   unsuccessful  answer 200 with the envelope (section 3) saying success false, with a
#              business error tuple: the request itself did not succeed
#   echo       answer 400 with a flat error map that echoes the request back: its
#              Authorization header and its body (with whatever secret, key or token
#              the body carried), as a careless server's error page would
#   echo_refusal   answer 400 with a business refusal (success false, responseCode 2001)
#              whose responseMessage echoes the Authorization header and the body
#   echo_declined  answer 200 with success true, status SUCCESS and a responseMessage
#              "DECLINED" followed by the echoed Authorization header and body
#   echo_answer    process the request, then add to its JSON answer a "debug" object
#              echoing the Authorization header and the body, with a card number (as
#              text with spaces and as a JSON number): a successful answer that carries
#              what must never be stored (always processed first, like "after")
# With "after": true the request is processed first (state changes happen) and the
# fault replaces the answer: the "response lost" case (500, timeout, malformed, drop).
import fnmatch

MODES = ("500", "429", "timeout", "hang", "malformed", "poison", "drop", "badutf8", "echo",
         "unsuccessful", "echo_refusal", "echo_declined", "echo_answer")
MAX_TIMEOUT = 600.0
MAX_HANG = 120.0
DEFAULTS = {"timeout": 120.0, "hang": 5.0, "429": 1.0}


class FaultError(ValueError):
    pass


def make_rule(spec, seq):
    if not isinstance(spec, dict):
        raise FaultError("fault must be a JSON object")
    endpoint = spec.get("endpoint")
    mode = str(spec.get("mode", ""))
    if not isinstance(endpoint, str) or not endpoint.startswith("/"):
        raise FaultError('"endpoint" must be a path such as /v1/evaluate (wildcards * allowed)')
    if mode not in MODES:
        raise FaultError('"mode" must be one of ' + ", ".join(MODES))
    count = spec.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1 or count > 1000000:
        raise FaultError('"count" must be an integer >= 1')
    seconds = spec.get("seconds", DEFAULTS.get(mode, 0))
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise FaultError('"seconds" must be a number')
    if seconds < 0:
        raise FaultError('"seconds" must not be negative')
    if mode == "timeout":
        seconds = min(seconds, MAX_TIMEOUT)
    if mode == "hang":
        seconds = min(seconds, MAX_HANG)
    method = spec.get("method")
    if method is not None and not isinstance(method, str):
        raise FaultError('"method" must be a string')
    return {"id": seq, "endpoint": endpoint, "mode": mode, "count": count, "remaining": count,
            "seconds": seconds, "method": method.upper() if method else None,
            "after": bool(spec.get("after", False)) or mode == "echo_answer", "hits": 0}


def matches(rule, method, path):
    if rule["method"] and rule["method"] != method:
        return False
    ep = rule["endpoint"]
    if "*" in ep or "?" in ep or "[" in ep:
        return fnmatch.fnmatchcase(path, ep)
    return path == ep or path.rstrip("/") == ep.rstrip("/")


def take(store, method, path):
    """Consume one shot of the first matching rule. Returns a copy or None."""
    with store.lock:
        for rule in store.faults:
            if rule["remaining"] > 0 and matches(rule, method, path):
                rule["remaining"] -= 1
                rule["hits"] += 1
                return dict(rule)
    return None
