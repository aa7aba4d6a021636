"""The RADIUS fuzz target's ``primary: radius`` client: both legs fuzzed, the upstream in-process.

An input for this source (control octet 5 of `fuzz.radius_target.SOURCES`) is::

    control | uctl | length (2 octets) | downstream datagram | upstream reply

The datagram comes from the ``vpn-up`` client (re-signed if the control octet
asks). What the `UpstreamClient` forwards lands on a recording transport; the
harness plays the upstream servers with the rest of the input, as ``uctl``
says: ``SIGN`` (fix Length and Identifier, sign with the upstream secret and
the forwarded request's authenticator; else raw bytes, only ever refused),
``HIDE`` (hide MPPE keys, Tunnel-Password, MS-CHAP-MPPE-Keys, User-Password
first: the fuzzed bytes are the clear text), ``TIMEOUTS`` (two bits: Clock
timeouts before the reply: A's resend, failover to B, all silent), ``SPOOF``
(from the other server's address), ``DUPLICATE`` (sent twice), ``DENY`` (the
push is denied), ``FOLLOW`` (a relayed Challenge's State gets the NAS's
follow-up, answered by the same bytes signed for its forwarded request).
Then the clock runs until every exchange is over and the NAS retransmits.

`run` raises `OracleFailure` when:

- a forwarded request does not verify with the upstream secret (Message-
  Authenticator first), has a User-Password that does not decrypt to the
  NAS's (less a ``,push``/passcode suffix), or changes the NAS's other
  attributes (Proxy-State stays on the NAS's leg);
- anything is forwarded for a datagram that must be dropped, or sends are not
  A, A (resend), B, or a follow-up is not pinned to the server that challenged;
- the front end takes an upstream reply the oracle does not verify;
- an Accept answers anything but a verified upstream Access-Accept with an
  approved push (to the downstream User-Name, for EAP to the User-Name of the
  upstream's Accept, never to a name refused as a User-Name), or a Challenge
  anything but a verified upstream Challenge;
- an exception is caught inside (``internal_errors``: no reply);
- a downstream reply is not signed for the NAS (`radius_target.check_reply`),
  differs on a retransmit, lacks the NAS's exact Proxy-State, lets an Accept
  carry attributes outside ``pass_attributes`` and the protocol's own, or has
  a hidden value (MPPE key...) that does not decrypt with the NAS's secret and
  request to what the upstream's decrypted to.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import unicodedata

from fuzz import radius_target as rt
from fuzz.radius_target import OracleFailure, Outcome, Verdict

SIGN, HIDE, TIMEOUTS, SPOOF, DUPLICATE, DENY, FOLLOW = 0x01, 0x02, 0x0C, 0x10, 0x20, 0x40, 0x80
SERVERS = tuple((s.host, s.port) for s in rt.UPSTREAM.servers)
ATTEMPTS = tuple(s.retries + 1 for s in rt.UPSTREAM.servers)
REQUIRE_MA = tuple(s.require_message_authenticator for s in rt.UPSTREAM.servers)
TIMEOUT = rt.UPSTREAM.servers[0].timeout
MICROSOFT = 311

# (vendor, type) -> hiding: 1 is RFC 2865 5.2 (no NUL stripping for keys), 2 the
# RFC 2548 salt scheme, 3 the salt scheme with an RFC 2868 tag octet first.
HIDDEN = {(0, 2): 1, (MICROSOFT, 12): 1, (MICROSOFT, 16): 2, (MICROSOFT, 17): 2, (0, 69): 3}
# What an Accept may carry at this client: the protocol's own attributes
# (EAP-Message, MS-CHAP2-Success, MPPE keys and policy), pass_attributes, and
# the front end's Message-Authenticator, Proxy-State and Reply-Message.
ACCEPT_KEYS = frozenset({(0, 79), (MICROSOFT, 2), (MICROSOFT, 7), (MICROSOFT, 8),
                         (MICROSOFT, 12), (MICROSOFT, 16), (MICROSOFT, 17), (MICROSOFT, 26),
                         (0, 80), (0, 33), (0, 18)}) | rt.UPSTREAM.pass_attributes


# -- the oracle's own attribute work (independent of pushproxy.radius.attributes)


def split(attrs: list[tuple[int, bytes]]) -> list[tuple[int, int, bytes]]:
    """(vendor, type, value): Vendor-Specific split into its sub-attributes when they parse."""
    out = []
    for kind, value in attrs:
        subs = _subs(value) if kind == 26 else None
        if subs is None:
            out.append((0, kind, value))
        else:
            out.extend(subs)
    return out


def _subs(payload: bytes) -> list[tuple[int, int, bytes]] | None:
    if len(payload) < 6:
        return None
    vendor, body, out = struct.unpack("!L", payload[:4])[0], payload[4:], []
    if vendor == 0:
        return None  # no vendor: not an attribute of the standard space in disguise
    while body:
        if len(body) < 2 or body[1] < 2 or body[1] > len(body):
            return None
        out.append((vendor, body[0], body[2:body[1]]))
        body = body[body[1]:]
    return out


def _md5_stream(data: bytes, secret: bytes, first: bytes, hiding: bool) -> bytes:
    out, last = b"", first
    for i in range(0, len(data), 16):
        block = data[i:i + 16]
        done = bytes(a ^ b for a, b in zip(block, hashlib.md5(secret + last).digest()))
        out += done
        last = done if hiding else block
    return out


def unhide(key: tuple[int, int], value: bytes, secret: bytes, auth: bytes) -> bytes | None:
    """The clear value of a hidden attribute (tag octet kept), or None if it cannot be one."""
    scheme = HIDDEN[key]
    if scheme == 1:
        if not value or len(value) % 16 or len(value) > 128:
            return None
        return _md5_stream(value, secret, auth, False)
    tag = b""
    if scheme == 3:
        if not value:
            return None
        tag, value = value[:1], value[1:]
    if len(value) < 18 or (len(value) - 2) % 16:
        return None
    plain = _md5_stream(value[2:], secret, auth + value[:2], False)
    if plain[0] > len(plain) - 1:
        return None
    return tag + plain[1:1 + plain[0]]


def hide(key: tuple[int, int], clear: bytes, secret: bytes, auth: bytes, salt: bytes) -> bytes:
    """What an upstream server puts on the wire for ``clear`` (the harness's HIDE)."""
    scheme = HIDDEN[key]
    if scheme == 1:
        return _md5_stream(clear.ljust(max(16, -(-len(clear) // 16) * 16), b"\x00"), secret,
                           auth, True)
    tag = b""
    if scheme == 3:
        tag, clear = clear[:1] or b"\x00", clear[1:]
    plain = bytes([len(clear)]) + clear
    plain += bytes(-len(plain) % 16)
    return tag + salt + _md5_stream(plain, secret, auth + salt, True)


def hidden_values(attrs, secret: bytes, auth: bytes) -> dict | None:
    """Hidden key -> clear values in order; None if one does not decrypt."""
    out: dict = {}
    for vendor, kind, value in split(attrs):
        if (vendor, kind) in HIDDEN:
            clear = unhide((vendor, kind), value, secret, auth)
            if clear is None:
                return None
            out.setdefault((vendor, kind), []).append(clear)
    return out


def clean_name(name: str) -> bool:
    """A name devices, locks and limits can be keyed on: what the directory would not fold
    into another one (no control characters, outer or double spaces, compatibility forms)."""
    return (0 < len(name) <= 253 and all(ord(ch) >= 0x20 and ord(ch) != 0x7F for ch in name)
            and name == name.strip() and "  " not in name
            and unicodedata.normalize("NFKC", name) == name)


def verify_reply(data: bytes, request: bytes, server: int) -> list | None:
    """The attributes of ``data`` if it is a valid reply to the forwarded ``request``, else None."""
    if len(data) < 20 or len(data) > 4096:  # padding, but no datagram over 4,096 octets
        return None
    code, ident, length = struct.unpack("!BBH", data[:4])
    if length < 20 or length > len(data):
        return None
    data = data[:length]
    if code not in (2, 3, 11) or ident != request[1]:
        return None
    expected = hashlib.md5(data[:4] + request[4:20] + data[20:] + rt.UP_SECRET).digest()
    attrs = rt.attributes(data)
    if attrs is None or not hmac.compare_digest(expected, data[4:20]):
        return None
    macs = [v for k, v in attrs if k == 80]
    if macs:
        if len(macs) != 1 or len(macs[0]) != 16 or not hmac.compare_digest(
                macs[0], rt.message_authenticator(data, rt.UP_SECRET, request[4:20])):
            return None
    elif REQUIRE_MA[server]:
        return None
    if hidden_values(attrs, rt.UP_SECRET, request[4:20]) is None:
        return None
    return attrs


# -- the harness: the upstream server's side


def build_reply(raw: bytes, request: bytes, uctl: int) -> bytes:
    """The fuzzed reply, hidden and signed for ``request`` as ``uctl`` asks."""
    data = bytearray(raw)
    if not uctl & SIGN or len(data) < 20 or len(data) > 4096:
        return bytes(data)
    auth = request[4:20]
    attrs = rt.attributes(bytes(data[:2]) + struct.pack("!H", len(data)) + bytes(data[4:]))
    if uctl & HIDE and attrs is not None:
        body = b""
        for i, (kind, value) in enumerate(attrs):
            salt = bytes([0x80 | (i & 0x7F), i & 0xFF])
            subs = _subs(value) if kind == 26 else None
            if kind in (2, 69) and len(value) <= 200:
                value = hide((0, kind), value, rt.UP_SECRET, auth, salt)
            elif subs and len(subs) == 1 and subs[0][:2] in HIDDEN and len(subs[0][2]) <= 200:
                vendor, sub, clear = subs[0]
                hidden = hide((vendor, sub), clear, rt.UP_SECRET, auth, salt)
                value = struct.pack("!LBB", vendor, sub, len(hidden) + 2) + hidden
            if len(value) > 253:
                return bytes(data)  # cannot be hidden in place: sent as it is
            body += bytes([kind, len(value) + 2]) + value
        data = data[:20] + body
    data[1] = request[1]
    data[2:4] = struct.pack("!H", len(data))
    signed = _sign_mac(bytes(data), auth)
    return signed[:4] + hashlib.md5(signed[:4] + auth + signed[20:] + rt.UP_SECRET).digest() \
        + signed[20:]


def _sign_mac(data: bytes, auth: bytes) -> bytes:
    """``data`` with its first 16-octet Message-Authenticator signed as a reply to ``auth``."""
    pos = 20
    while pos + 2 <= len(data):
        kind, size = data[pos], data[pos + 1]
        if size < 2:
            break
        if kind == 80 and size == 18:
            mac = rt.message_authenticator(data, rt.UP_SECRET, auth)
            return data[:pos + 2] + mac + data[pos + 18:]
        pos += size
    return data


def follow_up(datagram: bytes, state: bytes) -> bytes | None:
    """The NAS's answer to a relayed Challenge: same attributes, the State, new id and auth."""
    attrs = rt.attributes(datagram)
    if attrs is None:
        return None
    auth = hashlib.md5(datagram[4:20]).digest()
    body = b""
    for kind, value in attrs:
        if kind in (80, 24):
            continue
        if kind == 2:
            clear = rt.decrypt_password(value, rt.UP_CLIENT_SECRET, datagram[4:20])
            if clear is None:
                continue
            value = hide((0, 2), clear, rt.UP_CLIENT_SECRET, auth, b"")
        body += bytes([kind, len(value) + 2]) + value
    body = bytes([80, 18]) + bytes(16) + body + bytes([24, len(state) + 2]) + state
    if 20 + len(body) > 4096:
        return None
    data = bytes([1, (datagram[1] + 1) % 256]) + struct.pack("!H", 20 + len(body)) + auth + body
    return rt.resign(data, rt.UP_CLIENT_SECRET)


# -- one round: a downstream request, its forwarding, the upstream's reply


class _Round:
    """What one downstream request did, with the oracle's view of every leg."""

    def __init__(self):
        self.forwarded: list[tuple[bytes, tuple]] = []
        self.replies: list[bytes] = []
        self.verified = 0
        self.refused = 0
        self.relayed_state: bytes | None = None
        self.server: int | None = None  # who answered a relayed Challenge


def check_forwarded(fwd: bytes, down: bytes) -> None:
    """A forwarded request: signed for the upstream, the same login as the NAS sent."""
    attrs = rt.attributes(fwd)
    if attrs is None or struct.unpack("!H", fwd[2:4])[0] != len(fwd) or fwd[0] != 1:
        raise OracleFailure(f"forwarded request does not parse: {fwd.hex()}")
    if not attrs or attrs[0][0] != 80 or len(attrs[0][1]) != 16 or \
            sum(1 for k, _ in attrs if k == 80) != 1:
        raise OracleFailure("forwarded request: Message-Authenticator is not first and single")
    if not hmac.compare_digest(attrs[0][1], rt.message_authenticator(fwd, rt.UP_SECRET)):
        raise OracleFailure("forwarded request: Message-Authenticator is wrong for the upstream")
    down_attrs = rt.attributes(down)
    if down_attrs is None:
        raise OracleFailure(f"forwarded a request the oracle cannot parse: {down.hex()}")
    down_pw = [v for k, v in down_attrs if k == 2]
    fwd_pw = [v for k, v in attrs if k == 2]
    clear = rt.decrypt_password(down_pw[0], rt.UP_CLIENT_SECRET, down[4:20]) \
        if len(down_pw) == 1 else None
    if fwd_pw:
        sent = rt.decrypt_password(fwd_pw[0], rt.UP_SECRET, fwd[4:20])
        if len(fwd_pw) != 1 or clear is None or not sent or not (
                sent == clear or clear.startswith(sent + b",")):
            raise OracleFailure(f"forwarded User-Password {sent!r} is not the NAS's {clear!r}")
    elif clear and clear.decode("utf-8", "replace") == clear.decode("utf-8", "ignore"):
        raise OracleFailure("the NAS's password (valid UTF-8) was not forwarded")
    rest = [a for a in split(down_attrs) if a[:2] not in ((0, 80), (0, 2), (0, 33))]
    sent_rest = [a for a in split(attrs) if a[:2] not in ((0, 80), (0, 2))]
    chap = any(a[:2] == (0, 3) for a in rest) and not any(a[:2] == (0, 60) for a in rest)
    if chap:
        # CHAP's challenge was the NAS's Request Authenticator: now sent explicitly.
        rest.append((0, 60, down[4:20]))
    if sent_rest != rest:
        raise OracleFailure(f"forwarded attributes differ from the NAS's: {fwd.hex()} "
                            f"for {down.hex()}")


def run_round(proto, datagram: bytes, uctl: int, raw_reply: bytes,
              pinned: int | None = None) -> _Round:
    """One downstream request through the front end and the harness's upstream."""
    addr, secret, _ = rt.SOURCES[rt.UPSTREAM_SOURCE]
    up = proto.upstreams["vpn-up"]
    provider = proto.engine.provider
    provider.mode = "deny" if uctl & DENY else "approve"
    up_sent, down_sent, pushes = up.transport.sent, proto.transport.sent, provider.requests
    u0, d0, p0 = len(up_sent), len(down_sent), len(pushes)
    result = _Round()
    proto.datagramReceived(datagram, addr)
    proto.datagramReceived(datagram, addr)  # the NAS retransmits while we wait upstream
    verdict = rt.judge(datagram, secret, True)
    if len(up_sent) > u0 and (not verdict.answerable or datagram[0] != 1):
        raise OracleFailure(f"forwarded a datagram that must be dropped (or a Status-Server, "
                            f"which we answer ourselves): {datagram.hex()}")
    timeouts = (uctl & TIMEOUTS) >> 2
    for _ in range(timeouts):
        proto.clock.advance(TIMEOUT)
    sends = list(up_sent[u0:])
    order = [i for i, n in enumerate(ATTEMPTS) for _ in range(n)] if pinned is None \
        else [pinned] * ATTEMPTS[pinned]
    if sends and len(sends) != min(timeouts + 1, len(order)):
        raise OracleFailure(f"{len(sends)} sends after {timeouts} timeouts")
    delivered = 0
    upstream_attrs = request = upstream_code = None
    if sends:
        request, to = sends[-1]
        server = SERVERS.index(to)
        reply = build_reply(raw_reply, request, uctl)
        source = SERVERS[1 - server] if uctl & SPOOF else to
        waiting = len(sends) == timeouts + 1  # not every attempt timed out yet
        upstream_attrs = verify_reply(reply, request, server) \
            if waiting and source == to else None
        drops = proto.counters.get("upstream_drops")
        for _ in range(2 if uctl & DUPLICATE else 1):
            up.datagramReceived(reply, source)
            delivered += 1
        taken = delivered - (proto.counters.get("upstream_drops") - drops)
        if taken > 1 or (taken and upstream_attrs is None):
            raise OracleFailure(f"the front end took an upstream reply the oracle refuses "
                                f"({taken} taken): {reply.hex()}")
        upstream_attrs = upstream_attrs if taken else None  # the oracle's view of what was used
        result.verified, result.refused = taken, delivered - taken
        upstream_code = reply[0] if taken else None
    for _ in range(len(order) + 1):
        proto.clock.advance(TIMEOUT)  # every exchange ends; an unanswered one fails over
    proto.datagramReceived(datagram, addr)  # and the NAS retransmits once more
    if proto.counters.get("internal_errors"):
        raise OracleFailure(f"an internal error (exception caught inside) for {datagram.hex()}")
    result.forwarded = list(up_sent[u0:])
    if len(result.forwarded) > len(order):
        raise OracleFailure(f"{len(result.forwarded)} sends for one request")
    for (fwd, to), server in zip(result.forwarded, order):
        if to != SERVERS[server]:
            raise OracleFailure(f"sent to {to}, expected {SERVERS[server]} (failover order)")
        check_forwarded(fwd, datagram)
    replies = down_sent[d0:]
    if replies and not verdict.answerable:
        raise OracleFailure(f"answered a datagram that must be dropped: {datagram.hex()}")
    if len({r for r, _ in replies}) > 1:
        raise OracleFailure("the retransmit got a different reply")
    for reply, to in replies:
        if to != addr:
            raise OracleFailure(f"reply sent to {to}, not to the source {addr}")
        result.replies.append(reply)
    if not replies:
        return result
    code = rt.check_reply(replies[0][0], datagram, secret)
    if datagram[0] == 12:
        if code != 2 or not verdict.acceptable:
            raise OracleFailure(f"Status-Server answered {code}: {datagram.hex()}")
        return result  # RFC 5997: a signed Status-Server is answered Accept, by us
    down_attrs = rt.attributes(replies[0][0])
    _check_relay(code, down_attrs, datagram, request, upstream_attrs, upstream_code, uctl,
                 pushes[p0:])
    if code == 11 and upstream_attrs is not None:
        states = [v for k, v in upstream_attrs if k == 24]
        if states:
            result.relayed_state, result.server = states[0], SERVERS.index(sends[-1][1])
    return result


def _check_relay(code, down_attrs, datagram, request, upstream_attrs, upstream_code, uctl,
                 pushes) -> None:
    """The downstream reply against the upstream's (None: no upstream reply was taken)."""
    if [v for k, v in down_attrs if k == 33] != [v for k, v in rt.attributes(datagram)
                                                 if k == 33]:
        raise OracleFailure("the reply does not carry exactly the NAS's Proxy-State")
    if pushes and upstream_code != 2:
        raise OracleFailure("a push without a verified upstream Access-Accept")
    if code == 2:
        if upstream_code != 2 or uctl & DENY or not pushes:
            raise OracleFailure(f"Access-Accept without a verified upstream Accept and an "
                                f"approved push: {datagram.hex()}")
        extra = {a[:2] for a in split(down_attrs)} - ACCEPT_KEYS
        if extra:
            raise OracleFailure(f"the Accept carries attributes outside pass_attributes: {extra}")
    if code == 11 and upstream_code != 11:
        raise OracleFailure(f"Access-Challenge without a verified upstream Challenge: "
                            f"{datagram.hex()}")
    down = rt.attributes(datagram)
    eap = any(k == 79 for k, _ in down)
    for push in pushes:
        names = [v for k, v in (upstream_attrs if eap else down) if k == 1]
        name = names[0].decode("utf-8", "replace") if names else ""
        if not names or push.username != name.casefold():
            raise OracleFailure(f"push for {push.username!r}, not the proved identity")
        if not clean_name(name):
            raise OracleFailure(f"push for {name!r}, a name refused as a User-Name")
    mine = hidden_values(down_attrs, rt.UP_CLIENT_SECRET, datagram[4:20])
    if mine is None:
        raise OracleFailure("a hidden value in the reply does not decrypt with the NAS's secret")
    theirs = hidden_values(upstream_attrs or [], rt.UP_SECRET, request[4:20] if request else b"")
    for key, values in mine.items():
        if values != theirs.get(key):
            raise OracleFailure(f"hidden {key} relayed as {values!r}, upstream sent "
                                f"{theirs.get(key)!r}")
    if code == 2:
        for key in ((MICROSOFT, 16), (MICROSOFT, 17), (MICROSOFT, 12)):
            if theirs.get(key) and mine.get(key) != theirs[key]:
                raise OracleFailure(f"the Accept lost the upstream's {key}")


def run(control: int, data: bytes, proto) -> Outcome:
    """One fuzz input for the primary: radius client; raise OracleFailure on a violation."""
    uctl = data[0] if data else 0
    size = int.from_bytes(data[1:3], "big")
    datagram, raw_reply = data[3:3 + size], data[3 + size:]
    if control & rt.RESIGN:
        datagram = rt.resign(datagram, rt.UP_CLIENT_SECRET)
    first = run_round(proto, datagram, uctl, raw_reply)
    rounds = [first]
    if uctl & FOLLOW and first.relayed_state is not None:
        again = follow_up(datagram, first.relayed_state)
        if again is not None:
            second = run_round(proto, again, uctl & ~FOLLOW, raw_reply, pinned=first.server)
            if second.forwarded and [a for k, a in rt.attributes(second.forwarded[0][0])
                                     if k == 24] != [first.relayed_state]:
                raise OracleFailure("the follow-up went upstream without the relayed State")
            rounds.append(second)
    codes = tuple(r[0] for r in first.replies)
    verdict = Verdict(bool(first.replies), bool(codes) and codes[0] == 2)
    return Outcome(codes, verdict, forwarded=sum(len(r.forwarded) for r in rounds),
                   upstream_verified=sum(r.verified for r in rounds),
                   upstream_refused=sum(r.refused for r in rounds))


def seeds() -> list[bytes]:
    """Valid inputs for this source: PAP, MS-CHAPv2, EAP and CHAP logins with upstream replies."""
    def request(ident: int, *attrs: tuple[int, bytes]) -> bytes:
        auth = bytes(range(ident, ident + 16))
        body = bytes([80, 18]) + bytes(16)
        for kind, value in attrs:
            if kind == 2:
                value = hide((0, 2), value, rt.UP_CLIENT_SECRET, auth, b"")
            body += bytes([kind, len(value) + 2]) + value
        return rt.resign(bytes([1, ident]) + struct.pack("!H", 20 + len(body)) + auth + body,
                         rt.UP_CLIENT_SECRET)

    def vsa(sub: int, value: bytes) -> tuple[int, bytes]:
        return 26, struct.pack("!LBB", MICROSOFT, sub, len(value) + 2) + value

    def reply(code: int, *attrs: tuple[int, bytes]) -> bytes:
        body = bytes([80, 18]) + bytes(16) + b"".join(bytes([k, len(v) + 2]) + v for k, v in attrs)
        return bytes([code, 0]) + struct.pack("!H", 20 + len(body)) + bytes(16) + body

    def seed(uctl: int, down: bytes, up: bytes) -> bytes:
        return bytes([rt.UPSTREAM_SOURCE | rt.RESIGN, uctl]) + struct.pack("!H", len(down)) \
            + down + up

    pap = request(60, (1, b"carol"), (2, b"carol-pw"), (33, b"nas-ps"), (31, b"198.51.100.7"))
    mschap = request(61, (1, b"EXAMPLE\\dave"), vsa(11, b"c" * 16), vsa(25, b"r" * 50))
    eap = request(62, (1, b"anonymous"), (79, b"\x02\x01\x00\x0eidentity"))
    chap = request(63, (1, b"erin"), (3, b"\x07" + b"h" * 16))
    keys = (vsa(16, b"k" * 32), vsa(17, b"K" * 32), (69, b"\x01tunnel-pw"),
            (25, b"class-1"), (11, b"vpn-users"), (8, b"\x0a\x00\x00\x05"))
    return [
        seed(SIGN | HIDE, pap, reply(2, (25, b"cls"), (33, b"up-ps"), *keys)),
        seed(SIGN | HIDE | DENY, pap, reply(2, *keys)),
        seed(SIGN | HIDE, mschap, reply(2, vsa(26, b"S=" + b"A" * 40), *keys)),
        seed(SIGN, mschap, reply(3, vsa(2, b"\x01E=648 R=0 V=3"), (18, b"expired"))),
        seed(SIGN | FOLLOW, eap, reply(11, (24, b"up-state-1"), (79, b"\x01\x02\x00\x06eq"))),
        seed(SIGN | HIDE, eap, reply(2, (1, b"bob"), (79, b"\x03\x02\x00\x04"), *keys)),
        seed(SIGN | 0x04, chap, reply(2, (25, b"c"))),  # after A's resend
        seed(SIGN | HIDE | 0x08, pap, reply(2, *keys)),  # failover: B answers
        seed(SIGN | 0x0C, pap, reply(2)),  # every server silent
        seed(0, pap, reply(2, *keys)),  # raw: never verifies
        seed(SIGN | SPOOF, pap, reply(2)),
        seed(SIGN | DUPLICATE | HIDE, pap, reply(2, *keys)),
    ]
