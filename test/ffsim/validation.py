# validation.py - request validation for /evaluate, /transmit, /tokenize and batch lines.
#
# Owns: the required-field rules (strict, the default, = what the real service refuses
# per flexfactor-api.md section 12a; lenient = the newest "minimum payload", for
# experiments only), type checks, the sandbox amount rule (section 11 rule 1),
# expiryDateUtc checks (section 8), the per-line rules of batch files and the Luhn check
# for /tokenize. Works on bodies normalised by common.norm (lower-case keys); reports
# field paths in camelCase ("transaction.amount"); common.validation_body turns them
# into the .NET keys of the answer ("Transaction.Amount").
#
# Every rule carries its source: [OBS] = the real sandbox refused a body without it
# (recorded traffic, section 12a, messages verbatim), [DOC] = the current docs or the
# official models require it (section 12a), [SIM] = a simulator assumption.
import decimal
import re
import uuid

import clock

MAX_EXPIRY_DAYS = 21
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

# Messages that differ from the .NET default "The <Name> field is required." [OBS].
SPECIAL_REQUIRED = {
    "orderId": "Merchant's orderId is required",
}
EXPIRY_INVALID = "The field ExpiryDateUtc is invalid."   # [OBS], verbatim

# ---- /evaluate, strict (the default). The order of these lists is the order of the
# errors in the answer (the recorded 2024 answer lists OrderId, IsDeclined,
# IdempotencyKey, Transaction.Id, Transaction.ResponseCode, Transaction.AvsResultCode,
# Transaction.CvvResultCode in that order).
EVALUATE_STRICT = [
    ("orderId", "OBS"), ("isDeclined", "OBS"), ("idempotencyKey", "OBS"),
    ("transaction", "DOC"), ("transaction.id", "OBS"), ("transaction.responseCode", "OBS"),
    ("transaction.responseCodeSource", "OBS"), ("transaction.avsResultCode", "OBS"),
    ("transaction.cvvResultCode", "OBS"), ("transaction.cavvResultCode", "OBS"),
    ("mid", "DOC"), ("isMIT", "DOC"),
    ("transaction.amount", "DOC"), ("transaction.currency", "DOC"), ("transaction.timestampUtc", "DOC"),
    ("payer", "DOC"), ("payer.email", "DOC"),
    ("billingInformation", "DOC"), ("billingInformation.firstName", "DOC"),
    ("billingInformation.lastName", "DOC"), ("billingInformation.country", "DOC"),
    ("billingInformation.countryCode", "DOC"), ("billingInformation.addressLine1", "DOC"),
    ("billingInformation.city", "DOC"),
    ("paymentMethod", "DOC"), ("paymentMethod.cardNumber", "DOC"),
]
# isMIT true: isRecurring must be present [DOC + CODE-OFFICIAL].
MIT_STRICT = [("isRecurring", "DOC")]
# isMIT true and isRecurring true (evaluate), isMIT true (transmit) [DOC + CODE-OFFICIAL].
SUBSCRIPTION_STRICT = [
    ("subscription", "DOC"), ("subscription.subscriptionId", "DOC"), ("subscription.interval", "DOC"),
    ("subscription.price", "DOC"), ("subscription.currency", "DOC"),
]
# ---- /transmit, strict (section 4.2 + 12a): no idempotencyKey, no mid (partners only).
TRANSMIT_STRICT = [
    ("orderId", "DOC"), ("isDeclined", "DOC"),
    ("transaction", "DOC"), ("transaction.id", "DOC"), ("transaction.responseCode", "DOC"),
    ("transaction.responseCodeSource", "DOC"), ("transaction.avsResultCode", "DOC"),
    ("transaction.cvvResultCode", "DOC"), ("transaction.cavvResultCode", "DOC"),
    ("isMIT", "DOC"),
    ("transaction.amount", "DOC"), ("transaction.currency", "DOC"), ("transaction.timestampUtc", "DOC"),
    ("payer", "DOC"), ("payer.email", "DOC"), ("paymentMethod", "DOC"),
]
# A transmit paymentMethod that carries card details needs all of these (the official
# model) [CODE-OFFICIAL]; any one of CARD_DETAIL_MARKERS present means "carries card details".
CARD_DETAILS_REQUIRED = [
    "holderName", "cardType", "cardBrand", "cardCountry", "expirationMonth", "expirationYear",
    "cardBinNumber", "cardLast4Digits",
]
CARD_DETAIL_MARKERS = CARD_DETAILS_REQUIRED + ["cardIssuer", "cardLevel", "cardFingerprint"]

# ---- lenient (--lenient / strict:false; experiments only): the newest "minimum payload".
EVALUATE_LENIENT = [
    "isDeclined", "idempotencyKey", "orderId", "transaction", "transaction.id",
    "transaction.amount", "transaction.currency", "paymentMethod", "paymentMethod.cardNumber",
]
TRANSMIT_LENIENT = [
    "orderId", "transaction", "transaction.id", "transaction.amount", "transaction.currency",
    "paymentMethod",
]


def paths(rules):
    return [p for p, _ in rules]


def get(n, path):
    """Look up a camelCase dot path in a normalised (lower-case keys) body."""
    cur = n
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part.lower())
    return cur


def _missing(v):
    return v is None or (isinstance(v, str) and v.strip() == "")


def _add(errors, path, msg):
    errors.setdefault(path, []).append(msg)


def required_message(path):
    name = path.rsplit(".", 1)[-1]
    return SPECIAL_REQUIRED.get(path, "The %s field is required." % (name[:1].upper() + name[1:]))


def _required(errors, n, paths_):
    """Report each missing path once. A missing (or non-object) parent is reported on
    the parent alone, as ASP.NET does not validate inside a null object."""
    for path in paths_:
        parent = path.rsplit(".", 1)[0] if "." in path else None
        if parent and parent in errors:
            continue
        if parent and not isinstance(get(n, parent), dict):
            continue  # reported on the parent
        if _missing(get(n, path)):
            _add(errors, path, required_message(path))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _type_checks(errors, n):
    for path in ("isDeclined", "isMIT", "isRecurring", "paymentMethod.token"):
        v = get(n, path)
        if v is not None and not isinstance(v, bool):
            _add(errors, path, "The JSON value could not be converted to System.Boolean.")
    for path in ("transaction", "payer", "billingInformation", "shippingInformation",
                 "paymentMethod", "subscription", "merchant"):
        v = get(n, path)
        if v is not None and not isinstance(v, dict):
            _add(errors, path, "The JSON value could not be converted to an object.")
    for path in ("orderId", "idempotencyKey", "mid", "transaction.id", "transaction.currency",
                 "paymentMethod.cardNumber", "subscription.interval"):
        v = get(n, path)
        if v is not None and not isinstance(v, str):
            _add(errors, path, "The JSON value could not be converted to System.String.")
    # A date-time the model binder cannot parse is "The field <Name> is invalid.", as
    # the sandbox answered for ExpiryDateUtc [OBS]; transaction.timestampUtc is a
    # date-time of the same model [DOC], so an unparsable one (2026-02-30, "yesterday",
    # a number) is refused the same way [INFERENCE].
    ts = get(n, "transaction.timestampUtc")
    if (ts is not None and "transaction.timestampUtc" not in errors
            and not (isinstance(ts, str) and not ts.strip())
            and clock.parse_iso(ts) is None):
        _add(errors, "transaction.timestampUtc", "The field TimestampUtc is invalid.")
    amt = get(n, "transaction.amount")
    if amt is not None and not _is_int(amt):
        _add(errors, "transaction.amount", "The JSON value could not be converted to System.Int32.")
    cur = get(n, "transaction.currency")
    if isinstance(cur, str) and cur and not re.match(r"^[A-Za-z]{3}$", cur):
        _add(errors, "transaction.currency", "The field Currency must be a 3-letter ISO-4217 code.")
    tt = n.get("transactiontype")
    if tt is not None and (not isinstance(tt, str) or tt.upper() not in ("AUTHORIZATION", "PURCHASE")):
        _add(errors, "transactionType", "The field TransactionType must be AUTHORIZATION or PURCHASE.")


def check_expiry(errors, n, vnow, realnow, required, empty_is_invalid=True):
    """expiryDateUtc: an unparsable value, the empty string included, is
    "The field ExpiryDateUtc is invalid." [OBS]; so is a date outside the managed
    window (not in the past, at most 21 days ahead) [SIM, section 8]. Absent (or null)
    while required (managed MIT) is "The ExpiryDateUtc field is required." [DOC]."""
    v = n.get("expirydateutc")
    if v is None or (isinstance(v, str) and not v.strip() and not empty_is_invalid):
        if required:
            _add(errors, "expiryDateUtc", required_message("expiryDateUtc"))
        return None
    ts = clock.parse_iso(v) if isinstance(v, str) else None
    # "Now" is taken loosely (virtual and real clock, 60 s slack) so a client that
    # computes deadlines from its wall clock works after the virtual clock has been
    # advanced.
    lo = min(vnow, realnow) - 60
    hi = max(vnow, realnow) + MAX_EXPIRY_DAYS * 86400 + 60
    if ts is None or ts < lo or ts > hi:
        _add(errors, "expiryDateUtc", EXPIRY_INVALID)
        return None
    return ts


def _batch_line_checks(errors, n, position):
    """Rules every batch line has on top of its REST model (section 9.3) [SIM]:
    the merchant's mid, and sequenceNumber = the line's position (1..N)."""
    if _missing(n.get("mid")) and "mid" not in errors:
        _add(errors, "mid", required_message("mid"))
    if position is None:
        return
    seq = n.get("sequencenumber")
    if isinstance(seq, str) and seq.strip().isdigit():
        seq = int(seq.strip())
    if _missing(seq):
        _add(errors, "sequenceNumber", required_message("sequenceNumber"))
    elif not _is_int(seq):
        _add(errors, "sequenceNumber", "The JSON value could not be converted to System.Int32.")
    elif seq != position:
        _add(errors, "sequenceNumber",
             "The field SequenceNumber must be the record's position in the file (%d), not %d."
             % (position, seq))


def evaluate_required(n, strict, mit):
    """The required paths for an /evaluate body (in answer order)."""
    if not strict:
        return list(EVALUATE_LENIENT)
    out = paths(EVALUATE_STRICT)
    if mit:
        out += paths(MIT_STRICT)
        if n.get("isrecurring") is True:
            out += paths(SUBSCRIPTION_STRICT)
    return out


def validate_evaluate(n, strict, managed_mit, vnow, realnow, batch=False, position=None):
    """Validate an /evaluate body (or an evaluate batch line; position = its 1-based
    line number). Returns (errors, expiry_ts); errors maps camelCase paths to lists of
    messages, in answer order, every failing field at once."""
    errors = {}
    if not isinstance(n, dict):
        return {"$": ["The JSON value could not be converted to an EvaluateRequest."]}, None
    # Batch lines are MIT declines whatever their isMIT (section 9.3).
    is_mit = n.get("ismit") is True or batch
    _required(errors, n, evaluate_required(n, strict, is_mit))
    if batch:
        _batch_line_checks(errors, n, position)
    _type_checks(errors, n)
    key = n.get("idempotencykey")
    if isinstance(key, str) and key.strip():
        if strict and not GUID_RE.match(key.strip()):
            _add(errors, "idempotencyKey", "The field IdempotencyKey must be a GUID.")
        elif len(key) > 200:
            _add(errors, "idempotencyKey", "The field IdempotencyKey is too long.")
    if strict and n.get("isdeclined") is False:
        _add(errors, "isDeclined", "IsDeclined must be true for /evaluate.")
    amt = get(n, "transaction.amount")
    if _is_int(amt) and "transaction.amount" not in errors and (amt <= 10 or amt >= 20000):
        _add(errors, "transaction.amount",
             "The field Amount must be greater than 10 and less than 20000 (cents) in the sandbox.")
    if batch:
        if get(n, "paymentMethod.token") is not True and "paymentMethod" not in errors:
            _add(errors, "paymentMethod.token",
                 "Batch records must carry a /tokenize token with paymentMethod.token = true.")
    expiry = check_expiry(errors, n, vnow, realnow, required=(strict and is_mit and managed_mit),
                          empty_is_invalid=strict)
    return errors, expiry


def transmit_required(n, strict):
    if not strict:
        return list(TRANSMIT_LENIENT)
    out = paths(TRANSMIT_STRICT)
    if n.get("ismit") is True:
        out += paths(MIT_STRICT) + paths(SUBSCRIPTION_STRICT)
    pm = n.get("paymentmethod")
    if isinstance(pm, dict) and any(not _missing(pm.get(f.lower())) for f in CARD_DETAIL_MARKERS):
        out += ["paymentMethod." + f for f in CARD_DETAILS_REQUIRED]
    return out


def validate_transmit(n, strict, batch=False, position=None):
    errors = {}
    if not isinstance(n, dict):
        return {"$": ["The JSON value could not be converted to a TransmitRequest."]}
    _required(errors, n, transmit_required(n, strict))
    if batch:
        _batch_line_checks(errors, n, position)
    _type_checks(errors, n)
    amt = get(n, "transaction.amount")
    if _is_int(amt) and "transaction.amount" not in errors and amt < 0:
        _add(errors, "transaction.amount", "The field Amount must not be negative.")
    return errors


def luhn_ok(pan):
    if not pan.isdigit() or not (12 <= len(pan) <= 19):
        return False
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def validate_tokenize(n):
    """Returns (errors, card) where card = dict(pan, first_name, ...)."""
    errors = {}
    pm = n.get("payment_method") if isinstance(n, dict) else None
    if not isinstance(pm, dict):
        return {"payment_method": ["The payment_method field is required."]}, None
    cc = pm.get("credit_card")
    if not isinstance(cc, dict):
        return {"payment_method.credit_card": ["The credit_card field is required."]}, None
    card = {}
    for f in ("first_name", "last_name", "number", "month", "year"):
        v = cc.get(f)
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or not v.strip():
            _add(errors, "payment_method.credit_card." + f, "The %s field is required." % f)
        else:
            card[f] = v.strip()
    num = card.get("number")
    if num is not None:
        num = num.replace(" ", "").replace("-", "")
        card["number"] = num
        if not luhn_ok(num):
            _add(errors, "payment_method.credit_card.number", "The card number is invalid (Luhn check failed).")
    m = card.get("month")
    if m is not None and (not m.isdigit() or not 1 <= int(m) <= 12):
        _add(errors, "payment_method.credit_card.month", "The month must be MM (01-12).")
    y = card.get("year")
    if y is not None and (not y.isdigit() or len(y) != 4):
        _add(errors, "payment_method.credit_card.year", "The year must be YYYY.")
    cvv = cc.get("verification_value")
    card["cvv"] = cvv if isinstance(cvv, str) else None
    card["email"] = pm.get("email") if isinstance(pm.get("email"), str) else None
    return errors, card


def parse_dollars(v):
    """amountToRefund: a decimal number of dollars (a numeric string is tolerated).
    Returns cents (int) or None when invalid."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        d = decimal.Decimal(str(v)) if not isinstance(v, decimal.Decimal) else v
    except decimal.InvalidOperation:
        return None
    if not d.is_finite():
        return None
    cents = d * 100
    if cents != cents.to_integral_value():
        return None
    return int(cents)


def is_guid(v):
    if not isinstance(v, str):
        return False
    try:
        uuid.UUID(v)
        return True
    except ValueError:
        return False
