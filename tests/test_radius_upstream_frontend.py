"""The RADIUS front end with an upstream primary: an EAP conversation end to end, with a Clock.

The upstream is played by the test on the upstream client's fake wire, so each
round trip can be checked: what is forwarded, what the NAS gets back, where a
follow-up's State sends it, who gets the push, and how the MPPE key arrives.
"""

import hashlib
import hmac
import ipaddress
import os

from pyrad import packet as rpacket
from twisted.internet.task import Clock

from pushproxy.audit import AuditLog
from pushproxy.config import FailMode, NoDeviceMode, PushConfig, RadiusClient
from pushproxy.engine import Engine
from pushproxy.metrics import Counters
from pushproxy.radius import codec
from pushproxy.radius.attributes import Attr, Names, parse_attributes, salt_decrypt, salt_encrypt
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.server import ClientTable, RadiusProtocol
from pushproxy.upstream.client import UpstreamClient
from pushproxy.upstream.settings import UpstreamServer, UpstreamSettings
from tests.support import ScriptedDirectory, ScriptedProvider
from tests.test_upstream import reply_for

SECRET, UP = b"a-long-shared-secret", b"upstream-secret"
DICT = codec.load_dictionary()
NAS = ("127.0.0.1", 40000)


class Wire:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


def make():
    clock, counters = Clock(), Counters()
    settings = UpstreamSettings((UpstreamServer("10.9.0.1", 1812, UP, 3, 0, True),
                                 UpstreamServer("10.9.0.2", 1812, UP, 3, 0, True)), None)
    client = RadiusClient("vpn", ipaddress.ip_network("127.0.0.0/8"), SECRET, True, None,
                          upstream=settings)
    provider = ScriptedProvider(mode="approve")
    engine = Engine(clock=clock, directory=ScriptedDirectory(), provider=provider,
                    push=PushConfig(timeout=60, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(os.devnull, counters), counters=counters)
    upstream = UpstreamClient(settings, clock=clock, counters=counters, names=Names(DICT),
                              client_name="vpn")
    upstream.transport = Wire()
    proto = RadiusProtocol(clients=ClientTable((client,)), engine=engine, dictionary=DICT,
                           table=RetransmitTable(30), clock=clock, counters=counters,
                           default_no_device=NoDeviceMode.REJECT, upstreams={"vpn": upstream})
    proto.transport = Wire()
    return proto, upstream, provider


def eap_request(eap: bytes, state: bytes | None = None, ident=1):
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=ident, secret=SECRET, dict=DICT)
    pkt["User-Name"] = "anonymous"
    pkt["EAP-Message"] = eap
    if state is not None:
        pkt["State"] = state
    pkt.add_message_authenticator()
    return pkt, pkt.RequestPacket()


class Sent:
    """The forwarded request as the upstream sees it."""

    def __init__(self, data):
        self.ident, self.authenticator, self.data = data[1], data[4:20], data


def test_eap_rounds_go_to_the_same_upstream_and_only_the_final_accept_pushes_the_inner_user():
    proto, upstream, provider = make()
    first, raw = eap_request(b"\x02\x01\x00\x0eidentity")
    proto.datagramReceived(raw, NAS)
    (fwd, addr), = upstream.transport.sent
    assert addr == ("10.9.0.1", 1812)
    assert Attr(0, 79, b"\x02\x01\x00\x0eidentity") in parse_attributes(fwd[20:])
    upstream.datagramReceived(reply_for(Sent(fwd), 11, [Attr(0, 24, b"up-state-1"),
                                                        Attr(0, 79, b"\x01\x02eap-req")], UP),
                              addr)
    challenge = first.CreateReply(packet=proto.transport.sent[0][0])
    assert first.VerifyReply(challenge, proto.transport.sent[0][0], enforce_ma=True)
    assert challenge.code == rpacket.AccessChallenge
    assert dict.get(challenge, 24) == [b"up-state-1"] and 18 not in dict.keys(challenge)
    assert provider.requests == []

    # The follow-up: its State is the upstream's, so it goes back to the server
    # that sent it, even with that server in backoff (which would reorder others).
    upstream._dead_until[0] = 1e12
    second, raw = eap_request(b"\x02\x02\x00\x06resp", state=b"up-state-1", ident=2)
    proto.datagramReceived(raw, NAS)
    fwd, addr = upstream.transport.sent[-1]
    assert addr == ("10.9.0.1", 1812)  # pinned to the server that holds the EAP state
    assert Attr(0, 24, b"up-state-1") in parse_attributes(fwd[20:])
    key = bytes(range(32))
    sent = Sent(fwd)
    upstream.datagramReceived(reply_for(sent, 2, [
        Attr(0, 1, b"bob"), Attr(0, 79, b"\x03\x02\x00\x04"), Attr(0, 25, b"class-bob"),
        Attr(311, 16, salt_encrypt(key, UP, sent.authenticator))], UP), addr)
    assert [r.username for r in provider.requests] == ["bob"]
    data = proto.transport.sent[-1][0]
    accept = second.CreateReply(packet=data)
    assert second.VerifyReply(accept, data, enforce_ma=True)
    assert accept.code == rpacket.AccessAccept
    assert 18 not in dict.keys(accept)  # no Reply-Message of ours next to EAP
    assert dict.get(accept, 79) == [b"\x03\x02\x00\x04"]
    hidden = dict.get(accept, (311, 16))[0]
    assert salt_decrypt(hidden, SECRET, second.authenticator) == key
    # A replay of the used State is not the upstream's any more: the engine refuses it.
    third, raw = eap_request(b"\x02\x02\x00\x06resp", state=b"up-state-1", ident=3)
    proto.datagramReceived(raw, NAS)
    assert first.CreateReply(packet=proto.transport.sent[-1][0]).code == rpacket.AccessReject


def test_eap_accept_without_inner_identity_is_rejected_without_push():
    proto, upstream, provider = make()
    pkt, raw = eap_request(b"\x02\x01\x00\x0eidentity")
    proto.datagramReceived(raw, NAS)
    fwd, addr = upstream.transport.sent[0]
    upstream.datagramReceived(reply_for(Sent(fwd), 2, [Attr(0, 79, b"\x03\x01\x00\x04")], UP),
                              addr)
    assert pkt.CreateReply(packet=proto.transport.sent[0][0]).code == rpacket.AccessReject
    assert provider.requests == []


def test_a_request_whose_last_attribute_overruns_is_dropped_not_forwarded():
    proto, upstream, provider = make()
    pkt, raw = eap_request(b"\x02\x01\x00\x05x")
    assert raw[20] == 80 and raw.endswith(b"\x02\x01\x00\x05x")  # MA first, EAP last
    bad = bytearray(raw)
    # The final attribute claims two more octets than there are (pyrad tolerates it);
    # the Message-Authenticator is recomputed so that only the overrun is wrong.
    bad[-len(b"\x02\x01\x00\x05x") - 1] += 2
    bad[22:38] = b"\x00" * 16
    bad[22:38] = hmac.new(SECRET, bytes(bad), hashlib.md5).digest()
    proto.datagramReceived(bytes(bad), NAS)
    assert upstream.transport.sent == [] and proto.transport.sent == []
    assert proto.counters.get("radius_drops", reason="malformed") == 1
