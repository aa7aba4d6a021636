"""The admin listener's own process (issue 22): /metrics answers while the event loop is
stalled and while the daemon cannot render, with the figures' age in them; /healthz reports
busy as 200 and down as 503, and a stalled loop makes /healthz fail within its bound
instead of hanging the scraper; the serving process follows the daemon's life."""

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
    assert server.serving.wait(30)  # its deadlines are timed from when it serves
    return server, f"http://{host}:{port}"


def eventually(condition, within: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


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
    assert server.serving.wait(30)  # its deadlines are timed from when it serves
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
        # counted by the daemon, told by the serving process: wait for the message
        assert eventually(lambda: counters.get("connections_refused", listener="metrics",
                                               reason="per_source") == 1)
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
    assert server.serving.wait(30)  # its deadlines are timed from when it serves
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


def test_a_scrape_sees_what_was_counted_before_it(no_proxy):
    """Figures are made for the scrape that asks (not only once a second): a counter
    bumped just before a scrape is in it, and the figures say how old they are."""
    counters = Counters()
    server, base = serve_counters(counters)
    try:
        for n in range(1, 4):
            counters.inc("radius_requests", client="a")
            status, text = get(base + "/metrics")
            assert status == 200
            assert f'pushproxy_radius_requests_total{{client="a"}} {n}.0' in text
        assert "pushproxy_metrics_age_seconds " in text
        assert "pushproxy_metrics_rendered_timestamp_seconds " in text
    finally:
        server.stop()


def serve_counters(counters, gauges=None):
    loop = RunningLoop()
    server = MetricsServer(("127.0.0.1", 0), registry(counters, gauges or {}),
                           HealthResource(lambda: defer.succeed({"healthy": True}), loop), loop,
                           counters=counters, fresh_wait=0.5)
    host, port = server.start()
    assert server.serving.wait(30)  # its deadlines are timed from when it serves
    return server, f"http://{host}:{port}"


def test_a_daemon_that_cannot_render_gets_older_figures_served_not_a_hung_scrape(no_proxy):
    """While the daemon's side is stuck making figures (here: a gauge that blocks, as a
    starved interpreter would), a scrape gets the last figures with their age."""
    import threading

    release, stall = threading.Event(), threading.Event()

    def blocking_gauge():
        if stall.is_set():
            release.wait(20)
        return 5

    counters = Counters()
    server, base = serve_counters(counters, {"store_queue": ("q", blocking_gauge)})
    try:
        counters.inc("radius_requests", client="a")
        status, text = get(base + "/metrics")  # the first render, before the stall
        assert status == 200 and "pushproxy_store_queue 5.0" in text
        stall.set()
        counters.inc("radius_requests", client="a")
        status, text = get(base + "/metrics")  # the daemon's render now hangs
        assert status == 200
        assert 'pushproxy_radius_requests_total{client="a"} 1.0' in text  # the older figures
        assert "pushproxy_metrics_age_seconds " in text
    finally:
        release.set()
        server.stop()


def test_the_serving_process_is_started_again_and_ends_with_the_daemon(no_proxy):
    """Killed, the serving process is replaced on the same port; `stop` (like the daemon's
    end: its pipe closes) ends it."""
    import os
    import signal

    counters = Counters()
    server, base = serve_counters(counters)
    try:
        first = server._proc
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert eventually(lambda: server._proc is not first and server._proc is not None)
        assert eventually(lambda: get_or_none(base + "/metrics") == 200, within=20)
        second = server._proc
    finally:
        server.stop()
    second.wait(10)  # ended by the closed pipe, not left behind
    assert second.returncode == 0


def get_or_none(url):
    try:
        return get(url)[0]
    except OSError:
        return None
