"""The admin listener on threads of its own: /metrics never waits for the event loop.

Under a login storm the event loop is the busiest thing in the process (and
shares one interpreter lock with the LDAP and store threads); a scrape served
by it waited seconds behind the storm (issue 22), exactly when an operator
needs the figures. Here a small threaded HTTP server renders /metrics from
the thread-safe `Counters` and the gauges (plain reads of live state), so a
scrape costs milliseconds however late the loop runs. /healthz still asks the
directory and the store, which only the event loop can do: it is handed to
the loop (`metrics_http.HealthResource`'s check and one-second cache) and
answered within ``health_timeout`` seconds, or as failed.

Connections are held to a `connlimit.ConnectionBudget` (``daemon.metrics_max_connections``
in total and ``metrics_max_connections_per_source``; more are closed unanswered
and counted), and each connection has ``timeout`` seconds in all to send its
request line and headers, however slowly it trickles them (a timer, not a
per-read socket timeout): a stuck or trickling client cannot hold the listener.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from pushproxy import logs
from pushproxy.connlimit import Admission, ConnectionBudget

log = logging.getLogger("pushproxy.metrics")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, budget: ConnectionBudget, counters):
        self._budget = budget
        self._counters = counters
        self._lock = threading.Lock()  # the budget's bookkeeping is not thread-safe
        self._keys: dict[int, str] = {}
        self._logged: dict[str, float] = {}
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

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
        if self._counters is not None:
            self._counters.inc("connections_refused", listener="metrics", reason=verdict.value)
        now = time.monotonic()
        with self._lock:
            if now - self._logged.get(key, -60.0) < 60.0:
                return
            self._logged[key] = now
            if len(self._logged) > 1024:
                self._logged.clear()
        logs.event(log, logging.WARNING, "connection.refused", listener="metrics",
                   source=key, reason=verdict.value)


class MetricsServer:
    """GET /metrics (Prometheus text) and GET /healthz (JSON; 200, or 503 when down)."""

    def __init__(self, listen: tuple[str, int], registry, health, reactor, *,
                 budget: ConnectionBudget | None = None, counters=None,
                 timeout: float = 5.0, health_timeout: float = 10.0):
        self.listen = listen
        self.registry = registry
        self.health = health  # metrics_http.HealthResource: ._result() on the loop
        self.reactor = reactor
        self.budget = budget or ConnectionBudget("metrics", total=8, per_source=0)
        self.counters = counters
        self.timeout = timeout
        self.health_timeout = health_timeout
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Listen and serve on a thread; the bound address."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = owner.timeout  # per read; the deadline below bounds the whole request
            protocol_version = "HTTP/1.0"

            def setup(self):
                super().setup()
                # Trickled bytes restart a socket timeout, not this timer.
                self._deadline = threading.Timer(owner.timeout, self._expire)
                self._deadline.daemon = True
                self._deadline.start()

            def _expire(self):
                if owner.counters is not None:
                    owner.counters.inc("http_deadline_closed", listener="metrics", phase="head")
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
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(owner.registry))
                elif path == "/healthz":
                    result = owner._health()
                    self._send(200 if result.get("healthy") else 503, "application/json",
                               json.dumps(result, sort_keys=True).encode("utf-8") + b"\n",
                               no_store=True)
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

        self._server = _Server(self.listen, Handler, self.budget, self.counters)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        return self._server.server_address[:2]

    def _health(self) -> dict:
        """Run the health check on the event loop; wait for it here, bounded."""
        done = threading.Event()
        box: dict = {}

        def run():
            def keep(result):
                box["result"] = result
                done.set()

            def failed(failure):
                log.error("health.check_failed %s", failure.getTraceback())
                keep({"healthy": False, "status": "down", "error": "health check failed"})

            self.health._result().addCallbacks(keep, failed)

        self.reactor.callFromThread(run)
        if not done.wait(self.health_timeout):
            return {"healthy": False, "status": "down",
                    "error": f"health check did not finish within {self.health_timeout:g} s"}
        return box["result"]

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
