# outcomes.py - the deterministic sandbox outcome rules (flexfactor-api.md section 11).
#
# Owns: the card allow-list and decide(), which maps (card, amount, CIT/MIT,
# transactionType, MIT mode, expiry) to the status /evaluate answers now, the order
# state that goes with it, and the final state the order reaches later on the
# virtual clock (with its due time); and decide_by_code(), the opt-in rules
# (--outcomes decline-code) that decide a merchant-initiated decline by its
# processor decline code, as rescue services describe their results, with a
# seeded draw per order. Pure functions: no shared state.

import hashlib

# Whitelisted sandbox test PANs: the three public ones plus common network test PANs.
ALLOWED_PANS = {
    "4111111111111111",  # CIT -> CHALLENGE; MIT -> SUBMITTED then EXPIRED at expiryDateUtc
    "4000002760003184",  # MIT -> APPROVED (sync) / SUBMITTED->COMPLETED (managed); AUTH -> CAPTUREREQUIRED
    "4000300011112220",  # the decline card
    "4242424242424242",
    "5555555555554444",
    "5105105105105100",
    "378282246310005",
    "6011111111111117",
}

DEFAULT_ASYNC_DELAY = 60           # "1 virtual minute"
DEFAULT_EXPIRY_WINDOW = 7 * 86400  # used when an MIT order has no expiryDateUtc


class Decision:
    """status: what /evaluate answers now. state: the order's internal state now.
    final: the state reached later (or None) at final_due (virtual epoch)."""

    def __init__(self, status, state, final=None, final_due=None, rule=""):
        self.status = status
        self.state = state
        self.final = final
        self.final_due = final_due
        self.rule = rule

    def __repr__(self):
        return "Decision(%s,%s,%s,%s,%s)" % (self.status, self.state, self.final, self.final_due, self.rule)


def card_allowed(pan):
    return pan in ALLOWED_PANS or pan.endswith("2220")


def decide(pan, amount, is_mit, authorization, mit_mode, expiry_ts, now,
           async_delay=DEFAULT_ASYNC_DELAY, capture_window=1440 * 60):
    """pan: the resolved PAN, or None for an unknown token accepted as a test card.
    Rule 1 (amount range) and the allow-list are checked by the caller."""
    cents = amount % 100
    managed = (mit_mode == "managed")
    expiry = expiry_ts if expiry_ts is not None else now + DEFAULT_EXPIRY_WINDOW
    expiry = max(expiry, now)
    later = now + async_delay

    def pending():
        return "SUBMITTED" if is_mit else "CHALLENGE"

    # Rule 2: the decline card.
    if pan is not None and pan.endswith("2220"):
        return Decision("DECLINED", "DECLINED", rule="2:decline-card")
    # Rule 3: 4000002760003184.
    if pan == "4000002760003184":
        if authorization:
            return Decision("CAPTUREREQUIRED", "CAPTUREREQUIRED", "CANCELLED", now + capture_window,
                            rule="3:auth")
        if is_mit:
            if managed:
                return Decision("SUBMITTED", "PROCESSING", "COMPLETED", later, rule="3:mit-managed")
            return Decision("APPROVED", "COMPLETED", rule="3:mit-sync")
    # Rule 4: 4111111111111111.
    if pan == "4111111111111111":
        if not is_mit:
            final = "CANCELLED" if cents == 13 else "COMPLETED"
            return Decision("CHALLENGE", "PROCESSING", final, later, rule="4:cit-challenge")
        return Decision("SUBMITTED", "PROCESSING", "EXPIRED", expiry, rule="4:mit-expire")
    # Rule 5: magic amounts, any allowed card (and unknown tokens).
    if cents == 1:
        return Decision("APPROVED", "COMPLETED", rule="5:01")
    if cents == 2:
        return Decision("DECLINED", "DECLINED", rule="5:02")
    if cents == 13:
        return Decision(pending(), "PROCESSING", "CANCELLED", later, rule="5:13")
    if cents == 14:
        # EXPIRED happens at the order's deadline: expiryDateUtc for MIT (or the
        # default window), one async delay for CIT (which has no deadline).
        return Decision(pending(), "PROCESSING", "EXPIRED", expiry if is_mit else later, rule="5:14")
    # Rule 3, extended to every card: AUTHORIZATION on an auth+capture account.
    if authorization:
        return Decision("CAPTUREREQUIRED", "CAPTUREREQUIRED", "CANCELLED", now + capture_window,
                        rule="3x:auth")
    # Rule 6 (and the managed-MIT life cycle of section 8).
    if is_mit and managed:
        return Decision("SUBMITTED", "PROCESSING", "COMPLETED", later, rule="6:mit-managed")
    return Decision("APPROVED", "COMPLETED", rule="6:approved")


# --outcomes decline-code [SIM]: what a rescue service does with a merchant-
# initiated decline depends on why the issuer declined it.  Soft declines
# (a temporary state of the account: no funds today, a limit reached, a
# generic "do not honor") are retried later and often pass; hard declines
# (the card number is wrong, the card expired, was lost or stolen) fail the
# same way on every retry, so the service refuses them at once, except an
# expired card that the card networks' updater can replace now and then.
# code: (kind, what it means, share rescued).  Other codes: OTHER_CODE.
DECLINE_CODES = {
    "51": ("soft", "insufficient funds", 0.70),
    "61": ("soft", "exceeds withdrawal amount limit", 0.65),
    "65": ("soft", "exceeds withdrawal frequency limit", 0.65),
    "05": ("soft", "do not honor", 0.45),
    "91": ("soft", "issuer unavailable", 0.80),
    "96": ("soft", "system malfunction", 0.80),
    "54": ("hard", "expired card", 0.05),
    "14": ("hard", "invalid card number", 0.0),
    "15": ("hard", "no such issuer", 0.0),
    "04": ("hard", "pick up card", 0.0),
    "07": ("hard", "pick up card, special condition", 0.0),
    "41": ("hard", "lost card", 0.0),
    "43": ("hard", "stolen card", 0.0),
    "57": ("hard", "transaction not permitted to cardholder", 0.02),
    "62": ("hard", "restricted card", 0.02),
}
OTHER_CODE = ("soft", "other decline code", 0.40)


def decline_code_class(code):
    return DECLINE_CODES.get(str(code or "").strip(), OTHER_CODE)


def draw(seed, mid, order_id):
    """A number in [0, 1) fixed by the seed, the merchant and its orderId:
    the same input file gets the same outcomes on every run."""
    h = hashlib.sha256(("%s|%s|%s" % (seed, mid, order_id)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def decide_by_code(code, x, managed, expiry_ts, now, async_delay=DEFAULT_ASYNC_DELAY):
    """A merchant-initiated decline decided by its decline code; x: draw().
    Rescued: COMPLETED one async delay later (managed) or APPROVED now (sync).
    Not rescued: a soft decline EXPIRED when its rescue window closes
    (expiryDateUtc), a hard one DECLINED at once."""
    kind, _, rate = decline_code_class(code)
    expiry = max(expiry_ts if expiry_ts is not None else now + DEFAULT_EXPIRY_WINDOW, now)
    tag = "code:%s:%s" % (kind, str(code or "").strip() or "-")
    if x < rate:
        if managed:
            return Decision("SUBMITTED", "PROCESSING", "COMPLETED", now + async_delay, rule=tag + ":rescued")
        return Decision("APPROVED", "COMPLETED", rule=tag + ":rescued")
    if kind == "hard":
        return Decision("DECLINED", "DECLINED", rule=tag + ":declined")
    return Decision("SUBMITTED", "PROCESSING", "EXPIRED", expiry, rule=tag + ":expired")
