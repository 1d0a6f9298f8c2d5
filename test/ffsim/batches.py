# batches.py - SFTP batch processing (the contract of flexfactor-api.md section 9.3).
#
# Owns: the merchant folders <sftp-root>/<mid>/{inbound,outbound,inbound/processed},
# the inbound scan (ignores *.part, dot files and folders), whole-file checks (name,
# UTF-8, JSON object per line, at most 2,000 lines), per-line validation and processing
# through the engine (evaluate_*.jsonl and transmit_*.jsonl: the REST rules plus mid,
# sequenceNumber = position, and for evaluate a /tokenize token; a bad line is a
# REJECTED result line, never a rescue, never blocking the other lines), atomic
# result/error files in outbound, and the memory of processed files (name+sha256) so
# the same file is never processed twice. Processed inbound files are MOVED to
# inbound/processed/ (a name clash there gets a numeric suffix).
import hashlib
import os
import re
import threading

import clock
import common

MAX_LINES = 2000
NAME_RE = re.compile(r"^(evaluate|transmit)_.+\.jsonl$")


def base_name(name):
    return name[:-len(".jsonl")] if name.endswith(".jsonl") else name


def atomic_write(path, data):
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666)
    os.replace(tmp, path)


class Batches:
    def __init__(self, store, vclock, engine):
        self.store = store
        self.clock = vclock
        self.engine = engine
        self.lock = threading.Lock()   # one scan at a time

    # -------------------------------------------------------------- folders
    def folders(self):
        root = self.store.config.sftp_root
        if not root:
            return None
        base = os.path.join(root, self.store.config.mid)
        return (os.path.join(base, "inbound"), os.path.join(base, "outbound"),
                os.path.join(base, "inbound", "processed"))

    def ensure_folders(self):
        f = self.folders()
        if f is None:
            return None
        root = self.store.config.sftp_root
        for d in (root, os.path.dirname(f[0])) + f:
            os.makedirs(d, exist_ok=True)
            try:
                os.chmod(d, 0o777)
            except PermissionError:
                pass
        return f

    # ----------------------------------------------------------------- scan
    def scan(self):
        """Process every complete file in inbound now. Returns a list of summaries."""
        f = self.folders()
        if f is None:
            return []
        inbound, outbound, processed = f
        out = []
        with self.lock:
            try:
                names = sorted(os.listdir(inbound))
            except FileNotFoundError:
                return []
            for name in names:
                path = os.path.join(inbound, name)
                if name.startswith(".") or name.endswith(".part") or not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as fh:
                        data = fh.read()
                except OSError:
                    continue
                rec = self._process(name, data, outbound)
                rec["processedPath"] = self._move(path, processed, name)
                out.append(self._summary(rec))
        return out

    def _move(self, path, processed, name):
        target = os.path.join(processed, name)
        n = 1
        while os.path.exists(target):
            target = os.path.join(processed, "%s.%d" % (name, n))
            n += 1
        try:
            os.replace(path, target)
        except OSError:
            return None
        return target

    @staticmethod
    def _summary(rec):
        return {k: rec.get(k) for k in ("file", "kind", "status", "lineCount", "accepted",
                                         "rejected", "resultFile", "errorFile", "error", "sha256")}

    def _record(self, name, data, kind):
        now = self.clock.now()
        return {"file": name, "kind": kind, "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data), "receivedAt": clock.iso(now), "status": None,
                "lineCount": 0, "accepted": 0, "rejected": 0, "lines": [], "results": [],
                "resultFile": None, "errorFile": None, "error": None, "processedPath": None}

    def _process(self, name, data, outbound):
        st = self.store
        m = NAME_RE.match(name)
        rec = self._record(name, data, m.group(1) if m else None)
        key = (name, rec["sha256"])
        with st.lock:
            seen = st.processed_files.get(key)
            if seen is not None:
                rec["status"] = "duplicate"
                rec["error"] = "already processed at %s; ignored" % seen["receivedAt"]
                rec["lineCount"] = seen["lineCount"]
                st.batches.append(rec)
                return rec
            reject_fault = st.batch_reject_next > 0
            if reject_fault:
                st.batch_reject_next -= 1
        lines, err = self._parse(name, data, m)
        if err is None and reject_fault:
            err = "batch rejected by fault injection"
        if err is not None:
            rec["status"] = "rejected"
            rec["error"] = err
            rec["lineCount"] = len(lines) if lines is not None else self._count_lines(data)
            rec["lines"] = lines or []
            efile = os.path.join(outbound, base_name(name) + ".error.json")
            atomic_write(efile, common.dumpb({"error": err, "lineCount": rec["lineCount"],
                                              "file": name}) + b"\n")
            rec["errorFile"] = efile
            with st.lock:
                st.batches.append(rec)
            return rec
        rec["lines"] = lines
        rec["lineCount"] = len(lines)
        source = "batch:" + name
        mid = st.config.mid
        results = []
        for i, obj in enumerate(lines, 1):
            n = common.norm(obj)
            if m.group(1) == "evaluate":
                oc = self.engine.evaluate(obj, mid, source, batch=True, position=i)
                line = {"sequenceNumber": i, "orderId": n.get("orderid"),
                        "orderSessionKey": None, "status": "REJECTED", "success": False, "errors": []}
                if oc.result is not None:
                    line["orderSessionKey"] = oc.result.get("orderSessionKey")
            else:
                oc = self.engine.transmit(obj, mid, source, batch=True, position=i)
                line = {"sequenceNumber": i, "orderId": n.get("orderid"),
                        "transmitId": None, "status": "REJECTED", "success": False, "errors": []}
                if oc.result is not None:
                    line["transmitId"] = oc.result.get("transmitId")
            if oc.result is not None:
                line["status"] = oc.result["status"]
                line["success"] = True
                rec["accepted"] += 1
            else:
                rec["rejected"] += 1
                line["errors"] = self._line_errors(oc)
            results.append(line)
        body = b"".join(common.dumpb(r) + b"\n" for r in results)
        rfile = os.path.join(outbound, base_name(name) + ".result.jsonl")
        atomic_write(rfile, body)
        rec["results"] = results
        rec["resultFile"] = rfile
        rec["status"] = "processed"
        with st.lock:
            st.processed_files[key] = rec
            st.batches.append(rec)
        return rec

    @staticmethod
    def _line_errors(oc):
        """A rejected line's errors as C# 4-tuples, one per message, item1 naming the
        field by its .NET key (as the REST answer does) and the message:
        {"item1":"Transaction.AvsResultCode: The AvsResultCode field is required.","item2":"400",...}"""
        if oc.errors:
            out = []
            for path, msgs in oc.errors.items():
                for msg in msgs:
                    out.append(common.error_tuple("%s: %s" % (common.pascal_path(path), msg), "400"))
            return out
        code = str(oc.http_status)
        msg = oc.title or "Rejected"
        if oc.detail:
            msg += ": " + oc.detail
        return [common.error_tuple(msg, code)]

    @staticmethod
    def _count_lines(data):
        text = data.decode("utf-8", "replace")
        return len([x for x in text.split("\n") if x.strip()])

    @staticmethod
    def _parse(name, data, m):
        """Whole-file checks. Returns (lines, error_or_None)."""
        if m is None:
            return None, ("file name %r is not evaluate_<...>.jsonl or transmit_<...>.jsonl" % name)
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, "file is not valid UTF-8 (byte %d)" % e.start
        raw_lines = text.split("\n")
        if raw_lines and raw_lines[-1] == "":
            raw_lines.pop()
        raw_lines = [x[:-1] if x.endswith("\r") else x for x in raw_lines]
        if not raw_lines:
            return [], "file is empty"
        if len(raw_lines) > MAX_LINES:
            return None, "too many lines: %d (at most %d per file)" % (len(raw_lines), MAX_LINES)
        lines = []
        for i, text_line in enumerate(raw_lines, 1):
            if not text_line.strip():
                return None, "line %d is empty" % i
            try:
                obj = common.loads(text_line)
            except ValueError as e:
                return None, "line %d is not valid JSON: %s" % (i, e)
            if not isinstance(obj, dict):
                return None, "line %d is not a JSON object" % i
            lines.append(obj)
        # sequenceNumber (1..N, the line's position) is checked per line with the
        # other field rules: a bad line is REJECTED and never blocks the others.
        return lines, None
