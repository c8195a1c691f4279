"""A LOCAL HTTP file server for the download tests (127.0.0.1, a thread; never the internet).

``srv.files``: URL path -> bytes; ``srv.status``: URL path -> an error code to answer;
``srv.cut``: URL path -> send only this many body bytes once, then close (an interrupted
transfer); ``srv.stall``: URL path -> (n, threading.Event): send n bytes, wait for the event,
then the rest (once); ``srv.ranges = False``: ignore Range headers (answer 200 with the whole
file); ``srv.log``: (path, Range header) of every request; ``srv.base``: the base URL.
"""
from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):          # keep the test output clean
        pass

    def do_GET(self):  # noqa: N802
        srv = self.server
        rng = self.headers.get("Range")
        srv.log.append((self.path, rng))
        if self.path in srv.status:
            self.send_error(srv.status[self.path])
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = srv.cut.pop(self.path, None)
        stall = srv.stall.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[:cut])            # then the connection closes: a broken-off transfer
        elif stall is not None:
            n, gate = stall
            self.wfile.write(body[:n])
            self.wfile.flush()
            gate.wait(60)
            self.wfile.write(body[n:])
        else:
            self.wfile.write(body)
        self.wfile.flush()


@contextlib.contextmanager
def model_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.status, srv.cut, srv.stall, srv.log, srv.ranges = {}, {}, {}, {}, [], True
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}/nets"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
