# test_batches.py - the SFTP batch contract (section 9.3) on the local folders.
import json
import os
import time
import unittest

from simtest import MID, SimCase


class Batches(SimCase):
    def folders(self):
        return self.sim.batches.folders()

    def put(self, name, lines, raw=None):
        inbound = self.folders()[0]
        data = raw if raw is not None else "".join(json.dumps(x) + "\n" for x in lines).encode()
        tmp = os.path.join(inbound, name + ".part")
        with open(tmp, "wb") as f:
            f.write(data)
        return tmp, os.path.join(inbound, name)

    def upload(self, name, lines, raw=None):
        tmp, final = self.put(name, lines, raw)
        os.replace(tmp, final)

    def line(self, seq, amount=4999, key=None, order_id=None, **extra):
        body = self.eval_body(amount=amount, key=key, order_id=order_id,
                              expiryDateUtc=self.expiry(days=3))
        body["sequenceNumber"] = seq
        body.update(extra)
        return body

    def expiry(self, days):
        import clock
        return clock.iso(self.sim.clock.now() + days * 86400, micro=False)

    def result(self, name):
        base = name[:-len(".jsonl")]
        with open(os.path.join(self.folders()[1], base + ".result.jsonl")) as f:
            return [json.loads(x) for x in f.read().splitlines()]

    def error(self, name):
        base = name[:-len(".jsonl")]
        with open(os.path.join(self.folders()[1], base + ".error.json")) as f:
            return json.load(f)

    def test_folders_created(self):
        inbound, outbound, processed = self.folders()
        self.assertTrue(inbound.endswith(os.path.join(MID, "inbound")))
        for d in (inbound, outbound, processed):
            self.assertTrue(os.path.isdir(d))

    def test_evaluate_file_roundtrip_and_life_cycle(self):
        name = "evaluate_%s_20260115T100000Z_1.jsonl" % MID
        lines = [self.line(1, 1001), self.line(2, 1002), self.line(3, 1013), self.line(4, 1014),
                 self.line(5, 4999)]
        # a .part file is not picked up
        tmp, final = self.put(name, lines)
        self.assertEqual(self.admin("POST", "/_admin/scan")["processed"], [])
        os.replace(tmp, final)
        done = self.admin("POST", "/_admin/scan")["processed"]
        self.assertEqual(len(done), 1)
        self.assertEqual((done[0]["status"], done[0]["lineCount"], done[0]["accepted"]), ("processed", 5, 5))
        res = self.result(name)
        self.assertEqual([r["sequenceNumber"] for r in res], [1, 2, 3, 4, 5])
        self.assertEqual([r["status"] for r in res], ["APPROVED", "DECLINED", "SUBMITTED", "SUBMITTED", "SUBMITTED"])
        self.assertEqual([r["orderId"] for r in res], [x["orderId"] for x in lines])
        self.assertTrue(all(r["success"] and r["errors"] == [] and len(r["orderSessionKey"]) == 36 for r in res))
        self.assertEqual(list(res[0].keys()),
                         ["sequenceNumber", "orderId", "orderSessionKey", "status", "success", "errors"])
        # inbound file moved to processed/
        self.assertFalse(os.path.exists(final))
        self.assertTrue(os.path.exists(os.path.join(self.folders()[2], name)))
        self.advance(61)
        self.advance(3 * 86400)
        got = {}
        for r in self.receiver.verified():
            got.setdefault(r["payload"]["OrderId"], []).append(r["payload"]["Event"])
        osk = [r["orderSessionKey"] for r in res]
        self.assertEqual(got[osk[0]], ["order.completed"])
        self.assertEqual(got[osk[1]], ["order.cancelled"])
        self.assertEqual(got[osk[2]], ["order.cancelled"])
        self.assertEqual(got[osk[3]], ["order.expired"])
        self.assertEqual(got[osk[4]], ["order.completed"])
        b = self.admin("GET", "/_admin/batches")
        self.assertEqual(b["linesReceived"], 5)
        self.assertEqual(b["batches"][0]["lines"][0]["orderId"], lines[0]["orderId"])

    def test_same_file_never_twice_and_keys_once(self):
        name = "evaluate_%s_x_2.jsonl" % MID
        lines = [self.line(i) for i in range(1, 4)]
        self.upload(name, lines)
        self.admin("POST", "/_admin/scan")
        first = self.result(name)
        # the very same file again (e.g. a retried upload): ignored
        self.upload(name, lines)
        done = self.admin("POST", "/_admin/scan")["processed"]
        self.assertEqual(done[0]["status"], "duplicate")
        self.assertEqual(self.result(name), first)
        # a different file re-sending line 2's key: replayed, not a second order
        name2 = "evaluate_%s_x_3.jsonl" % MID
        again = dict(lines[1], sequenceNumber=1)
        self.upload(name2, [again, self.line(2)])
        self.admin("POST", "/_admin/scan")
        res2 = self.result(name2)
        self.assertEqual(res2[0]["orderSessionKey"], first[1]["orderSessionKey"])
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 4)
        idem = self.admin("GET", "/_admin/idempotency")
        self.assertEqual(idem["acceptedMoreThanOnce"], [])
        self.assertTrue(all(k["accepted"] == 1 for k in idem["keys"]))
        # the same key with a different body is rejected per line
        name3 = "evaluate_%s_x_4.jsonl" % MID
        clash = dict(lines[0], sequenceNumber=1, transaction=dict(lines[0]["transaction"], amount=5555))
        self.upload(name3, [clash])
        self.admin("POST", "/_admin/scan")
        r = self.result(name3)[0]
        self.assertEqual((r["status"], r["success"], r["orderSessionKey"]), ("REJECTED", False, None))
        self.assertEqual(r["errors"][0]["item2"], "409")

    def test_per_line_validation(self):
        name = "evaluate_%s_v_1.jsonl" % MID
        l2 = self.line(2)
        del l2["idempotencyKey"]
        l3 = self.line(3, mid="11111111-1111-4111-8111-111111111111")
        l4 = self.line(4)
        l4["paymentMethod"]["token"] = False
        l5 = self.line(5, amount=5)
        l6 = self.line(6)
        del l6["mid"]
        self.upload(name, [self.line(1), l2, l3, l4, l5, l6])
        self.admin("POST", "/_admin/scan")
        res = self.result(name)
        self.assertEqual([r["success"] for r in res], [True, False, False, False, False, False])
        self.assertEqual([e["item1"] for e in res[1]["errors"]],
                         ["IdempotencyKey: The IdempotencyKey field is required."])
        self.assertEqual(res[2]["errors"][0]["item2"], "403")
        self.assertIn("mid does not belong", res[2]["errors"][0]["item1"])
        self.assertEqual([e["item1"] for e in res[3]["errors"]],
                         ["PaymentMethod.Token: Batch records must carry a /tokenize token with "
                          "paymentMethod.token = true."])
        self.assertTrue(res[4]["errors"][0]["item1"].startswith("Transaction.Amount: "))
        self.assertEqual([e["item1"] for e in res[5]["errors"]], ["Mid: The Mid field is required."])
        self.assertTrue(all(e["item4"] is True for r in res[1:] for e in r["errors"]))
        self.assertTrue(all(r["status"] == "REJECTED" and r["orderSessionKey"] is None for r in res[1:]))
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 1)

    def test_unknown_tokens_rejected_when_configured(self):
        self.admin("POST", "/_admin/config", {"acceptUnknownTokens": False})
        name = "evaluate_%s_t_1.jsonl" % MID
        good = self.line(2)
        good["paymentMethod"]["cardNumber"] = self.tokenize("4000002760003184")
        self.upload(name, [self.line(1), good])
        self.admin("POST", "/_admin/scan")
        res = self.result(name)
        self.assertEqual(res[0]["status"], "REJECTED")
        self.assertIn("Unknown card token", res[0]["errors"][0]["item1"])
        self.assertEqual(res[1]["status"], "SUBMITTED")

    def test_whole_file_rejections(self):
        cases = {
            "evaluate_%s_big.jsonl" % MID: ([self.line(i) for i in range(1, 2002)], None, "too many lines"),
            "evaluate_%s_json.jsonl" % MID: (None, b'{"sequenceNumber":1}\n{nope\n', "not valid JSON"),
            "evaluate_%s_empty.jsonl" % MID: (None, b"", "empty"),
            "evaluate_%s_utf.jsonl" % MID: (None, b'{"a":"\xff"}\n', "UTF-8"),
            "payments_%s.jsonl" % MID: ([self.line(1)], None, "file name"),
        }
        for name, (lines, raw, _) in cases.items():
            self.upload(name, lines, raw)
        done = self.admin("POST", "/_admin/scan")["processed"]
        self.assertEqual(len(done), len(cases))
        self.assertTrue(all(d["status"] == "rejected" for d in done))
        for name, (lines, raw, why) in cases.items():
            err = self.error(name)
            self.assertIn(why, err["error"], name)
            self.assertIn("lineCount", err)
        self.assertEqual(self.error("evaluate_%s_big.jsonl" % MID)["lineCount"], 2001)
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 0)
        self.assertEqual(self.admin("GET", "/_admin/idempotency")["count"], 0)

    def test_max_2000_lines_accepted(self):
        name = "evaluate_%s_max.jsonl" % MID
        self.upload(name, [self.line(i, amount=1001) for i in range(1, 2001)])
        done = self.admin("POST", "/_admin/scan")["processed"]
        self.assertEqual((done[0]["status"], done[0]["accepted"]), ("processed", 2000))
        self.assertEqual(len(self.result(name)), 2000)

    def test_batch_fault_rejects_whole_file_then_reupload_works(self):
        self.admin("POST", "/_admin/batch-faults", {"reject_next": 1})
        name = "evaluate_%s_f_1.jsonl" % MID
        lines = [self.line(1), self.line(2)]
        self.upload(name, lines)
        done = self.admin("POST", "/_admin/scan")["processed"]
        self.assertEqual(done[0]["status"], "rejected")
        self.assertIn("fault injection", self.error(name)["error"])
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 0)
        self.upload(name, lines)  # a rejected file may be sent again
        done = self.admin("POST", "/_admin/scan")["processed"]
        self.assertEqual(done[0]["status"], "processed")
        self.assertEqual(self.admin("GET", "/_admin/orders")["count"], 2)

    def test_transmit_file(self):
        name = "transmit_%s_1.jsonl" % MID
        lines = [dict(self.transmit_body(order_id="TX-%d" % i, is_mit=True), sequenceNumber=i)
                 for i in (1, 2, 3, 4)]
        del lines[1]["orderId"]
        del lines[2]["paymentMethod"]["cardCountry"]       # card details: all eight required
        del lines[3]["subscription"]["interval"]           # MIT: subscription
        self.upload(name, lines)
        self.admin("POST", "/_admin/scan")
        res = self.result(name)
        self.assertEqual(list(res[0].keys()),
                         ["sequenceNumber", "orderId", "transmitId", "status", "success", "errors"])
        self.assertEqual((res[0]["status"], res[0]["success"]), ("SUCCESS", True))
        self.assertEqual([r["status"] for r in res[1:]], ["REJECTED"] * 3)
        self.assertEqual([[e["item1"] for e in r["errors"]] for r in res[1:]], [
            ["OrderId: Merchant's orderId is required"],
            ["PaymentMethod.CardCountry: The CardCountry field is required."],
            ["Subscription.Interval: The Interval field is required."]])
        self.assertEqual(len(self.admin("GET", "/_admin/transmits")["transmits"]), 1)

    def test_one_bad_line_among_good_ones(self):
        # strict rules per line: the bad line is REJECTED, never a rescue, and the
        # other lines are processed as usual
        name = "evaluate_%s_mix_1.jsonl" % MID
        lines = [self.line(i, amount=1001) for i in range(1, 6)]
        del lines[2]["transaction"]["avsResultCode"]
        del lines[2]["billingInformation"]["city"]
        self.upload(name, lines)
        done = self.admin("POST", "/_admin/scan")["processed"][0]
        self.assertEqual((done["status"], done["accepted"], done["rejected"]), ("processed", 4, 1))
        res = self.result(name)
        self.assertEqual([r["status"] for r in res], ["APPROVED", "APPROVED", "REJECTED", "APPROVED", "APPROVED"])
        self.assertEqual(res[2]["errors"], [
            {"item1": "Transaction.AvsResultCode: The AvsResultCode field is required.",
             "item2": "400", "item3": "400", "item4": True},
            {"item1": "BillingInformation.City: The City field is required.",
             "item2": "400", "item3": "400", "item4": True}])
        self.assertEqual((res[2]["success"], res[2]["orderSessionKey"]), (False, None))
        orders = self.admin("GET", "/_admin/orders")["orders"]
        self.assertEqual(sorted(o["externalOrderId"] for o in orders),
                         sorted(x["orderId"] for k, x in enumerate(lines) if k != 2))
        # the rejected line's key was not used up: the corrected line is accepted later
        fixed = self.line(1, amount=1001, key=lines[2]["idempotencyKey"], order_id=lines[2]["orderId"])
        self.upload("evaluate_%s_mix_2.jsonl" % MID, [fixed])
        self.admin("POST", "/_admin/scan")
        self.assertEqual(self.result("evaluate_%s_mix_2.jsonl" % MID)[0]["status"], "APPROVED")

    def test_sequence_number_checked_per_line(self):
        name = "evaluate_%s_seq_1.jsonl" % MID
        l2 = self.line(2)
        del l2["sequenceNumber"]
        l3 = self.line(7)
        l4 = self.line(4, sequenceNumber="x")
        self.upload(name, [self.line(1, amount=1001), l2, l3, l4, self.line(5, amount=1001)])
        done = self.admin("POST", "/_admin/scan")["processed"][0]
        self.assertEqual((done["status"], done["accepted"], done["rejected"]), ("processed", 2, 3))
        res = self.result(name)
        self.assertEqual([r["sequenceNumber"] for r in res], [1, 2, 3, 4, 5])
        self.assertEqual([r["status"] for r in res], ["APPROVED", "REJECTED", "REJECTED", "REJECTED", "APPROVED"])
        self.assertEqual(res[1]["errors"][0]["item1"],
                         "SequenceNumber: The SequenceNumber field is required.")
        self.assertEqual(res[2]["errors"][0]["item1"],
                         "SequenceNumber: The field SequenceNumber must be the record's position "
                         "in the file (3), not 7.")
        self.assertTrue(res[3]["errors"][0]["item1"].startswith("SequenceNumber: "))
        # transmit lines need it too
        tname = "transmit_%s_seq_1.jsonl" % MID
        t1 = self.transmit_body()
        self.upload(tname, [t1, dict(self.transmit_body(), sequenceNumber=2)])
        self.admin("POST", "/_admin/scan")
        tres = self.result(tname)
        self.assertEqual([r["status"] for r in tres], ["REJECTED", "SUCCESS"])
        self.assertEqual(tres[0]["errors"][0]["item1"], "SequenceNumber: The SequenceNumber field is required.")

    def test_lines_follow_the_strict_evaluate_rules(self):
        # every strict evaluate rule applies to batch lines, all errors of a line at once;
        # batch lines are MIT (isRecurring, subscription, expiryDateUtc in managed mode)
        name = "evaluate_%s_strict_1.jsonl" % MID
        bad = self.line(2)
        for k in ("isRecurring", "expiryDateUtc"):
            del bad[k]
        del bad["payer"]
        bad["transaction"]["responseCodeSource"] = ""
        self.upload(name, [self.line(1, amount=1001), bad])
        self.admin("POST", "/_admin/scan")
        res = self.result(name)
        self.assertEqual(res[0]["status"], "APPROVED")
        self.assertEqual([e["item1"] for e in res[1]["errors"]], [
            "Transaction.ResponseCodeSource: The ResponseCodeSource field is required.",
            "Payer: The Payer field is required.",
            "IsRecurring: The IsRecurring field is required.",
            "ExpiryDateUtc: The ExpiryDateUtc field is required."])

    def test_result_written_atomically(self):
        name = "evaluate_%s_a_1.jsonl" % MID
        self.upload(name, [self.line(1)])
        self.admin("POST", "/_admin/scan")
        names = os.listdir(self.folders()[1])
        self.assertEqual([n for n in names if n.endswith(".part")], [])
        self.assertIn("evaluate_%s_a_1.result.jsonl" % MID, names)


class BackgroundScanner(SimCase):
    config = {"scan_interval": 0.05}
    with_receiver = False

    def test_scanner_picks_up_files(self):
        inbound, outbound, _ = self.sim.batches.folders()
        name = "evaluate_%s_bg_1.jsonl" % MID
        line = self.eval_body(amount=1001)
        line["sequenceNumber"] = 1
        with open(os.path.join(inbound, name + ".part"), "w") as f:
            f.write(json.dumps(line) + "\n")
        os.replace(os.path.join(inbound, name + ".part"), os.path.join(inbound, name))
        target = os.path.join(outbound, "evaluate_%s_bg_1.result.jsonl" % MID)
        deadline = time.time() + 10
        while not os.path.exists(target) and time.time() < deadline:
            time.sleep(0.05)
        with open(target) as f:
            self.assertEqual(json.loads(f.readline())["status"], "APPROVED")


if __name__ == "__main__":
    unittest.main()
