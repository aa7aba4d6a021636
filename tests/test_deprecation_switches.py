"""The switches draft-ietf-radext-deprecating-radius asks of every server:
limit_proxy_state per client, a warning for short shared secrets, long secrets work."""

from __future__ import annotations

import ipaddress
import os
import textwrap

import pytest
from pyrad import packet as rpacket
from twisted.internet.task import Clock

from pushproxy.audit import AuditLog
from pushproxy.cli import exposure_warnings
from pushproxy.config import (FailMode, NoDeviceMode, PushConfig, RadiusClient, parse_config)
from pushproxy.engine import Engine
from pushproxy.metrics import Counters
from pushproxy.radius import codec
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.server import ClientTable, RadiusProtocol
from tests.support import ScriptedDirectory, ScriptedProvider

DICT = codec.load_dictionary()


class Udp:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


def protocol(secret: bytes, *, limit_proxy_state=True):
    clock, counters = Clock(), Counters()
    engine = Engine(clock=clock, directory=ScriptedDirectory(),
                    provider=ScriptedProvider(mode="approve"),
                    push=PushConfig(timeout=60, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(os.devnull, counters), counters=counters)
    client = RadiusClient("legacy", ipaddress.ip_network("127.0.0.0/8"), secret, False, None,
                          limit_proxy_state=limit_proxy_state)
    proto = RadiusProtocol(clients=ClientTable((client,)), engine=engine, dictionary=DICT,
                           table=RetransmitTable(30), clock=clock, counters=counters,
                           default_no_device=NoDeviceMode.REJECT)
    proto.transport = Udp()
    return proto, counters


def request(secret: bytes, *, proxy_state=None, ma=False) -> bytes:
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=3, secret=secret, dict=DICT,
                             authenticator=bytes(range(16)))
    pkt["User-Name"] = "alice"
    pkt["User-Password"] = pkt.PwCrypt("alice-pw")
    if proxy_state is not None:
        pkt["Proxy-State"] = proxy_state
    if ma:
        pkt.add_message_authenticator()
    return pkt.RequestPacket()


def test_proxy_state_without_message_authenticator_is_dropped_by_default():
    proto, counters = protocol(b"a-legacy-secret-of-20")
    proto.datagramReceived(request(b"a-legacy-secret-of-20", proxy_state=b"ps"),
                           ("127.0.0.1", 5000))
    assert proto.transport.sent == []
    assert counters.get("radius_drops", reason="missing_message_authenticator") == 1


@pytest.mark.parametrize("limit, proxy_state, ma", [
    (True, None, False),  # no Proxy-State: the legacy client is served
    (True, b"ps", True),  # signed: served
    (False, b"ps", False),  # switched off for this client
])
def test_legacy_clients_are_still_served_when_the_attack_is_not_possible(limit, proxy_state,
                                                                         ma):
    proto, counters = protocol(b"a-legacy-secret-of-20", limit_proxy_state=limit)
    proto.datagramReceived(request(b"a-legacy-secret-of-20", proxy_state=proxy_state, ma=ma),
                           ("127.0.0.1", 5000))
    assert len(proto.transport.sent) == 1


def test_a_64_octet_secret_works_end_to_end():
    secret = b"s" * 64
    proto, counters = protocol(secret)
    proto.datagramReceived(request(secret, ma=True), ("127.0.0.1", 5000))
    (data, _), = proto.transport.sent
    assert data[0] == rpacket.AccessAccept


CONFIG = """\
radius:
  clients:
    - {{name: short, address: 127.0.0.1, secret_file: short.secret, limit_proxy_state: false}}
    - {{name: long, address: 127.0.0.2, secret_file: long.secret}}
ldap: {{servers: ["ldaps://dc.example.net"], user_base: "dc=x",
        bind_template: "uid={{{{username}}}},dc=x"}}
approval: {{public_url: "https://mfa.example.net", database: ":memory:"}}
"""


def test_check_config_warns_about_secrets_shorter_than_16_octets(tmp_path):
    (tmp_path / "short.secret").write_text("twelve-chars\n")
    (tmp_path / "long.secret").write_text("x" * 40 + "\n")
    config = parse_config(textwrap.dedent(CONFIG.format()), base_dir=tmp_path, env={})
    assert config.radius.clients[0].limit_proxy_state is False
    assert config.radius.clients[1].limit_proxy_state is True
    warnings = [w for w in exposure_warnings(config) if "shared secret" in w]
    assert len(warnings) == 1 and "radius.clients[0] (short)" in warnings[0]
    assert "12 octets" in warnings[0]
