"""A small reactor-native LDAP client: search and simple bind, pipelined by message id.

The directory is asked two things per login (search as the service account,
bind as the user). ldap3 does both synchronously in a thread, encoding BER
with pyasn1; here both are a few bytes built by `pushproxy.ldapfront.ber`
and parsed as they arrive on the reactor, with no thread per operation.

`LdapClientProtocol` is one connection: operations are sent at once and
matched to their responses by message id, each with its own response
timeout (judged after a short grace, see `_timed_out`). A connection whose
server answered nothing meanwhile, that breaks the protocol or is told it is
being disconnected fails every operation still on it and is closed: the
caller sees an `LdapError` with the reason, never a crash and never a result
it did not ask for. An operation that times out while the server answers
others fails alone (`LdapTimeout.server_answering`) and retires its
connection. Connections and their pools live in `ldapconns`.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from pushproxy.ldapfront import ber

# A response message larger than this is refused (a user entry with its
# memberOf values is a few kilobytes; this leaves room for large groups).
MAX_MESSAGE = 4 * 1024 * 1024
SUBTREE, BASE = 2, 0
MAX_REFERENCES = 16  # continuation references kept per search (the rest are dropped)


class LdapError(Exception):
    """The directory conversation on one connection failed (the server is at fault)."""

    # True when the connection had answered before: an idle connection the
    # server closed says nothing about the server, so a caller may retry once.
    reused = False


class LdapTimeout(LdapError):
    """No response within the response timeout."""

    # True when the server went on answering other operations meanwhile (on
    # any connection to it): that one operation is slow, the server is busy,
    # not hung -- only that operation failed, the connection is retired.
    server_answering = False


class ServerActivity:
    """What one server answered, shared by every connection to it.

    At an operation's timeout it tells a busy server (answering others, just
    not this one in time) from a hung one (silent on every connection).
    """

    __slots__ = ("answered", "last_answer")

    def __init__(self):
        self.answered = 0  # responses completed, all connections
        self.last_answer = None  # reactor time of the last one


class LdapConnectionLost(LdapError):
    """The connection closed (or could not be made) before the response arrived."""


class LdapProtocolError(LdapError):
    """The server sent something that is not a valid response to what was asked."""


@dataclass(frozen=True)
class SearchResult:
    """A finished search: the result code and the entries (DN, {lower-case attr: values})."""

    code: int
    message: str
    entries: tuple[tuple[str, dict[str, list[str]]], ...]
    # Search continuation references (URLs of other domains): not followed;
    # the caller decides whether the answer is complete without them.
    references: tuple[str, ...] = ()


class _Op:
    """One operation in flight: what answers it, and the timer that gives up on it."""

    __slots__ = ("kind", "deferred", "timer", "entries", "limit", "references",
                 "answered_before", "server_before", "due", "rechecks")

    def __init__(self, kind: int, deferred: Deferred, limit: int, answered_before: int,
                 server_before: int):
        self.kind = kind  # the response tag that finishes it
        self.deferred = deferred
        self.timer = None
        self.entries: list = []
        self.limit = limit  # entries kept (a server ignoring the size limit costs nothing)
        self.references: list[str] = []
        # The connection's answer count when this was sent: at its timeout, how
        # many others the server answered meanwhile (busy, or hung?).
        self.answered_before = answered_before
        self.server_before = server_before  # the same, for the whole server
        self.due = 0.0  # when its response timeout was found passed
        self.rechecks = 0


class LdapClientProtocol(Protocol):
    """One LDAP connection with any number of operations in flight."""

    def __init__(self, reactor, response_timeout: float, max_message: int = MAX_MESSAGE,
                 activity: ServerActivity | None = None):
        self.reactor = reactor
        self.activity = activity if activity is not None else ServerActivity()
        self.response_timeout = response_timeout
        self.max_message = max_message
        self._buf = bytearray()
        self._ops: dict[int, _Op] = {}
        self._next_id = 1
        self.answered = 0  # responses completed on this connection
        self.last_data = None  # reactor time of the last bytes received
        self.closed = False
        # Set once an operation timed out while the server answered others: no
        # new operations here; closed once the ones in flight are answered.
        self.retiring = False
        self._abandoned: set[int] = set()  # timed out alone: a late answer is dropped
        self.on_lost = None  # called once with this protocol when the connection ends
        # After the timeout, how long the event loop runs on before an unanswered
        # operation is judged (see `_timed_out`).
        self.grace = min(1.0, response_timeout / 5)

    @property
    def in_flight(self) -> int:
        """Operations sent and not yet answered."""
        return len(self._ops)

    def connectionMade(self):
        """Set TCP_NODELAY: without it small requests wait on Nagle + delayed ACK."""
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)

    # -- operations --

    def search(self, base: str, filter_ber: bytes, attributes: list[str], *,
               scope: int = SUBTREE, size_limit: int = 0) -> Deferred:
        """Fires with a `SearchResult`, or fails with an `LdapError`."""
        mid = self._take_id()
        data = ber.search_request(mid, base, filter_ber, attributes, scope=scope,
                                  size_limit=size_limit)
        return self._send(mid, ber.SEARCH_DONE, data, size_limit or 1000)

    def bind(self, name: str, password: str) -> Deferred:
        """A simple bind; fires with its `ber.Result` (check ``code``), or fails."""
        mid = self._take_id()
        return self._send(mid, ber.BIND_RESPONSE, ber.bind_request(mid, name, password), 0)

    def start_tls(self, options) -> Deferred:
        """StartTLS (RFC 4511 4.14): fires once TLS is layered on, or fails.

        Operations sent after this are encrypted; a certificate that does not
        verify closes the connection, failing them with the handshake's error.
        """
        mid = self._take_id()
        d = self._send(mid, ber.EXTENDED_RESPONSE, ber.extended_request(mid, ber.STARTTLS_OID), 0)

        def answered(result):
            if result.code != ber.SUCCESS:
                raise LdapProtocolError(f"StartTLS refused: {result.code} {result.message}")
            self.transport.startTLS(options)
            return result
        return d.addCallback(answered)

    def close(self) -> None:
        """Unbind and close (operations in flight fail)."""
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.write(ber.message(self._take_id(), ber.UNBIND_REQUEST, b""))
            self.transport.loseConnection()

    def abort(self, error: LdapError) -> None:
        """Fail every operation with ``error`` and drop the connection at once."""
        self.closed = True  # first: a caller reacting to the failure must not reuse it
        self._fail_all(error)
        if self.transport is not None:
            self.transport.abortConnection()

    # -- internals --

    def _take_id(self) -> int:
        mid = self._next_id
        self._next_id = 1 if mid >= ber.MAX_MESSAGE_ID else mid + 1
        return mid

    def _send(self, mid: int, kind: int, data: bytes, limit: int) -> Deferred:
        d = Deferred()
        if self.closed:
            error = LdapConnectionLost("connection already closed")
            error.reused = self.answered > 0
            d.errback(error)
            return d
        op = self._ops[mid] = _Op(kind, d, limit, self.answered, self.activity.answered)
        op.timer = self.reactor.callLater(self.response_timeout, self._timed_out, mid)
        self.transport.write(data)
        return d

    def _timed_out(self, mid: int) -> None:
        op = self._ops.get(mid)
        if op is not None:
            # Not judged yet: the event loop runs on for `grace` first. The timer
            # counts from `transport.write`, which only buffers the request; the
            # reactor sends it on its next pass. When the process itself stands
            # still in between (a full garbage collection with thousands of
            # logins pending took 4.6 s), the request leaves only after the
            # stall, and the reactor runs the overdue timers before it polls the
            # sockets: the answer comes a round trip after the flush, too late
            # for a check one loop turn later. A pending run marked the only
            # server failed that way (issue 22): slapd's log shows it received
            # the 8 binds 5.4 s after they were written, in the same millisecond,
            # and answered each in under 0.2 ms. The grace lets a buffered
            # request go out and its answer come back; a hung server still fails
            # `grace` after its timeout.
            op.due = self.reactor.seconds()
            op.timer = self.reactor.callLater(self.grace, self._still_unanswered, mid)

    def _still_unanswered(self, mid: int) -> None:
        op = self._ops.get(mid)
        if op is None:
            return
        now = self.reactor.seconds()
        if now - op.due > 2 * self.grace and op.rechecks < 3:
            # The grace itself ran late: the process stood still again. Let the
            # loop run for a grace once more (a few times at most).
            op.rechecks += 1
            op.due = now
            op.timer = self.reactor.callLater(self.grace, self._still_unanswered, mid)
            return
        op.timer = None
        error = LdapTimeout(f"no response within {self.response_timeout:g} s "
                            f"({self._describe_wait(mid, op)})")
        if self._server_answering(op):
            # Busy, not hung: the server answered other operations (on any
            # connection) since this one was sent, and during the grace. Failing
            # everything queued on it (and calling the server failed) would turn
            # one slow answer into hundreds of rejected logins (issue 22). Only
            # this operation fails; the server is told to abandon it, its late
            # answer is dropped, and the connection takes no new work.
            error.server_answering = True
            error.reused = self.answered > 0
            del self._ops[mid]
            self._abandoned.add(mid)
            self.retiring = True
            self.transport.write(ber.message(self._take_id(), ber.ABANDON_REQUEST,
                                             ber.integer(mid)[2:]))
            op.deferred.errback(error)
            self._left()
            return
        # The connection is hung (or hopelessly slow): every operation on it
        # would wait as long, so all of them fail now and it is closed.
        self.abort(error)

    def _server_answering(self, op: _Op) -> bool:
        """Whether the server answered others since ``op`` was sent, and during its grace.

        A server that froze has answered nothing during the grace, so a hung
        server still fails every operation `grace` after the first timeout.
        """
        activity = self.activity
        return (activity.answered > op.server_before and activity.last_answer is not None
                and activity.last_answer >= op.due)

    def _left(self) -> None:
        """An operation left a retiring connection: close it once drained."""
        if not self._ops and not self.closed:
            self.close()

    def _describe_wait(self, mid: int, op: _Op) -> str:
        """What the connection did while ``op`` waited: tells a hung server from a lost answer."""
        last = ("never" if self.last_data is None
                else f"{self.reactor.seconds() - self.last_data:.2f} s ago")
        return (f"message {mid}, {len(self._ops) - 1} others in flight, "
                f"{self.answered - op.answered_before} answered meanwhile, "
                f"last data {last}, {len(self._buf)} bytes unparsed, "
                f"{_unsent(self.transport)} bytes unsent")

    def dataReceived(self, data: bytes):
        """Frame and dispatch responses; anything malformed ends the connection."""
        self.last_data = self.reactor.seconds()
        self._buf += data
        try:
            while self._buf and not self.closed:
                found = ber.next_message(self._buf, self.max_message)
                if found is None:
                    return
                self._dispatch(found[1])
        except ber.ProtocolError as exc:
            self.abort(LdapProtocolError(f"malformed response: {exc}"))

    def _dispatch(self, msg: ber.Message) -> None:
        if msg.message_id == 0:
            # Unsolicited notification (RFC 4511 4.4): in practice the notice of
            # disconnection; the server is about to close this connection.
            raise ber.ProtocolError("server sent an unsolicited notification (disconnecting)")
        op = self._ops.get(msg.message_id)
        if op is None:
            if msg.message_id in self._abandoned:
                # The late answer to an operation that timed out alone: dropped.
                if msg.op_tag not in (ber.SEARCH_ENTRY, ber.SEARCH_REFERENCE):
                    self._abandoned.discard(msg.message_id)
                return
            raise ber.ProtocolError(f"response to message id {msg.message_id}, never sent")
        if msg.op_tag == ber.SEARCH_ENTRY and op.kind == ber.SEARCH_DONE:
            entry = ber.parse_entry(msg.op)
            if len(op.entries) < op.limit:
                op.entries.append(entry)
            return
        if msg.op_tag == ber.SEARCH_REFERENCE and op.kind == ber.SEARCH_DONE:
            # Not followed, but kept (a few) for the caller to judge.
            if len(op.references) < MAX_REFERENCES:
                op.references.append(_reference(msg.op))
            return
        if msg.op_tag != op.kind:
            raise ber.ProtocolError(f"response tag 0x{msg.op_tag:02x} to a request "
                                    f"expecting 0x{op.kind:02x}")
        result = ber.parse_result(msg.op)
        del self._ops[msg.message_id]
        if op.timer is not None:
            op.timer.cancel()
        self.answered += 1
        activity = self.activity
        activity.answered += 1
        activity.last_answer = self.reactor.seconds()
        if op.kind == ber.SEARCH_DONE:
            result = SearchResult(result.code, result.message, tuple(op.entries),
                                  tuple(op.references))
        op.deferred.callback(result)
        if self.retiring:
            self._left()

    def _fail_all(self, error: LdapError) -> None:
        error.reused = self.answered > 0
        ops, self._ops = self._ops, {}
        for op in ops.values():
            if op.timer is not None:
                op.timer.cancel()
            op.deferred.errback(error)

    def connectionLost(self, reason):
        """Fail what is still in flight with the reason (e.g. a TLS verification error)."""
        self.closed = True
        self._fail_all(LdapConnectionLost(_describe(reason)))
        if self.on_lost is not None:
            callback, self.on_lost = self.on_lost, None
            callback(self)


def _reference(op: bytes) -> str:
    """A SearchResultReference's first URL (RFC 4511 4.5.3), or "" when it has none."""
    if not op:
        return ""
    tag, start, end = ber.read_tlv(op, 0, len(op))
    if tag != ber.OCTET_STRING:
        raise ber.ProtocolError("search reference without a URL")
    return op[start:end].decode("utf-8", "replace")[:512]


def _unsent(transport) -> int | str:
    """Bytes written to ``transport`` and not yet handed to the kernel (Twisted's buffer)."""
    try:
        return (len(transport.dataBuffer) - transport.offset) + transport._tempDataLen
    except (AttributeError, TypeError):
        return "?"


def _describe(reason) -> str:
    """A short, readable reason for a lost connection (TLS errors name the cause)."""
    value = getattr(reason, "value", reason)
    text = str(value)
    if "certificate verify failed" in text or "CERTIFICATE_VERIFY_FAILED" in text:
        return f"TLS certificate verify failed ({text[:200]})"
    return f"{type(value).__name__}: {text[:200]}"
