"""The client-side protocol's limits, driven byte by byte with a Clock (no directory needed).

What reaches the directory is tested end to end in tests/integration/test_ldap_front.py;
these tests cover what the listener decides on its own: bad input, queue and
connection limits, idle connections, StartTLS misuse.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

from twisted.internet import task
from twisted.internet.testing import StringTransport

from pushproxy.config import parse_config
from pushproxy.ldapfront import ber
from pushproxy.ldapfront.binds import BindCache
from pushproxy.ldapfront.server import DropLog, LdapFrontProtocol, client_address
from pushproxy.metrics import Counters

ROOT = Path(__file__).resolve().parent.parent


class FrontState:
    """The shared state a protocol reads (what `LdapFront` holds), without listeners."""

    def __init__(self, **overrides):
        text = (ROOT / "config.example.yaml").read_text().split("\nldap_front:")[0]
        text += textwrap.dedent("""
            ldap_front:
              listen: ["127.0.0.1:389"]
              require_tls: false
            """)
        cfg = parse_config(text, base_dir=ROOT, env={}).ldap_front
        self.config = dataclasses.replace(cfg, **overrides)
        self.reactor = task.Clock()
        self.counters = Counters()
        self.connections = set()
        self.accepting = True
        self.tls_options = None
        self.cache = BindCache(30, 10)
        self.drops = DropLog(self.reactor)
        self.connector = None  # a test that reaches for the directory fails loudly

    def note_drop(self, why, peer):
        self.counters.inc("ldap_front_disconnects")
        self.drops.note(why, peer)


class TcpTransport(StringTransport):
    """A StringTransport that takes the TCP option the protocol sets."""

    def setTcpNoDelay(self, enabled):
        self.nodelay = enabled


def connect(front: FrontState) -> tuple[LdapFrontProtocol, TcpTransport]:
    proto = LdapFrontProtocol(front, ldaps=False)
    proto.callLater = front.reactor.callLater  # TimeoutMixin's clock
    transport = TcpTransport()
    proto.makeConnection(transport)
    return proto, transport


def notice(transport: StringTransport) -> ber.Result | None:
    data = transport.value()
    size = ber.frame_length(data, 1 << 20)
    if size is None:
        return None
    msg = ber.parse_message(data[:size])
    if msg.message_id != 0 or msg.op_tag != ber.EXTENDED_RESPONSE:
        return None
    return ber.parse_result(msg.op)


def test_garbage_gets_a_notice_of_disconnection_and_the_connection_closes():
    front = FrontState()
    proto, transport = connect(front)
    proto.dataReceived(b"\x02\x01\x01")
    assert notice(transport).code == ber.PROTOCOL_ERROR
    assert transport.disconnecting and proto.closed
    proto.dataReceived(b"more")  # ignored after the notice
    assert front.counters.get("ldap_front_protocol_errors") == 1
    # A peer that never reads the notice is cut off.
    aborted = []
    transport.abortConnection = lambda: aborted.append(True)
    front.reactor.advance(10)
    assert aborted == [True]


def test_a_message_split_into_single_bytes_is_still_handled():
    front = FrontState()
    proto, transport = connect(front)
    for byte in ber.bind_request(1, "", ""):
        proto.dataReceived(bytes([byte]))
    msg = ber.parse_message(transport.value())
    assert msg.op_tag == ber.BIND_RESPONSE
    assert ber.parse_result(msg.op).code == ber.INAPPROPRIATE_AUTHENTICATION


def test_refusals_are_answered_without_the_directory():
    front = FrontState()
    proto, transport = connect(front)
    proto.dataReceived(ber.bind_request(1, "uid=a,dc=x", "") + ber.bind_request(2, "", ""))
    codes = []
    data = transport.value()
    while data:
        size = ber.frame_length(data, 1 << 20)
        codes.append(ber.parse_result(ber.parse_message(data[:size]).op).code)
        data = data[size:]
    assert codes == [ber.UNWILLING_TO_PERFORM, ber.INAPPROPRIATE_AUTHENTICATION]
    assert not transport.disconnecting


def test_too_many_messages_while_busy_end_the_connection():
    front = FrontState(max_queued=3)
    proto, transport = connect(front)
    proto.busy = True  # as while a user's bind waits for the phone
    search = ber.search_request(9, "dc=x", ber.f_present("objectClass"), [])
    proto.dataReceived(search * 3)
    assert len(proto.queue) == 3 and not transport.disconnecting
    proto.dataReceived(search)
    assert notice(transport).code == ber.PROTOCOL_ERROR and transport.disconnecting


def test_connections_over_the_limits_are_refused_at_accept():
    from twisted.internet.address import IPv4Address

    from pushproxy.connlimit import ConnectionBudget, LimitedFactory
    from pushproxy.ldapfront.server import LdapFrontFactory

    front = FrontState(max_connections=3)
    front.budget = ConnectionBudget("ldap_front", total=3, per_source=2)
    factory = LimitedFactory(LdapFrontFactory(front, False), front.budget, front.counters,
                             front.reactor)

    def accept(host):
        proto = factory.buildProtocol(IPv4Address("TCP", host, 389))
        if proto is not None:
            proto.wrappedProtocol.callLater = front.reactor.callLater
            proto.makeConnection(TcpTransport())
        return proto

    assert accept("10.0.0.1") and accept("10.0.0.1")
    assert accept("10.0.0.1") is None  # per source
    assert accept("10.0.0.2") is not None
    assert accept("10.0.0.3") is None  # total (nobody has waited min_wait yet)
    assert front.counters.get("connections_refused", listener="ldap_front",
                              reason="per_source") == 1
    assert front.counters.get("connections_refused", listener="ldap_front",
                              reason="total") == 1


def test_idle_connections_are_closed_but_not_while_a_bind_waits():
    front = FrontState(idle_timeout=60)
    proto, transport = connect(front)
    proto.dataReceived(ber.bind_request(1, "", ""))
    front.reactor.advance(59)
    proto.dataReceived(ber.bind_request(1, "", ""))  # a whole message resets the clock
    transport.clear()
    front.reactor.advance(59)
    assert not transport.disconnecting
    proto.busy = True
    front.reactor.advance(120)
    assert not transport.disconnecting
    proto.busy = False
    front.reactor.advance(61)
    assert notice(transport).code == ber.UNAVAILABLE and transport.disconnecting
    assert front.counters.get("ldap_front_idle_closed") == 1


def test_starttls_without_a_certificate_is_refused_and_the_connection_stays():
    front = FrontState()
    proto, transport = connect(front)
    proto.dataReceived(ber.extended_request(1, ber.STARTTLS_OID))
    msg = ber.parse_message(transport.value())
    assert msg.op_tag == ber.EXTENDED_RESPONSE
    assert ber.parse_result(msg.op).code == ber.PROTOCOL_ERROR
    assert not transport.disconnecting


def test_bytes_after_a_starttls_request_end_the_connection():
    """The client must wait for the StartTLS response before sending anything else."""
    front = FrontState()
    front.tls_options = object()  # never used: the request is refused first
    proto, transport = connect(front)
    proto.dataReceived(ber.extended_request(1, ber.STARTTLS_OID) + ber.bind_request(2, "", ""))
    assert notice(transport).code == ber.PROTOCOL_ERROR and transport.disconnecting


def test_binds_while_stopping_get_unavailable():
    front = FrontState()
    front.accepting = False
    proto, transport = connect(front)
    proto.dataReceived(ber.bind_request(4, "uid=a,dc=x", "pw"))
    msg = ber.parse_message(transport.value())
    assert (msg.message_id, ber.parse_result(msg.op).code) == (4, ber.UNAVAILABLE)


def test_ipv4_peers_of_a_dual_stack_listener_are_seen_as_ipv4():
    assert client_address("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_address("2001:db8::1") == "2001:db8::1"
    assert client_address("192.0.2.7") == "192.0.2.7"


def test_a_connection_that_sends_no_whole_message_in_time_is_closed():
    """Issue 14 finding 3: idle LDAP connections must not hold descriptors for idle_timeout."""
    front = FrontState(first_message_timeout=10, idle_timeout=900)
    proto, transport = connect(front)
    front.reactor.advance(9.9)
    assert not transport.disconnecting
    front.reactor.advance(0.2)
    assert transport.disconnected  # aborted: a peer mid-handshake could not read a notice
    assert front.counters.get("ldap_front_first_message_timeouts") == 1


def test_trickled_bytes_extend_neither_the_first_message_nor_the_idle_deadline():
    """One byte every few seconds is not traffic: only a whole message restarts the timer."""
    front = FrontState(first_message_timeout=10, idle_timeout=60)
    proto, transport = connect(front)
    message = ber.bind_request(1, "", "")
    for byte in message[:-1]:  # never completed
        proto.dataReceived(bytes([byte]))
        front.reactor.advance(1)
        if transport.disconnecting:
            break
    assert transport.disconnecting and front.counters.get(
        "ldap_front_first_message_timeouts") == 1

    proto, transport = connect(front)
    proto.dataReceived(message)  # a whole message: now the idle timeout applies
    transport.clear()
    for byte in message[:-1]:
        front.reactor.advance(4)
        proto.dataReceived(bytes([byte]))
    assert not transport.disconnecting
    front.reactor.advance(60 - 4 * (len(message) - 1) + 0.1)
    assert transport.disconnecting and front.counters.get("ldap_front_idle_closed") == 1


def test_a_full_listener_evicts_the_longest_waiting_connection_but_not_a_pending_bind():
    from pushproxy.connlimit import ConnectionBudget

    front = FrontState(idle_timeout=900)
    front.budget = ConnectionBudget("ldap_front", total=10, per_source=0, min_wait=1)
    pending, pending_t = connect(front)
    front.reactor.advance(1)
    idle, idle_t = connect(front)
    idle.dataReceived(ber.bind_request(1, "", ""))  # a message, then nothing
    pending.busy = True  # a user's bind waits for the phone
    front.reactor.advance(5)
    assert front.budget.evict(front.reactor.seconds())
    assert idle_t.disconnected and not pending_t.disconnecting
    assert front.counters.get("ldap_front_evicted") == 1
    assert not front.budget.evict(front.reactor.seconds())  # the pending bind is kept
    pending._release()  # the bind is over: it waits on its client again
    front.reactor.advance(2)
    assert front.budget.evict(front.reactor.seconds()) and pending_t.disconnected


def test_user_binds_are_answered_busy_while_the_daemon_sheds_and_served_after():
    """Issue 22: while admission control sheds, a new user bind gets busy (51) at once,
    without the directory or a push; once it admits again the bind goes ahead."""
    from pushproxy.overload import ShedReason

    class Shedding:
        reason = ShedReason.STORE_AGE

        def check(self):
            return self.reason

    front = FrontState()
    front.admission = Shedding()
    proto, transport = connect(front)
    proto.dataReceived(ber.bind_request(1, "uid=alice,ou=people,dc=example,dc=com", "pw"))
    msg = ber.parse_message(transport.value())
    assert ber.parse_result(msg.op).code == ber.BUSY
    assert front.counters.get("ldap_front_overloaded", reason="store_age") == 1
    assert not proto.busy and not transport.disconnecting
    front.admission.reason = None
    transport.clear()
    started = []

    async def user_bind(msg, req):
        started.append(req.name)

    proto._user_bind = user_bind
    proto.dataReceived(ber.bind_request(2, "uid=alice,ou=people,dc=example,dc=com", "pw"))
    assert started == ["uid=alice,ou=people,dc=example,dc=com"]


class RecordingFactors:
    """The engine's second factors as far as a cache hit asks them: who was looked up."""

    def __init__(self, locks=(), down=False):
        self.locks = dict(locks)
        self.down = down
        self.asked = []

    def lock_of(self, account):
        from twisted.internet import defer

        from pushproxy.push import ProviderUnavailable

        self.asked.append(account)
        if self.down:
            return defer.fail(ProviderUnavailable("store: disk I/O error"))
        return defer.succeed(self.locks.get(account))


def cache_hit(front, factors, remembered, entry_account):
    """A cache hit's re-check (`_cache_passed_over`) with a lock read started for
    ``remembered`` as the bind arrived; the bind's entry names ``entry_account``."""
    from twisted.internet import defer

    from pushproxy.decision import PrimaryResult, PrimaryStatus
    from pushproxy.policy import Policy

    front.engine = type("Engine", (), {"policy": Policy(), "factors": factors,
                                       "wallclock": staticmethod(lambda: 1e9)})()
    front.required_groups = frozenset()
    proto, _ = connect(front)
    ahead = proto._read_lock(remembered)
    asked_early = list(factors.asked)
    out = []
    defer.ensureDeferred(proto._cache_passed_over(
        entry_account, PrimaryResult(PrimaryStatus.OK, account=entry_account),
        ahead)).addBoth(out.append)
    return asked_early, out[0]


def test_a_cache_hit_reads_the_lock_as_the_bind_arrives_and_once():
    factors = RecordingFactors()
    assert cache_hit(FrontState(), factors, "alice", "alice") == (["alice"], None)
    assert factors.asked == ["alice"]
    factors = RecordingFactors(locks={"alice": "fraud_report"})
    assert cache_hit(FrontState(), factors, "alice", "alice") == (["alice"], "locked")


def test_a_lock_read_early_for_another_account_is_not_trusted():
    """The remembered account is a hint: the entry the bind read names the account."""
    factors = RecordingFactors(locks={"bob": "fraud_report"})
    assert cache_hit(FrontState(), factors, "alice", "bob") == (["alice"], "locked")
    assert factors.asked == ["alice", "bob"]


def test_a_lock_the_store_cannot_read_passes_the_cache_over_and_logs_no_stray_error():
    from twisted.python.failure import Failure

    factors = RecordingFactors(down=True)
    assert cache_hit(FrontState(), factors, "alice", "alice") == (["alice"], "lock_unknown")
    # a read nobody waits for (the password changed meanwhile) holds no unhandled failure
    front = FrontState()
    front.engine = type("Engine", (), {"factors": factors})()
    proto, _ = connect(front)
    seen = []
    proto._read_lock("alice")[1].addBoth(seen.append)
    assert len(seen) == 1 and not isinstance(seen[0], Failure)
