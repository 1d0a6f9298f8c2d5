"""--outcomes decline-code: a merchant-initiated decline decided by its decline
code (outcomes.decide_by_code), deterministic per seed, merchant and orderId."""

import unittest

import outcomes
import store

MID = "00000000-0000-4000-8000-000000000001"
NOW = 1_800_000_000.0
EXPIRY = NOW + 14 * 86400


def run(code, n=2000, seed=0, managed=True):
    """{final or state: count} over n orders with this code."""
    seen = {}
    for i in range(n):
        d = outcomes.decide_by_code(code, outcomes.draw(seed, MID, "INV-%06d" % i), managed, EXPIRY, NOW)
        key = d.final or d.state
        seen[key] = seen.get(key, 0) + 1
    return seen


class DeclineCodeOutcomes(unittest.TestCase):
    def test_draw_is_fixed_by_its_inputs(self):
        self.assertEqual(outcomes.draw(0, MID, "INV-1"), outcomes.draw(0, MID, "INV-1"))
        self.assertNotEqual(outcomes.draw(0, MID, "INV-1"), outcomes.draw(1, MID, "INV-1"))
        self.assertNotEqual(outcomes.draw(0, MID, "INV-1"), outcomes.draw(0, MID, "INV-2"))
        xs = [outcomes.draw(0, MID, "INV-%d" % i) for i in range(1000)]
        self.assertTrue(all(0 <= x < 1 for x in xs))
        self.assertAlmostEqual(sum(xs) / len(xs), 0.5, delta=0.05)

    def test_soft_declines_are_mostly_rescued_the_rest_expire(self):
        for code, rate in (("51", 0.70), ("61", 0.65), ("65", 0.65), ("05", 0.45)):
            seen = run(code)
            self.assertEqual(set(seen), {"COMPLETED", "EXPIRED"}, code)
            self.assertAlmostEqual(seen["COMPLETED"] / 2000, rate, delta=0.05, msg=code)

    def test_hard_declines_are_declined_at_once(self):
        self.assertEqual(run("14"), {"DECLINED": 2000})
        seen = run("54")
        self.assertEqual(set(seen), {"COMPLETED", "DECLINED"})
        self.assertLess(seen["COMPLETED"] / 2000, 0.10)

    def test_soft_rescued_far_more_often_than_hard(self):
        soft = sum(run(c).get("COMPLETED", 0) for c in ("51", "05", "61", "65"))
        hard = sum(run(c).get("COMPLETED", 0) for c in ("14", "54"))
        self.assertGreater(soft / 4, 5 * hard / 2)

    def test_shapes(self):
        rescued = outcomes.decide_by_code("51", 0.0, True, EXPIRY, NOW)
        self.assertEqual((rescued.status, rescued.state, rescued.final, rescued.final_due),
                         ("SUBMITTED", "PROCESSING", "COMPLETED", NOW + 60))
        self.assertEqual(rescued.rule, "code:soft:51:rescued")
        sync = outcomes.decide_by_code("51", 0.0, False, EXPIRY, NOW)
        self.assertEqual((sync.status, sync.state, sync.final), ("APPROVED", "COMPLETED", None))
        expired = outcomes.decide_by_code("51", 0.99, True, EXPIRY, NOW)
        self.assertEqual((expired.status, expired.final, expired.final_due), ("SUBMITTED", "EXPIRED", EXPIRY))
        declined = outcomes.decide_by_code("14", 0.0, True, EXPIRY, NOW)
        self.assertEqual((declined.status, declined.state, declined.final), ("DECLINED", "DECLINED", None))
        other = outcomes.decide_by_code("N7", 0.39, True, EXPIRY, NOW)
        self.assertEqual((other.final, other.rule), ("COMPLETED", "code:soft:N7:rescued"))

    def test_config_default_is_the_sandbox_rules(self):
        self.assertEqual(store.Config().outcomes, "amount")
        self.assertEqual(store.Config(outcomes="decline-code", outcome_seed=7).public()["outcomeSeed"], 7)


if __name__ == "__main__":
    unittest.main()
