"""RADIUS Accounting (RFC 2866) with pyrad-encoded packets and a Clock: verify, answer, drop."""

import hashlib
import hmac
import ipaddress
import logging
import struct
from collections import OrderedDict

import pytest
from pyrad import packet as rpacket
from twisted.internet.task import Clock

from pushproxy.config import RadiusClient
from pushproxy.metrics import Counters
from pushproxy.radius import codec
from pushproxy.radius.accounting import (AccountingProtocol, decode_accounting,
                                         encode_accounting_response)
from pushproxy.radius.codec import DropPacket, DropReason
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.server import ClientTable

SECRET = b"a-long-shared-secret"
DICT = codec.load_dictionary()
NAS = ("127.0.0.1", 40000)
STATUS = {"Start": 1, "Stop": 2, "Interim-Update": 3}


class Transport:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


def make():
    clock = Clock()
    clients = ClientTable((RadiusClient("vpn", ipaddress.ip_network("127.0.0.0/8"), SECRET,
                                        True, None),))
    proto = AccountingProtocol(clients=clients, table=RetransmitTable(hold=30), clock=clock,
                               counters=Counters())
    proto.transport = Transport()
    return proto, clock


def acct(status="Start", user="alice", session="s-1", secret=SECRET, ident=9, ma=False,
         proxy_state=()):
    """An Accounting-Request as pyrad signs it (an implementation independent of ours)."""
    pkt = rpacket.AcctPacket(id=ident, secret=secret, dict=DICT)
    # Raw attribute numbers: the shipped dictionary names no accounting attributes.
    raw = lambda v: v.encode() if isinstance(v, str) else v  # noqa: E731
    OrderedDict.__setitem__(pkt, 40, [STATUS[status].to_bytes(4, "big")])
    OrderedDict.__setitem__(pkt, 1, [raw(user)])
    OrderedDict.__setitem__(pkt, 44, [raw(session)])
    OrderedDict.__setitem__(pkt, 32, [b"gw-1"])
    if proxy_state:
        OrderedDict.__setitem__(pkt, 33, list(proxy_state))
    if ma:
        # Message-Authenticator as FreeRADIUS signs an Accounting-Request:
        # HMAC-MD5 with the authenticator field zeroed, then the MD5 authenticator.
        body = pkt._PktEncodeAttributes() + bytes([80, 18]) + bytes(16)
        head = struct.pack("!BBH", 4, ident, 20 + len(body))
        mac = hmac.new(secret, head + bytes(16) + body, hashlib.md5).digest()
        body = body[:-16] + mac
        auth = hashlib.md5(head + bytes(16) + body + secret).digest()
        return head + auth + body
    return pkt.RequestPacket()


def check_response(reply: bytes, request: bytes, secret=SECRET):
    """pyrad's own check of a response against its request."""
    req = rpacket.AcctPacket(packet=request, secret=secret, dict=DICT)
    rep = rpacket.Packet(packet=reply, secret=secret, dict=DICT)
    return rep.code == 5 and req.VerifyReply(rep, reply)


def test_start_interim_stop_are_answered_with_a_valid_response():
    """Every verified status gets an Accounting-Response that pyrad verifies, and is counted."""
    proto, _ = make()
    for ident, status in enumerate(("Start", "Interim-Update", "Stop")):
        data = acct(status, ident=ident)
        proto.datagramReceived(data, NAS)
        reply, addr = proto.transport.sent[-1]
        assert addr == NAS and check_response(reply, data)
    assert proto.counters.get("radius_accounting", client="vpn", status="start") == 1
    assert proto.counters.get("radius_accounting", client="vpn", status="interim-update") == 1
    assert proto.counters.get("radius_accounting", client="vpn", status="stop") == 1


def test_the_request_authenticator_is_checked_against_the_clients_secret():
    """A request signed with another secret is refused by the pure check."""
    with pytest.raises(DropPacket) as exc:
        decode_accounting(acct(secret=b"wrong-secret"), SECRET)
    assert exc.value.reason is DropReason.BAD_REQUEST_AUTHENTICATOR
    assert decode_accounting(acct(), SECRET).username == "alice"


def test_wrong_secret_gets_no_answer_and_a_counter():
    proto, _ = make()
    proto.datagramReceived(acct(secret=b"wrong-secret"), NAS)
    assert proto.transport.sent == []
    assert proto.counters.get("radius_accounting_drops", reason="bad_request_authenticator") == 1


def test_a_changed_attribute_breaks_the_request_authenticator():
    data = bytearray(acct(user="alice"))
    at = data.index(b"alice")
    data[at] = ord("m")
    with pytest.raises(DropPacket):
        decode_accounting(bytes(data), SECRET)


def test_message_authenticator_is_verified_and_put_first_in_the_response():
    data = acct(ma=True)
    request = decode_accounting(data, SECRET)
    assert request.has_message_authenticator
    reply = encode_accounting_response(request, SECRET)
    assert reply[20] == 80 and check_response(reply, data)
    # The reply's Message-Authenticator: HMAC with the authenticator field zeroed.
    zeroed = reply[:4] + bytes(16) + reply[20:22] + bytes(16) + reply[38:]
    assert hmac.new(SECRET, zeroed, hashlib.md5).digest() == reply[22:38]


def test_wrong_message_authenticator_is_dropped():
    data = bytearray(acct(ma=True))
    data[-1] ^= 1  # the MAC's last octet; the MD5 authenticator re-signed to match
    data[4:20] = hashlib.md5(bytes(data[:4]) + bytes(16) + bytes(data[20:]) + SECRET).digest()
    with pytest.raises(DropPacket) as exc:
        decode_accounting(bytes(data), SECRET)
    assert exc.value.reason is DropReason.BAD_MESSAGE_AUTHENTICATOR


def test_proxy_state_is_copied_back_in_order():
    data = acct(proxy_state=(b"\x01one", b"\x02two"))
    proto, _ = make()
    proto.datagramReceived(data, NAS)
    reply = proto.transport.sent[0][0]
    assert check_response(reply, data)
    assert dict.get(rpacket.Packet(packet=reply, dict=DICT), 33) == [b"\x01one", b"\x02two"]


def test_a_retransmit_gets_the_identical_response_until_the_hold_expires():
    proto, clock = make()
    data = acct()
    proto.datagramReceived(data, NAS)
    proto.datagramReceived(data, NAS)
    assert proto.transport.sent[0][0] == proto.transport.sent[1][0]
    assert proto.counters.get("radius_accounting", client="vpn", status="start") == 1
    assert proto.counters.get("radius_accounting_retransmits", client="vpn") == 1
    clock.advance(31)
    proto.datagramReceived(data, NAS)  # a new event again once the cached answer expired
    assert proto.counters.get("radius_accounting", client="vpn", status="start") == 2


def test_unknown_client_and_access_requests_are_dropped():
    proto, _ = make()
    proto.datagramReceived(acct(), ("10.1.2.3", 5000))
    access = rpacket.AuthPacket(id=1, secret=SECRET, dict=DICT)
    access["User-Name"] = "alice"
    proto.datagramReceived(access.RequestPacket(), NAS)
    assert proto.transport.sent == []
    assert proto.counters.get("radius_accounting_drops", reason="unknown_client") == 1
    assert proto.counters.get("radius_accounting_drops", reason="unsupported_code") == 1


@pytest.mark.parametrize("mangle", [
    lambda d: d[:10],                                  # shorter than a header
    lambda d: d[:2] + b"\xff\xff" + d[4:],             # length field past the datagram
    lambda d: d[:2] + struct.pack("!H", len(d)) + d[4:-3] + b"\x01\x40\x00",  # attr overrun
    lambda d: d[:20] + b"\x01\x01" + d[22:],           # attribute length 1
])
def test_garbled_packets_are_dropped_and_the_listener_keeps_serving(mangle):
    proto, _ = make()
    proto.datagramReceived(mangle(acct()), NAS)
    assert proto.transport.sent == []
    assert proto.counters.get("radius_accounting_drops") == 1
    proto.datagramReceived(acct(ident=77), NAS)
    assert len(proto.transport.sent) == 1


def test_a_datagram_past_4096_octets_is_dropped_even_as_padding_and_as_a_retransmit():
    """Octets past Length are padding (RFC 2866 3), but no datagram may pass 4,096
    octets (RFC 2865 3): padded past that, even a copy of an answered request is
    dropped, not answered from the cache."""
    proto, _ = make()
    data = acct(ident=5)
    proto.datagramReceived(data + bytes(4096 - len(data)), NAS)  # 4,096 octets: padding
    assert len(proto.transport.sent) == 1
    proto.datagramReceived(data + bytes(4097 - len(data)), NAS)
    proto.datagramReceived(acct(ident=6) + bytes(8000), NAS)
    assert len(proto.transport.sent) == 1
    assert proto.counters.get("radius_accounting_drops", reason="malformed") == 2
    with pytest.raises(DropPacket) as caught:
        decode_accounting(data + bytes(4097 - len(data)), SECRET)
    assert caught.value.reason is DropReason.MALFORMED


def test_hostile_values_are_logged_escaped_and_shortened(caplog):
    """Odd Unicode, control characters and a long session id make one safe log line."""
    proto, _ = make()
    caplog.set_level(logging.INFO, "pushproxy.radius.accounting")
    user = "ali\u202ece\x1b[31m\nroot=1 \udcff".encode("utf-8", "surrogatepass")
    data = acct(user=user, session="S" * 250)
    proto.datagramReceived(data, NAS)
    assert check_response(proto.transport.sent[0][0], data)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith(
        "radius.accounting ")][0]
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert "S" * 128 + "..." in line and "S" * 129 not in line
    assert SECRET.decode() not in line


def test_accounting_is_off_by_default_and_parsed_when_configured(tmp_path):
    from tests.test_config import ENV, GOOD, parse

    assert parse(GOOD, tmp_path, ENV).radius.accounting_listen == ()
    text = GOOD.replace("radius:\n", 'radius:\n  accounting_listen: ["0.0.0.0:1813", '
                                     '"[::1]:1813"]\n')
    assert parse(text, tmp_path, ENV).radius.accounting_listen == (("0.0.0.0", 1813),
                                                                    ("::1", 1813))


def test_accounting_config_mistakes_are_all_named_with_their_paths(tmp_path):
    from tests.test_config import ENV, GOOD, problems

    text = GOOD.replace("radius:\n", 'radius:\n  listen: ["127.0.0.1:1812"]\n'
                                     '  accounting_listen: ["1813", "127.0.0.1:1812"]\n'
                                     '  accounting: {listen: x}\n')
    found = problems(text, tmp_path, ENV)
    assert any("radius.accounting_listen[0]" in p for p in found)
    assert any("radius.accounting_listen[1]" in p and "also in radius.listen" in p
               for p in found)
    assert any("radius.accounting" in p and "unknown" in p.lower() for p in found)
    workers = GOOD.replace("radius:\n", 'radius:\n  accounting_listen: ["127.0.0.1:0"]\n') \
        + "daemon:\n  workers: 2\n"
    workers = workers.replace('database: ":memory:"', "database: /tmp/x.db")
    assert any("radius.accounting_listen" in p and "port 0" in p
               for p in problems(workers, tmp_path, ENV))


def test_an_internal_error_drops_counts_and_leaves_the_request_answerable(monkeypatch):
    """A bug while answering: no crash, a counter, and the NAS's resend is served later."""
    from pushproxy.radius import accounting

    proto, _ = make()
    real = accounting.encode_accounting_response
    monkeypatch.setattr(accounting, "encode_accounting_response",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    data = acct()
    proto.datagramReceived(data, NAS)
    assert proto.transport.sent == []
    assert proto.counters.get("radius_accounting_drops", reason="internal_error") == 1
    monkeypatch.setattr(accounting, "encode_accounting_response", real)
    proto.datagramReceived(data, NAS)  # the retransmit is a new request, not "in flight"
    assert len(proto.transport.sent) == 1 and check_response(proto.transport.sent[0][0], data)


def test_status_server_on_the_accounting_port_gets_a_signed_accounting_response():
    """RFC 5997 3: a verified Status-Server is answered with an Accounting-Response;
    one without Message-Authenticator is dropped."""
    proto, _ = make()
    pkt = rpacket.AuthPacket(code=rpacket.StatusServer, id=3, secret=SECRET, dict=DICT)
    pkt.add_message_authenticator()
    data = pkt.RequestPacket()
    proto.datagramReceived(data, NAS)
    reply = proto.transport.sent[0][0]
    rep = rpacket.Packet(packet=reply, secret=SECRET, dict=DICT)
    assert rep.code == 5 and reply[20] == 80 and pkt.VerifyReply(rep, reply)
    bare = rpacket.AuthPacket(code=rpacket.StatusServer, id=4, secret=SECRET, dict=DICT)
    proto.datagramReceived(bare.RequestPacket(), NAS)
    assert len(proto.transport.sent) == 1
    assert proto.counters.get("radius_accounting_drops",
                              reason="missing_message_authenticator") == 1


def test_mutated_packets_only_ever_drop_or_decode():
    """Random octet flips, cuts and length fields (seeded): the pure check raises nothing
    but DropPacket, and the listener answers nothing it could not verify."""
    import random

    rng = random.Random(2866)
    good = acct(proxy_state=(b"\x01ps",), ma=True)
    proto, _ = make()
    for ident in range(1500):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            data[at] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data) + 1)]
        data = bytes(data)
        try:
            decode_accounting(data, SECRET)
        except DropPacket:
            pass
        proto.datagramReceived(data, ("127.0.0.1", 30000 + ident))
    assert proto.counters.get("radius_accounting_drops", reason="internal_error") == 0
    for reply, _ in proto.transport.sent:  # only what still verified (a flip in padding)
        assert reply[0] == 5
