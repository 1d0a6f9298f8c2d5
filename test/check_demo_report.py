#!/usr/bin/env python3
"""check_demo_report.py: checks the demo's report against the database and
the FlexFactor simulator's records.

    sudo FF_DEMO_DIR=/tmp/d bash demo/run.sh --quick --keep
    python3 test/check_demo_report.py /tmp/d
    sudo FF_DEMO_DIR=/tmp/d bash demo/run.sh --stop

demo/run.sh writes the figures it prints to DIR/report.json and where the
cluster and the simulator listen to DIR/demo.env.  Each figure is compared
with counts taken another way: from the billing schema and flexfactor's
tables (not the queries of the report), and from the simulator's inspection
API (/_admin/orders, /_admin/batches, /_admin/webhooks), which records what
FlexFactor received and decided.  Then each figure is changed by one, and the
checks must catch it: a check that cannot fail proves nothing.

Prints one "ok N - ..." or "not ok N - ..." line per check and ends with
"demo report: N passed, M failed"; exits 1 when a check failed.
Standard library only.
"""

import copy
import decimal
import json
import os
import subprocess
import sys
import urllib.request


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition("=")
            if sep:
                env[key] = value
    return env


class Demo:
    """What the kept demo knows: its database (through psql) and its simulator."""

    def __init__(self, demo_dir):
        self.env = read_env(os.path.join(demo_dir, "demo.env"))
        self.sim = self.env["FF_DEMO_SIM"]

    def sql(self, query):
        cmd = ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.env["FF_DEMO_PGHOST"],
               "-p", self.env["FF_DEMO_PGPORT"], "-U", "postgres", "-d", "billing", "-c", query]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
        return out.stdout.strip()

    def num(self, query):
        return decimal.Decimal(self.sql(query) or "0")

    def admin(self, path):
        with urllib.request.urlopen(self.sim + path, timeout=60) as r:
            return json.load(r)


def dollars(cents):
    """cents -> "$10,445.92", as the report prints it (to_char FM$999,999,990.00)."""
    return "${:,}.{:02d}".format(cents // 100, cents % 100)


def pct(part, whole):
    """100 * part / whole to one decimal, rounded as PostgreSQL's round()."""
    if not whole:
        return None
    return (decimal.Decimal(100 * part) / decimal.Decimal(whole)).quantize(
        decimal.Decimal("0.1"), rounding=decimal.ROUND_HALF_UP)


DECIDED = ("COMPLETED", "EXPIRED", "DECLINED", "CANCELLED")


def independent_figures(demo):
    """Each figure of the report, counted without the report's queries:
    {figure: [(source, value), ...]}."""
    orders = demo.admin("/_admin/orders")["orders"]
    batches = [b for b in demo.admin("/_admin/batches")["batches"]
               if b.get("kind") == "evaluate" and b.get("status") == "processed"]
    attempts = demo.admin("/_admin/webhooks")["attempts"]

    by_state = {}
    for o in orders:
        by_state[o["state"]] = by_state.get(o["state"], 0) + 1
    completed = by_state.get("COMPLETED", 0)
    decided = sum(by_state.get(st, 0) for st in DECIDED)
    sim_cents = sum(int(o["amount"]) for o in orders if o["state"] == "COMPLETED")
    decided_cents = sum(int(o["amount"]) for o in orders if o["state"] in DECIDED)
    by_code = {}
    for o in orders:
        c = by_code.setdefault(str(o.get("declineCode")),
                               {"submitted": 0, "rescued": 0, "declined": 0, "expired": 0, "cancelled": 0})
        c["submitted"] += 1
        key = {"COMPLETED": "rescued", "DECLINED": "declined", "EXPIRED": "expired",
               "CANCELLED": "cancelled"}.get(o["state"])
        if key:
            c[key] += 1
    # invoices the callback marked paid after a declined charge: rescued ones
    rescued = ("FROM billing.invoices i WHERE i.status = 'paid' AND EXISTS "
               "(SELECT 1 FROM billing.payments p WHERE p.invoice_no = i.invoice_no AND p.status = 'declined')")
    db_cents = int(demo.num("SELECT sum(amount_cents) " + rescued))
    # what the example's callback notes on a subscription FlexFactor declined or cancelled
    attention = "SELECT count(*) FROM billing.subscriptions WHERE needs_attention LIKE 'FlexFactor %s the rescue%%'"

    return {
        "charges": [("subscriptions billed (demo input)", int(demo.env["FF_DEMO_SUBSCRIPTIONS"])),
                    ("DB billing.invoices", int(demo.num("SELECT count(*) FROM billing.invoices")))],
        "card_declines": [("DB flexfactor.declines (the trigger's queue)",
                           int(demo.num("SELECT count(*) FROM flexfactor.declines"))),
                          ("simulator orders", len(orders))],
        "batch_files": [("simulator files processed", len(batches)),
                        ("DB result files applied", int(demo.num(
                            "SELECT count(*) FROM flexfactor.result_files WHERE kind = 'result'")))],
        "lines_sent": [("simulator lines received", sum(b["lineCount"] for b in batches)),
                       ("DB result lines", int(demo.num("SELECT count(*) FROM flexfactor.batch_lines")))],
        "webhooks": [("simulator deliveries answered 2xx",
                      sum(1 for a in attempts if 200 <= (a.get("status") or 0) < 300))],
        "submitted": [("simulator orders from batch files",
                       sum(1 for o in orders if str(o.get("source", "")).startswith("batch:")))],
        "rescued": [("simulator orders COMPLETED", completed),
                    ("DB invoices paid after a decline", int(demo.num("SELECT count(*) " + rescued))),
                    ("DB payments recovered", int(demo.num(
                        "SELECT count(*) FROM billing.payments WHERE status = 'recovered'")))],
        "declined": [("simulator orders DECLINED", by_state.get("DECLINED", 0)),
                     ("DB subscriptions noted 'FlexFactor declined'", int(demo.num(attention % "declined")))],
        "expired": [("simulator orders EXPIRED", by_state.get("EXPIRED", 0)),
                    ("DB order_events to EXPIRED", int(demo.num(
                        "SELECT count(DISTINCT order_ref) FROM flexfactor.order_events WHERE new_status = 'EXPIRED'")))],
        "cancelled": [("simulator orders CANCELLED", by_state.get("CANCELLED", 0)),
                      ("DB subscriptions noted 'FlexFactor cancelled'", int(demo.num(attention % "cancelled")))],
        "pending": [("simulator orders not decided", len(orders) - decided)],
        "recovery_pct": [("simulator: completed / decided", pct(completed, decided))],
        "recovery_value_pct": [("simulator: amount completed / amount decided", pct(sim_cents, decided_cents))],
        "submitted_cents": [("simulator: amounts of all orders", sum(int(o["amount"]) for o in orders)),
                            ("DB: amounts of declined charges", int(demo.num(
                                "SELECT sum(round(amount * 100)) FROM billing.payments WHERE status = 'declined'")))],
        "recovered_cents": [("simulator: amounts of completed orders", sim_cents),
                            ("DB: amounts of invoices paid after a decline", db_cents)],
        "recovered": [("simulator, formatted", dollars(sim_cents))],
        "by_code": [("simulator orders by decline code and state", by_code)],
    }


def compare(report, figures):
    """[(ok, figure, description)] for every figure and source."""
    results = []
    for figure, sources in figures.items():
        if figure not in report:
            results.append((False, figure, "%s is missing from report.json" % figure))
            continue
        got = report[figure]
        for source, want in sources:
            if isinstance(want, (int, decimal.Decimal)) and got is not None and not isinstance(got, (str, dict)):
                same = decimal.Decimal(str(got)) == decimal.Decimal(want)
            else:
                same = got == want
            show = (lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"))) \
                if isinstance(want, dict) else str
            results.append((same, figure, "%s = %s (%s: %s)" % (figure, show(got), source, show(want))))
    # a report of zeros would agree with an idle simulator: the demo must have
    # had something of every kind to count
    for figure in ("rescued", "declined", "expired", "cancelled", "batch_files"):
        value = report.get(figure) or 0
        results.append((int(value) > 0, figure, "%s is not zero (%s)" % (figure, value)))
    # outcomes follow the decline code: soft declines rescued far more often
    # than hard ones, and an invalid card number never
    codes = report.get("by_code") or {}

    def share(kind_codes):
        n = sum(codes.get(c, {}).get("submitted", 0) for c in kind_codes)
        r = sum(codes.get(c, {}).get("rescued", 0) for c in kind_codes)
        return r / n if n else None
    soft, hard = share(("51", "05", "61", "65")), share(("54", "14"))
    results.append((soft is not None and hard is not None and soft > 3 * hard and soft > 0.3, "by_code",
                    "soft declines are rescued far more often than hard ones (%s vs %s)" % (
                        None if soft is None else round(soft, 3), None if hard is None else round(hard, 3))))
    results.append((codes.get("14", {}).get("rescued", 1) == 0 and codes.get("14", {}).get("submitted", 0) > 0,
                    "by_code", "no invalid card number (14) was rescued (%s)" % codes.get("14")))
    return results


def wrong(value):
    """The same figure, off by a little."""
    if isinstance(value, dict):
        bad = copy.deepcopy(value)
        first = sorted(bad)[0]
        bad[first]["rescued"] += 1
        return bad
    if isinstance(value, str):
        return value + "1"
    if isinstance(value, float) or (isinstance(value, decimal.Decimal) and value != value.to_integral()):
        return float(decimal.Decimal(str(value)) + decimal.Decimal("0.1"))
    return value + 1


def main():
    if len(sys.argv) != 2:
        print("usage: check_demo_report.py DEMO_DIR (the FF_DEMO_DIR of a demo run with --keep)",
              file=sys.stderr)
        return 2
    demo_dir = sys.argv[1]
    with open(os.path.join(demo_dir, "report.json")) as f:
        report = json.load(f, parse_float=decimal.Decimal)
    demo = Demo(demo_dir)
    figures = independent_figures(demo)

    n = failed = 0

    def emit(ok, text):
        nonlocal n, failed
        n += 1
        failed += 0 if ok else 1
        print("%s %d - %s" % ("ok" if ok else "not ok", n, text))

    for ok, _, text in compare(report, figures):
        emit(ok, text)
    # each figure made wrong must be caught by a check on that figure
    for figure in sorted(figures):
        if figure not in report or report[figure] is None:
            continue
        bad = copy.deepcopy(report)
        bad[figure] = wrong(report[figure])
        caught = [text for ok, f, text in compare(bad, figures) if not ok and f == figure]
        what = ("(one rescue more for code %s)" % sorted(report[figure])[0] if isinstance(report[figure], dict)
                else "(%s instead of %s)" % (bad[figure], report[figure]))
        emit(bool(caught), "a wrong %s %s is caught" % (figure, what))

    print("demo report: %d passed, %d failed" % (n - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
