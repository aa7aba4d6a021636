"""Issue 6 acceptance: sd_notify, reload (SIGHUP), graceful stop (SIGTERM), metrics and health.

Signal handling is tested on `pushproxy serve` as a real child process; the
50-pending-logins reload and the health checks run the Daemon in-process.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import textwrap
import time
from pathlib import Path

import pytest_twisted
import requests
from pyrad import packet as rpacket
from twisted.internet import protocol, reactor, threads

from pushproxy.approval import authenticator as auth
from pushproxy.approval.service import new_enrollment
from pushproxy.approval.store import SQLiteStore
from pushproxy.decision import PushStatus
from pushproxy.overload import OverloadLimits
from pushproxy.radius import codec
from pushproxy.wiring import build_daemon
from tests.integration.harness import SECRET, ServeProcess, load, start_daemon, write_config
from tests.integration.radclient import radclient_sync
from tests.integration.slapd import Slapd
from tests.support import ScriptedProvider

DICT = codec.load_dictionary()
MA = ("Message-Authenticator", "0x00")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_config(tmp_path: Path, slapd, *, stop_grace=1, metrics=False,
                  push="timeout: 20\nlimits: {max_pending: 10}"):
    """A config on fixed free ports (a child process cannot report port 0 back)."""
    http_port, radius_port = free_port(), free_port(socket.SOCK_DGRAM)
    approval = textwrap.dedent(f"""\
        approval:
          listen: "127.0.0.1:{http_port}"
          public_url: "http://127.0.0.1:{http_port}"
          database: pushproxy.db
        """)
    path = write_config(tmp_path, slapd, approval=approval, stop_grace=stop_grace, push=push)
    text = path.read_text().replace('listen: ["127.0.0.1:0"]', f'listen: ["127.0.0.1:{radius_port}"]')
    if metrics:
        text = text.replace("daemon:\n", f'daemon:\n  metrics_listen: "127.0.0.1:{free_port()}"\n')
    path.write_text(text)
    return path, radius_port, http_port


def status_server(port: int, secret: str = SECRET, wait: float = 2.0) -> int | None:
    """Send a signed Status-Server; the reply code or None."""
    pkt = rpacket.AuthPacket(code=rpacket.StatusServer, secret=secret.encode(), dict=DICT)
    pkt.add_message_authenticator()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.sendto(pkt.RequestPacket(), ("127.0.0.1", port))
        try:
            return s.recv(4096)[0]
        except socket.timeout:
            return None


def test_ready_is_sent_only_once_listeners_answer_and_stopping_on_sigterm(slapd, tmp_path):
    path, radius_port, http_port = served_config(tmp_path, slapd)
    sock_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(20)
    serve = ServeProcess(path, env={"NOTIFY_SOCKET": sock_path})
    try:
        first = notify.recv(4096).decode()
        assert first.startswith("READY=1")
        # At the moment READY arrives, both listeners must already answer.
        assert status_server(radius_port, wait=1.0) == rpacket.AccessAccept
        info = requests.get(f"http://127.0.0.1:{http_port}/v1/info", timeout=2).json()
        assert info["version"] == 1
        serve.proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096).decode().startswith("STOPPING=1")
        assert serve.proc.wait(15) == 0
    finally:
        serve.close()
        notify.close()


def test_sighup_keeps_the_old_config_when_the_new_one_is_broken_and_applies_a_good_one(
        slapd, tmp_path):
    path, radius_port, http_port = served_config(tmp_path, slapd)
    good = path.read_text()
    serve = ServeProcess(path)
    server = f"127.0.0.1:{radius_port}"
    login = [("User-Name", "carol"), ("User-Password", "carol-pw"), MA]
    try:
        serve.wait_for("daemon.ready")
        path.write_text(good.replace("push:\n", "push:\n  failmode: sometimes\n"))
        mark = len(serve.lines)
        serve.proc.send_signal(signal.SIGHUP)
        line = serve.wait_for("reload.refused", start=mark)
        assert "push.failmode: must be one of secure, safe" in line
        serve.wait_for("reload.kept_old_config", start=mark)
        assert radclient_sync(server, SECRET, login, timeout=3).code == "Access-Reject"

        (tmp_path / "radius.secret").write_text("a-brand-new-shared-secret\n")
        path.write_text(good)
        mark = len(serve.lines)
        serve.proc.send_signal(signal.SIGHUP)
        serve.wait_for("reload.applied", start=mark)
        new = radclient_sync(server, "a-brand-new-shared-secret", login, timeout=3)
        assert new.code == "Access-Reject"  # answered: carol is in no required group
        old = radclient_sync(server, SECRET, login, timeout=1, retries=1)
        assert old.code is None  # the old secret's Message-Authenticator no longer verifies
        assert "Traceback" not in serve.output()
    finally:
        serve.close()


class _Responses(protocol.DatagramProtocol):
    def __init__(self):
        self.replies = {}

    def datagramReceived(self, data, addr):
        self.replies[data[1]] = data


@pytest_twisted.inlineCallbacks
def test_reload_with_a_new_secret_while_50_logins_are_pending(slapd, tmp_path):
    """All 50 pending logins complete (signed with the secret they came with); new ones use the new secret."""
    provider = ScriptedProvider()
    path = write_config(tmp_path, slapd,
                        push="timeout: 30\nlimits: {max_pending: 100, max_pushes: 100}")
    daemon, addr = yield start_daemon(load(path), provider)
    port = int(addr.rsplit(":", 1)[1])
    client = _Responses()
    sender = reactor.listenUDP(0, client, interface="127.0.0.1")
    try:
        sent = {}
        for ident in range(50):
            pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=ident,
                                     secret=SECRET.encode(), dict=DICT)
            pkt["User-Name"] = "alice"
            pkt["User-Password"] = pkt.PwCrypt("alice-pw")
            pkt["Calling-Station-Id"] = f"198.51.100.{ident}"
            pkt.add_message_authenticator()
            sent[ident] = pkt
            sender.write(pkt.RequestPacket(), ("127.0.0.1", port))
        deadline = time.monotonic() + 10
        while len(provider.requests) < 50 and time.monotonic() < deadline:
            yield threads.deferToThread(time.sleep, 0.05)
        assert len(provider.requests) == 50 and daemon.engine.pending == 50

        (tmp_path / "radius.secret").write_text("the-new-secret-after-reload\n")
        assert daemon.reload(load(path)) == []
        for request in list(provider.requests):
            provider.answer(request.txid, PushStatus.APPROVED)
        deadline = time.monotonic() + 5
        while len(client.replies) < 50 and time.monotonic() < deadline:
            yield threads.deferToThread(time.sleep, 0.05)
        assert len(client.replies) == 50
        for ident, raw in client.replies.items():
            reply = sent[ident].CreateReply(packet=raw)
            assert sent[ident].VerifyReply(reply, raw, enforce_ma=True)
            assert reply.code == rpacket.AccessAccept

        fresh = rpacket.AuthPacket(code=rpacket.StatusServer, id=200,
                                   secret=b"the-new-secret-after-reload", dict=DICT)
        fresh.add_message_authenticator()
        sender.write(fresh.RequestPacket(), ("127.0.0.1", port))
        deadline = time.monotonic() + 3
        while 200 not in client.replies and time.monotonic() < deadline:
            yield threads.deferToThread(time.sleep, 0.05)
        assert client.replies[200][0] == rpacket.AccessAccept
    finally:
        yield sender.stopListening()
        yield daemon.stop()


def enroll_device(path: Path, tmp_path: Path, user="alice") -> str:
    config = load(path)
    store = SQLiteStore(config.approval.database)
    try:
        link = new_enrollment(store, user, config.approval.public_url, 900, time.time())
    finally:
        store.close()
    state = str(tmp_path / f"{user}-device")
    auth.enroll(link, state, "phone")
    return state


def test_sigterm_lets_pending_logins_finish_within_the_grace_then_rejects_and_exits_0(
        slapd, tmp_path):
    path, radius_port, http_port = served_config(tmp_path, slapd, stop_grace=4)
    serve = ServeProcess(path)
    server = f"127.0.0.1:{radius_port}"
    try:
        serve.wait_for("daemon.ready")
        state = enroll_device(path, tmp_path)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            logins = [pool.submit(radclient_sync, server, SECRET,
                                  [("User-Name", "alice"), ("User-Password", "alice-pw"),
                                   ("Calling-Station-Id", f"203.0.113.{i}"), MA], timeout=30)
                      for i in range(3)]
            deadline = time.monotonic() + 10
            seen = []
            while len(seen) < 3 and time.monotonic() < deadline:
                seen = auth.pending(state, wait=2)
            assert len(seen) == 3
            by_station = {entry["client_ip"]: entry["txid"] for entry in seen}
            started = time.monotonic()
            serve.proc.send_signal(signal.SIGTERM)
            serve.wait_for("daemon.draining")
            # During the grace the user can still answer.
            auth.answer(state, by_station["203.0.113.1"], "approve")
            results = {i: f.result(timeout=20) for i, f in enumerate(logins)}
            elapsed = time.monotonic() - started
        assert results[1].code == "Access-Accept"
        assert results[0].code == results[2].code == "Access-Reject"
        assert 3.5 <= elapsed < 8, elapsed
        assert serve.proc.wait(15) == 0
        audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert sorted(e["reason"] for e in audit) == ["push_approved", "shutting_down",
                                                      "shutting_down"]
    finally:
        serve.close()


def scrape(url: str) -> str:
    return requests.get(url, timeout=5).text


def metric(text: str, prefix: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest_twisted.inlineCallbacks
def test_metrics_move_and_healthz_follows_the_directory(tmp_path):
    (tmp_path / "slapd").mkdir()
    own = Slapd(base_dir=tmp_path / "slapd")
    own.start()
    daemon = None
    try:
        path, radius_port, http_port = served_config(tmp_path, own, metrics=True)
        config = load(path)
        daemon = build_daemon(config, reactor)
        yield daemon.start()
        host, port = config.daemon.metrics_listen
        base = f"http://{host}:{port}"
        server = f"127.0.0.1:{daemon.ports[0].getHost().port}"
        before = yield threads.deferToThread(scrape, base + "/metrics")
        result = yield threads.deferToThread(
            radclient_sync, server, SECRET,
            [("User-Name", "alice"), ("User-Password", "wrong"), MA], timeout=5)
        assert result.code == "Access-Reject"
        yield threads.deferToThread(status_server, radius_port, "not-the-secret", 0.5)
        after = yield threads.deferToThread(scrape, base + "/metrics")
        key = 'pushproxy_decisions_total{client="test-nas",outcome="reject",reason="bad_credentials"}'
        assert metric(after, key) == metric(before, key) + 1
        assert metric(after, 'pushproxy_radius_drops_total{reason="bad_message_authenticator"}') == 1
        assert metric(after, "pushproxy_ldap_seconds_count") >= 1
        assert metric(after, "pushproxy_decision_seconds_count") >= 1
        assert "pushproxy_pending_logins 0.0" in after

        health = yield threads.deferToThread(requests.get, base + "/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["healthy"] is True
        assert health.json()["status"] == "ok"
        # Busy is not down (issue 22): while new requests are shed, 200 "busy".
        daemon.admission.limits = OverloadLimits(loop_lag=0.0)  # as if the loop ran late
        yield threads.deferToThread(time.sleep, 1.1)  # past the health cache
        health = yield threads.deferToThread(requests.get, base + "/healthz", timeout=10)
        assert health.status_code == 200
        assert (health.json()["status"], health.json()["busy"]) == ("busy", "loop_lag")
        assert "pushproxy_overloaded 1.0" in (yield threads.deferToThread(scrape,
                                                                         base + "/metrics"))
        daemon.admission.limits = config.daemon.overload
        own.stop()
        yield threads.deferToThread(time.sleep, 1.1)  # past the health cache
        health = yield threads.deferToThread(requests.get, base + "/healthz", timeout=10)
        assert health.status_code == 503
        body = health.json()
        assert body["directory"]["ok"] is False and body["store"]["ok"] is True
        assert body["status"] == "down"
        own.start()
        yield threads.deferToThread(time.sleep, 1.1)
        health = yield threads.deferToThread(requests.get, base + "/healthz", timeout=10)
        assert health.status_code == 200
    finally:
        if daemon is not None:
            yield daemon.stop()
        own.cleanup()
