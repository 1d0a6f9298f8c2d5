# store.py - all mutable simulator state, behind one lock.
#
# Owns: the runtime configuration, issued access tokens, vaulted cards, orders and
# their scheduled transitions, transmits, the idempotency store, the request log,
# batch records, webhook events/deliveries/attempts, fault rules, and reset().
# Every other module reads and writes these fields while holding `lock` (an RLock).
# Logs are bounded (collections.deque with maxlen) so a long run cannot grow
# without limit.
import collections
import threading

DEFAULT_LOG_CAP = 100000


class Config:
    """Runtime settings (from the command line, changeable via POST /_admin/config)."""

    FIELDS = ("mid", "app_key", "app_secret", "tokenization_key", "sftp_root", "webhook_url",
              "webhook_key", "mit_mode", "error_shape", "strict", "accept_unknown_tokens",
              "async_delay", "capture_window", "webhook_timeout", "token_ttl", "token_expires", "scan_interval",
              "clock_mode", "log_cap", "refund_answer", "outcomes", "outcome_seed")

    def __init__(self, **kw):
        self.mid = "00000000-0000-4000-8000-000000000001"
        self.app_key = "test-app-key"
        self.app_secret = "test-app-secret"
        self.tokenization_key = "test-tok-key"
        self.sftp_root = None
        self.webhook_url = None
        # The public test-vector key of section 7.4 (so a default receiver can verify).
        self.webhook_key = "XRmKBxG5uvt1qWzqvp+T6CAbTo0MB89GTxXZD5cHA56RP7Mj4NbnHQOR1Y8uorUU9YQz8ujaVRUdm9vTSkPZSw=="
        self.mit_mode = "managed"
        # The real service's rules and answer shape by default (flexfactor-api.md 12a):
        # strict required fields, validation errors as the recorded flat map.
        # strict=False (--lenient) is for experiments only.
        self.error_shape = "flat"
        self.strict = True
        self.accept_unknown_tokens = True
        self.async_delay = 60.0
        self.capture_window = 1440 * 60.0
        self.webhook_timeout = 10.0
        self.token_ttl = 600
        # The token answer's `expires` as raw JSON text ("1e999", "9223372036854775807");
        # None: issued-at + ttl, as the service does.
        self.token_expires = None
        self.scan_interval = 0.2
        self.clock_mode = "frozen"
        self.log_cap = DEFAULT_LOG_CAP
        # How /orders/{id}/refund answers (REFUND_ANSWERS in engine.py).
        self.refund_answer = "current"
        # How MIT outcomes are decided: "amount" (the sandbox's rules, section
        # 11) or "decline-code" (outcomes.decide_by_code, seeded per order).
        self.outcomes = "amount"
        self.outcome_seed = 0
        for k, v in kw.items():
            if k not in self.FIELDS:
                raise TypeError("unknown config field %s" % k)
            setattr(self, k, v)

    def public(self):
        """Config as JSON for /_admin/config: secrets are not echoed."""
        return {
            "mid": self.mid, "appKey": self.app_key, "sftpRoot": self.sftp_root,
            "webhookUrl": self.webhook_url, "mitMode": self.mit_mode,
            "errorShape": self.error_shape, "strict": self.strict,
            "acceptUnknownTokens": self.accept_unknown_tokens,
            "asyncDelaySeconds": self.async_delay, "captureWindowSeconds": self.capture_window,
            "webhookTimeoutSeconds": self.webhook_timeout, "tokenTtlSeconds": self.token_ttl,
            "tokenExpires": self.token_expires, "scanIntervalSeconds": self.scan_interval, "clockMode": self.clock_mode,
            "logCap": self.log_cap, "refundAnswer": self.refund_answer,
            "outcomes": self.outcomes, "outcomeSeed": self.outcome_seed,
        }


class Store:
    def __init__(self, config):
        self.lock = threading.RLock()
        self.config = config
        self.reset()

    def reset(self):
        with self.lock:
            cap = self.config.log_cap
            self.seq = 0                      # global sequence for ids/ordering
            self.tokens = {}                  # accessToken -> info dict
            self.token_log = collections.deque(maxlen=cap)
            self.tokens_issued = 0
            self.cards = {}                   # card token -> card dict
            self.orders = {}                  # orderSessionKey -> order dict
            self.orders_by_ext = {}           # (mid, externalOrderId) -> [orderSessionKey]
            self.transitions = []             # heap of (due, seq, orderId, target)
            self.transmits = collections.OrderedDict()  # transmitId -> record
            self.idem = {}                    # (mid, key) -> entry
            self.refund_dedupe = {}           # orderId -> (hash, response, vts) of its last refund
            self.requests = collections.deque(maxlen=cap)
            self.batches = collections.deque(maxlen=10000)
            self.processed_files = {}         # (name, sha256) -> batch record
            self.batch_reject_next = 0
            self.events = collections.OrderedDict()   # eventId -> event
            self.deliveries = []              # heap of (due, seq, delivery dict)
            self.attempts = collections.deque(maxlen=cap)
            self.webhook_mode = {"duplicate": False, "reorder": False, "delay_seconds": 0,
                                 "wrong_signature": False, "stale_date": False}
            self.faults = []                  # list of fault rule dicts

    def next_seq(self):
        with self.lock:
            self.seq += 1
            return self.seq
