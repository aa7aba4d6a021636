"""RADIUS Accounting with the real radclient against the in-process daemon (UDP, loopback)."""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections import OrderedDict

import pytest
import pytest_twisted
from pyrad import packet as rpacket

from tests.integration.harness import SECRET, load, start_daemon, write_config
from tests.integration.radclient import radclient
from tests.support import ScriptedProvider


@pytest.fixture
def acct(slapd, tmp_path):
    """A daemon with ``radius.accounting_listen`` on a free loopback port: (daemon, address)."""
    started = []

    @pytest_twisted.inlineCallbacks
    def _run():
        config = load(write_config(tmp_path, slapd))
        config = dataclasses.replace(config, radius=dataclasses.replace(
            config.radius, accounting_listen=(("127.0.0.1", 0),)))
        daemon, _ = yield start_daemon(config, ScriptedProvider(mode="approve"))
        started.append(daemon)
        return daemon, f"127.0.0.1:{daemon.ports[-1].getHost().port}"

    yield _run
    for daemon in started:
        pytest_twisted.blockon(daemon.stop())


def record(status, user="alice", session="sess-1", more=()):
    return [("Acct-Status-Type", status), ("User-Name", user), ("Acct-Session-Id", session),
            ("NAS-Identifier", "gw-acct"), *more]


@pytest_twisted.inlineCallbacks
def test_start_interim_stop_get_responses_radclient_accepts(acct):
    daemon, addr = yield acct()
    for status in ("Start", "Interim-Update", "Stop"):
        result = yield radclient(addr, SECRET, record(status), code="acct", timeout=3)
        assert result.code == "Accounting-Response", result.stderr
        assert result.exit_code == 0
    for status in ("start", "interim-update", "stop"):
        assert daemon.counters.get("radius_accounting", client="test-nas", status=status) == 1


@pytest_twisted.inlineCallbacks
def test_message_authenticator_from_radclient_is_verified_and_answered(acct):
    daemon, addr = yield acct()
    result = yield radclient(addr, SECRET, record("Start", more=[("Message-Authenticator", "0x00")]),
                             code="acct", timeout=3)
    assert result.code == "Accounting-Response", result.stderr
    assert daemon.counters.get("radius_accounting", client="test-nas", status="start") == 1


@pytest_twisted.inlineCallbacks
def test_radclient_status_server_on_the_accounting_port_is_answered(acct):
    daemon, addr = yield acct()
    result = yield radclient(addr, SECRET, [("Message-Authenticator", "0x00")], code="status",
                             timeout=3)
    assert result.code == "Accounting-Response", result.stderr
    assert daemon.counters.get("radius_accounting", client="test-nas",
                               status="status-server") == 1


@pytest_twisted.inlineCallbacks
def test_wrong_secret_gets_no_answer_and_is_counted(acct):
    daemon, addr = yield acct()
    result = yield radclient(addr, "a-wrong-shared-secret", record("Start"), code="acct",
                             timeout=1, retries=1)
    assert result.code is None
    assert daemon.counters.get("radius_accounting_drops",
                               reason="bad_request_authenticator") == 1
    assert daemon.counters.get("radius_accounting", client="test-nas", status="start") == 0


@pytest_twisted.inlineCallbacks
def test_a_retransmit_gets_the_identical_response(acct):
    """The same datagram twice (as a NAS resends it): one event, the same bytes back."""
    daemon, addr = yield acct()
    host, port = addr.split(":")
    pkt = rpacket.AcctPacket(id=42, secret=SECRET.encode(), dict=None)
    OrderedDict.__setitem__(pkt, 40, [(1).to_bytes(4, "big")])
    OrderedDict.__setitem__(pkt, 1, [b"alice"])
    data = pkt.RequestPacket()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        replies = []
        for _ in range(2):
            sock.sendto(data, (host, int(port)))
            replies.append((yield _receive(sock)))
    finally:
        sock.close()
    assert replies[0] == replies[1] and replies[0][0] == 5
    assert daemon.counters.get("radius_accounting", client="test-nas", status="start") == 1
    assert daemon.counters.get("radius_accounting_retransmits", client="test-nas") == 1


def _receive(sock, deadline=3.0):
    from twisted.internet import reactor, task

    @pytest_twisted.inlineCallbacks
    def poll():
        waited = 0.0
        while waited < deadline:
            try:
                return sock.recv(4096)
            except BlockingIOError:
                yield task.deferLater(reactor, 0.02, lambda: None)
                waited += 0.02
        raise AssertionError("no Accounting-Response")

    return poll()


@pytest_twisted.inlineCallbacks
def test_hostile_values_are_answered_and_logged_safely(acct, caplog):
    caplog.set_level(logging.INFO, "pushproxy.radius.accounting")
    daemon, addr = yield acct()
    user = "\u202eali\u0301ce\U0001F600 x=1 \\ \"q\""
    result = yield radclient(addr, SECRET, record("Stop", user=user, session="S" * 240),
                             code="acct", timeout=3)
    assert result.code == "Accounting-Response", result.stderr
    (line,) = [r.getMessage() for r in caplog.records
               if r.getMessage().startswith("radius.accounting ")]
    assert line.isascii() and "\n" not in line
    assert "\\u202e" in line and "S" * 128 + "..." in line and "S" * 129 not in line
    assert SECRET not in line


def test_both_workers_share_the_accounting_port(slapd, tmp_path):
    """`daemon.workers: 2`: the accounting port is shared (SO_REUSEPORT) and both answer."""
    import re

    from tests.integration.harness import ServeProcess
    from tests.integration.served_login import free_port
    from tests.integration.test_operations import served_config

    path, _, _ = served_config(tmp_path, slapd)
    acct_port = free_port(socket.SOCK_DGRAM)
    path.write_text(path.read_text().replace("daemon:\n", "daemon:\n  workers: 2\n").replace(
        "radius:\n", f'radius:\n  accounting_listen: ["127.0.0.1:{acct_port}"]\n', 1))
    serve = ServeProcess(path)
    try:
        serve.wait_for("workers.ready", 30)
        answered = 0
        for ident in range(40):  # each from its own source port: spread over both workers
            pkt = rpacket.AcctPacket(id=ident, secret=SECRET.encode(), dict=None)
            OrderedDict.__setitem__(pkt, 40, [(3).to_bytes(4, "big")])
            OrderedDict.__setitem__(pkt, 1, [b"alice"])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(pkt.RequestPacket(), ("127.0.0.1", acct_port))
                answered += sock.recv(4096)[0] == 5
        assert answered == 40
        # each line is written before its answer, but maybe not yet read from the pipe
        serve.wait_count(r"radius\.accounting .*worker=\d", 40)
        workers = re.findall(r"radius\.accounting .*worker=(\d)", serve.output())
        assert len(workers) == 40 and set(workers) == {"0", "1"}, serve.output()
    finally:
        serve.close()


@pytest_twisted.inlineCallbacks
def test_a_reload_gives_the_accounting_listener_the_new_client_secrets(acct):
    daemon, addr = yield acct()
    new_secret = b"a-new-long-shared-secret"
    client = dataclasses.replace(daemon.config.radius.clients[0], secret=new_secret)
    new = dataclasses.replace(daemon.config, radius=dataclasses.replace(
        daemon.config.radius, clients=(client,)))
    assert not any("accounting" in line for line in daemon.reload(new))
    old = yield radclient(addr, SECRET, record("Start"), code="acct", timeout=1)
    assert old.code is None
    fresh = yield radclient(addr, new_secret.decode(), record("Start"), code="acct", timeout=3)
    assert fresh.code == "Accounting-Response", fresh.stderr
