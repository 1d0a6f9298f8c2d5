# clock.py - the simulator's virtual clock and the time formats it emits.
#
# Owns: "virtual now" (used for order life cycles, webhook schedules, idempotency
# windows, payload timestamps) and helpers to format/parse ISO-8601 and RFC-1123.
# Real wall-clock time is still used where a client compares against its own clock
# (JWT exp/`expires`, the x-fc-date webhook header).
#
# Modes:
#   frozen   (default) virtual time starts at the real time of start-up and only
#            moves when an admin call advances it: tests are deterministic.
#   realtime virtual time = wall clock + everything advanced so far.
import datetime
import email.utils
import threading
import time

UTC = datetime.timezone.utc


class VirtualClock:
    def __init__(self, mode="frozen", start=None):
        if mode not in ("frozen", "realtime"):
            raise ValueError("clock mode must be frozen or realtime")
        self.mode = mode
        self._lock = threading.Lock()
        self._start = time.time() if start is None else float(start)
        self._frozen_now = self._start
        self._offset = 0.0
        self._advanced = 0.0

    def now(self):
        with self._lock:
            if self.mode == "frozen":
                return self._frozen_now
            return time.time() + self._offset

    def advance(self, seconds):
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("the virtual clock only moves forward")
        with self._lock:
            self._advanced += seconds
            if self.mode == "frozen":
                self._frozen_now += seconds
            else:
                self._offset += seconds
            return self._now_locked()

    def set_at_least(self, t):
        """Move the clock forward to t (never backwards). Returns the new now."""
        with self._lock:
            cur = self._now_locked()
            if t > cur:
                delta = t - cur
                self._advanced += delta
                if self.mode == "frozen":
                    self._frozen_now = t
                else:
                    self._offset += delta
            return self._now_locked()

    def _now_locked(self):
        if self.mode == "frozen":
            return self._frozen_now
        return time.time() + self._offset

    def reset(self):
        with self._lock:
            self._start = time.time()
            self._frozen_now = self._start
            self._offset = 0.0
            self._advanced = 0.0

    def describe(self):
        now = self.now()
        return {
            "mode": self.mode,
            "now": iso(now),
            "epoch": now,
            "advancedSeconds": self._advanced,
            "realNow": iso(time.time()),
        }


def iso(ts, micro=True):
    """ISO-8601 UTC with a Z suffix, e.g. 2023-03-20T17:16:40.898703Z."""
    dt = datetime.datetime.fromtimestamp(ts, UTC)
    if micro:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc1123(ts):
    """RFC-1123 date as used by x-fc-date, e.g. Mon, 20 Mar 2023 17:16:40 GMT."""
    return email.utils.formatdate(ts, usegmt=True)


def parse_iso(value):
    """Parse an ISO-8601 date-time (Z or offset; naive means UTC). Returns epoch
    seconds or None when the value is not a valid date-time string."""
    if not isinstance(value, str) or not value.strip():
        return None
    s = value.strip()
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    # Python 3.11 fromisoformat handles most forms; trim >6 fractional digits (.NET emits 7).
    if "." in s:
        head, _, rest = s.partition(".")
        frac = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            frac += rest[i]
            i += 1
        s = head + "." + frac[:6].ljust(6, "0") + rest[i:] if frac else head + rest[i:]
    try:
        dt = datetime.datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
