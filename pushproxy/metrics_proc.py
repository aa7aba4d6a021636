"""The admin listener's own process: /metrics and /healthz without the daemon's interpreter lock.

Issue 22: under a login storm the daemon is CPU-bound, and every thread in it
-- the event loop, the store thread, eight LDAP threads -- takes turns on one
interpreter lock. A scrape served by a thread of the daemon needs that lock
again after every socket call; measured during the 20,000-login pending run,
a handler that used 4 ms of CPU (1 ms of it rendering) took up to 0.98 s of
wall time, and Prometheus saw scrapes of 1.9 s. This process has a lock of its
own: it holds the listening socket the daemon bound and passed it, serves the
newest figures the daemon sent, and asks for fresher ones at every request.

The daemon's side is `pushproxy.metrics_thread.MetricsServer`. The pipes:

- daemon -> here (this process's stdin): frames ``FRAME`` (kind, the wall time the
  body was made, its length) + body: ``M`` the Prometheus text, ``H`` the health
  JSON. End of file (the daemon stopped or died): this process exits.
- here -> daemon (stdout): lines ``R`` (serving), ``M`` (figures wanted), ``H``
  (a health check wanted), ``C <json [name, labels]>`` (a counter to add one to) and
  ``E <json [level, event, fields]>`` (a log event), so the daemon keeps
  counting and logging in one place.

A scrape waits up to ``fresh_wait`` seconds for figures made after it
arrived, then serves the newest it has: a busy daemon makes figures older,
never a scrape slower. Their age is in the figures themselves
(``pushproxy_metrics_age_seconds``, ``pushproxy_metrics_rendered_timestamp_seconds``).
/healthz waits up to ``health_timeout`` seconds for a check made after it
arrived, else answers 503 ("down"), as before.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pushproxy.connlimit import Admission, ConnectionBudget

#: kind (M or H), wall time the body was made, body length
FRAME = struct.Struct("!cdI")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # prometheus_client's


def read_frame(stream) -> tuple[bytes, float, bytes] | None:
    """One frame from ``stream`` (a binary file), or None at end of file."""
    header = _read_exact(stream, FRAME.size)
    if header is None:
        return None
    kind, stamp, length = FRAME.unpack(header)
    body = _read_exact(stream, length)
    return None if body is None else (kind, stamp, body)


def _read_exact(stream, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class Snapshots:
    """The newest figures and health from the daemon; waiting for newer ones."""

    def __init__(self, ask):
        self.ask = ask  # ask(kind): tell the daemon we want a newer one
        self._cond = threading.Condition()
        self._count = {b"M": 0, b"H": 0}
        self._latest: dict[bytes, tuple[float, bytes]] = {}

    def put(self, kind: bytes, stamp: float, body: bytes) -> None:
        """A frame arrived from the daemon."""
        with self._cond:
            self._latest[kind] = (stamp, body)
            self._count[kind] = self._count.get(kind, 0) + 1
            self._cond.notify_all()

    def fresh(self, kind: bytes, wait: float) -> tuple[tuple[float, bytes] | None, bool]:
        """Ask for a newer ``kind`` and wait up to ``wait`` s: (the newest, whether it is
        newer than the request)."""
        with self._cond:
            seen = self._count.get(kind, 0)
        self.ask(kind)
        with self._cond:
            newer = self._cond.wait_for(lambda: self._count.get(kind, 0) > seen, wait)
            return self._latest.get(kind), newer


def freshness(stamp: float, now: float) -> bytes:
    """The two gauges that make the figures' age visible."""
    return ("# HELP pushproxy_metrics_rendered_timestamp_seconds When the daemon made these "
            "figures (Unix time)\n"
            "# TYPE pushproxy_metrics_rendered_timestamp_seconds gauge\n"
            f"pushproxy_metrics_rendered_timestamp_seconds {stamp:.3f}\n"
            "# HELP pushproxy_metrics_age_seconds How old these figures were when served "
            "(a busy daemon makes them older, not the scrape slower)\n"
            "# TYPE pushproxy_metrics_age_seconds gauge\n"
            f"pushproxy_metrics_age_seconds {max(0.0, now - stamp):.3f}\n").encode("ascii")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, handler, budget: ConnectionBudget, tell):
        self._budget = budget
        self.tell = tell  # tell(line): one message to the daemon
        self._lock = threading.Lock()  # the budget's bookkeeping is not thread-safe
        self._keys: dict[int, str] = {}
        self._logged: dict[str, float] = {}
        self.address_family = sock.family
        super().__init__(sock.getsockname(), handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock  # bound and listening: the daemon did that
        self.server_address = sock.getsockname()

    def process_request(self, request, client_address):
        host = client_address[0] if client_address else None
        with self._lock:
            verdict, key = self._budget.admit(host)
            if verdict is Admission.ADMITTED:
                self._keys[id(request)] = key
        if verdict is not Admission.ADMITTED:
            self._refused(verdict, key)
            self.shutdown_request(request)  # busy: the scraper tries again
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request) -> None:
        with self._lock:
            key = self._keys.pop(id(request), None)
            if key is not None:
                self._budget.release(key)

    def _refused(self, verdict: Admission, key: str) -> None:
        self.tell("C", ["connections_refused", {"listener": "metrics",
                                                "reason": verdict.value}])
        now = time.monotonic()
        with self._lock:
            if now - self._logged.get(key, -60.0) < 60.0:
                return
            self._logged[key] = now
            if len(self._logged) > 1024:
                self._logged.clear()
        self.tell("E", [logging.WARNING, "connection.refused",
                        {"listener": "metrics", "source": key, "reason": verdict.value}])


def handler_class(snapshots: Snapshots, tell, *, timeout: float, health_timeout: float,
                  fresh_wait: float):
    """The request handler: /metrics, /healthz, else 404."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def setup(self):
            self.timeout = timeout  # per read; the deadline below bounds the whole request
            super().setup()
            # Trickled bytes restart a socket timeout, not this timer.
            self._deadline = threading.Timer(timeout, self._expire)
            self._deadline.daemon = True
            self._deadline.start()

        def _expire(self):
            tell("C", ["http_deadline_closed", {"listener": "metrics", "phase": "head"}])
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def finish(self):
            self._deadline.cancel()
            super().finish()

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._deadline.cancel()  # the request is in: answering is on us
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                latest, _ = snapshots.fresh(b"M", fresh_wait)
                if latest is None:  # just started: give the daemon its first render
                    latest, _ = snapshots.fresh(b"M", max(0.0, timeout - fresh_wait))
                if latest is None:
                    self._send(503, "text/plain", b"no figures from the daemon yet\n")
                    return
                stamp, body = latest
                self._send(200, CONTENT_TYPE, body + freshness(stamp, time.time()))
            elif path == "/healthz":
                latest, newer = snapshots.fresh(b"H", health_timeout)
                if latest is None or not newer:
                    result = {"healthy": False, "status": "down",
                              "error": f"health check did not finish within "
                                       f"{health_timeout:g} s"}
                    body = json.dumps(result, sort_keys=True).encode("utf-8") + b"\n"
                    self._send(503, "application/json", body, no_store=True)
                    return
                body = latest[1]
                healthy = json.loads(body).get("healthy")
                self._send(200 if healthy else 503, "application/json", body, no_store=True)
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, kind: str, body: bytes, no_store=False):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            if no_store:
                self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002
            pass  # scrapes every few seconds: no access log

    return Handler


def main(argv: list[str]) -> int:
    """Serve on the inherited socket until the daemon closes our stdin."""
    opts = json.loads(argv[0])
    out = sys.stdout.buffer
    out_lock = threading.Lock()

    def tell(kind: str, value=None) -> None:
        line = kind.encode("ascii")
        if value is not None:
            line += b" " + json.dumps(value).encode("utf-8")
        try:
            with out_lock:
                out.write(line + b"\n")
                out.flush()
        except (OSError, ValueError):
            pass  # the daemon is gone: stdin's end of file ends us

    snapshots = Snapshots(lambda kind: tell(kind.decode("ascii")))
    sock = socket.socket(fileno=opts["fd"])
    budget = ConnectionBudget("metrics", total=opts["total"], per_source=opts["per_source"])
    handler = handler_class(snapshots, tell, timeout=opts["timeout"],
                            health_timeout=opts["health_timeout"],
                            fresh_wait=opts["fresh_wait"])
    server = _Server(sock, handler, budget, tell)
    threading.Thread(target=server.serve_forever, name="serve", daemon=True).start()
    tell("R")  # serving
    inp = sys.stdin.buffer
    while True:
        frame = read_frame(inp)
        if frame is None:
            return 0  # the daemon stopped (or died): so do we
        snapshots.put(*frame)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
