"""The RadSec fuzz target: one TLS connection's byte stream through the listener's protocol.

A fuzz input is one control octet and a stream. The control octet picks
RADIUS/1.0 or RADIUS/1.1 (ALPN) and how the stream is cut into reads (one read,
fixed pieces, single octets), so partial packets, several packets per read and
packets split across reads are all exercised. The stream goes through
`RadsecConnection.dataReceived` (framing, the shared receive() path, engine)
with a scripted directory (alice/alice-pw, bob/bob-pw), a provider that
approves every push at once, a `Clock` and a recording transport, over a
connection already identified as a configured client.

`check` is the oracle, with framing and signatures written here:

- no exception escapes;
- once the stream holds a Length outside 20..4096 at a packet boundary, the
  connection is aborted and nothing after that point is answered;
- every reply answers a complete request of the stream (same Identifier and
  Authenticator/Token); a RADIUS/1.0 reply has Message-Authenticator first;
- an Access-Accept answers only a Status-Server or an Access-Request with a
  directory user's exact name and password (RADIUS/1.0: hidden with the secret
  "radsec" and, when present, a valid Message-Authenticator).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
from dataclasses import dataclass

from cryptography import x509
from pyrad import packet as rpacket
from twisted.internet.task import Clock

from pushproxy.audit import AuditLog
from pushproxy.config import FailMode, NoDeviceMode, PushConfig, RadiusClient
from pushproxy.engine import Engine
from pushproxy.metrics import Counters
from pushproxy.radius import codec
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.server import ClientTable, RadiusProtocol
from pushproxy.radsec.listener import RadsecFactory
from pushproxy.radsec.settings import CertificateMatch, RadsecClient, RadsecConfig
from tests.support import ScriptedDirectory, ScriptedProvider

SECRET = b"radsec"
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
DICTIONARY = codec.load_dictionary()
V11 = 0x01  # control bit: ALPN radius/1.1
CONFIG = RadsecConfig(listen=(), cert_file="", key_file="", ca_file="", clients=(
    RadsecClient(RadiusClient("gw", ipaddress.ip_network("0.0.0.0/0"), SECRET, False, None),
                 CertificateMatch(dns=("gw.example.com",))),), max_in_flight=64)


def _peer_certificate() -> x509.Certificate:
    """A certificate naming the configured client (the chain check is TLS's, not ours)."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("gw.example.com")]),
                           critical=False)
            .sign(key, hashes.SHA256()))


PEER = _peer_certificate()


class _Transport:
    def __init__(self, alpn):
        self.negotiatedProtocol = alpn
        self.written: list[bytes] = []
        self.aborted = False

    def getPeerCertificate(self):
        return self  # stands for pyOpenSSL's X509

    def to_cryptography(self):
        return PEER

    def write(self, data):
        self.written.append(data)

    def abortConnection(self):
        self.aborted = True


@dataclass
class Outcome:
    """What one input did: replies (codes) and whether the connection was closed."""

    codes: list
    aborted: bool


def _factory() -> RadsecFactory:
    clock, counters = Clock(), Counters()
    engine = Engine(clock=clock, directory=ScriptedDirectory(),
                    provider=ScriptedProvider(mode="approve"),
                    push=PushConfig(timeout=60, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(os.devnull, counters), counters=counters)
    radius = RadiusProtocol(clients=ClientTable(()), engine=engine, dictionary=DICTIONARY,
                            table=RetransmitTable(30), clock=clock, counters=counters,
                            default_no_device=NoDeviceMode.REJECT)
    return RadsecFactory(CONFIG, radius, counters, clock)


def _pieces(stream: bytes, control: int) -> list[bytes]:
    mode = (control >> 1) & 0x03
    if mode == 0:
        return [stream]
    size = {1: 1, 2: 7, 3: 64}[mode]
    return [stream[i:i + size] for i in range(0, len(stream), size)] or [b""]


def run_one(data: bytes) -> Outcome:
    """Feed one input through a fresh connection and check it; raises on a violation."""
    if not data:
        return Outcome([], False)
    control, stream = data[0], data[1:]
    v11 = bool(control & V11)
    factory = _factory()
    conn = factory.buildProtocol(type("Addr", (), {"host": "127.0.0.1", "port": 50000})())
    transport = _Transport(b"radius/1.1" if v11 else None)
    conn.makeConnection(transport)
    conn.handshakeCompleted()
    assert conn.client is not None, "the configured client was not recognised"
    for piece in _pieces(stream, control):
        conn.dataReceived(piece)
        if transport.aborted:
            break
    factory.clock.advance(1)
    check(stream, v11, transport)
    return Outcome([r[0] for r in transport.written if r], transport.aborted)


def _frames(stream: bytes) -> tuple[list[bytes], bool]:
    """Complete packets before the first bad Length, and whether a bad Length came."""
    out, pos = [], 0
    while len(stream) - pos >= 4:
        length = struct.unpack_from("!H", stream, pos + 2)[0]
        if not 20 <= length <= 4096:
            return out, True
        if len(stream) - pos < length:
            break
        out.append(stream[pos:pos + length])
        pos += length
    return out, False


def _attrs(packet: bytes) -> dict[int, list[bytes]] | None:
    found: dict[int, list[bytes]] = {}
    pos, end = 20, len(packet)
    while pos < end:
        if end - pos < 2 or packet[pos + 1] < 2 or pos + packet[pos + 1] > end:
            return None
        found.setdefault(packet[pos], []).append(packet[pos + 2:pos + packet[pos + 1]])
        pos += packet[pos + 1]
    return found


def _valid_login(packet: bytes, v11: bool) -> bool:
    """Whether ``packet`` deserves an Access-Accept (with an approving phone)."""
    attrs = _attrs(packet)
    if attrs is None:
        return False
    code = packet[0]
    if not v11 and 80 in attrs:
        if len(attrs[80]) != 1 or len(attrs[80][0]) != 16:
            return False
        blank = bytearray(packet)
        pos = 20
        while pos < len(blank):  # zero the Message-Authenticator value in place
            if blank[pos] == 80:
                blank[pos + 2:pos + 18] = bytes(16)
            pos += blank[pos + 1]
        if not hmac.compare_digest(hmac.new(SECRET, bytes(blank), "md5").digest(),
                                   attrs[80][0]):
            return False
    elif not v11 and code == codec.STATUS_SERVER:
        return False  # RFC 5997: Status-Server needs a Message-Authenticator
    if code == codec.STATUS_SERVER:
        return True
    if code != codec.ACCESS_REQUEST:
        return False
    names, passwords = attrs.get(1, []), attrs.get(2, [])
    if len(names) != 1 or len(passwords) != 1:
        return False
    try:
        user = names[0].decode("utf-8")
    except UnicodeDecodeError:
        return False
    if v11:
        password = passwords[0].rstrip(b"\x00")
    else:
        raw = passwords[0]
        if not 16 <= len(raw) <= 128 or len(raw) % 16:
            return False
        plain, last = b"", packet[4:20]
        for i in range(0, len(raw), 16):
            pad = hashlib.md5(SECRET + last).digest()
            plain += bytes(a ^ b for a, b in zip(raw[i:i + 16], pad))
            last = raw[i:i + 16]
        password = plain.rstrip(b"\x00")
    expected = USERS.get(user)
    # "password,push" is the engine's explicit push suffix: the same login
    return expected is not None and password in (expected.encode(),
                                                 expected.encode() + b",push")


def _signed(reply: bytes, request: bytes) -> bool:
    """RFC 2865 Response Authenticator and RFC 3579 Message-Authenticator, with "radsec"."""
    expected = hashlib.md5(reply[:4] + request[4:20] + reply[20:] + SECRET).digest()
    if not hmac.compare_digest(expected, reply[4:20]):
        return False
    blank = reply[:4] + request[4:20] + reply[20:22] + bytes(16) + reply[38:]
    return hmac.compare_digest(hmac.new(SECRET, blank, "md5").digest(), reply[22:38])


def check(stream: bytes, v11: bool, transport: _Transport) -> None:
    """The oracle (see the module docstring)."""
    frames, junk = _frames(stream)
    if junk:
        assert transport.aborted, "a bad Length did not close the connection"
    for reply in transport.written:
        assert len(reply) >= 20 and struct.unpack("!H", reply[2:4])[0] == len(reply), \
            "reply framing"
        if v11:
            assert reply[1] == 0, "RADIUS/1.1 reply with a non-zero Reserved-1"
            requests = [f for f in frames if f[4:20] == reply[4:20]]
        else:
            assert reply[20] == 80, "RADIUS/1.0 reply without Message-Authenticator first"
            requests = [f for f in frames if f[1] == reply[1] and _signed(reply, f)]
        assert requests, "a reply that answers no complete request of the stream"
        if reply[0] == rpacket.AccessAccept:
            assert any(_valid_login(r, v11) for r in requests), \
                "Access-Accept for a request that is not a valid login or Status-Server"


def seeds() -> list[bytes]:
    """Valid streams: logins, Status-Server, two packets in one stream, RADIUS/1.1."""
    out = []
    for control in (0x00, 0x02, 0x04, 0x06):
        stream = b""
        for ident, (user, password) in enumerate((("alice", "alice-pw"),
                                                  ("bob", "wrong"))):
            pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=ident, secret=SECRET,
                                     dict=DICTIONARY,
                                     authenticator=bytes(range(ident, ident + 16)))
            pkt["User-Name"] = user
            pkt["User-Password"] = pkt.PwCrypt(password)
            pkt.add_message_authenticator()
            stream += pkt.RequestPacket()
        status = rpacket.AuthPacket(code=rpacket.StatusServer, id=9, secret=SECRET,
                                    dict=DICTIONARY, authenticator=bytes(16))
        status.add_message_authenticator()
        out.append(bytes([control]) + stream + status.RequestPacket())
        body = b"\x01\x07alice\x02\x0aalice-pw"
        v11 = struct.pack("!BBH", 1, 0, 20 + len(body)) + b"tok1" + bytes(12) + body
        out.append(bytes([control | V11]) + v11 + v11.replace(b"tok1", b"tok2"))
    return out
