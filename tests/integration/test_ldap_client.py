"""The reactor-native directory client against the real slapd: many logins pipelined on a
few connections, a server that stops answering mid-operation (timeout, failover), a
connection reset, TLS with the wrong CA refused, a hostile server never producing an OK.

A small TCP relay in this process stands between the client and slapd so that a test can
make the path hang or reset at a chosen moment while slapd itself stays healthy.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest_twisted
from twisted.internet import defer, protocol, reactor, task, threads

from pushproxy.decision import PrimaryStatus
from pushproxy.ldapauth import LdapDirectory
from pushproxy.ldapfront import ber
from pushproxy.metrics import Counters
from tests.integration.harness import load, write_config


class _Upstream(protocol.Protocol):
    def __init__(self, down):
        self.down = down

    def connectionMade(self):
        self.down.up = self
        self.down.transport.resumeProducing()
        if self.down.pending:
            self.transport.write(self.down.pending)
            self.down.pending = b""

    def dataReceived(self, data):
        if self.down.relay.mode != "hang":
            self.down.transport.write(data)

    def connectionLost(self, reason):
        self.down.transport.loseConnection()


class _Down(protocol.Protocol):
    def __init__(self, relay):
        self.relay, self.up, self.pending = relay, None, b""
        self.requests = bytearray()  # "swallow" mode: requests framed one by one

    def connectionMade(self):
        self.relay.conns.append(self)
        self.transport.pauseProducing()
        protocol.ClientCreator(reactor, _Upstream, self).connectTCP("127.0.0.1",
                                                                      self.relay.target)

    def dataReceived(self, data):
        mode = self.relay.mode
        if mode == "hang":
            return
        if mode == "reset-next":
            self.relay.mode = "forward"
            self.transport.abortConnection()
            return
        if mode == "garbage":
            self.transport.write(b"\x30\x05\x02\x01\x01\x61\x99")
            return
        if mode == "swallow":  # the first request carrying relay.marker never reaches slapd
            self.requests += data
            data = b""
            while (found := ber.next_message(self.requests, 1 << 20)) is not None:
                if self.relay.marker is not None and self.relay.marker in found[0]:
                    self.relay.marker, self.relay.swallowed = None, found[1].message_id
                    continue
                data += found[0]
            if not data:
                return
        elif mode == "wrong-type":  # every request answered "bind succeeded"
            buf = bytearray(data)
            while (found := ber.next_message(buf, 1 << 20)) is not None:
                self.transport.write(ber.bind_response(found[1].message_id, 0))
            return
        if self.up is None:
            self.pending += data
        else:
            self.up.transport.write(data)

    def connectionLost(self, reason):
        if self in self.relay.conns:
            self.relay.conns.remove(self)
        if self.up is not None:
            self.up.transport.loseConnection()


class Relay(protocol.Factory):
    """Forwards loopback TCP to slapd; ``mode`` makes it hang, reset or lie."""

    def __init__(self, target: int):
        self.target, self.mode, self.conns = target, "forward", []
        self.marker, self.swallowed = None, None  # for mode "swallow"
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")

    def buildProtocol(self, addr):
        return _Down(self)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port.getHost().port}"

    @defer.inlineCallbacks
    def close(self):
        for conn in list(self.conns):
            conn.transport.abortConnection()
        yield self.port.stopListening()


def deferLater(seconds: float):
    return task.deferLater(reactor, seconds, lambda: None)


def directory_for(tmp_path, slapd, servers, **changes):
    config = load(write_config(tmp_path, slapd, servers=servers))
    ldap = replace(config.ldap, **{"response_timeout": 1.0, "connect_timeout": 1.0, **changes})
    return LdapDirectory(ldap, reactor, Counters())


@pytest_twisted.inlineCallbacks
def test_hundreds_of_concurrent_logins_are_pipelined_on_a_few_connections(slapd, tmp_path):
    directory = directory_for(tmp_path, slapd, [slapd.url], pool_size=4)
    try:
        logins = [("alice", "alice-pw", PrimaryStatus.OK), ("bob", "wrong", PrimaryStatus.
                  BAD_CREDENTIALS), ("carol", "carol-pw", PrimaryStatus.NOT_IN_GROUP),
                  ("nobody", "x", PrimaryStatus.UNKNOWN_USER), ("*", "x",
                                                                PrimaryStatus.UNKNOWN_USER)] * 60
        results = yield defer.gatherResults([directory.authenticate(u, p) for u, p, _ in logins])
        assert [r.status for r in results] == [want for _, _, want in logins]
        assert {r.account for r in results if r.status is PrimaryStatus.OK} == {"alice"}
        pool = directory._pools[slapd.url]
        assert 1 <= len(pool._search) <= 2  # 300 searches on at most two connections
        assert len(pool._idle) <= 4 and pool._lent == 0  # binds never beyond pool_size
        assert directory.outstanding == 0
    finally:
        directory.stop()


@pytest_twisted.inlineCallbacks
def test_a_server_that_stops_answering_mid_operation_times_out_and_fails_over(slapd,
                                                                               tmp_path):
    relay = Relay(slapd.port)
    directory = directory_for(tmp_path, slapd, [relay.url, slapd.url])
    try:
        first = yield directory.authenticate("alice", "alice-pw")
        assert first.status is PrimaryStatus.OK and first.server == relay.url
        relay.mode = "hang"  # kept connections stay open; nothing answers any more
        started = time.monotonic()
        result = yield directory.authenticate("alice", "alice-pw")
        assert result.status is PrimaryStatus.OK and result.server == slapd.url
        assert time.monotonic() - started < 1.0 + 2.5  # one response timeout, not more
        assert directory.counters.get("ldap_server_errors") == 1
        later = yield directory.authenticate("bob", "bob-pw")  # the hung one is in backoff
        assert later.server == slapd.url
        assert directory.counters.get("ldap_server_errors") == 1
    finally:
        directory.stop()
        yield relay.close()


@pytest_twisted.inlineCallbacks
def test_one_request_lost_while_the_only_server_answers_others_fails_only_that_one(
        slapd, tmp_path):
    """Busy is not broken (issue 22): one search never answered while slapd goes on
    answering the other logins. Only that login's search times out; it is retried on
    a fresh connection and succeeds; no other login fails and the server is not
    marked failed (the old code failed every login on the connection and put the only
    server into backoff, rejecting the rest as directory_unavailable)."""
    relay = Relay(slapd.port)
    directory = directory_for(tmp_path, slapd, [relay.url], response_timeout=2.0)
    try:
        yield directory.authenticate("alice", "alice-pw")  # connections open
        relay.mode, relay.marker = "swallow", b"uid\x04\x05carol"  # carol's user search
        slow = directory.authenticate("carol", "carol-pw")
        finished = []
        slow.addBoth(lambda r: finished.append(r) or r)
        others = []
        started = time.monotonic()
        while not finished and time.monotonic() - started < 15:
            others.append(directory.authenticate("alice", "alice-pw"))
            yield deferLater(0.02)
        result = yield slow
        others = yield defer.gatherResults(others)
        assert relay.swallowed is not None  # the request really was lost on the way
        assert result.status is PrimaryStatus.NOT_IN_GROUP, result  # carol, answered
        assert len(others) > 20 and {r.status for r in others} == {PrimaryStatus.OK}
        assert directory.counters.get("ldap_op_timeouts") == 1
        assert directory.counters.get("ldap_server_errors") == 0
    finally:
        directory.stop()
        yield relay.close()


@pytest_twisted.inlineCallbacks
def test_the_only_server_hanging_answers_unavailable_not_ok(slapd, tmp_path):
    relay = Relay(slapd.port)
    directory = directory_for(tmp_path, slapd, [relay.url])
    try:
        yield directory.authenticate("alice", "alice-pw")
        relay.mode = "hang"
        results = yield defer.gatherResults([directory.authenticate("alice", "alice-pw")
                                             for _ in range(20)])
        assert {r.status for r in results} == {PrimaryStatus.UNAVAILABLE}
        assert "no response within" in results[0].detail
        relay.mode = "forward"
    finally:
        directory.stop()
        yield relay.close()


@pytest_twisted.inlineCallbacks
def test_a_reset_kept_connection_is_retried_once_without_failing_the_server(slapd, tmp_path):
    relay = Relay(slapd.port)
    directory = directory_for(tmp_path, slapd, [relay.url])
    try:
        yield directory.authenticate("alice", "alice-pw")
        relay.mode = "reset-next"  # the next request's connection is reset, then all is well
        result = yield directory.authenticate("alice", "alice-pw")
        assert result.status is PrimaryStatus.OK
        assert directory.counters.get("ldap_server_errors") == 0
    finally:
        directory.stop()
        yield relay.close()


@pytest_twisted.inlineCallbacks
def test_every_connection_reset_is_a_failed_server_never_a_crash(slapd, tmp_path):
    relay = Relay(slapd.port)
    directory = directory_for(tmp_path, slapd, [relay.url])
    try:
        yield directory.authenticate("alice", "alice-pw")
        for conn in list(relay.conns):
            conn.transport.abortConnection()
        relay.mode = "hang"
        yield relay.port.stopListening()  # now refused too
        result = yield directory.authenticate("alice", "alice-pw")
        assert result.status is PrimaryStatus.UNAVAILABLE
        assert directory.counters.get("ldap_server_errors") == 1
    finally:
        directory.stop()
        for conn in list(relay.conns):
            conn.transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_a_server_answering_garbage_or_lies_never_gives_an_ok(slapd, tmp_path):
    for mode in ("garbage", "wrong-type"):
        relay = Relay(slapd.port)
        relay.mode = mode
        directory = directory_for(tmp_path, slapd, [relay.url])
        try:
            result = yield directory.authenticate("alice", "wrong")
            assert result.status is PrimaryStatus.UNAVAILABLE, (mode, result)
            assert "LdapProtocolError" in result.detail or "ServerFailedError" in result.detail
        finally:
            directory.stop()
            yield relay.close()


@pytest_twisted.inlineCallbacks
def test_tls_with_the_wrong_ca_is_refused_before_any_password_is_sent(slapd, tmp_path):
    from tests.integration.slapd import _write_tls_material

    other = tmp_path / "other-ca"
    other.mkdir()
    _write_tls_material(other)
    for url, start_tls in ((slapd.ldaps_url, False), (slapd.starttls_url, True)):
        directory = directory_for(tmp_path, slapd, [url], ca_file=str(other / "ca.pem"),
                                  start_tls=start_tls)
        try:
            result = yield directory.authenticate("alice", "alice-pw")
            assert result.status is PrimaryStatus.UNAVAILABLE
            assert "certificate verify failed" in result.detail, result.detail
            assert directory.counters.get("ldap_user_binds") == 0
        finally:
            directory.stop()
        right = directory_for(tmp_path, slapd, [url], ca_file=slapd.ca_file,
                              start_tls=start_tls)
        try:
            ok = yield right.authenticate("alice", "alice-pw")
            assert ok.status is PrimaryStatus.OK, ok
        finally:
            right.stop()


@pytest_twisted.inlineCallbacks
def test_probe_reports_each_server(slapd, tmp_path):
    relay = Relay(slapd.port)
    relay.mode = "hang"
    directory = directory_for(tmp_path, slapd, [slapd.url, relay.url])
    try:
        found = yield directory.probe()
        assert found[slapd.url] is None
        assert "no response within" in found[relay.url]
    finally:
        directory.stop()
        yield relay.close()


@pytest_twisted.inlineCallbacks
def test_stop_lets_logins_in_flight_finish_then_closes_and_refuses_new_ones(slapd, tmp_path):
    """A reload retires the old directory from a thread while logins are talking to it:
    they must finish with their real answer, not directory_unavailable."""
    directory = directory_for(tmp_path, slapd, [slapd.url], pool_size=2)
    yield directory.authenticate("alice", "alice-pw")  # connections kept
    pending = [directory.authenticate(u, f"{u}-pw") for u in ("alice", "bob") * 10]
    yield threads.deferToThread(directory.stop)
    results = yield defer.gatherResults(pending)
    assert {r.status for r in results} == {PrimaryStatus.OK}
    after = yield directory.authenticate("alice", "alice-pw")
    assert after.status is PrimaryStatus.UNAVAILABLE and "stopped" in after.detail
    pool = directory._pools[slapd.url]
    assert pool.closing and not pool._idle and not pool._search
