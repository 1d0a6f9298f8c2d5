# outcomes.py - the deterministic sandbox outcome rules (flexfactor-api.md section 11).
#
# Owns: the card allow-list and decide(), which maps (card, amount, CIT/MIT,
# transactionType, MIT mode, expiry) to the status /evaluate answers now, the order
# state that goes with it, and the final state the order reaches later on the
# virtual clock (with its due time). Pure functions: no shared state.

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
