# test_cli.py - the command line: start as a subprocess on port 0, port file,
# the "listening" line, no secrets printed, clean stop on SIGTERM.
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FFSIM = os.path.join(HERE, "ffsim.py")


class Cli(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ffsim-cli-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_start_port_file_and_sigterm(self):
        port_file = os.path.join(self.tmp, "port")
        sftp = os.path.join(self.tmp, "sftp")
        p = subprocess.Popen(
            [sys.executable, FFSIM, "--listen", "127.0.0.1", "--port", "0", "--port-file", port_file,
             "--mid", "11111111-2222-4333-8444-555555555555", "--app-key", "k1",
             "--app-secret", "very-secret-value", "--tokenization-key", "tok-secret-value",
             "--sftp-root", sftp, "--webhook-url", "http://127.0.0.1:9/hook",
             "--webhook-key", "c2VjcmV0LWtleQ==", "--mit-mode", "sync", "--error-shape", "flat",
             "--strict", "--scan-interval", "0.2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = p.stdout.readline()
            self.assertRegex(line, r"^ffsim listening on http://127\.0\.0\.1:\d+\n$")
            port = int(line.rsplit(":", 1)[1])
            with open(port_file) as f:
                self.assertEqual(int(f.read().strip()), port)
            self.assertTrue(os.path.isdir(os.path.join(sftp, "11111111-2222-4333-8444-555555555555", "inbound")))
            with urllib.request.urlopen("http://127.0.0.1:%d/_admin/config" % port, timeout=5) as r:
                cfg = json.load(r)
            self.assertEqual((cfg["mitMode"], cfg["errorShape"], cfg["strict"]), ("sync", "flat", True))
            req = urllib.request.Request("http://127.0.0.1:%d/v1/oauth2/token" % port,
                                         data=b'{"AppKey":"k1","AppSecret":"very-secret-value"}',
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as r:
                self.assertEqual(r.status, 200)
        finally:
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 0, err)
        everything = line + out + err
        self.assertIn("ffsim stopped", out)
        for secret in ("very-secret-value", "tok-secret-value", "c2VjcmV0LWtleQ=="):
            self.assertNotIn(secret, everything)
        self.assertFalse(os.path.exists(port_file))

    def start(self, *args):
        port_file = os.path.join(self.tmp, "port")
        p = subprocess.Popen([sys.executable, FFSIM, "--port", "0", "--port-file", port_file] + list(args),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        self.assertRegex(line, r"^ffsim listening on http://127\.0\.0\.1:\d+\n$")
        self.banner = [line]
        while not self.banner[-1].startswith("ffsim mid "):
            self.banner.append(p.stdout.readline())
        if "--lenient" in args:
            self.banner.append(p.stdout.readline())
        return p, int(line.rsplit(":", 1)[1])

    def stop(self, p):
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 0, err)
        return out

    def config(self, port):
        with urllib.request.urlopen("http://127.0.0.1:%d/_admin/config" % port, timeout=5) as r:
            return json.load(r)

    def test_strict_by_default_lenient_on_request(self):
        p, port = self.start()
        try:
            cfg = self.config(port)
            self.assertEqual((cfg["strict"], cfg["errorShape"]), (True, "flat"))
        finally:
            out = self.stop(p)
        self.assertNotIn("LENIENT", "".join(self.banner) + out)
        p, port = self.start("--lenient", "--error-shape", "wrapped")
        try:
            cfg = self.config(port)
            self.assertEqual((cfg["strict"], cfg["errorShape"]), (False, "wrapped"))
        finally:
            self.stop(p)
        self.assertTrue(self.banner[-1].startswith("ffsim LENIENT validation (--lenient): for experiments only"),
                        self.banner)

    def test_bad_webhook_key_rejected(self):
        r = subprocess.run([sys.executable, FFSIM, "--webhook-key", "***not base64***"],
                           capture_output=True, text=True, timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--webhook-key", r.stderr)

    def test_help(self):
        r = subprocess.run([sys.executable, FFSIM, "--help"], capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 0)
        for flag in ("--port-file", "--sftp-root", "--webhook-url", "--mit-mode", "--error-shape",
                     "--lenient", "--strict", "--scan-interval", "--accept-unknown-tokens"):
            self.assertIn(flag, r.stdout)


if __name__ == "__main__":
    unittest.main()
