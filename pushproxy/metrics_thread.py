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

At most ``max_clients`` requests are served at once (more are closed
unanswered) and each connection has ``timeout`` seconds to send its request:
a stuck or trickling client cannot hold the listener.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("pushproxy.metrics")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, max_clients: int):
        self._slots = threading.BoundedSemaphore(max_clients)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: the scraper tries again
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """GET /metrics (Prometheus text) and GET /healthz (JSON; 200, or 503 when down)."""

    def __init__(self, listen: tuple[str, int], registry, health, reactor, *,
                 max_clients: int = 8, timeout: float = 5.0, health_timeout: float = 10.0):
        self.listen = listen
        self.registry = registry
        self.health = health  # metrics_http.HealthResource: ._result() on the loop
        self.reactor = reactor
        self.max_clients = max_clients
        self.timeout = timeout
        self.health_timeout = health_timeout
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Listen and serve on a thread; the bound address."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = owner.timeout  # socket timeout for the whole request
            protocol_version = "HTTP/1.0"

            def do_GET(self):  # noqa: N802 (http.server's naming)
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

        self._server = _Server(self.listen, Handler, self.max_clients)
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
