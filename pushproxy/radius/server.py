"""The RADIUS front end: a thin UDP layer between datagrams and the engine.

    datagram -> client by source address -> header -> retransmit table
    -> decode + verify -> engine.login -> encoded reply (cached for retransmits)

Bad input is dropped here with a log line and a counter, never answered and
never able to stop the listener.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from twisted.internet.protocol import DatagramProtocol

from pushproxy import logs
from pushproxy.config import RadiusClient
from pushproxy.decision import Decision, Outcome
from pushproxy.engine import Engine, LoginRequest
from pushproxy.metrics import Counters
from pushproxy.radius import codec
from pushproxy.radius.codec import DropPacket, DropReason
from pushproxy.radius.retransmit import RequestKey, RetransmitTable, State

log = logging.getLogger("pushproxy.radius")

# Shown on the user's VPN client; deliberately vague about which factor failed.
REPLY_MESSAGES = {
    Outcome.ACCEPT: "Login approved",
    Outcome.REJECT: "Login denied",
    Outcome.CHALLENGE: "Continue in your authenticator app",
}
_CODES = {Outcome.ACCEPT: codec.ACCESS_ACCEPT, Outcome.REJECT: codec.ACCESS_REJECT,
          Outcome.CHALLENGE: codec.ACCESS_CHALLENGE}


class ClientTable:
    """Finds the configured client for a source address; the most specific network wins."""

    def __init__(self, clients: tuple[RadiusClient, ...]):
        self._clients = sorted(clients, key=lambda c: c.network.prefixlen, reverse=True)

    def match(self, host: str) -> RadiusClient | None:
        """The client for ``host``, or None for an unknown source."""
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # a dual-stack socket reports IPv4 peers this way
        for client in self._clients:
            if addr.version == client.network.version and addr in client.network:
                return client
        return None


class RadiusProtocol(DatagramProtocol):
    """One UDP listener; several may share one table, engine and counters."""

    def __init__(self, *, clients: ClientTable, engine: Engine, dictionary,
                 table: RetransmitTable, clock, counters: Counters,
                 default_no_device, max_pending: int = 100_000,
                 receive_buffer: int | None = None):
        self.clients = clients
        self.engine = engine
        self.dictionary = dictionary
        self.table = table
        self.clock = clock
        self.counters = counters
        self.default_no_device = default_no_device
        self.max_pending = max_pending
        self.receive_buffer = receive_buffer
        self._drop_log = LogLimiter()
        self.accepting = True

    def startProtocol(self) -> None:
        """Enlarge the receive buffer: a login storm arrives in bursts."""
        if self.receive_buffer and self.transport is not None:
            try:
                self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                 self.receive_buffer)
            except (OSError, AttributeError) as exc:
                logs.event(log, logging.WARNING, "radius.rcvbuf_failed", error=str(exc))

    def datagramReceived(self, data: bytes, addr) -> None:
        """Every datagram ends here: answered, handed off, or dropped and counted."""
        host, port = addr[0], addr[1]
        client = self.clients.match(host)
        if client is None:
            return self._drop(DropReason.UNKNOWN_CLIENT, host, None)
        try:
            code, ident, authenticator = codec.peek_header(data)
        except DropPacket as exc:
            return self._drop(exc.reason, host, client, exc.detail)
        key = RequestKey(host, port, ident, authenticator)
        now = self.clock.seconds()
        lookup = self.table.receive(key, now)
        if lookup.state is State.ANSWERED:
            self.counters.inc("radius_retransmits", client=client.name, state="answered")
            self.transport.write(lookup.reply, addr)
            return None
        if lookup.state is State.IN_FLIGHT:
            self.counters.inc("radius_retransmits", client=client.name, state="in_flight")
            return self._drop(DropReason.RETRANSMIT_IN_FLIGHT, host, client,
                              level=logging.DEBUG)
        if not self.accepting:
            # Stopping: answered retransmits above still get their reply, but
            # nothing new starts (the NAS fails over to another server).
            self.table.abandon(key)
            return self._drop(DropReason.SHUTTING_DOWN, host, client)
        try:
            request = codec.decode_request(
                data, client.secret, self.dictionary,
                require_message_authenticator=client.require_message_authenticator)
            if request.code != codec.STATUS_SERVER and self.engine.pending >= self.max_pending:
                raise DropPacket(DropReason.OVERLOADED, f"{self.engine.pending} pending")
        except DropPacket as exc:
            self.table.abandon(key)
            return self._drop(exc.reason, host, client, exc.detail)
        self.counters.inc("radius_requests", client=client.name)
        if request.code == codec.STATUS_SERVER:
            # RFC 5997: a verified Status-Server is answered with Access-Accept.
            return self._send(key, addr, codec.encode_reply(request, codec.ACCESS_ACCEPT))
        login = LoginRequest(
            protocol="radius", username=request.username,
            password=request.password, client_name=client.name, source=host,
            calling_station=request.calling_station, nas=request.nas,
            no_device=client.no_device or self.default_no_device,
            state=request.state, verification=client.verification)
        d = self.engine.login(login)
        d.addCallback(self._decided, request, key, addr)
        d.addErrback(self._failed, key)
        return None

    def _decided(self, decision: Decision, request: codec.AccessRequest, key, addr) -> None:
        self._send(key, addr, codec.encode_reply(
            request, _CODES[decision.outcome],
            reply_message=decision.message or REPLY_MESSAGES[decision.outcome],
            state=decision.state))

    def _send(self, key: RequestKey, addr, reply: bytes) -> None:
        self.table.answer(key, reply, self.clock.seconds())
        self.counters.inc("radius_replies")
        try:
            self.transport.write(reply, addr)
        except (OSError, AttributeError) as exc:
            # The listener closed while this login was decided (shutdown).
            logs.event(log, logging.WARNING, "radius.send_failed", error=str(exc))

    def _failed(self, failure, key: RequestKey) -> None:
        # The engine never errbacks; if it did, no reply (the NAS retries),
        # and never an Accept.
        log.error("radius.reply_failed %s", failure.getTraceback())
        self.counters.inc("internal_errors")
        self.table.abandon(key)

    def _drop(self, reason: DropReason, host: str, client: RadiusClient | None,
              detail: str = "", level: int = logging.INFO) -> None:
        self.counters.inc("radius_drops", reason=reason.value)
        # Counted always, logged once a minute per source and reason: a flood
        # of junk must not turn into a flood of log lines.
        suppressed = self._drop_log.note((reason, host), self.clock.seconds())
        if suppressed is None:
            return
        logs.event(log, level, "radius.drop", reason=reason.value, source=host,
                   client=client.name if client else None, detail=detail or None,
                   suppressed=suppressed or None)


class LogLimiter:
    """Lets one log line per key through every ``every`` seconds; counts the rest.

    ``max_lines`` caps the lines of all keys together per ``every`` seconds:
    thousands of spoofed source addresses are thousands of keys, and would
    otherwise still be a line each (tests/test_adversarial_radius.py).
    """

    def __init__(self, every: float = 60.0, max_keys: int = 10_000, max_lines: int = 100):
        self.every = every
        self.max_keys = max_keys
        self.max_lines = max_lines
        self._last: dict = {}
        self._window = (float("-inf"), 0)  # (start, lines logged in it)
        self.over_budget = 0  # lines withheld by max_lines (the counters still count all)

    def note(self, key, now: float) -> int | None:
        """None: stay quiet. A number: log now, this many were suppressed since the last line."""
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.every:
            entry[1] += 1
            return None
        start, lines = self._window
        if now - start >= self.every:
            start, lines = now, 0
        if lines >= self.max_lines:
            self.over_budget += 1
            return None
        self._window = (start, lines + 1)
        if len(self._last) >= self.max_keys:
            self._last.clear()  # thousands of spoofed sources: forget, never grow unbounded
        self._last[key] = [now, 0]
        return entry[1] if entry is not None else 0
