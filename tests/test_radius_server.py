"""The RADIUS front end with real pyrad-encoded packets and a Clock: drops, replies, retransmits."""

import ipaddress
import os

import pytest
from pyrad import packet as rpacket
from twisted.internet.task import Clock

from pushproxy.audit import AuditLog
from pushproxy.config import FailMode, NoDeviceMode, PushConfig, RadiusClient
from pushproxy.decision import PushStatus
from pushproxy.engine import Engine
from pushproxy.metrics import Counters
from pushproxy.radius import codec
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.server import ClientTable, RadiusProtocol
from tests.support import ScriptedDirectory, ScriptedProvider

SECRET = b"a-long-shared-secret"
DICT = codec.load_dictionary()
NAS = ("127.0.0.1", 40000)


class Transport:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


def make(require_ma=True, provider=None, verification=None):
    clock = Clock()
    counters = Counters()
    clients = (
        RadiusClient("vpn", ipaddress.ip_network("127.0.0.0/8"), SECRET, require_ma, None,
                     verification),
        RadiusClient("legacy", ipaddress.ip_network("127.0.0.9/32"), b"other-secret-xx",
                     False, None),
    )
    engine = Engine(clock=clock, directory=ScriptedDirectory(),
                    provider=provider or ScriptedProvider(),
                    push=PushConfig(timeout=60, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(os.devnull, counters), counters=counters)
    proto = RadiusProtocol(clients=ClientTable(clients), engine=engine, dictionary=DICT,
                           table=RetransmitTable(30), clock=clock, counters=counters,
                           default_no_device=NoDeviceMode.REJECT)
    proto.transport = Transport()
    return proto, clock


def request(user="alice", password="alice-pw", ma=True, secret=SECRET, ident=7, **attrs):
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=ident, secret=secret, dict=DICT)
    pkt["User-Name"] = user
    pkt["User-Password"] = pkt.PwCrypt(password)
    pkt["Calling-Station-Id"] = "198.51.100.7"
    for k, v in attrs.items():
        pkt[k.replace("_", "-")] = v
    if ma:
        pkt.add_message_authenticator()
    return pkt, pkt.RequestPacket()


def verify(pkt, raw):
    reply = pkt.CreateReply(packet=raw)
    assert pkt.VerifyReply(reply, raw, enforce_ma=True), "reply does not verify"
    assert raw[20] == 80, "Message-Authenticator is not the first attribute"
    return reply


def test_approved_login_gets_accept_with_message_authenticator_first():
    proto, clock = make()
    pkt, raw = request()
    proto.datagramReceived(raw, NAS)
    assert proto.transport.sent == []
    proto.engine.provider.answer(status=PushStatus.APPROVED)
    (data, addr), = proto.transport.sent
    assert addr == NAS
    assert verify(pkt, data).code == rpacket.AccessAccept


def test_proxy_state_is_copied_in_order():
    proto, clock = make()
    pkt, raw = request(password="wrong", Proxy_State=b"\x01state-one")
    proto.datagramReceived(raw, NAS)
    reply = verify(pkt, proto.transport.sent[0][0])
    assert reply.code == rpacket.AccessReject
    assert dict.get(reply, 33) == [b"\x01state-one"]


def test_missing_message_authenticator_is_dropped_when_required():
    proto, clock = make()
    pkt, raw = request(ma=False)
    proto.datagramReceived(raw, NAS)
    assert proto.transport.sent == []
    assert proto.counters.get("radius_drops", reason="missing_message_authenticator") == 1
    assert proto.engine.directory.calls == []


def test_missing_message_authenticator_is_allowed_for_a_legacy_client():
    proto, clock = make()
    pkt, raw = request(ma=False, secret=b"other-secret-xx", password="wrong")
    proto.datagramReceived(raw, ("127.0.0.9", 5000))
    assert verify(pkt, proto.transport.sent[0][0]).code == rpacket.AccessReject


def test_wrong_message_authenticator_is_dropped():
    proto, clock = make()
    pkt, raw = request()
    tampered = raw[:-1] + bytes([raw[-1] ^ 1])
    proto.datagramReceived(tampered, NAS)
    assert proto.transport.sent == []
    assert proto.counters.get("radius_drops", reason="bad_message_authenticator") == 1


def test_wrong_shared_secret_is_dropped():
    proto, clock = make()
    pkt, raw = request(secret=b"not-the-right-secret")
    proto.datagramReceived(raw, NAS)
    assert proto.transport.sent == []
    assert proto.counters.get("radius_drops", reason="bad_message_authenticator") == 1


def test_wrong_secret_without_message_authenticator_never_accepts():
    proto, clock = make()
    pkt, raw = request(ma=False, secret=b"not-the-right-secret")
    proto.datagramReceived(raw, ("127.0.0.9", 5000))
    proto.engine.provider.answer(status=PushStatus.APPROVED) if proto.engine.provider.requests else None
    data = proto.transport.sent[0][0]
    assert data[0] == rpacket.AccessReject


def test_unknown_client_is_dropped_and_counted():
    proto, clock = make()
    pkt, raw = request()
    proto.datagramReceived(raw, ("192.0.2.1", 1812))
    assert proto.transport.sent == []
    assert proto.counters.get("radius_drops", reason="unknown_client") == 1


@pytest.mark.parametrize("mangle", [
    lambda raw: raw[:10],                       # truncated header
    lambda raw: raw[:4] + raw[4:30],            # length field longer than data
    lambda raw: raw[:2] + b"\x00\x13" + raw[4:],  # length below 20
    lambda raw: raw[:20] + b"\x01\x01" + raw[22:],  # attribute length 1
    lambda raw: b"\x04" + raw[1:],              # Accounting-Request to the auth port
    lambda raw: os.urandom(len(raw)),
])
def test_garbled_packets_are_dropped_and_the_listener_keeps_serving(mangle):
    proto, clock = make()
    pkt, raw = request(password="wrong")
    proto.datagramReceived(mangle(raw), NAS)
    assert proto.transport.sent == []
    assert proto.counters.get("radius_drops") == 1
    pkt2, raw2 = request(password="wrong", ident=8)
    proto.datagramReceived(raw2, NAS)
    assert verify(pkt2, proto.transport.sent[0][0]).code == rpacket.AccessReject


def test_retransmits_in_flight_are_dropped_and_answered_ones_get_identical_bytes():
    proto, clock = make()
    pkt, raw = request()
    for _ in range(3):
        proto.datagramReceived(raw, NAS)
        clock.advance(2)
    assert len(proto.engine.directory.calls) == 1
    assert len(proto.engine.provider.requests) == 1
    proto.engine.provider.answer(status=PushStatus.APPROVED)
    proto.datagramReceived(raw, NAS)
    proto.datagramReceived(raw, NAS)
    replies = [data for data, _ in proto.transport.sent]
    assert len(replies) == 3 and len(set(replies)) == 1
    assert proto.counters.get("radius_retransmits", client="vpn", state="in_flight") == 2


def test_cached_reply_expires_after_the_hold_time():
    proto, clock = make()
    pkt, raw = request(password="wrong")
    proto.datagramReceived(raw, NAS)
    clock.advance(31)
    proto.datagramReceived(raw, NAS)
    assert len(proto.engine.directory.calls) == 2


def test_status_server_is_answered_with_a_signed_accept():
    proto, clock = make()
    pkt = rpacket.AuthPacket(code=rpacket.StatusServer, id=3, secret=SECRET, dict=DICT)
    pkt.add_message_authenticator()
    raw = pkt.RequestPacket()
    proto.datagramReceived(raw, NAS)
    data = proto.transport.sent[0][0]
    assert data[0] == rpacket.AccessAccept and data[20] == 80
    assert proto.engine.directory.calls == []


def test_most_specific_client_network_wins():
    a = RadiusClient("wide", ipaddress.ip_network("10.0.0.0/8"), b"x" * 12, True, None)
    b = RadiusClient("narrow", ipaddress.ip_network("10.1.0.0/16"), b"y" * 12, True, None)
    table = ClientTable((a, b))
    assert table.match("10.1.2.3").name == "narrow"
    assert table.match("10.2.0.1").name == "wide"
    assert table.match("::ffff:10.1.2.3").name == "narrow"
    assert table.match("192.0.2.1") is None
    assert table.match("not-an-ip") is None


def test_client_lookups_are_remembered_within_a_bound_and_stay_right():
    """Each source's answer is remembered (no address parsed per datagram), a flood of
    spoofed sources cannot grow that memory, and answers stay right across it."""
    a = RadiusClient("wide", ipaddress.ip_network("10.0.0.0/8"), b"x" * 12, True, None)
    b = RadiusClient("narrow", ipaddress.ip_network("10.1.0.0/16"), b"y" * 12, True, None)
    table = ClientTable((a, b))
    for n in range(3 * ClientTable.REMEMBER):
        host = f"192.0.{n // 256 % 256}.{n % 256}" if n % 3 else f"10.1.{n // 256 % 256}.{n % 256}"
        expected = None if n % 3 else "narrow"
        got = table.match(host)
        assert (got.name if got else None) == expected
        assert len(table._known) <= ClientTable.REMEMBER
    assert table.match("10.2.0.1").name == "wide" and table.match("10.2.0.1").name == "wide"


def test_drop_log_lines_are_rate_limited_but_every_drop_is_counted(caplog):
    proto, clock = make()
    pkt, raw = request()
    with caplog.at_level("INFO", logger="pushproxy.radius"):
        for _ in range(50):
            proto.datagramReceived(raw, ("192.0.2.1", 1812))
        clock.advance(61)
        proto.datagramReceived(raw, ("192.0.2.1", 1812))
    lines = [r.getMessage() for r in caplog.records if "radius.drop" in r.getMessage()]
    assert proto.counters.get("radius_drops", reason="unknown_client") == 51
    assert len(lines) == 2 and "suppressed=49" in lines[1]


def test_when_stopping_new_requests_are_dropped_but_answered_retransmits_still_get_replies():
    proto, clock = make()
    pkt, raw = request(password="wrong")
    proto.datagramReceived(raw, NAS)
    proto.accepting = False
    proto.datagramReceived(raw, NAS)  # retransmit of an answered request
    pkt2, raw2 = request(ident=9)
    proto.datagramReceived(raw2, NAS)
    assert len(proto.transport.sent) == 2 and proto.transport.sent[0] == proto.transport.sent[1]
    assert proto.counters.get("radius_drops", reason="shutting_down") == 1
    assert proto.engine.directory.calls == ["alice"]


def test_access_challenge_carries_the_state_and_message():
    from pushproxy.policy import Verification

    proto, clock = make(verification=Verification.NUMBER_MATCH)
    pkt, raw = request()
    proto.datagramReceived(raw, NAS)
    reply = verify(pkt, proto.transport.sent[0][0])
    assert reply.code == rpacket.AccessChallenge
    (state,) = dict.get(reply, 24)
    assert len(state) == 16
    assert b"Enter" in dict.get(reply, 18)[0]
