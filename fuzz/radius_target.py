"""The RADIUS fuzz target: one datagram through the whole front end, checked by an oracle.

A fuzz input is one control octet and a datagram. The control octet picks the
source address (a client that requires Message-Authenticator, a legacy client
that does not, an unknown source, a spoofed IPv4-mapped address, a
number-matching client, a ``primary: radius`` client whose inputs go to
`fuzz.upstream_target`, which plays its upstream servers too) and may ask
the harness to *re-sign* the mutated datagram: fix its Length field and
recompute its Message-Authenticator with the right secret. Re-signing lets a
fuzzer reach everything behind the signature check (attribute decoding, the
password, the engine) instead of stopping at "bad Message-Authenticator".

The datagram goes through `RadiusProtocol.datagramReceived` with a scripted
directory (alice/alice-pw, bob/bob-pw), a provider that approves every push at
once (the worst case: any login that passes the first factor is accepted), a
`Clock` and a recording transport; then the same bytes again (a retransmit).

`check` is the oracle. It parses the datagram on its own (RFC 2865/3579 code
written here, not pyrad's) and fails when:

- an exception escapes the protocol;
- a reply lacks Message-Authenticator as its first attribute, or it or the
  Response Authenticator is wrong for the request and the client's secret;
- anything is sent to an unknown source, or for a request whose
  Message-Authenticator is missing (where required) or wrong;
- an Access-Accept (or an Access-Challenge, which starts a push) answers
  anything but a correctly signed Status-Server or an Access-Request from a
  known client with a directory user's exact name and password (optionally
  followed by ``,push``);
- a retransmit gets a different reply than the first copy.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
from dataclasses import dataclass

from pyrad import packet as rpacket
from twisted.internet.task import Clock

from pushproxy.audit import AuditLog
from pushproxy.config import FailMode, NoDeviceMode, PushConfig, RadiusClient
from pushproxy.engine import Engine
from pushproxy.metrics import Counters
from pushproxy.policy import Verification
from pushproxy.radius import codec
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.attributes import Names
from pushproxy.radius.server import ClientTable, RadiusProtocol
from pushproxy.upstream.client import UpstreamClient
from pushproxy.upstream.settings import UpstreamServer, UpstreamSettings
from tests.support import ScriptedDirectory, ScriptedProvider

SECRET = b"fuzzing-shared-secret-1"
LEGACY_SECRET = b"legacy-secret-22"
UP_CLIENT_SECRET = b"radius-primary-client-3"  # the NAS of the primary: radius client
UP_SECRET = b"upstream-server-secret-4"  # between pushproxy and its upstream servers
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
DICTIONARY = codec.load_dictionary()
NAMES = Names(DICTIONARY)

#: Source addresses the control octet chooses from, with the secret the oracle expects
#: (None: unknown source, nothing may be sent).
SOURCES = (
    (("127.0.0.1", 40000), SECRET, True),
    (("127.0.0.9", 40001), LEGACY_SECRET, False),
    (("192.0.2.1", 1812), None, False),
    (("::ffff:127.0.0.1", 40002), SECRET, True),  # how a dual-stack socket reports IPv4
    (("127.0.0.5", 40003), SECRET, True),  # number matching: a valid login gets a Challenge
    (("127.0.0.7", 40004), UP_CLIENT_SECRET, True),  # primary: radius (fuzz/upstream_target.py)
)
UPSTREAM_SOURCE = 5
RESIGN = 0x10

#: The upstream of the ``primary: radius`` client: A is tried twice (one resend), then B
#: once; B does not require Message-Authenticator in its replies. An Accept passes
#: Class, Filter-Id and Tunnel-Password besides the protocol's own attributes.
UPSTREAM = UpstreamSettings(
    (UpstreamServer("10.9.0.1", 1812, UP_SECRET, 3, 1, True),
     UpstreamServer("10.9.0.2", 1812, UP_SECRET, 3, 0, False)),
    pass_attributes=frozenset({(0, 25), (0, 11), (0, 69)}))

CLIENTS = (
    RadiusClient("vpn", ipaddress.ip_network("127.0.0.0/8"), SECRET, True, None),
    # limit_proxy_state off: the unsigned Proxy-State paths (reply size, copying)
    # stay reachable; the switch itself is tested in tests/test_deprecation_switches.py.
    RadiusClient("legacy", ipaddress.ip_network("127.0.0.9/32"), LEGACY_SECRET, False, None,
                 limit_proxy_state=False),
    RadiusClient("vpn-nm", ipaddress.ip_network("127.0.0.5/32"), SECRET, True, None,
                 Verification.NUMBER_MATCH),
    RadiusClient("vpn-up", ipaddress.ip_network("127.0.0.7/32"), UP_CLIENT_SECRET, True, None,
                 upstream=UPSTREAM),
)

_AUDIT = AuditLog(os.devnull, Counters())


class OracleFailure(AssertionError):
    """The server did something the oracle forbids (the message says what)."""


class RecordingTransport:
    """Collects what the protocol sends."""

    def __init__(self):
        self.sent: list[tuple[bytes, tuple]] = []

    def write(self, data: bytes, addr) -> None:
        """Record one datagram."""
        self.sent.append((data, addr))


def make_protocol() -> RadiusProtocol:
    """A fresh front end with the scripted directory and an always-approving provider.

    The ``primary: radius`` client's `UpstreamClient` writes to a recording
    transport too (``proto.upstreams["vpn-up"].transport``): the harness plays
    its upstream servers.
    """
    clock = Clock()
    clock.advance(1_800_000_000)
    counters = Counters()
    engine = Engine(clock=clock, directory=ScriptedDirectory(users=dict(USERS)),
                    provider=ScriptedProvider(mode="approve"),
                    push=PushConfig(timeout=60, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=_AUDIT, counters=counters)
    upstream = UpstreamClient(UPSTREAM, clock=clock, counters=counters, names=NAMES,
                              client_name="vpn-up")
    upstream.transport = RecordingTransport()
    proto = RadiusProtocol(clients=ClientTable(CLIENTS), engine=engine, dictionary=DICTIONARY,
                           table=RetransmitTable(30), clock=clock, counters=counters,
                           default_no_device=NoDeviceMode.REJECT,
                           upstreams={"vpn-up": upstream})
    proto.transport = RecordingTransport()
    return proto


# -- the oracle's own RADIUS parsing (RFC 2865 / RFC 3579), independent of pyrad


def attributes(packet: bytes) -> list[tuple[int, bytes]] | None:
    """The (type, value) list of a packet cut at its Length, or None if it does not parse."""
    if len(packet) < 20:
        return None
    length = struct.unpack("!H", packet[2:4])[0]
    if length < 20 or length > len(packet):
        return None
    body, out = packet[20:length], []
    while body:
        if len(body) < 2 or body[1] < 2 or body[1] > len(body):
            return None
        out.append((body[0], body[2:body[1]]))
        body = body[body[1]:]
    return out


def _zero_ma(packet: bytes) -> bytes:
    """The packet with every Message-Authenticator value zeroed (for the HMAC)."""
    out, pos = bytearray(packet), 20
    while pos + 2 <= len(packet):
        kind, size = packet[pos], packet[pos + 1]
        if size < 2:
            break
        if kind == 80:
            out[pos + 2:pos + size] = bytes(size - 2)
        pos += size
    return bytes(out)


def message_authenticator(packet: bytes, secret: bytes, vector: bytes | None = None) -> bytes:
    """HMAC-MD5 of the packet with MA zeroed; ``vector`` replaces octets 4-20 (replies)."""
    zeroed = _zero_ma(packet)
    if vector is not None:
        zeroed = zeroed[:4] + vector + zeroed[20:]
    return hmac.new(secret, zeroed, hashlib.md5).digest()


def decrypt_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes | None:
    """RFC 2865 5.2 User-Password, trailing NULs removed; None when the length is wrong."""
    if not hidden or len(hidden) % 16 or len(hidden) > 128:
        return None
    plain, last = b"", authenticator
    for i in range(0, len(hidden), 16):
        block = hidden[i:i + 16]
        pad = hashlib.md5(secret + last).digest()
        plain += bytes(a ^ b for a, b in zip(block, pad))
        last = block
    return plain.rstrip(b"\x00")


def resign(data: bytes, secret: bytes) -> bytes:
    """Fix the Length field and recompute a Message-Authenticator, if one is there."""
    if len(data) < 20 or len(data) > codec.MAX_PACKET:
        return data
    data = data[:2] + struct.pack("!H", len(data)) + data[4:]
    pos = 20
    while pos + 2 <= len(data):
        kind, size = data[pos], data[pos + 1]
        if size < 2:
            break
        if kind == 80 and size == 18:
            mac = message_authenticator(data, secret)
            return data[:pos + 2] + mac + data[pos + 18:]
        pos += size
    return data


@dataclass(frozen=True)
class Verdict:
    """What the oracle makes of a request: may it be answered, may it be accepted."""

    answerable: bool
    acceptable: bool


def judge(data: bytes, secret: bytes | None, require_ma: bool) -> Verdict:
    """The oracle's independent view of one datagram from a source with ``secret``."""
    attrs = attributes(data)
    if secret is None or attrs is None or data[0] not in (1, 12):
        return Verdict(False, False)
    packet = data[:struct.unpack("!H", data[2:4])[0]]
    mas = [v for k, v in attrs if k == 80]
    if mas:
        if len(mas) != 1 or not hmac.compare_digest(mas[0], message_authenticator(packet,
                                                                                    secret)):
            return Verdict(False, False)
    elif require_ma or data[0] == 12:
        return Verdict(False, False)
    if data[0] == 12:
        return Verdict(True, True)  # RFC 5997: a signed Status-Server is answered Accept
    names = [v for k, v in attrs if k == 1]
    hidden = [v for k, v in attrs if k == 2]
    if len(names) != 1 or len(hidden) != 1:
        return Verdict(True, False)
    password = decrypt_password(hidden[0], secret, data[4:20])
    try:
        name, word = names[0].decode("utf-8"), (password or b"").decode("utf-8")
    except UnicodeDecodeError:
        return Verdict(True, False)
    expected = USERS.get(name)
    ok = expected is not None and (word == expected or (
        word[:len(expected) + 1] == expected + "," and word[len(expected) + 1:].lower() == "push"))
    return Verdict(True, ok)


def check_reply(reply: bytes, request: bytes, secret: bytes) -> int:
    """Check one reply's signatures against its request; returns its code."""
    attrs = attributes(reply)
    if attrs is None or struct.unpack("!H", reply[2:4])[0] != len(reply):
        raise OracleFailure(f"reply does not parse: {reply.hex()}")
    if len(reply) > codec.MAX_PACKET:
        raise OracleFailure(f"reply of {len(reply)} octets, over RFC 2865's 4096")
    if reply[1] != request[1]:
        raise OracleFailure("reply identifier differs from the request's")
    if not attrs or attrs[0][0] != 80 or len(attrs[0][1]) != 16:
        raise OracleFailure("Message-Authenticator is not the first attribute of the reply")
    if sum(1 for k, _ in attrs if k == 80) != 1:
        raise OracleFailure("reply has more than one Message-Authenticator")
    if not hmac.compare_digest(attrs[0][1], message_authenticator(reply, secret, request[4:20])):
        raise OracleFailure("reply Message-Authenticator is wrong")
    expected = hashlib.md5(reply[:4] + request[4:20] + reply[20:] + secret).digest()
    if not hmac.compare_digest(reply[4:20], expected):
        raise OracleFailure("reply Response Authenticator is wrong")
    if reply[0] not in (rpacket.AccessAccept, rpacket.AccessReject, rpacket.AccessChallenge):
        raise OracleFailure(f"reply code {reply[0]}")
    return reply[0]


@dataclass
class Outcome:
    """What one fuzz input did: the replies' codes (for counting)."""

    codes: tuple[int, ...]
    verdict: Verdict
    # primary: radius inputs: requests forwarded upstream, upstream replies the
    # front end took (verified) and those it dropped (refused).
    forwarded: int = 0
    upstream_verified: int = 0
    upstream_refused: int = 0


def run_one(buf: bytes, proto: RadiusProtocol | None = None) -> Outcome:
    """Feed one fuzz input (control octet + datagram) twice; raise OracleFailure on a violation."""
    if not buf:
        return Outcome((), Verdict(False, False))
    control, data = buf[0], bytes(buf[1:])
    source = (control & 0x0F) % len(SOURCES)
    if source == UPSTREAM_SOURCE:
        # Imported here: upstream_target builds on this module's oracle helpers.
        from fuzz import upstream_target
        return upstream_target.run(control, data, proto or make_protocol())
    addr, secret, require_ma = SOURCES[source]
    if control & RESIGN and secret is not None:
        data = resign(data, secret)
    proto = proto or make_protocol()
    sent = proto.transport.sent
    proto.datagramReceived(data, addr)  # an exception escaping here is a finding too
    first = list(sent)
    proto.datagramReceived(data, addr)  # the NAS retransmits
    again = sent[len(first):]
    verdict = judge(data, secret, require_ma)
    if (first or again) and not verdict.answerable:
        raise OracleFailure(f"answered a datagram that must be dropped: {data.hex()}")
    if len(first) > 1 or len(again) > 1:
        raise OracleFailure("more than one reply to one datagram")
    if first and again and first[0][0] != again[0][0]:
        raise OracleFailure("the retransmit got a different reply")
    codes = []
    for reply, to in first + list(again):
        if to != addr:
            raise OracleFailure(f"reply sent to {to}, not to the source {addr}")
        code = check_reply(reply, data, secret)
        if code == rpacket.AccessAccept and not verdict.acceptable:
            raise OracleFailure(f"Access-Accept for an invalid request: {data.hex()}")
        if code == rpacket.AccessChallenge and not verdict.acceptable:
            # A Challenge starts a push: only a correct password may get one.
            raise OracleFailure(f"Access-Challenge for an invalid request: {data.hex()}")
        codes.append(code)
    return Outcome(tuple(codes), verdict)


def seeds() -> list[bytes]:
    """Valid inputs (control octet + pyrad-built packet) to start a fuzzer from."""
    out = []

    def build(code, secret, ma, ident, **attrs):
        pkt = rpacket.AuthPacket(code=code, id=ident, secret=secret, dict=DICTIONARY,
                                 authenticator=bytes(range(ident, ident + 16)))
        for name, value in attrs.items():
            if name == "User_Password":
                value = pkt.PwCrypt(value)
            pkt[name.replace("_", "-")] = value
        if ma:
            pkt.add_message_authenticator()
        return pkt.RequestPacket()

    for i, (user, pw) in enumerate([("alice", "alice-pw"), ("bob", "wrong"),
                                    ("alice", "alice-pw,push"), ("mallory", "x" * 40),
                                    ("alice", "alice-pw,123456")]):
        out.append(bytes([RESIGN]) + build(1, SECRET, True, i, User_Name=user,
                                           User_Password=pw,
                                           Calling_Station_Id="198.51.100.7",
                                           NAS_Identifier="gw1"))
        out.append(bytes([1]) + build(1, LEGACY_SECRET, False, i + 8, User_Name=user,
                                      User_Password=pw, NAS_IP_Address="192.0.2.9"))
    out.append(bytes([RESIGN]) + build(12, SECRET, True, 40))
    out.append(bytes([RESIGN | 3]) + build(1, SECRET, True, 41, User_Name="alice",
                                           User_Password="alice-pw", State=b"s" * 16,
                                           Proxy_State=b"\x01\x02"))
    out.append(bytes([2]) + build(1, SECRET, True, 42, User_Name="alice",
                                  User_Password="alice-pw"))
    out.append(bytes([RESIGN | 4]) + build(1, SECRET, True, 43, User_Name="bob",
                                           User_Password="bob-pw"))
    return out
