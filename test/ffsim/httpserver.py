# httpserver.py - the HTTP/1.1 front end (http.server.ThreadingHTTPServer, keep-alive).
#
# Owns: reading requests (Content-Length or chunked bodies, Expect: 100-continue),
# writing answers with a correct Content-Length in one send (so keep-alive clients
# such as libcurl reuse connections without Nagle stalls), the request log for /v1
# calls, routing to api.py or admin.py, and carrying out injected faults (500, 429,
# timeout, hang, malformed, drop).
import http.server
import itertools
import json
import select
import socket
import time
import urllib.parse

import api
import clock
import common
import faults


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, addr, sim):
        self.sim = sim
        super().__init__(addr, Handler)

    def get_request(self):
        sock, addr = super().get_request()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock, addr


_connections = itertools.count(1)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Kestrel"
    sys_version = ""
    timeout = 300  # idle keep-alive connections are closed after 5 minutes

    def setup(self):
        # one handler per accepted connection: its number tells two connections
        # apart even when the second reuses the first one's client port (Linux
        # reuses TIME_WAIT ports on loopback)
        self.connection_id = next(_connections)
        super().setup()

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):  # quiet: the request log is in /_admin/requests
        if self.server.sim.verbose:
            super().log_message(fmt, *args)

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def do_PATCH(self):
        self.dispatch()

    # ------------------------------------------------------------------ I/O
    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        n = int(length)
        if n < 0 or n > 64 * 1024 * 1024:
            raise ValueError("bad Content-Length")
        return self.rfile.read(n)

    def send(self, resp, recorded=False):
        """recorded: a /v1 answer, which carries the sandbox's recorded headers
        (common.RECORDED_HEADERS) in the recorded spelling, after Date, Content-Type,
        Content-Length and Connection (when closing)."""
        if recorded:
            self.log_request(resp.status)
            self.send_response_only(resp.status)
            self.send_header("Date", self.date_time_string())
        else:
            self.send_response(resp.status)
        if resp.content_type:
            self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        if recorded:
            for k, v in common.RECORDED_HEADERS:
                self.send_header(k, v)
        for k, v in resp.headers:
            self.send_header(k, v)
        # end_headers() + one write of headers and body together
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(resp.body)
        self.flush_headers()

    # ------------------------------------------------------------- dispatch
    def dispatch(self):
        sim = self.server.sim
        try:
            body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self.send(api.problem_response(400, "Bad Request", "unreadable request body"))
            return
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        query = {}
        for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items():
            query.setdefault(k, []).extend(v)
        if path.startswith("/_admin"):
            try:
                resp = sim.admin.handle(self.command, path, query, body)
            except Exception as e:  # noqa: BLE001
                resp = api.Response(500, {"error": "%s: %s" % (type(e).__name__, e)})
            self.send(resp)
            return
        lq = {}
        for k, v in query.items():
            lq.setdefault(k.lower(), []).extend(v)
        req = api.Request(self.command, path, lq, self.headers, body)
        req.stop_event = sim.stop_event
        entry = self.log_request_entry(path, url.query, body)
        fault = faults.take(sim.store, self.command, path) if path.startswith("/v1") else None
        if fault:
            entry["fault"] = fault["mode"] + (" (after)" if fault["after"] else "")
        try:
            if fault and fault["mode"] == "hang":
                req.hang_seconds = fault["seconds"]
            resp = None
            if fault is None or fault["after"] or fault["mode"] == "hang":
                resp = self.process(sim, req)
                req.hang_point()
            if fault is not None and fault["mode"] != "hang":
                resp = self.apply_fault(fault, sim, req, resp)
            if resp is None:  # timeout / drop: no answer at all
                entry["status"] = None
                self.close_connection = True
                return
            entry["status"] = resp.status
            entry["durationMs"] = round((time.time() - entry["ts"]) * 1000, 2)
            self.send(resp, recorded=path.startswith("/v1"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def process(self, sim, req):
        try:
            return sim.api.handle(req)
        except Exception as e:  # noqa: BLE001 - a simulator bug must still answer
            import traceback
            traceback.print_exc()
            return api.problem_response(500, detail="simulator error: %s: %s" % (type(e).__name__, e))

    def apply_fault(self, fault, sim, req=None, processed=None):
        mode = fault["mode"]
        if mode == "echo_answer":
            answer = json.loads(processed.body) if processed is not None and processed.body else {}
            answer["debug"] = {
                "authorization": (req.headers.get("Authorization") if req is not None else None) or "",
                "request": req.body.decode("utf-8", "replace") if req is not None and req.body else "",
                "card": "4111 1111 1111 1111", "cardNumber": 4111111111111111}
            return api.Response(processed.status if processed is not None else 200, answer, api.JSON_CT)
        if mode == "500":
            return api.problem_response(500, detail="injected fault")
        if mode == "429":
            secs = max(1, int(round(fault["seconds"] or 1)))
            return api.problem_response(429, detail="injected fault", headers=[("Retry-After", str(secs))])
        if mode == "malformed":
            return api.Response(200, b'{"success":true,"status":"APPRO', api.JSON_CT)
        if mode == "poison":
            return api.Response(200, b'{"success":true,"transmitId":1e1000000}', api.JSON_CT)
        if mode == "badutf8":
            return api.Response(200, b'{"success":true,"status":"APPROVED","message":"caf\xe9 \xff\xfe\xc3"}',
                                api.JSON_CT)
        if mode == "unsuccessful":
            return api.Response(200, common.envelope(success=False, result="failed",
                                                     errors=[common.error_tuple("injected business error", 9999)]),
                                api.JSON_CT)
        if mode == "echo":
            body = req.body.decode("utf-8", "replace") if req is not None and req.body else ""
            auth = (req.headers.get("Authorization") if req is not None else None) or ""
            return api.Response(400, {"TraceId": ["00-echo-01"], "Authorization": [auth], "Request": [body]},
                                api.JSON_CT)
        if mode in ("echo_refusal", "echo_declined"):
            body = req.body.decode("utf-8", "replace") if req is not None and req.body else ""
            auth = (req.headers.get("Authorization") if req is not None else None) or ""
            if mode == "echo_refusal":
                return api.Response(400, {"success": False, "responseCode": "2001",
                                          "responseMessage": "refused: %s %s" % (auth, body)}, api.JSON_CT)
            return api.Response(200, {"success": True, "status": "SUCCESS",
                                      "responseMessage": "DECLINED %s %s" % (auth, body)}, api.JSON_CT)
        if mode == "timeout":
            self.hold_until_client_gives_up(fault["seconds"], sim)
            return None
        if mode == "drop":
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        return None

    def hold_until_client_gives_up(self, seconds, sim):
        deadline = time.monotonic() + seconds
        conn = self.connection
        while not sim.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([conn], [], [], min(0.25, left))
            if r:
                try:
                    data = conn.recv(1, socket.MSG_PEEK)
                except OSError:
                    return
                if not data:
                    return  # the client closed the connection
                time.sleep(0.05)  # client sent more bytes; keep ignoring it

    def log_request_entry(self, path, query, body):
        st = self.server.sim.store
        hdrs = {}
        for k, v in self.headers.items():
            hdrs[k] = hdrs[k] + ", " + v if k in hdrs else v
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = body.decode("latin-1")
        now = time.time()
        entry = {"seq": 0, "method": self.command, "path": path, "query": query, "headers": hdrs,
                 "body": text, "ts": now, "virtualTime": clock.iso(self.server.sim.clock.now()),
                 "client": "%s:%s" % self.client_address[:2], "connection": self.connection_id,
                 "status": None, "fault": None}
        with st.lock:
            entry["seq"] = st.next_seq()
            st.requests.append(entry)
        return entry
