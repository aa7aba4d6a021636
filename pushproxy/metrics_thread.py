"""The admin listener: /metrics and /healthz served by a small process of its own.

Under a login storm the daemon is CPU-bound, and all its threads (event
loop, store, eight LDAP threads) take turns on one interpreter lock. Served
from a thread of the daemon, a scrape needed that lock after every socket
call and waited up to 1.9 s for it (issue 22; docs/benchmarks.md has the
measurements). So the daemon only *makes* the figures -- a render of the
Prometheus text takes ~1-2 ms of CPU -- and `pushproxy.metrics_proc`, a child
process with an interpreter lock of its own, holds the connections and
serves them. The daemon binds the listening socket itself (address errors
surface at start, as before) and passes it on.

Here, in the daemon, the "metrics-feed" thread renders the figures once a
second and whenever the child asks (a scrape arrived), and sends them down
the child's stdin; the "metrics-read" thread reads the child's requests: a
health check (run on the event loop, `metrics_http.HealthResource` with its
one-second cache, its result sent down), counters (refused connections,
deadlines: counted in the daemon's `Counters`) and log events. If the child
dies it is started again; if the daemon dies the child sees end of file and
exits.

Connections are held to a `connlimit.ConnectionBudget` (``daemon.metrics_max_connections``
in total and ``metrics_max_connections_per_source``; more are closed unanswered
and counted), and each connection has ``timeout`` seconds in all to send its
request line and headers, however slowly it trickles them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

from prometheus_client.exposition import generate_latest

from pushproxy import logs
from pushproxy.connlimit import ConnectionBudget
from pushproxy.metrics_proc import FRAME

log = logging.getLogger("pushproxy.metrics")


class MetricsServer:
    """GET /metrics (Prometheus text) and GET /healthz (JSON; 200, or 503 when down),
    served by a child process fed from here."""

    #: seconds between renders when nobody asks (bounds how old the figures get)
    RENDER_EVERY = 1.0

    def __init__(self, listen: tuple[str, int], registry, health, reactor, *,
                 budget: ConnectionBudget | None = None, counters=None,
                 timeout: float = 5.0, health_timeout: float = 10.0,
                 fresh_wait: float = 0.25):
        self.listen = listen
        self.registry = registry
        self.health = health  # metrics_http.HealthResource: ._result() on the loop
        self.reactor = reactor
        self.budget = budget or ConnectionBudget("metrics", total=8, per_source=0)
        self.counters = counters
        self.timeout = timeout
        self.health_timeout = health_timeout
        self.fresh_wait = fresh_wait  # a scrape waits this long for newer figures
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._wake = threading.Condition()
        self._want_metrics = False
        self._health_out: bytes | None = None  # a health result to send down
        self._health_running = False
        self._write_lock = threading.Lock()
        self.serving = threading.Event()  # set once the serving process says it serves

    def start(self) -> tuple[str, int]:
        """Bind, start the serving process and the feed; the bound address."""
        host, port = self.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._spawn()
        threading.Thread(target=self._feed, name="metrics-feed", daemon=True).start()
        # Not waited for: the socket listens already, and a connection made before
        # the process is up waits in its backlog (a start that waited for the
        # process's interpreter took seconds on a loaded machine).
        return sock.getsockname()[:2]

    def _spawn(self) -> None:
        opts = {"fd": self._sock.fileno(), "timeout": self.timeout,
                "health_timeout": self.health_timeout, "fresh_wait": self.fresh_wait,
                "total": self.budget.total, "per_source": self.budget.per_source}
        # The daemon's own import path, however it was started.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen(
            [sys.executable, "-m", "pushproxy.metrics_proc", json.dumps(opts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(self._sock.fileno(),),
            env=env, close_fds=True)
        self._proc = proc
        with self._wake:
            self._want_metrics = True  # its first figures
            self._wake.notify_all()
        threading.Thread(target=self._read, args=(proc,), name="metrics-read",
                         daemon=True).start()

    # -- from the child --

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            kind, _, rest = line.rstrip(b"\n").partition(b" ")
            try:
                if kind == b"R":
                    self.serving.set()
                elif kind == b"M":
                    with self._wake:
                        self._want_metrics = True
                        self._wake.notify_all()
                elif kind == b"H":
                    self._health_wanted()
                elif kind == b"C" and self.counters is not None:
                    name, labels = json.loads(rest)
                    self.counters.inc(name, **labels)
                elif kind == b"E":
                    level, event, fields = json.loads(rest)
                    logs.event(log, level, event, **fields)
            except (ValueError, TypeError):
                pass  # a garbled line from our own child: nothing to act on
        proc.stdout.close()
        if self._stopping.is_set():
            return
        code = proc.wait()
        logs.event(log, logging.ERROR, "metrics.process_exited", code=code)
        self._stopping.wait(1.0)  # no tight loop if it cannot start at all
        if not self._stopping.is_set():
            self._spawn()

    def _health_wanted(self) -> None:
        with self._wake:
            if self._health_running:
                return  # the check under way answers this request too
            self._health_running = True

        def done(result: dict) -> None:
            body = json.dumps(result, sort_keys=True).encode("utf-8") + b"\n"
            with self._wake:
                self._health_running = False
                self._health_out = body
                self._wake.notify_all()

        def failed(failure) -> None:
            log.error("health.check_failed %s", failure.getTraceback())
            done({"healthy": False, "status": "down", "error": "health check failed"})

        def run() -> None:
            self.health._result().addCallbacks(done, failed)

        # Only the event loop may ask the directory and the store.
        self.reactor.callFromThread(run)

    # -- to the child --

    def _feed(self) -> None:
        due = time.monotonic()
        while not self._stopping.is_set():
            with self._wake:
                self._wake.wait_for(
                    lambda: self._want_metrics or self._health_out is not None
                    or self._stopping.is_set(), max(0.0, due - time.monotonic()))
                health, self._health_out = self._health_out, None
                wanted, self._want_metrics = self._want_metrics, False
            if self._stopping.is_set():
                return
            if health is not None:
                self._send(b"H", health)
            if wanted or time.monotonic() >= due:
                try:
                    body = generate_latest(self.registry)
                except Exception:  # a broken gauge must not end the feed: log it, retry
                    log.exception("metrics.render_failed")
                    body = None
                if body is not None:
                    self._send(b"M", body)
                due = time.monotonic() + self.RENDER_EVERY

    def _send(self, kind: bytes, body: bytes) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            with self._write_lock:
                proc.stdin.write(FRAME.pack(kind, time.time(), len(body)) + body)
                proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the child is gone: _read starts another

    def stop(self) -> None:
        """Stop the feed and the serving process; close the socket."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.stdin.close()  # end of file: the child exits
            except OSError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
