"""What a pending login holds (issue 16): no decoded pyrad packet and no closures.

Every pending login lives until its phone answers, so each object it keeps is
multiplied by the number waiting (100,000 is the target). These tests count
objects, never time or bytes: the decoded packet (an ordered dict of attribute
lists, about 2 KB) and the per-login closures (the engine's end of a login,
the push's settle, the service's canceller) must be gone, while the reply
still copies Proxy-State and the approval still gives an Accept.
"""

import gc
import ipaddress
import os
import types

from pyrad import packet as rpacket
from twisted.internet import defer
from twisted.internet.task import Clock

from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.service import ApprovalService
from pushproxy.approval.store import Device, SQLiteStore
from pushproxy.audit import AuditLog
from pushproxy.config import FailMode, NoDeviceMode, PushConfig, RadiusClient
from pushproxy.decision import PrimaryResult, PrimaryStatus, PushResult, PushStatus
from pushproxy.engine import Engine
from pushproxy.metrics import Counters
from pushproxy.radius import codec
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.server import ClientTable, RadiusProtocol

SECRET = b"a-long-shared-secret"
DICT = codec.load_dictionary()
COUNT = 50


class _Transport:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


class _Directory:
    def authenticate(self, username, password):
        return defer.succeed(PrimaryResult(PrimaryStatus.OK, dn=f"uid={username},dc=x",
                                           server="ldap://x", account=username))


def _stack():
    clock = Clock()
    clock.advance(1_700_000_000)
    counters = Counters()
    store = SQLiteStore(":memory:")
    now = clock.seconds()
    for i in range(COUNT + 1):
        store.create_enrollment(f"u{i}", f"h{i}", now, now + 900)
        store.redeem_enrollment(f"h{i}", now, Device(f"d{i}", f"u{i}", "p", "K", None, now,
                                                     None, None))
    service = ApprovalService(store=AsyncStore.inline(store), reactor=clock, counters=counters,
                              vapid_public_key="k")
    engine = Engine(clock=clock, directory=_Directory(), provider=service,
                    push=PushConfig(timeout=60, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(os.devnull, counters), counters=counters)
    proto = RadiusProtocol(
        clients=ClientTable((RadiusClient("vpn", ipaddress.ip_network("127.0.0.0/8"), SECRET,
                                          True, None, None),)),
        engine=engine, dictionary=DICT, table=RetransmitTable(30), clock=clock,
        counters=counters, default_no_device=NoDeviceMode.REJECT)
    proto.transport = _Transport()
    return proto, service


def _request(i: int) -> tuple[rpacket.AuthPacket, bytes]:
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=i, secret=SECRET, dict=DICT)
    pkt["User-Name"] = f"u{i}"
    pkt["User-Password"] = pkt.PwCrypt(f"pw{i}")
    pkt["Calling-Station-Id"] = f"198.51.100.{i}"
    pkt["NAS-Identifier"] = "nas1"
    pkt["Proxy-State"] = f"state-{i}".encode()
    pkt.add_message_authenticator()
    return pkt, pkt.RequestPacket()


def _live(kind) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def test_pending_logins_keep_no_decoded_packet_and_no_closures_and_still_accept():
    proto, service = _stack()
    requests = [_request(i) for i in range(COUNT)]
    proto.datagramReceived(_request(COUNT)[1], ("127.0.0.1", 1999))  # warm: first-use objects
    packets_before, functions_before = _live(rpacket.Packet), _live(types.FunctionType)
    for i, (_, raw) in enumerate(requests):
        proto.datagramReceived(raw, ("127.0.0.1", 2000 + i))
    assert proto.engine.pending == COUNT + 1 and service.waiting == COUNT + 1
    # Before issue 16's second round: one decoded packet and three closures each.
    assert _live(rpacket.Packet) - packets_before == 0
    assert _live(types.FunctionType) - functions_before == 0
    for txid in list(service._waiting):  # as `ApprovalService._answer` releases a login
        service._waiting.pop(txid).callback(PushResult(PushStatus.APPROVED, txid, "d0"))
    assert len(proto.transport.sent) == COUNT + 1
    for (pkt, _), (data, addr) in zip(requests, sorted(
            proto.transport.sent, key=lambda sent: sent[1][1])[1:]):
        reply = pkt.CreateReply(packet=data)
        assert pkt.VerifyReply(reply, data, enforce_ma=True)
        assert reply.code == codec.ACCESS_ACCEPT
        assert data[20] == 80  # Message-Authenticator first
        assert reply["Proxy-State"] == pkt["Proxy-State"]  # copied, once
