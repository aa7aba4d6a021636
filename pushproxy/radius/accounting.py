"""RADIUS Accounting (RFC 2866): verify, log one line, answer. Nothing is stored.

VPN gateways (OpenVPN's radiusplugin, firewalls) send Accounting-Requests to
the authentication server's port + 1 and treat an unanswered one as a failed
session. This listener answers them so such gateways work with pushproxy
alone; it neither forwards nor stores the records (the log line and the
``radius_accounting`` counter are all that remains).

    datagram -> client by source address (the auth server's ClientTable)
    -> size and header (`codec.peek_header`: the authentication port's rule; octets
       past Length are padding, a datagram over 4,096 octets is malformed)
    -> retransmit table (same key as auth: address, port, id, authenticator)
    -> verify Request Authenticator (+ Message-Authenticator when present)
    -> one ``radius.accounting`` log line + counter -> Accounting-Response
    (a verified Status-Server, RFC 5997 3, gets an Accounting-Response too)

Message-Authenticator is verified when present but never required: the
Request Authenticator of an Accounting-Request is already a keyed MD5 over the
whole packet, so the forgery Blast-RADIUS needs (an unauthenticated
Access-Request) does not exist here, and most gateways send none.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import struct
from dataclasses import dataclass

from twisted.internet.protocol import DatagramProtocol

from pushproxy import logs
from pushproxy.metrics import Counters
from pushproxy.radius import codec
from pushproxy.radius.codec import DropPacket, DropReason
from pushproxy.radius.loglimit import LogLimiter
from pushproxy.radius.retransmit import RequestKey, RetransmitTable, State

log = logging.getLogger("pushproxy.radius.accounting")

ACCOUNTING_REQUEST = 4
ACCOUNTING_RESPONSE = 5

# Acct-Status-Type (40) values of RFC 2866 5.1 and RFC 2867; others are logged by number.
STATUS_NAMES = {1: "start", 2: "stop", 3: "interim-update", 7: "accounting-on",
                8: "accounting-off", 9: "tunnel-start", 10: "tunnel-stop",
                11: "tunnel-reject", 12: "tunnel-link-start", 13: "tunnel-link-stop",
                15: "failed"}
# Longest text kept for the log from one attribute (RADIUS allows 253 octets).
MAX_LOGGED = 128


@dataclass(frozen=True)
class AccountingRequest:
    """A verified Accounting-Request: what the log line and the response need."""

    id: int
    authenticator: bytes
    status: str  # Acct-Status-Type by name, "other-N", or "missing"
    username: str | None
    session_id: str | None
    nas: str | None  # NAS-Identifier, else NAS-IP-Address
    has_message_authenticator: bool
    proxy_state: tuple[bytes, ...]


def _attributes(data: bytes, length: int) -> list[tuple[int, bytes]]:
    """(type, value) pairs; each attribute must fit inside ``length`` (else DropPacket)."""
    out, pos = [], 20
    while pos < length:
        if length - pos < 2 or data[pos + 1] < 2 or pos + data[pos + 1] > length:
            raise DropPacket(DropReason.MALFORMED, f"attribute at octet {pos} overruns the packet")
        out.append((data[pos], data[pos + 2:pos + data[pos + 1]]))
        pos += data[pos + 1]
    return out


def request_authenticator(packet: bytes, secret: bytes) -> bytes:
    """RFC 2866 3: MD5(Code + Identifier + Length + 16 zero octets + Attributes + Secret)."""
    return hashlib.md5(packet[:4] + bytes(16) + packet[20:] + secret).digest()


def _message_authenticator(packet: bytes, offset: int, secret: bytes) -> bytes:
    """HMAC-MD5 of an Accounting-Request with its authenticator and the
    Message-Authenticator value zeroed (as FreeRADIUS and radclient sign it)."""
    zeroed = (packet[:4] + bytes(16) + packet[20:offset] + bytes(16)
              + packet[offset + 16:])
    return hmac.new(secret, zeroed, hashlib.md5).digest()


def decode_accounting(data: bytes, secret: bytes) -> AccountingRequest:
    """Decode and verify an Accounting-Request from a client sharing ``secret``.

    Raises DropPacket (the datagram is dropped unanswered) for a malformed
    packet, another code, a wrong Request Authenticator (usually a wrong
    secret) or a wrong Message-Authenticator.
    """
    code, ident, authenticator = codec.peek_header(data)  # the size rule of every port
    if code != ACCOUNTING_REQUEST:
        raise DropPacket(DropReason.UNSUPPORTED_CODE, f"code {code}")
    length = struct.unpack("!H", data[2:4])[0]
    packet = data[:length]  # octets past Length are padding (RFC 2866 3)
    attrs = _attributes(packet, length)
    if not hmac.compare_digest(request_authenticator(packet, secret), authenticator):
        raise DropPacket(DropReason.BAD_REQUEST_AUTHENTICATOR, "wrong shared secret?")
    offsets, pos = [], 20
    for kind, value in attrs:
        if kind == 80:
            if len(value) != 16:
                raise DropPacket(DropReason.MALFORMED, "Message-Authenticator is not 16 octets")
            offsets.append(pos + 2)
        pos += 2 + len(value)
    if len(offsets) > 1:
        raise DropPacket(DropReason.MALFORMED, "Message-Authenticator appears more than once")
    if offsets and not hmac.compare_digest(
            _message_authenticator(packet, offsets[0], secret),
            packet[offsets[0]:offsets[0] + 16]):
        raise DropPacket(DropReason.BAD_MESSAGE_AUTHENTICATOR)
    first = {}
    for kind, value in attrs:
        first.setdefault(kind, value)
    return AccountingRequest(
        id=ident, authenticator=authenticator, status=_status(first.get(40)),
        username=_text(first.get(1)), session_id=_text(first.get(44)),
        nas=_text(first.get(32)) or _ipv4(first.get(4)),
        has_message_authenticator=bool(offsets),
        proxy_state=tuple(value for kind, value in attrs if kind == 33))


def encode_accounting_response(request: AccountingRequest, secret: bytes) -> bytes:
    """Accounting-Response: Message-Authenticator first (when the request had
    one), Proxy-State copied in order, Response Authenticator per RFC 2866 3."""
    body = b"".join(bytes([33, 2 + len(v)]) + v for v in request.proxy_state)
    if request.has_message_authenticator:
        body = bytes([80, 18]) + bytes(16) + body
    head = struct.pack("!BBH", ACCOUNTING_RESPONSE, request.id, 20 + len(body))
    if request.has_message_authenticator:
        # With 16 zero octets in the authenticator field, as FreeRADIUS and pyrad
        # sign and check an Accounting-Response (RFC 5176 3.3 does the same for CoA).
        mac = hmac.new(secret, head + bytes(16) + body, hashlib.md5).digest()
        body = body[:2] + mac + body[18:]
    response = hashlib.md5(head + request.authenticator + body + secret).digest()
    return head + response + body


def _status(value: bytes | None) -> str:
    if value is None:
        return "missing"
    if len(value) != 4:
        return "malformed"
    number = int.from_bytes(value, "big")
    return STATUS_NAMES.get(number, f"other-{number}")


def _text(value: bytes | None) -> str | None:
    """Attribute text for a log line: never raises, at most MAX_LOGGED characters
    (logs.event quotes and escapes whatever is not plain ASCII)."""
    if value is None:
        return None
    text = value.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= MAX_LOGGED else text[:MAX_LOGGED] + "..."


def _ipv4(value: bytes | None) -> str | None:
    return ".".join(str(b) for b in value) if value is not None and len(value) == 4 else None


class AccountingProtocol(DatagramProtocol):
    """One accounting UDP listener; answers every verified Accounting-Request.

    ``clients`` is the authentication listener's ClientTable (the daemon swaps
    it on reload); ``table`` a RetransmitTable of its own, so a retransmit gets
    the identical cached response.
    """

    def __init__(self, *, clients, table: RetransmitTable, clock, counters: Counters,
                 dictionary=None):
        self.clients = clients
        self.dictionary = dictionary if dictionary is not None else codec.load_dictionary()
        self.table = table
        self.clock = clock
        self.counters = counters
        self._drop_log = LogLimiter()

    def datagramReceived(self, data: bytes, addr) -> None:
        """Answered, or dropped with a counter and a (rate-limited) log line."""
        host, port = addr[0], addr[1]
        try:
            self._receive(data, host, port, addr)
        except Exception as exc:  # never let one datagram stop the listener
            log.exception("radius.accounting_failed")
            self._drop("internal_error", host, None, type(exc).__name__)

    def _receive(self, data: bytes, host: str, port: int, addr) -> None:
        client = self.clients.match(host)
        if client is None:
            self._drop(DropReason.UNKNOWN_CLIENT.value, host, None)
            return
        try:
            # before the retransmit table: a copy padded past 4,096 octets is no retransmit
            _, ident, authenticator = codec.peek_header(data)
        except DropPacket as exc:
            self._drop(exc.reason.value, host, client.name, exc.detail)
            return
        key = RequestKey(host, port, ident, authenticator)
        now = self.clock.seconds()
        lookup = self.table.receive(key, now)
        if lookup.state is State.ANSWERED:
            self.counters.inc("radius_accounting_retransmits", client=client.name)
            self.transport.write(lookup.reply, addr)
            return
        if lookup.state is State.IN_FLIGHT:  # cannot last: answered in this call
            return
        request = None
        try:
            if data[0] == codec.STATUS_SERVER:
                # RFC 5997 3: a verified Status-Server on an accounting port is answered
                # with an Accounting-Response (Message-Authenticator required by the codec).
                # Counted, not logged: watchdogs ask every few seconds.
                probe = codec.decode_request(data, client.secret, self.dictionary,
                                             require_message_authenticator=True)
                reply = codec.encode_reply(probe, ACCOUNTING_RESPONSE)
            else:
                request = decode_accounting(data, client.secret)
                reply = encode_accounting_response(request, client.secret)
        except DropPacket as exc:
            self.table.abandon(key)
            self._drop(exc.reason.value, host, client.name, exc.detail)
            return
        except Exception:
            self.table.abandon(key)  # else its retransmits would be dropped for good
            raise
        self.table.answer(key, reply, now)
        if request is None:
            self.counters.inc("radius_accounting", client=client.name, status="status-server")
        else:
            self.counters.inc("radius_accounting", client=client.name, status=request.status)
            logs.event(log, logging.INFO, "radius.accounting", status=request.status,
                       user=request.username, session=request.session_id, nas=request.nas,
                       client=client.name, source=host)
        self.transport.write(reply, addr)

    def _drop(self, reason: str, host: str, client: str | None, detail: str = "") -> None:
        self.counters.inc("radius_accounting_drops", reason=reason)
        suppressed = self._drop_log.note((reason, host), self.clock.seconds())
        if suppressed is None:
            return
        logs.event(log, logging.INFO, "radius.accounting_drop", reason=reason, source=host,
                   client=client, detail=detail or None, suppressed=suppressed or None)

