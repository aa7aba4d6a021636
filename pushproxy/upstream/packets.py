"""Pure packet work for the upstream leg: build the forwarded request, verify and relay replies.

    downstream Access-Request (verified with the client's secret)
      -> `build_request`: fresh Request Authenticator, User-Password hidden again
         for the upstream secret, MS-CHAP/EAP/CHAP attributes unchanged,
         Message-Authenticator first
    upstream reply
      -> `decode_reply`: Response Authenticator and Message-Authenticator
         checked, hidden values (MPPE keys) revealed with the upstream secret
      -> `relayed`: what the downstream client gets (filtered on an Accept);
         the front end hides the keys again with the client's secret and its
         own Request Authenticator.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

from pushproxy.radius.attributes import (PLAIN, USER_PASSWORD_HIDING, Attr, AttributeError_,
                                         Names, encode_attributes, parse_attributes, reveal)
from pushproxy.radius.codec import DropPacket, peek_header

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE = 1, 2, 3, 11
USER_NAME, USER_PASSWORD, CHAP_PASSWORD, STATE = 1, 2, 3, 24
PROXY_STATE, CHAP_CHALLENGE, EAP_MESSAGE, MESSAGE_AUTHENTICATOR = 33, 60, 79, 80
MICROSOFT = 311

# Attributes a login's proof lives in: relayed unchanged, and the bytes that
# tell one attempt from another when a NAS resends (engine joins).
PROOF_KEYS = ((0, CHAP_PASSWORD), (0, EAP_MESSAGE), (MICROSOFT, 1), (MICROSOFT, 3),
              (MICROSOFT, 4), (MICROSOFT, 5), (MICROSOFT, 6), (MICROSOFT, 25),
              (MICROSOFT, 27))
# Attributes the authentication protocol itself needs in the Accept: always
# relayed, whatever pass_attributes says (EAP-Success, MS-CHAP2-Success with
# the authenticator response, the MPPE keys and their policy).
PROTOCOL_KEYS = frozenset({(0, EAP_MESSAGE), (MICROSOFT, 2), (MICROSOFT, 7), (MICROSOFT, 8),
                           (MICROSOFT, 12), (MICROSOFT, 16), (MICROSOFT, 17),
                           (MICROSOFT, 26)})
# Hop-by-hop: never relayed (recomputed, or belonging to the other leg).
HOP_KEYS = frozenset({(0, MESSAGE_AUTHENTICATOR), (0, PROXY_STATE)})


class ReplyError(ValueError):
    """An upstream datagram that is not a valid reply to our request (dropped)."""


@dataclass(frozen=True)
class UpstreamRequest:
    """One forwarded request as sent; resends use the same bytes."""

    ident: int
    authenticator: bytes
    data: bytes


@dataclass(frozen=True)
class UpstreamReply:
    """A verified upstream reply; hidden values are in clear."""

    code: int
    attributes: tuple[Attr, ...]


def proof_of(raw_request: bytes) -> bytes | None:
    """The bytes of the request's non-PAP proof (MS-CHAP, CHAP, EAP), or None if it has none."""
    attrs = parse_attributes(raw_request[20:])
    parts = [struct.pack("!LB", a.vendor, a.type) + a.value for a in attrs
             if a.key in PROOF_KEYS]
    return b"".join(parts) if parts else None


def is_eap(raw_request: bytes) -> bool:
    """Whether the request carries EAP (the identity that counts is then the inner one)."""
    return any(a.key == (0, EAP_MESSAGE) for a in parse_attributes(raw_request[20:]))


def eap_failure(raw_request: bytes) -> Attr | None:
    """An EAP-Failure answering the request's EAP-Response (RFC 3748 4.2: same Identifier),
    for a Reject of our own after the upstream's Accept (push denied); None without EAP."""
    for attr in parse_attributes(raw_request[20:]):
        if attr.key == (0, EAP_MESSAGE) and len(attr.value) >= 2:
            return Attr(0, EAP_MESSAGE, bytes([4, attr.value[1], 0, 4]))
    return None


def build_request(raw_request: bytes, *, ident: int, secret: bytes, password: str | None,
                  authenticator: bytes | None = None) -> UpstreamRequest:
    """The downstream request (raw, already verified) re-signed for one upstream server.

    ``password`` is the User-Password to send in clear form (PAP: the password
    without a passcode suffix), or None to send none.
    """
    original_auth = raw_request[4:20]
    authenticator = authenticator or secrets.token_bytes(16)
    attrs = []
    has_chap_challenge = False
    for attr in parse_attributes(raw_request[20:]):
        if attr.key in HOP_KEYS:
            continue
        if attr.key == (0, USER_PASSWORD):
            if password is not None:
                attrs.append(Attr(0, USER_PASSWORD, password.encode("utf-8"),
                                  USER_PASSWORD_HIDING))
            continue
        has_chap_challenge |= attr.key == (0, CHAP_CHALLENGE)
        attrs.append(attr)
    if any(a.key == (0, CHAP_PASSWORD) for a in attrs) and not has_chap_challenge:
        # CHAP without CHAP-Challenge uses the Request Authenticator as the
        # challenge (RFC 2865 5.3); ours is new, so send the old one explicitly.
        attrs.append(Attr(0, CHAP_CHALLENGE, original_auth))
    body = encode_attributes([Attr(0, MESSAGE_AUTHENTICATOR, b"\x00" * 16), *attrs],
                             secret, authenticator)
    if 20 + len(body) > 4096:
        raise AttributeError_("the forwarded request would exceed 4096 octets")
    header = struct.pack("!BBH", ACCESS_REQUEST, ident, 20 + len(body))
    mac = hmac.new(secret, header + authenticator + body, hashlib.md5).digest()
    # Message-Authenticator is the first attribute: its value sits at octets 2..18 of the body.
    body = body[:2] + mac + body[18:]
    return UpstreamRequest(ident, authenticator, header + authenticator + body)


def decode_reply(data: bytes, request: UpstreamRequest, secret: bytes, names: Names, *,
                 require_message_authenticator: bool) -> UpstreamReply:
    """Verify ``data`` as the reply to ``request``; ReplyError if it is not one."""
    try:
        # the size rule of pushproxy's own ports: octets past Length are padding,
        # a datagram over 4,096 octets is no RADIUS packet
        peek_header(data)
    except DropPacket as exc:
        raise ReplyError(exc.detail) from None
    code, ident, length = struct.unpack("!BBH", data[:4])
    data = data[:length]
    if code not in (ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE):
        raise ReplyError(f"unexpected code {code}")
    if ident != request.ident:
        raise ReplyError("identifier does not match")
    expected = hashlib.md5(data[:4] + request.authenticator + data[20:] + secret).digest()
    if not hmac.compare_digest(expected, data[4:20]):
        raise ReplyError("bad Response Authenticator (wrong secret?)")
    try:
        attrs = parse_attributes(data[20:])
    except AttributeError_ as exc:
        raise ReplyError(str(exc)) from None
    macs = [a for a in attrs if a.key == (0, MESSAGE_AUTHENTICATOR)]
    if macs:
        if len(macs) != 1 or len(macs[0].value) != 16:
            raise ReplyError("Message-Authenticator is not one 16-octet attribute")
        if not hmac.compare_digest(macs[0].value, _reply_mac(data, request.authenticator, secret)):
            raise ReplyError("bad Message-Authenticator")
    elif require_message_authenticator:
        raise ReplyError("no Message-Authenticator (Blast-RADIUS protection is on)")
    out = []
    for attr in attrs:
        if attr.key in HOP_KEYS:
            continue
        spec = names.by_key(attr.key)
        if spec is not None and spec.hiding != PLAIN:
            try:
                attr = reveal(attr, spec.hiding, secret, request.authenticator, spec.tagged)
            except AttributeError_ as exc:
                raise ReplyError(f"{spec.name}: {exc}") from None
        out.append(attr)
    return UpstreamReply(code, tuple(out))


def _reply_mac(data: bytes, request_authenticator: bytes, secret: bytes) -> bytes:
    """RFC 2869 5.14 for a reply: HMAC-MD5 over the packet with the Request Authenticator
    in place of the Response Authenticator and the Message-Authenticator zeroed."""
    body, pos, zeroed = data[20:], 0, b""
    while pos < len(body):
        atype, alen = body[pos], body[pos + 1]
        chunk = body[pos:pos + alen]
        if atype == MESSAGE_AUTHENTICATOR:
            chunk = chunk[:2] + b"\x00" * 16
        zeroed += chunk
        pos += alen
    return hmac.new(secret, data[:4] + request_authenticator + zeroed, hashlib.md5).digest()


def relayed(reply: UpstreamReply, pass_attributes: frozenset | None) -> tuple[Attr, ...]:
    """What the downstream client gets from ``reply``.

    An Accept's authorization attributes go through ``pass_attributes`` (None:
    all), the protocol's own attributes always. A Reject or Challenge is
    relayed whole (Reply-Message, MS-CHAP-Error, State, EAP-Message...): it
    grants nothing.
    """
    if reply.code != ACCESS_ACCEPT or pass_attributes is None:
        return reply.attributes
    return tuple(a for a in reply.attributes
                 if a.key in PROTOCOL_KEYS or a.key in pass_attributes)


def reply_user_name(reply: UpstreamReply) -> str | None:
    """The User-Name in an upstream Accept (EAP: the inner identity), if any and valid."""
    for attr in reply.attributes:
        if attr.key == (0, USER_NAME):
            try:
                return attr.value.decode("utf-8") or None
            except UnicodeDecodeError:
                return None
    return None


def state_of(reply: UpstreamReply) -> bytes | None:
    """The State of an upstream Challenge (its follow-up must go back to that server)."""
    for attr in reply.attributes:
        if attr.key == (0, STATE):
            return attr.value
    return None
