"""Pure RADIUS codec: bytes and a client's secret in, typed values or a drop out.

Nothing here touches the network or the clock. `decode_request` either returns
an `AccessRequest` or raises `DropPacket` with the reason the datagram must be
dropped silently (RFC 2865 says to drop what cannot be verified rather than
answer it). `encode_reply` builds a reply with Message-Authenticator first and
the request's Proxy-State copied, as the Blast-RADIUS advisories ask.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources

from pyrad import packet as rpacket
from pyrad.dictionary import Dictionary

from pushproxy.radius.attributes import PLAIN, Attr, encode_attribute, wire_value

ACCESS_REQUEST = rpacket.AccessRequest
ACCESS_ACCEPT = rpacket.AccessAccept
ACCESS_REJECT = rpacket.AccessReject
ACCESS_CHALLENGE = rpacket.AccessChallenge
STATUS_SERVER = rpacket.StatusServer

# RFC 2865 section 3: a packet is at most 4096 octets; pyrad would accept 8192.
MAX_PACKET = 4096
MAX_USERNAME = 253


class DropReason(enum.Enum):
    """Why a datagram was dropped without an answer (also the counter name)."""

    UNKNOWN_CLIENT = "unknown_client"
    MALFORMED = "malformed"
    UNSUPPORTED_CODE = "unsupported_code"
    MISSING_MESSAGE_AUTHENTICATOR = "missing_message_authenticator"
    BAD_MESSAGE_AUTHENTICATOR = "bad_message_authenticator"
    BAD_REQUEST_AUTHENTICATOR = "bad_request_authenticator"  # accounting (wrong secret)
    RETRANSMIT_IN_FLIGHT = "retransmit_in_flight"
    OVERLOADED = "overloaded"
    SHUTTING_DOWN = "shutting_down"


class DropPacket(Exception):
    """The datagram must be dropped; ``reason`` says why, ``detail`` is for the log."""

    def __init__(self, reason: DropReason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


def load_dictionary() -> Dictionary:
    """The attribute dictionary shipped with pushproxy."""
    path = resources.files("pushproxy.radius").joinpath("dictionary")
    with resources.as_file(path) as real:
        return Dictionary(str(real))


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A verified Access-Request (or Status-Server) from a known client.

    Holds what the decision and the reply need, not the decoded packet: a
    pending login keeps its request until the phone answers, and pyrad's
    packet (an ordered dict of attribute lists) cost about 2 KB of each
    (issue 16). The reply is built from the id, the authenticator, the
    secret and the Proxy-State values (`encode_reply`).
    """

    code: int
    id: int
    authenticator: bytes
    username: str | None
    password: str | None  # None when absent or not decodable
    password_present: bool
    calling_station: str | None
    called_station: str | None
    nas_ip: str | None
    nas_identifier: str | None
    has_message_authenticator: bool
    state: bytes | None  # State (24): present in the answer to an Access-Challenge
    raw: bytes  # the datagram as received (relayed upstream, EAP's failure)
    secret: bytes  # the client's shared secret (signs the reply, hides attributes)
    proxy_state: tuple[bytes, ...]  # Proxy-State (33) values in order, copied into the reply
    dictionary: Dictionary  # names the attributes of the reply
    # NAS-Port (5) and NAS-Port-Id (87) as one text, "5" / "id=eth0" / "5 id=eth0":
    # which session of the NAS this is (logins of different ports never join).
    nas_port: str | None = None
    # RADIUS/1.1 (RFC 9765, negotiated by ALPN over TLS): the authenticator field
    # holds the Token, nothing is hidden with MD5 and the reply is not signed.
    v11: bool = False

    @property
    def nas(self) -> str | None:
        """The NAS as the admin knows it: its identifier, else its address."""
        return self.nas_identifier or self.nas_ip


def peek_header(data: bytes) -> tuple[int, int, bytes]:
    """Code, identifier and authenticator of a datagram, or DropPacket (MALFORMED).

    The one size rule of every RADIUS port, authentication and accounting alike
    (RFC 2865 section 3, RFC 2866 section 3), checked first on each, before the
    retransmit table:

    - a packet (its Length field) is 20 to 4,096 octets, and a datagram shorter
      than its Length is dropped;
    - octets past Length are padding, ignored (`decode_request` and
      `decode_accounting` read the Length octets only);
    - but a datagram longer than 4,096 octets is dropped, whatever its Length:
      one RADIUS packet per datagram, and no packet is longer. So a copy of an
      answered request padded past that is not answered from the cache, and
      every datagram served was read whole (the UDP read takes up to 8,192
      octets, Twisted's ``maxPacketSize``; the kernel cuts a longer datagram to
      that, still over 4,096).

    RadSec frames its stream by Length (pushproxy.radsec.framing): no padding
    reaches here from it.
    """
    code, ident, _ = _header(data)
    return code, ident, data[4:20]


def decode_request(data: bytes, secret: bytes, dictionary: Dictionary, *,
                   require_message_authenticator: bool, v11: bool = False,
                   limit_proxy_state: bool = False) -> AccessRequest:
    """Decode and verify a request from a client that shares ``secret``.

    ``v11``: a RADIUS/1.1 packet (RFC 9765) from inside TLS: no shared secret,
    User-Password in clear, Message-Authenticator neither needed nor checked.
    ``limit_proxy_state``: without a Message-Authenticator, a request carrying
    Proxy-State is dropped (Blast-RADIUS needs Proxy-State in the request).
    """
    code, _, length = _header(data)
    if code not in (ACCESS_REQUEST, STATUS_SERVER):
        raise DropPacket(DropReason.UNSUPPORTED_CODE, f"code {code}")
    data = data[:length]  # RFC 2865 3: octets past the Length field are padding
    attrs, ma_at = _attributes(data)
    if v11:
        # RFC 9765 5.2: a Message-Authenticator received over RADIUS/1.1 carries no
        # meaning; it is left out of the reply (see encode_reply) and not checked.
        return _request(data, attrs, b"", dictionary, _clear_password(attrs), bool(ma_at),
                        v11=True)
    if ma_at:
        values = attrs[80]
        if len(values) != 1 or len(values[0]) != 16:
            raise DropPacket(DropReason.MALFORMED, "Message-Authenticator is not one "
                                                   "16-octet attribute")
        # RFC 3579 3.2: HMAC-MD5 over the packet with the attribute's value zeroed.
        signed = data[:ma_at] + _ZERO16 + data[ma_at + 16:]
        if not hmac.compare_digest(values[0], hmac_md5(secret, signed)):
            raise DropPacket(DropReason.BAD_MESSAGE_AUTHENTICATOR)
    elif require_message_authenticator or code == STATUS_SERVER:
        # RFC 5997 requires it on Status-Server; the client policy on the rest.
        raise DropPacket(DropReason.MISSING_MESSAGE_AUTHENTICATOR)
    elif limit_proxy_state and 33 in attrs:
        raise DropPacket(DropReason.MISSING_MESSAGE_AUTHENTICATOR,
                         "Proxy-State without Message-Authenticator (limit_proxy_state)")
    return _request(data, attrs, secret, dictionary,
                    _password(attrs, secret, data[4:20]), bool(ma_at), v11=False)


_ZERO16 = bytes(16)

# secret -> MD5 states after its inner and outer HMAC pad (RFC 2104), a few
# clients' worth: OpenSSL's one-shot HMAC sets up a MAC context from scratch for
# every call, which cost 25 times the hashing of a whole request (issue 16).
_PADS: dict[bytes, tuple] = {}
_PADS_MAX = 256


def hmac_md5(secret: bytes, data: bytes) -> bytes:
    """HMAC-MD5 of ``data`` with ``secret`` (as hmac.digest(secret, data, "md5"))."""
    pads = _PADS.get(secret)
    if pads is None:
        key = hashlib.md5(secret).digest() if len(secret) > 64 else secret
        key = key.ljust(64, b"\x00")
        pads = (hashlib.md5(bytes(b ^ 0x36 for b in key)),
                hashlib.md5(bytes(b ^ 0x5C for b in key)))
        if len(_PADS) >= _PADS_MAX:
            _PADS.clear()
        _PADS[secret] = pads
    inner = pads[0].copy()
    inner.update(data)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.digest()


def _header(data: bytes) -> tuple[int, int, int]:
    """Code, identifier and Length field of a datagram, or DropPacket (the size rule
    of `peek_header`)."""
    if len(data) > MAX_PACKET:
        raise DropPacket(DropReason.MALFORMED, f"{len(data)} octets is more than {MAX_PACKET}")
    if len(data) < 20:
        raise DropPacket(DropReason.MALFORMED, f"{len(data)} octets is shorter than a header")
    length = (data[2] << 8) | data[3]
    if length < 20 or length > MAX_PACKET or length > len(data):
        raise DropPacket(DropReason.MALFORMED, f"length field {length} does not fit "
                                               f"{len(data)} octets received")
    return data[0], data[1], length


def _attributes(data: bytes) -> tuple[dict[int, list[bytes]], int]:
    """The attributes of a packet cut to its Length field, by type, values in the
    order received; and where the first Message-Authenticator's value starts (0:
    none). Every attribute must fit inside the Length field (pyrad cut an overlong
    one short). Vendor-Specific (26) stays whole: nothing here reads inside it."""
    end, pos = len(data), 20
    attrs: dict[int, list[bytes]] = {}
    ma_at = 0
    while pos < end:
        size = data[pos + 1] if end - pos >= 2 else 0
        if size < 2 or pos + size > end:
            raise DropPacket(DropReason.MALFORMED, f"attribute at octet {pos} overruns "
                                                   f"the packet")
        kind = data[pos]
        values = attrs.get(kind)
        if values is None:
            attrs[kind] = [data[pos + 2:pos + size]]
        else:
            values.append(data[pos + 2:pos + size])
        if kind == 80 and not ma_at:
            ma_at = pos + 2
        pos += size
    return attrs, ma_at


def _request(data: bytes, attrs: dict[int, list[bytes]], secret: bytes, dictionary,
             password: str | None, has_ma: bool, *, v11: bool) -> AccessRequest:
    """The AccessRequest of a decoded and verified packet (either RADIUS version)."""
    return AccessRequest(
        code=data[0], id=data[1], authenticator=data[4:20],
        username=_text(attrs, 1, "User-Name"),
        password=password,
        password_present=2 in attrs,
        calling_station=_text(attrs, 31, "Calling-Station-Id"),
        called_station=_text(attrs, 30, "Called-Station-Id"),
        nas_ip=_nas_ip(attrs),
        nas_identifier=_text(attrs, 32, "NAS-Identifier"),
        has_message_authenticator=has_ma,
        state=_single_octets(attrs, 24, "State"),
        raw=data, secret=secret,
        proxy_state=tuple(attrs.get(33, ())), dictionary=dictionary,
        nas_port=_nas_port(attrs),
        v11=v11,
    )


def _clear_password(attrs: dict[int, list[bytes]]) -> str | None:
    """RFC 9765 5.1.1: User-Password as the password itself (TLS protects it)."""
    values = attrs.get(2, ())
    if len(values) != 1:
        return None
    try:
        # Trailing zeros: a sender that still pads to 16 octets.
        return values[0].rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        return None


def _text(attrs: dict[int, list[bytes]], code: int, name: str) -> str | None:
    values = attrs.get(code)
    if not values:
        return None
    if len(values) > 1:
        raise DropPacket(DropReason.MALFORMED, f"{name} appears {len(values)} times")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise DropPacket(DropReason.MALFORMED, f"{name} is not UTF-8") from None


def _single_octets(attrs: dict[int, list[bytes]], code: int, name: str) -> bytes | None:
    values = attrs.get(code)
    if not values:
        return None
    if len(values) > 1:
        raise DropPacket(DropReason.MALFORMED, f"{name} appears {len(values)} times")
    return values[0]


def _password(attrs: dict[int, list[bytes]], secret: bytes,
              authenticator: bytes) -> str | None:
    values = attrs.get(2, ())
    if len(values) != 1:
        return None
    raw = values[0]
    # RFC 2865 5.2: 16 to 128 octets, a multiple of 16.
    if not 16 <= len(raw) <= 128 or len(raw) % 16:
        return None
    # Not pyrad's PwDecrypt: it drops invalid UTF-8 silently, so "alice-pw\x98"
    # would become "alice-pw" (found by fuzz/radius.py).
    plain, last = [], authenticator
    for i in range(0, len(raw), 16):
        block = raw[i:i + 16]
        pad = hashlib.md5(secret + last).digest()
        plain.append((int.from_bytes(block, "big") ^ int.from_bytes(pad, "big"))
                     .to_bytes(16, "big"))
        last = block
    try:
        return b"".join(plain).rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError:
        # A wrong shared secret looks exactly like this when no
        # Message-Authenticator is present: garbage, never a usable password.
        return None


def _nas_port(attrs: dict[int, list[bytes]]) -> str | None:
    """NAS-Port and NAS-Port-Id as one text (None when neither is sent)."""
    parts = []
    port = _single_octets(attrs, 5, "NAS-Port")
    if port is not None:
        # Not 4 octets: kept as it came, still telling this session from others.
        parts.append(str(int.from_bytes(port, "big")) if len(port) == 4 else f"raw={port.hex()}")
    port_id = _text(attrs, 87, "NAS-Port-Id")
    if port_id is not None:
        parts.append(f"id={port_id}")
    return " ".join(parts) or None


def _nas_ip(attrs: dict[int, list[bytes]]) -> str | None:
    v4 = attrs.get(4)
    if v4 and len(v4[0]) == 4:
        return str(ipaddress.IPv4Address(v4[0]))
    v6 = attrs.get(95)
    if v6 and len(v6[0]) == 16:
        return str(ipaddress.IPv6Address(v6[0]))
    return None


def encode_reply(request: AccessRequest, code: int, *,
                 reply_message: str | None = None, state: bytes | None = None,
                 attributes: tuple[tuple[str, object], ...] = (),
                 raw: tuple[Attr, ...] = ()) -> bytes:
    """A signed reply: Message-Authenticator first, Proxy-State copied in order.

    ``raw`` attributes (relayed from an upstream, or mapped from groups) are
    added as they are; hidden ones (MPPE keys) are hidden here with this
    client's secret and this request's authenticator, with a fresh salt.

    Within RFC 2865's 4096 octets: when the copied Proxy-State leaves no room,
    the Reply-Message (only text for the user) is left out; a reply still too
    long is never sent (DropPacket).
    """
    encode = _encode_reply_v11 if request.v11 else _encode_reply
    data = encode(request, code, reply_message, state, attributes, raw)
    if len(data) > MAX_PACKET and reply_message:
        data = encode(request, code, None, state, attributes, raw)
    if len(data) > MAX_PACKET:
        raise DropPacket(DropReason.MALFORMED, f"the reply would be {len(data)} octets")
    return data


def _reply_packet(request: AccessRequest, code: int) -> rpacket.AuthPacket:
    """An empty reply to ``request``, as pyrad's CreateReply makes it: the
    request's id, authenticator, secret, and its Proxy-State copied in order
    (RFC 2865 5.33)."""
    reply = rpacket.AuthPacket(code, request.id, request.secret, request.authenticator,
                               dict=request.dictionary)
    reply._request_code = request.code
    if request.proxy_state:
        OrderedDict.__setitem__(reply, 33, list(request.proxy_state))
    return reply


def _encode_reply(request: AccessRequest, code: int, reply_message: str | None,
                  state: bytes | None, attributes: tuple[tuple[str, object], ...],
                  raw: tuple[Attr, ...]) -> bytes:
    if attributes or raw or (state is not None and len(state) > 253):
        return _encode_reply_packet(request, code, reply_message, state, attributes, raw)
    # Every login's reply without mapped or relayed attributes: the bytes pyrad
    # makes (`_encode_reply_packet`; tests/test_radius_codec.py compares them), in
    # its order: Message-Authenticator, Proxy-State, Reply-Message, State. Written
    # directly: building a pyrad packet was a tenth of the allow path's CPU.
    parts = [_MA_ZERO]
    for value in request.proxy_state:
        parts.append(bytes((33, len(value) + 2)) + value)
    if reply_message:
        text = reply_message.encode("utf-8")[:253]
        parts.append(bytes((18, len(text) + 2)) + text)
    if state is not None:
        parts.append(bytes((24, len(state) + 2)) + state)
    body = b"".join(parts)
    head = bytes((code, request.id)) + (20 + len(body)).to_bytes(2, "big")
    secret, authenticator = request.secret, request.authenticator
    # RFC 3579 3.2: the reply's HMAC-MD5 over the Request Authenticator and the
    # attributes with its own value zero; then RFC 2865's Response Authenticator.
    body = b"\x50\x12" + hmac_md5(secret, head + authenticator + body) + body[18:]
    return head + hashlib.md5(head + authenticator + body + secret).digest() + body


_MA_ZERO = b"\x50\x12" + _ZERO16


def _encode_reply_packet(request: AccessRequest, code: int, reply_message: str | None,
                         state: bytes | None, attributes: tuple[tuple[str, object], ...],
                         raw: tuple[Attr, ...]) -> bytes:
    """`_encode_reply` through a pyrad packet: named and raw attributes (grouped by
    type, as pyrad orders them)."""
    reply = _reply_packet(request, code)
    reply.message_authenticator = True
    if reply_message:
        # Reply-Message is at most 253 octets per attribute.
        reply.AddAttribute("Reply-Message", reply_message.encode("utf-8")[:253])
    if state is not None:
        reply.AddAttribute("State", state)
    for name, value in attributes:
        reply.AddAttribute(name, value)
    for attr in raw:
        value = wire_value(attr, request.secret, request.authenticator)
        key = (attr.vendor, attr.type) if attr.vendor else attr.type
        # OrderedDict's own method: dict.setdefault would bypass its order list.
        OrderedDict.setdefault(reply, key, []).append(value)
    reply.add_message_authenticator()
    return reply.ReplyPacket()


def _encode_reply_v11(request: AccessRequest, code: int, reply_message: str | None,
                      state: bytes | None, attributes: tuple[tuple[str, object], ...],
                      raw: tuple[Attr, ...]) -> bytes:
    """RFC 9765 section 5: Reserved-1 zero, the request's Token and Reserved-2
    echoed, no Message-Authenticator, hidden attributes sent in clear."""
    reply = _reply_packet(request, code)
    if reply_message:
        reply.AddAttribute("Reply-Message", reply_message.encode("utf-8")[:253])
    if state is not None:
        reply.AddAttribute("State", state)
    for name, value in attributes:
        reply.AddAttribute(name, value)
    body = reply._PktEncodeAttributes()
    for attr in raw:
        plain = attr.value if attr.tag is None else bytes([attr.tag]) + attr.value
        body += encode_attribute(dataclasses.replace(attr, hiding=PLAIN, tag=None,
                                                     value=plain))
    header = struct.pack("!BBH", code, 0, 20 + len(body))
    return header + request.authenticator + body
