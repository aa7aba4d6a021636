"""The admin listener's own threads (issue 22): /metrics answers while the event loop is
stalled, /healthz reports busy as 200 and down as 503, and a stalled loop makes /healthz
fail within its bound instead of hanging the scraper."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from pushproxy.metrics import Counters
from pushproxy.metrics_http import HealthResource, registry
from pushproxy.metrics_thread import MetricsServer


class StalledLoop(Clock):
    """An event loop that never gets round to what other threads hand it."""

    def callFromThread(self, f, *args):
        pass


class RunningLoop(Clock):
    """Runs what other threads hand it at once (on their thread: enough for a test)."""

    def callFromThread(self, f, *args):
        f(*args)


def serve(loop, health):
    counters = Counters()
    counters.inc("radius_overloaded", reason="store_age")
    gauges = {"store_queue": ("Store calls queued", lambda: 7)}
    server = MetricsServer(("127.0.0.1", 0), registry(counters, gauges),
                           HealthResource(health, loop), loop, health_timeout=0.3)
    host, port = server.start()
    return server, f"http://{host}:{port}"


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


def test_metrics_answer_while_the_event_loop_is_stalled_and_healthz_fails_in_bound(no_proxy):
    server, base = serve(StalledLoop(), lambda: defer.Deferred())
    try:
        status, text = get(base + "/metrics")
        assert status == 200
        assert 'pushproxy_radius_overloaded_total{reason="store_age"} 1.0' in text
        assert "pushproxy_store_queue 7.0" in text
        status, text = get(base + "/healthz")
        assert status == 503 and "did not finish" in json.loads(text)["error"]
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()


@pytest.mark.parametrize("result,code", [
    ({"healthy": True, "status": "busy", "busy": "store_age"}, 200),
    ({"healthy": True, "status": "ok"}, 200),
    ({"healthy": False, "status": "down"}, 503)])
def test_healthz_busy_is_200_and_down_is_503(no_proxy, result, code):
    server, base = serve(RunningLoop(), lambda: defer.succeed(result))
    try:
        status, text = get(base + "/healthz")
        assert status == code and json.loads(text) == result
    finally:
        server.stop()


def test_the_admin_listener_refuses_past_its_per_source_cap_and_counts_it(no_proxy):
    """A source at daemon.metrics_max_connections_per_source gets no more slots; others do."""
    import socket

    from pushproxy.connlimit import ConnectionBudget

    counters = Counters()
    server = MetricsServer(("127.0.0.1", 0), registry(counters, {}),
                           HealthResource(lambda: defer.succeed({"healthy": True}), RunningLoop()),
                           RunningLoop(), budget=ConnectionBudget("metrics", total=8, per_source=2),
                           counters=counters, timeout=5.0)
    host, port = server.start()
    held = []
    try:
        for _ in range(2):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"GET /metr")  # never finished: holds its slot
            held.append(s)
        time.sleep(0.2)
        third = socket.create_connection((host, port), timeout=5)
        third.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert third.recv(100) == b""  # closed unanswered
        third.close()
        # another source (127.0.0.2) still gets its answer
        other = socket.create_connection((host, port), timeout=5, source_address=("127.0.0.2", 0))
        other.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert other.recv(100).startswith(b"HTTP/1.0 200")
        other.close()
        assert counters.get("connections_refused", listener="metrics",
                              reason="per_source") == 1
    finally:
        for s in held:
            s.close()
        server.stop()


def test_trickled_bytes_do_not_extend_the_request_deadline(no_proxy):
    """One byte every 0.3 s restarts a socket timeout, but the 1 s deadline closes anyway."""
    import socket

    counters = Counters()
    server = MetricsServer(("127.0.0.1", 0), registry(counters, {}),
                           HealthResource(lambda: defer.succeed({"healthy": True}), RunningLoop()),
                           RunningLoop(), counters=counters, timeout=1.0)
    host, port = server.start()
    try:
        s = socket.create_connection((host, port), timeout=5)
        started = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 40:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.3)
            if time.monotonic() - started > 3.0:
                break
        if not closed:
            s.settimeout(2)
            try:
                closed = s.recv(100) == b""
            except OSError:
                closed = True
        assert closed
        assert time.monotonic() - started < 4.0
        assert counters.get("http_deadline_closed", listener="metrics", phase="head") == 1
        s.close()
    finally:
        server.stop()
