"""Connection budgets (pushproxy/connlimit.py) and HTTP read deadlines (pushproxy/httpdeadline.py).

Issue 14, finding 3: 1,100 slow connections from one source took the daemon
to its descriptor limit. These tests drive the limiter and the deadlines
with a `task.Clock` and `StringTransport`; the real daemon under 2,000 slow
connections is tests/integration/test_connection_budget.py.
"""

from __future__ import annotations

import logging

from twisted.internet import protocol, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from pushproxy.connlimit import Admission, ConnectionBudget, LimitedFactory, source_key
from pushproxy.httpdeadline import DeadlineChannel, Deadlines
from pushproxy.metrics import Counters
from pushproxy.netaddr import peer_address
import ipaddress


class Recorder(protocol.Protocol):
    """Remembers whether it was connected and lost."""

    made = lost = False

    def connectionMade(self):
        self.made = True

    def connectionLost(self, reason=None):
        self.lost = True


def limited(total=3, per_source=2, exempt=()):
    budget = ConnectionBudget("test", total=total, per_source=per_source, exempt=exempt)
    counters = Counters()
    clock = task.Clock()
    return LimitedFactory(protocol.Factory.forProtocol(Recorder), budget, counters, clock), \
        counters, clock


def accept(factory, host, v6=False):
    addr = IPv6Address("TCP", host, 4000) if v6 else IPv4Address("TCP", host, 4000)
    proto = factory.buildProtocol(addr)
    if proto is not None:
        proto.makeConnection(StringTransport())
    return proto


def test_source_key_is_the_ipv4_address_or_the_ipv6_64():
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")


def test_per_source_cap_refuses_at_accept_and_counts():
    factory, counters, _ = limited(total=10, per_source=2)
    first, second = accept(factory, "10.0.0.1"), accept(factory, "10.0.0.1")
    assert first.wrappedProtocol.made and second.wrappedProtocol.made
    assert accept(factory, "10.0.0.1") is None  # Twisted closes the socket at once
    assert accept(factory, "10.0.0.2") is not None  # other sources are not affected
    assert counters.get("connections_refused", listener="test", reason="per_source") == 1
    assert factory.budget.open == 3


def test_ipv6_peers_are_counted_by_their_64():
    factory, counters, _ = limited(total=10, per_source=2)
    assert accept(factory, "2001:db8::1", v6=True) is not None
    assert accept(factory, "2001:db8::2", v6=True) is not None
    assert accept(factory, "2001:db8::3", v6=True) is None
    assert accept(factory, "2001:db8:0:1::3", v6=True) is not None


def test_total_cap_and_slots_come_back_when_connections_close():
    factory, counters, _ = limited(total=3, per_source=0)
    protos = [accept(factory, f"10.0.0.{i}") for i in range(3)]
    assert accept(factory, "10.0.0.9") is None
    assert counters.get("connections_refused", listener="test", reason="total") == 1
    inner = protos[0].wrappedProtocol
    protos[0].connectionLost(None)
    assert inner.lost
    assert factory.budget.open == 2
    assert accept(factory, "10.0.0.9") is not None
    assert accept(factory, "10.0.0.10") is None


def test_trusted_proxies_are_held_only_to_the_total():
    proxy = ipaddress.ip_network("10.9.0.0/24")
    factory, _, _ = limited(total=4, per_source=1, exempt=(proxy,))
    assert all(accept(factory, "10.9.0.5") is not None for _ in range(4))
    assert accept(factory, "10.9.0.5") is None  # the total still holds


def test_refusals_are_logged_once_a_minute_per_source(caplog):
    factory, counters, clock = limited(total=10, per_source=1)
    accept(factory, "10.0.0.1")
    with caplog.at_level(logging.WARNING, logger="pushproxy.connlimit"):
        for _ in range(100):
            assert accept(factory, "10.0.0.1") is None
        clock.advance(61)
        assert accept(factory, "10.0.0.1") is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "connection.refused" in lines[0] and "source=10.0.0.1" in lines[0]
    assert "suppressed=99" in lines[1]
    assert counters.get("connections_refused", listener="test", reason="per_source") == 101


def test_budget_admit_is_pure_bookkeeping():
    budget = ConnectionBudget("x", total=2, per_source=1)
    verdict, key = budget.admit("10.0.0.1")
    assert verdict is Admission.ADMITTED and budget.from_source("10.0.0.1") == 1
    assert budget.admit("10.0.0.1")[0] is Admission.PER_SOURCE
    budget.release(key)
    assert budget.open == 0 and budget.from_source("10.0.0.1") == 0
    assert peer_address("10.0.0.1") is not None


# -- HTTP read deadlines --

class Slow(resource.Resource):
    """Answers after ``delay`` seconds of the clock (a long-poll), or at once."""

    isLeaf = True

    def __init__(self, clock, delay=0.0):
        super().__init__()
        self.clock, self.delay = clock, delay

    def render(self, request):
        if not self.delay:
            return b"ok"
        self.clock.callLater(self.delay, lambda: (request.write(b"late"), request.finish()))
        return server.NOT_DONE_YET


def http(delay=0.0, deadlines=Deadlines(head=10, body=30, idle=60)):
    clock = task.Clock()
    site = server.Site(Slow(clock, delay), reactor=clock)
    site.protocol = DeadlineChannel
    site.deadlines = deadlines
    site.counters = Counters()
    site.deadline_name = "test"
    channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 5000))
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, clock, site.counters


def test_trickled_header_lines_do_not_extend_the_head_deadline():
    """Finding 3: one header line every few seconds used to restart the idle timer forever."""
    channel, transport, clock, counters = http()
    channel.dataReceived(b"GET / HTTP/1.1\r\n")
    for i in range(9):
        clock.advance(1)
        channel.dataReceived(b"X-Slow-%d: y\r\n" % i)
    assert not transport.disconnecting
    clock.advance(1.1)
    assert transport.disconnected  # aborted, nothing answered
    assert transport.value() == b""
    assert counters.get("http_deadline_closed", listener="test", phase="head") == 1


def test_the_head_deadline_runs_from_accept_even_without_a_byte():
    channel, transport, clock, counters = http()
    clock.advance(10.1)
    assert transport.disconnected


def test_a_trickled_body_is_cut_at_the_body_deadline():
    channel, transport, clock, counters = http()
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    assert channel.phase == "body"
    for _ in range(29):
        clock.advance(1)
        channel.dataReceived(b"a")
    assert not transport.disconnecting
    clock.advance(1.1)
    assert transport.disconnected
    assert counters.get("http_deadline_closed", listener="test", phase="body") == 1


def test_a_long_poll_is_not_cut_and_idle_keepalive_is():
    """The deadline applies to reading the request, not to our answer's wait."""
    channel, transport, clock, counters = http(delay=45)
    channel.dataReceived(b"GET /pending?wait=45 HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(44)
    assert not transport.disconnecting and channel.phase == "handling"
    clock.advance(1)
    assert b"late" in transport.value() and not transport.disconnecting
    assert channel.phase == "idle"
    clock.advance(59)
    channel.dataReceived(b"G")  # the next request's first byte: its head deadline starts
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnected
    assert counters.get("http_deadline_closed", listener="test", phase="head") == 1


def test_an_idle_keepalive_connection_closes_after_the_idle_deadline():
    channel, transport, clock, counters = http()
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"ok" in transport.value()
    clock.advance(60.1)
    assert transport.disconnected
    assert counters.get("http_deadline_closed", listener="test", phase="idle") == 1


def test_pipelined_requests_are_each_timed_from_their_own_start():
    channel, transport, clock, _ = http()
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().count(b"ok") == 2
    assert channel.phase == "idle" and not transport.disconnecting


# -- eviction at the total cap --

class Waiter:
    """A connection as the budget sees it: evictable unless working."""

    def __init__(self, budget, now, working=False):
        self.closed = False
        self.is_working = working
        budget.waiting(self, now, self.close)

    def close(self):
        if self.is_working:
            return False
        self.closed = True
        return True


def test_at_the_total_the_connection_waiting_longest_is_evicted_never_a_working_one():
    budget = ConnectionBudget("x", total=3, per_source=0, min_wait=1.0)
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        budget.admit(host)
    busy = Waiter(budget, now=0, working=True)  # e.g. a long-poll that reported late
    old = Waiter(budget, now=1)
    young = Waiter(budget, now=5)
    assert budget.evict(now=5.5)  # busy is older but declines; old goes
    assert old.closed and not busy.closed and not young.closed
    assert budget.admit("10.0.0.9", over_total=True)[0] is Admission.ADMITTED
    assert not budget.evict(now=5.5)  # young has waited 0.5 s < min_wait: kept
    assert budget.evict(now=7) and young.closed
    assert not budget.evict(now=100)  # nobody left waiting


def test_a_full_http_listener_evicts_a_slow_request_not_a_long_poll():
    """Many sources x per-source cap > total: slow requests still cannot lock devices out."""
    clock = task.Clock()
    budget = ConnectionBudget("approval", total=2, per_source=0)
    site = server.Site(Slow(clock, delay=30), reactor=clock)
    site.protocol = DeadlineChannel
    site.deadlines = Deadlines()
    site.budget = budget
    site.counters = counters = Counters()
    site.deadline_name = "approval"
    factory = LimitedFactory(site, budget, counters, clock)

    def connect(host):
        proto = factory.buildProtocol(IPv4Address("TCP", host, 5000))
        if proto is not None:
            proto.makeConnection(StringTransport())
        return proto

    poll = connect("10.0.0.1")
    poll.dataReceived(b"GET /pending?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n")  # working
    slow = connect("10.0.0.2")
    slow.dataReceived(b"GET / HTTP/1.1\r\n")  # never finishes its head
    clock.advance(2)
    device = connect("10.0.0.3")
    assert device is not None
    assert slow.transport.disconnected and not poll.transport.disconnecting
    assert counters.get("connections_evicted", listener="approval") == 1
    assert connect("10.0.0.4") is None  # the device's head is < min_wait old; poll works
    assert counters.get("connections_refused", listener="approval", reason="total") == 1
