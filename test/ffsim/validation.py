# validation.py - request validation for /evaluate, /transmit, /tokenize and batch lines.
#
# Owns: the required-field lists (lenient = the newest "minimum payload", strict = the
# older list the 2024 sandbox enforced; flexfactor-api.md 4.3.2), type checks, the
# sandbox amount rule (section 11 rule 1), expiryDateUtc checks (section 8) and the
# Luhn check for /tokenize. Works on bodies normalised by common.norm (lower-case
# keys); reports field paths in camelCase ("transaction.amount").
import decimal
import re
import uuid

import clock

MAX_EXPIRY_DAYS = 21
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

EVALUATE_LENIENT = [
    "isDeclined", "idempotencyKey", "orderId", "transaction", "transaction.id",
    "transaction.amount", "transaction.currency", "paymentMethod", "paymentMethod.cardNumber",
]
EVALUATE_STRICT_EXTRA = [
    "mid", "isMIT", "payer", "payer.email", "billingInformation",
    "billingInformation.firstName", "billingInformation.lastName", "billingInformation.country",
    "billingInformation.countryCode", "billingInformation.addressLine1", "billingInformation.city",
    "billingInformation.zipCode", "transaction.timestampUtc", "transaction.responseCode",
    "transaction.responseCodeSource", "transaction.avsResultCode", "transaction.cvvResultCode",
    "transaction.cavvResultCode",
]
TRANSMIT_LENIENT = [
    "orderId", "transaction", "transaction.id", "transaction.amount", "transaction.currency",
    "paymentMethod",
]
TRANSMIT_STRICT_EXTRA = ["isDeclined", "isMIT", "payer", "payer.email", "transaction.timestampUtc"]

SPECIAL_REQUIRED = {
    "orderId": "Merchant's orderId is required",
}


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


def _required(errors, n, paths):
    for path in paths:
        parent = path.rsplit(".", 1)[0] if "." in path else None
        if parent and parent in errors:
            continue
        if parent and not isinstance(get(n, parent), dict):
            continue  # reported on the parent
        if _missing(get(n, path)):
            name = path.rsplit(".", 1)[-1]
            _add(errors, path, SPECIAL_REQUIRED.get(path, "The %s field is required." % (name[:1].upper() + name[1:])))


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
                 "paymentMethod.cardNumber"):
        v = get(n, path)
        if v is not None and not isinstance(v, str):
            _add(errors, path, "The JSON value could not be converted to System.String.")
    amt = get(n, "transaction.amount")
    if amt is not None and not _is_int(amt):
        _add(errors, "transaction.amount", "The JSON value could not be converted to System.Int32.")
    cur = get(n, "transaction.currency")
    if isinstance(cur, str) and cur and not re.match(r"^[A-Za-z]{3}$", cur):
        _add(errors, "transaction.currency", "The field Currency must be a 3-letter ISO-4217 code.")
    tt = n.get("transactiontype")
    if tt is not None and (not isinstance(tt, str) or tt.upper() not in ("AUTHORIZATION", "PURCHASE")):
        _add(errors, "transactionType", "The field TransactionType must be AUTHORIZATION or PURCHASE.")


def check_expiry(errors, n, vnow, realnow, required):
    v = n.get("expirydateutc")
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            _add(errors, "expiryDateUtc", "The ExpiryDateUtc field is required.")
        return None
    ts = clock.parse_iso(v) if isinstance(v, str) else None
    # Accepted window (SIMULATOR ASSUMPTION, section 8): not in the past and at most
    # 21 days ahead. "Now" is taken loosely (virtual and real clock, 60 s slack) so
    # a client that computes deadlines from its wall clock works after the virtual
    # clock has been advanced.
    lo = min(vnow, realnow) - 60
    hi = max(vnow, realnow) + MAX_EXPIRY_DAYS * 86400 + 60
    if ts is None or ts < lo or ts > hi:
        _add(errors, "expiryDateUtc", "The field ExpiryDateUtc is invalid.")
        return None
    return ts


def validate_evaluate(n, strict, managed_mit, vnow, realnow, batch=False):
    """Validate an /evaluate body (or an evaluate batch line). Returns
    (errors, expiry_ts)."""
    errors = {}
    if not isinstance(n, dict):
        return {"$": ["The JSON value could not be converted to an EvaluateRequest."]}, None
    _required(errors, n, EVALUATE_LENIENT + (EVALUATE_STRICT_EXTRA if strict else []))
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
    is_mit = n.get("ismit") is True or batch
    expiry = check_expiry(errors, n, vnow, realnow, required=(strict and is_mit and managed_mit))
    return errors, expiry


def validate_transmit(n, strict, batch=False):
    errors = {}
    if not isinstance(n, dict):
        return {"$": ["The JSON value could not be converted to a TransmitRequest."]}
    _required(errors, n, TRANSMIT_LENIENT + (TRANSMIT_STRICT_EXTRA if strict else []))
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
