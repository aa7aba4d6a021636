"""One size rule on both RADIUS ports of a served daemon, from raw UDP sockets.

RFC 2865 section 3 (and RFC 2866 section 3 for accounting): a packet's Length is
20 to 4,096 octets, a datagram shorter than its Length is dropped, octets past
Length are padding. pushproxy adds one line, the same on the authentication
and the accounting port (`codec.peek_header`): a datagram longer than 4,096
octets is malformed whatever its Length says, even a padded copy of a request
already answered (it is not answered from the reply cache).

Against ``pushproxy serve`` (a child process) with ``radius.accounting_listen``
and /metrics: a request padded to exactly 4,096 octets is answered; datagrams of
4,097, 8,192 and 65,507 octets (the most one IPv4 datagram carries; the
daemon's read takes 8,192 and the kernel drops the rest, still over 4,096), a
Length past the datagram and a Length under 20 are dropped, each counted as
``reason="malformed"`` (``radius_drops`` on the authentication port,
``radius_accounting_drops`` on the accounting port) with a log line naming the
size, and the port answers a good request afterwards. That no bad datagram was
answered is shown without a timeout: the probe is sent on the same socket after
them, and the daemon reads its socket in order, so any answer to them would
arrive before the probe's.
"""

from __future__ import annotations

import struct
import time

from pyrad import packet as rpacket

from fuzz.radius_target import check_reply
from pushproxy.radius import codec
from tests.integration.harness import SECRET
from tests.integration.test_radius_accounting_served import (  # noqa: F401 - a fixture
    ACCOUNTING_RESPONSE, Peer, accounting_request, check_response, record, scrape, served)
from tests.integration.test_operations import metric

DICT = codec.load_dictionary()
MAX_UDP = 65507  # the largest UDP payload over IPv4


def padded(data: bytes, size: int) -> bytes:
    return data + bytes(size - len(data))


def with_length(data: bytes, length: int) -> bytes:
    return data[:2] + struct.pack("!H", length) + data[4:]


def access_request(ident: int, password: str = "wrong") -> bytes:
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=ident, secret=SECRET.encode(),
                             dict=DICT)
    pkt["User-Name"] = "alice"
    pkt["User-Password"] = pkt.PwCrypt(password)
    pkt.add_message_authenticator()
    return pkt.RequestPacket()


def status_server(ident: int) -> bytes:
    pkt = rpacket.AuthPacket(code=rpacket.StatusServer, id=ident, secret=SECRET.encode(),
                             dict=DICT)
    pkt.add_message_authenticator()
    return pkt.RequestPacket()


def hostile(answered: bytes, make) -> dict[str, bytes]:
    """The datagrams the rule drops; ``make(ident)`` builds a fresh signed request."""
    return {
        # the very request answered before, padded one octet past the limit:
        # not a retransmit to answer from the cache
        "padded_copy_4097": padded(answered, 4097),
        "8192": padded(make(2), 8192),
        "65507": padded(make(3), MAX_UDP),
        "length_past_datagram": with_length(make(4), len(make(4)) + 40),
        "length_under_20": with_length(make(5), 19),
    }


def grown(port: int, name: str, before: str, want: float, deadline: float = 20.0) -> float:
    """How much ``name`` grew since ``before``, once it reached ``want`` (bounded wait:
    /metrics is rendered by another thread)."""
    end = time.monotonic() + deadline
    while True:
        got = metric(scrape(port), name) - metric(before, name)
        if got >= want or time.monotonic() > end:
            return got
        time.sleep(0.2)


def test_the_authentication_port_applies_the_size_rule(served):
    serve, _, radius_port, metrics_port = served
    before = scrape(metrics_port)
    peer = Peer(radius_port)
    try:
        base = access_request(1)
        answered = padded(base, 4096)  # Length says len(base): the rest is padding
        reply, _ = peer.exchange(answered, rpacket.AccessReject)
        assert check_reply(reply, base, SECRET.encode()) == rpacket.AccessReject
        # Status-Servers: answered at once when accepted, so in order before the probe
        for data in hostile(answered, status_server).values():
            peer.send(data)
        probe = status_server(9)
        reply, others = peer.exchange(probe, rpacket.AccessAccept)
    finally:
        peer.close()
    assert check_reply(reply, probe, SECRET.encode()) == rpacket.AccessAccept
    assert others == [], others  # not one bad datagram got an answer
    name = 'pushproxy_radius_drops_total{reason="malformed"}'
    assert grown(metrics_port, name, before, 5) == 5
    assert metric(scrape(metrics_port), "pushproxy_radius_retransmits_total") == \
        metric(before, "pushproxy_radius_retransmits_total")  # the padded copy: no cache hit
    serve.wait_count(r"radius\.drop reason=malformed source=127\.0\.0\.1 .*"
                     r"4097 octets is more than 4096", 1)
    assert "Traceback" not in serve.output()


def test_the_accounting_port_applies_the_same_size_rule(served):
    serve, acct_port, _, metrics_port = served
    before = scrape(metrics_port)
    peer = Peer(acct_port)

    def make(ident: int) -> bytes:
        return accounting_request(50 + ident, record(session=b"size-%d" % ident))

    try:
        base = make(1)
        answered = padded(base, 4096)
        reply, _ = peer.exchange(answered, ACCOUNTING_RESPONSE)
        check_response(reply, base)
        for data in hostile(answered, make).values():
            peer.send(data)
        probe = make(9)
        reply, others = peer.exchange(probe, ACCOUNTING_RESPONSE)
    finally:
        peer.close()
    check_response(reply, probe)
    assert others == [], others
    name = 'pushproxy_radius_accounting_drops_total{reason="malformed"}'
    assert grown(metrics_port, name, before, 5) == 5
    assert metric(scrape(metrics_port), "pushproxy_radius_accounting_retransmits_total") == \
        metric(before, "pushproxy_radius_accounting_retransmits_total")
    serve.wait_count(r"radius\.accounting_drop reason=malformed source=127\.0\.0\.1 .*"
                     r"4097 octets is more than 4096", 1)
    assert "Traceback" not in serve.output()
