"""RadSec pieces without sockets: framing, certificate names, config, RADIUS/1.1 codec,
and the connection protocol over a recording transport with a Clock."""

from __future__ import annotations

import ipaddress
import os
import struct
from pathlib import Path

import pytest
from cryptography import x509
from pyrad import packet as rpacket
from twisted.internet.task import Clock

from pushproxy.audit import AuditLog
from pushproxy.config import (ConfigError, FailMode, NoDeviceMode, PushConfig, RadiusClient,
                              parse_config)
from pushproxy.decision import PushStatus
from pushproxy.engine import Engine
from pushproxy.metrics import Counters
from pushproxy.radius import codec
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.server import ClientTable, RadiusProtocol
from pushproxy.radsec import identity
from pushproxy.radsec.framing import Framer, FramingError
from pushproxy.radsec.listener import RadsecFactory
from pushproxy.radsec.settings import CertificateMatch, RadsecClient, RadsecConfig
from tests.radsec_pki import TestCA
from tests.support import ScriptedDirectory, ScriptedProvider

DICT = codec.load_dictionary()


def status_server(ident=1, secret=b"radsec") -> bytes:
    pkt = rpacket.AuthPacket(code=rpacket.StatusServer, id=ident, secret=secret, dict=DICT,
                             authenticator=rpacket.Packet.CreateAuthenticator())
    pkt.add_message_authenticator()
    return pkt.RequestPacket()


def access_request(ident=1, user="alice", password="alice-pw", secret=b"radsec"):
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=ident, secret=secret, dict=DICT,
                             authenticator=rpacket.Packet.CreateAuthenticator())
    pkt["User-Name"] = user
    pkt["User-Password"] = pkt.PwCrypt(password)
    pkt.add_message_authenticator()
    return pkt.RequestPacket()


def v11_request(token: bytes, user="alice", password="alice-pw", extra=b"") -> bytes:
    body = bytes([1, len(user) + 2]) + user.encode() + bytes([2, len(password) + 2]) \
        + password.encode() + extra
    return struct.pack("!BBH", 1, 0, 20 + len(body)) + token + bytes(12) + body


# -- framing -----------------------------------------------------------------------

def test_framer_joins_pieces_and_splits_several_packets_in_one_read():
    a, b = status_server(1), status_server(2)
    framer = Framer()
    assert framer.feed(a[:3]) == []
    assert framer.feed(a[3:10]) == []
    assert framer.feed(a[10:] + b + b[:5]) == [a, b]
    assert framer.buffered == 5


@pytest.mark.parametrize("length", [0, 4, 19, 4097, 65535])
def test_framer_refuses_a_length_outside_20_to_4096(length):
    with pytest.raises(FramingError):
        Framer().feed(struct.pack("!BBH", 1, 0, length) + bytes(16))


def test_framer_never_holds_more_than_one_packet_of_an_incomplete_read():
    framer = Framer()
    framer.feed(struct.pack("!BBH", 1, 0, 4096) + bytes(100))
    assert framer.buffered == 104  # waits for the rest of a legal 4096-octet packet


# -- certificate names -----------------------------------------------------------

@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("pki"))


def names(ca, **kw):
    issued = ca.issue("leaf", **kw)
    return identity.names_of(x509.load_pem_x509_certificate(issued.cert.read_bytes()))


def client(name, network=None, **match):
    return RadsecClient(RadiusClient(name, ipaddress.ip_network("0.0.0.0/0"), b"radsec",
                                     False, None),
                        CertificateMatch(**{k: tuple(v) for k, v in match.items()}), network)


def test_every_listed_name_must_be_in_the_certificate(ca):
    n = names(ca, cn="nas1", dns=["nas1.example.com"], ips=["192.0.2.7"])
    assert identity.matches(CertificateMatch(dns=("nas1.example.com",), cn=("nas1",)), n)
    assert not identity.matches(CertificateMatch(dns=("nas1.example.com",), cn=("nas2",)), n)
    assert identity.matches(CertificateMatch(ip=("192.0.2.7",)), n)
    assert not identity.matches(CertificateMatch(), n)  # an empty rule matches nobody


def test_wildcard_covers_exactly_one_label(ca):
    match = CertificateMatch(dns=("*.gw.example.com",))
    assert identity.matches(match, names(ca, cn="x", dns=["a.gw.example.com"]))
    assert not identity.matches(match, names(ca, cn="x", dns=["a.b.gw.example.com"]))
    assert not identity.matches(match, names(ca, cn="x", dns=["gw.example.com"]))
    assert not identity.matches(match, names(ca, cn="x", dns=["evilgw.example.com"]))


def test_first_configured_client_wins_and_the_address_restriction_holds(ca):
    n = names(ca, cn="nas1", dns=["nas1.example.com"])
    only_lan = client("lan", ipaddress.ip_network("10.0.0.0/8"), dns=["nas1.example.com"])
    anywhere = client("any", cn=["nas1"])
    assert identity.find_client((only_lan, anywhere), n, "10.1.2.3").client.name == "lan"
    assert identity.find_client((only_lan, anywhere), n, "192.0.2.1").client.name == "any"
    assert identity.find_client((only_lan,), n, "192.0.2.1") is None


# -- config --------------------------------------------------------------------------

BASE = """\
radius:
  clients:
    - name: vpn
      address: 127.0.0.1
      secret_file: s
{radsec}
ldap:
  servers: ["ldap://127.0.0.1"]
  bind_template: "uid={{username}},dc=x"
  user_base: "dc=x"
approval:
  public_url: "https://mfa.example.com"
  database: ":memory:"
"""


def parse(tmp_path: Path, radsec: str):
    (tmp_path / "s").write_text("a-long-shared-secret\n")
    return parse_config(BASE.format(radsec=radsec), base_dir=tmp_path, env={})


def write_pki(tmp_path, ca):
    server = ca.issue("server", cn="srv", dns=["srv.example.com"], server=True)
    return server


def test_radsec_section_parses_with_defaults(tmp_path, ca):
    server = write_pki(tmp_path, ca)
    config = parse(tmp_path, f"""\
  radsec:
    cert_file: {server.cert}
    key_file: {server.key}
    ca_file: {ca.path}
    clients:
      - name: gw
        match: {{dns: gw.example.com}}
""")
    radsec = config.radius.radsec
    assert radsec.listen == (("0.0.0.0", 2083),)
    assert radsec.versions == ("1.1", "1.0")
    assert radsec.clients[0].client.secret == b"radsec"
    assert radsec.clients[0].client.require_message_authenticator is False
    assert {c.name for c in config.radius.all_clients} == {"vpn", "gw"}


def test_check_config_advises_a_push_timeout_radsec_proxies_can_wait_for(tmp_path, ca):
    """radsecproxy and FreeRADIUS wait at most 60 s: the default push.timeout (60 s) is
    too long behind them, and check-config says so."""
    server = write_pki(tmp_path, ca)
    config = parse(tmp_path, f"""\
  radsec:
    cert_file: {server.cert}
    key_file: {server.key}
    ca_file: {ca.path}
    clients:
      - name: gw
        match: {{cn: gw}}
""")
    (advice,) = [a for a in config.timeout_advice() if a.startswith("radius.radsec")]
    assert "at least 65 s" in advice and "lower push.timeout to 50 s" in advice


def test_radsec_problems_are_reported_all_at_once_with_paths(tmp_path, ca):
    other = ca.issue("other", cn="o")
    server = write_pki(tmp_path, ca)
    with pytest.raises(ConfigError) as err:
        parse(tmp_path, f"""\
  radsec:
    listen: ["nowhere"]
    cert_file: {server.cert}
    key_file: {other.key}
    ca_file: /nonexistent/ca.pem
    versions: ["2.0"]
    idle_timeout: 1
    colour: blue
    clients:
      - name: vpn
        match: {{cn: vpn}}
      - name: gw2
        match: {{}}
      - name: gw3
        match: {{ip: not-an-ip}}
        address: 10.0.0.1/8
      - name: gw4
        match: {{dns: "a.*.example.com"}}
""")
    text = "\n".join(err.value.problems)
    for expected in ("radius.radsec.listen[0]", "radius.radsec.key_file: does not load",
                     "radius.radsec.ca_file: cannot read", "radius.radsec.versions[0]",
                     "radius.radsec.idle_timeout", "radius.radsec.colour: unknown key",
                     "radius.radsec.clients[3].match.dns", "radius.radsec.clients[1].match",
                     "radius.radsec.clients[2].match.ip", "radius.radsec.clients[2].address",
                     "client name 'vpn' is used more than once"):
        assert expected in text, (expected, text)


def test_a_ca_file_without_certificates_is_a_config_problem(tmp_path, ca):
    server = write_pki(tmp_path, ca)
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError) as err:
        parse(tmp_path, f"""\
  radsec:
    cert_file: {server.cert}
    key_file: {server.key}
    ca_file: ca.pem
    clients:
      - name: gw
        match: {{cn: gw}}
""")
    assert "radius.radsec.ca_file: no PEM certificates" in "\n".join(err.value.problems)


def test_policy_rules_may_name_radsec_clients(tmp_path, ca):
    server = write_pki(tmp_path, ca)
    config = parse(tmp_path, f"""\
  radsec:
    cert_file: {server.cert}
    key_file: {server.key}
    ca_file: {ca.path}
    clients:
      - name: gw
        match: {{cn: gw}}
policy:
  rules:
    - name: gw-rule
      clients: [gw]
      action: deny
""")
    assert config.policy.rules[0].name == "gw-rule"


# -- RADIUS/1.1 codec ------------------------------------------------------------------

def test_v11_request_has_the_password_in_clear_and_the_reply_echoes_the_token():
    token = b"\x00\x01\x02\x03"
    data = v11_request(token)
    request = codec.decode_request(data, b"", DICT, require_message_authenticator=True,
                                   v11=True)
    assert request.password == "alice-pw" and request.v11
    reply = codec.encode_reply(request, codec.ACCESS_ACCEPT, reply_message="ok")
    assert reply[0] == codec.ACCESS_ACCEPT and reply[1] == 0
    assert reply[4:8] == token and reply[8:20] == bytes(12)
    assert struct.unpack("!H", reply[2:4])[0] == len(reply)
    attrs = reply[20:]
    assert attrs[0] != 80  # no Message-Authenticator
    assert b"ok" in attrs


def test_v11_the_same_bytes_in_radius_1_0_do_not_give_the_clear_password():
    """A 1.0 peer cannot smuggle a clear password: 1.0 decoding un-hides with MD5."""
    data = v11_request(b"\x00\x01\x02\x03", password="alice-pw-padded!")
    request = codec.decode_request(data, b"radsec", DICT,
                                   require_message_authenticator=False)
    assert request.password != "alice-pw-padded!"


def test_v11_status_server_needs_no_message_authenticator():
    data = struct.pack("!BBH", codec.STATUS_SERVER, 0, 20) + b"tokn" + bytes(12)
    request = codec.decode_request(data, b"", DICT, require_message_authenticator=True,
                                   v11=True)
    assert request.code == codec.STATUS_SERVER


# -- the connection protocol -------------------------------------------------------------

class TlsTransport:
    """What the protocol uses of Twisted's TLS transport, recording writes."""

    def __init__(self, cert, alpn=None):
        self.cert, self.negotiatedProtocol = cert, alpn
        self.written, self.aborted = [], False

    def getPeerCertificate(self):
        return self.cert

    def write(self, data):
        self.written.append(data)

    def abortConnection(self):
        self.aborted = True


class _Cert:
    def __init__(self, cert):
        self._cert = cert

    def to_cryptography(self):
        return self._cert


def make_factory(ca, **limits):
    clock, counters = Clock(), Counters()
    engine = Engine(clock=clock, directory=ScriptedDirectory(), provider=ScriptedProvider(),
                    push=PushConfig(timeout=60, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(os.devnull, counters), counters=counters)
    radius = RadiusProtocol(clients=ClientTable(()), engine=engine, dictionary=DICT,
                            table=RetransmitTable(30), clock=clock, counters=counters,
                            default_no_device=NoDeviceMode.REJECT)
    config = RadsecConfig(listen=(), cert_file="", key_file="", ca_file="",
                          clients=(client("gw", dns=["gw.example.com"]),), **limits)
    return RadsecFactory(config, radius, counters, clock), clock, counters


def connect(factory, ca, dns="gw.example.com", alpn=None, port=50000):
    issued = ca.issue("peer", cn="peer", dns=[dns])
    cert = _Cert(x509.load_pem_x509_certificate(issued.cert.read_bytes()))
    conn = factory.buildProtocol(type("A", (), {"host": "127.0.0.1", "port": port})())
    conn.makeConnection(TlsTransport(cert, alpn))
    conn.handshakeCompleted()
    return conn


def test_junk_length_closes_only_that_connection(ca):
    factory, clock, counters = make_factory(ca)
    good, bad = connect(factory, ca, port=1), connect(factory, ca, port=2)
    bad.dataReceived(b"\x01\x00\xff\xff" + bytes(30))
    assert bad.transport.aborted and not good.transport.aborted
    good.dataReceived(status_server(5))
    assert good.transport.written[0][0] == codec.ACCESS_ACCEPT
    assert counters.get("radsec_closed", reason="framing") == 1


def test_a_badly_signed_request_closes_the_connection(ca):
    factory, clock, counters = make_factory(ca)
    conn = connect(factory, ca)
    conn.dataReceived(status_server(5, secret=b"not-radsec"))
    assert conn.transport.aborted and conn.transport.written == []


def test_unknown_certificate_names_are_refused(ca):
    factory, clock, counters = make_factory(ca)
    conn = connect(factory, ca, dns="other.example.com")
    assert conn.transport.aborted
    assert counters.get("radsec_refused", reason="unknown_client") == 1


def test_requests_over_the_in_flight_cap_are_dropped_not_started(ca):
    factory, clock, counters = make_factory(ca, max_in_flight=1)
    conn = connect(factory, ca)
    conn.dataReceived(access_request(1) + access_request(3, user="bob", password="bob-pw"))
    provider = factory.radius.engine.provider
    assert [r.username for r in provider.requests] == ["alice"]
    assert counters.get("radsec_drops", reason="in_flight") == 1
    provider.answer(status=PushStatus.APPROVED)
    assert len(conn.transport.written) == 1 and not conn.transport.aborted
    conn.dataReceived(access_request(4, user="bob", password="bob-pw"))  # room again
    assert [r.username for r in provider.requests] == ["alice", "bob"]


def test_idle_closes_but_not_while_a_login_is_pending(ca):
    factory, clock, counters = make_factory(ca, idle_timeout=30)
    conn = connect(factory, ca)
    conn.dataReceived(access_request(1))
    clock.advance(45)
    assert not conn.transport.aborted  # waiting for the phone is not idleness
    factory.radius.engine.provider.answer(status=PushStatus.APPROVED)
    clock.advance(29)
    assert not conn.transport.aborted
    clock.advance(2)
    assert conn.transport.aborted
    assert counters.get("radsec_closed", reason="idle") == 1


def test_handshake_must_finish_within_the_handshake_timeout(ca):
    factory, clock, counters = make_factory(ca, handshake_timeout=10)
    conn = factory.buildProtocol(type("A", (), {"host": "127.0.0.1", "port": 9})())
    conn.makeConnection(TlsTransport(None))
    clock.advance(11)
    assert conn.transport.aborted
    assert counters.get("radsec_closed", reason="handshake_timeout") == 1


def test_per_client_cap_counts_identified_connections_and_frees_on_close(ca):
    factory, clock, counters = make_factory(ca, max_connections_per_client=1)
    first = connect(factory, ca, port=1)
    second = connect(factory, ca, port=2)
    assert second.transport.aborted and not first.transport.aborted
    first.connectionLost(None)
    third = connect(factory, ca, port=3)
    assert not third.transport.aborted


def test_v11_connection_answers_with_the_token(ca):
    factory, clock, counters = make_factory(ca)
    conn = connect(factory, ca, alpn=b"radius/1.1")
    conn.dataReceived(v11_request(b"tok1"))
    factory.radius.engine.provider.answer(status=PushStatus.APPROVED)
    (reply,) = conn.transport.written
    assert reply[0] == codec.ACCESS_ACCEPT and reply[4:8] == b"tok1"


def test_no_alpn_is_refused_when_only_radius_1_1_is_offered(ca):
    factory, clock, counters = make_factory(ca, versions=("1.1",))
    conn = connect(factory, ca, alpn=None)
    assert conn.transport.aborted
    assert counters.get("radsec_refused", reason="no_alpn") == 1


def test_a_radius_1_1_token_never_fetches_another_connections_cached_reply(ca):
    """Tokens are often counters: a new connection that got the same source port
    and reuses a Token gets its own decision, not the earlier connection's Accept."""
    factory, clock, counters = make_factory(ca)
    first = connect(factory, ca, alpn=b"radius/1.1", port=40000)
    first.dataReceived(v11_request(b"\x00\x00\x00\x01"))
    factory.radius.engine.provider.answer(status=PushStatus.APPROVED)
    assert first.transport.written[0][0] == codec.ACCESS_ACCEPT
    first.connectionLost(None)
    second = connect(factory, ca, alpn=b"radius/1.1", port=40000)
    second.dataReceived(v11_request(b"\x00\x00\x00\x01", password="wrong-password"))
    assert second.transport.written[0][0] == codec.ACCESS_REJECT


# -- upstream over TLS: config ------------------------------------------------------------

UPSTREAM = """\
radius:
  clients:
    - name: vpn
      address: 127.0.0.1
      secret_file: s
      primary: radius
      upstream:
{servers}
ldap:
  servers: ["ldap://127.0.0.1"]
  bind_template: "uid={{username}},dc=x"
  user_base: "dc=x"
approval:
  public_url: "https://mfa.example.com"
  database: ":memory:"
"""


def parse_upstream(tmp_path, servers):
    (tmp_path / "s").write_text("a-long-shared-secret\n")
    return parse_config(UPSTREAM.format(servers=servers), base_dir=tmp_path, env={})


def test_tls_upstream_uses_radsec_secret_no_resend_and_no_message_authenticator(tmp_path,
                                                                                ca):
    config = parse_upstream(tmp_path, f"""\
        - address: 10.0.1.7:2083
          timeout: 4
          retries: 3
          tls: {{ca_file: {ca.path}, server_name: nps.example.com}}
""")
    (server,) = config.radius.clients[0].upstream.servers
    assert server.secret == b"radsec" and server.tls.server_name == "nps.example.com"
    assert server.attempts == 1 and server.worst_case == 4
    assert server.require_message_authenticator is False


def test_tls_upstream_problems_are_named(tmp_path, ca):
    us = ca.issue("us", cn="us")
    with pytest.raises(ConfigError) as err:
        parse_upstream(tmp_path, f"""\
        - address: 10.0.1.7:2083
          secret_file: s
          tls: {{ca_file: {ca.path}, cert_file: {us.cert}}}
        - address: 10.0.1.8:2083
          tls: {{cert_file: {us.cert}, key_file: {us.key}, colour: red}}
""")
    text = "\n".join(err.value.problems)
    for expected in ("upstream[0].secret: not used over TLS",
                     "upstream[0].tls: cert_file and key_file go together",
                     "upstream[1].tls.ca_file", "upstream[1].tls.colour: unknown key"):
        assert expected in text, (expected, text)


def test_psk_clients_are_checked_with_paths(tmp_path, ca):
    server = write_pki(tmp_path, ca)
    (tmp_path / "short.psk").write_text("0011\n")
    (tmp_path / "nothex.psk").write_text("zz" * 20 + "\n")
    (tmp_path / "good.psk").write_text("ab" * 32 + "\n")
    with pytest.raises(ConfigError) as err:
        parse(tmp_path, f"""\
  radsec:
    cert_file: {server.cert}
    key_file: {server.key}
    ca_file: {ca.path}
    clients:
      - name: gw
        match: {{cn: gw}}
    psk_clients:
      - {{name: p1, identity: a, key_file: short.psk}}
      - {{name: p2, identity: b, key_file: nothex.psk}}
      - {{name: p3, identity: c, key_file: good.psk}}
      - {{name: p4, identity: c, key_file: good.psk}}
      - {{name: gw, identity: d, key: inline}}
""")
    text = "\n".join(err.value.problems)
    for expected in ("psk_clients[0].key: 2 octets", "psk_clients[1].key: must be hexadecimal",
                     "identity 'c' is used more than once",
                     "radius.radsec: psk_listen and psk_clients go together",
                     "psk_clients[4].key: inline secrets are not accepted"):
        assert expected in text, (expected, text)


def test_psk_client_found_only_by_its_identity_and_address():
    from pushproxy.radsec.settings import PskClient

    lan = PskClient(RadiusClient("lan", ipaddress.ip_network("0.0.0.0/0"), b"radsec", False,
                                 None), b"gw-1", b"k" * 16, ipaddress.ip_network("10.0.0.0/8"))
    assert identity.find_psk_client((lan,), b"gw-1", "10.1.1.1") is lan
    assert identity.find_psk_client((lan,), b"gw-1", "192.0.2.1") is None
    assert identity.find_psk_client((lan,), b"gw-2", "10.1.1.1") is None
    assert identity.find_psk_client((lan,), None, "10.1.1.1") is None
