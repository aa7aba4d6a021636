"""The upstream RADIUS client: one UDP socket per client, ordered failover, resends, timeouts.

    exchange(request) -> for each server (pinned one only, for a Challenge's follow-up):
        identifier from that server's free ones -> build (fresh authenticator,
        password hidden for its secret) -> send, wait ``timeout``, resend the
        same bytes ``retries`` times -> verified reply? done : next server

A server that stays silent goes to the end of the order for `BACKOFF`
seconds. Replies that do not verify (wrong secret, forged, late duplicates)
are dropped and counted; they never end a wait. Nothing here decides the
login: `Exchange` says which server answered what, or that none did.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

from pushproxy import logs
from pushproxy.metrics import Counters
from pushproxy.radius.attributes import AttributeError_, Names
from pushproxy.radius.loglimit import LogLimiter
from pushproxy.upstream.packets import ReplyError, UpstreamReply, build_request, decode_reply
from pushproxy.upstream.settings import BACKOFF, UpstreamServer, UpstreamSettings

log = logging.getLogger("pushproxy.upstream")


@dataclass(frozen=True)
class Exchange:
    """How one forwarded request ended: the server that answered and its reply, or none."""

    server: int | None  # index into the settings' servers
    reply: UpstreamReply | None
    attempts: int  # datagrams sent, resends and failover included


class _Pending:
    def __init__(self, request, server: UpstreamServer):
        self.request = request
        self.server = server
        self.waiter: defer.Deferred | None = None


class UpstreamClient(DatagramProtocol):
    """Forwards a ``primary: radius`` client's requests to its upstream servers."""

    def __init__(self, settings: UpstreamSettings, *, clock, counters: Counters,
                 names: Names, client_name: str):
        self.settings = settings
        self.clock = clock
        self.counters = counters
        self.names = names
        self.client_name = client_name
        self._pending: dict[tuple[str, int, int], _Pending] = {}
        self._next_id: dict[tuple[str, int], int] = {}
        self._dead_until: dict[int, float] = {}
        self.port = None
        self.stopped = False
        self._bad_log = LogLimiter()
        self._links: dict[int, object] = {}  # server index -> TlsLink (RADIUS/TLS servers)
        self._reactor = None

    def start(self, reactor) -> None:
        """Open the socket (an ephemeral port, IPv6 if any server is IPv6)."""
        v6 = any(ipaddress.ip_address(s.host).version == 6 for s in self.settings.servers)
        self.port = reactor.listenUDP(0, self, interface="::" if v6 else "0.0.0.0")
        self._reactor = reactor
        for index, server in enumerate(self.settings.servers):
            if server.tls is not None:
                from pushproxy.upstream.tlslink import TlsLink

                self._links[index] = TlsLink(server, reactor, self.datagramReceived,
                                             self.counters)

    def stop(self):
        """Close the socket; waiting exchanges end as if no server answered."""
        self.stopped = True
        for pending in list(self._pending.values()):
            if pending.waiter is not None and not pending.waiter.called:
                pending.waiter.callback(None)
        for link in self._links.values():
            link.close()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else defer.succeed(None)

    def _address(self, server: UpstreamServer) -> tuple[str, int]:
        host = server.host
        if server.tls is not None:
            return host, server.port  # replies come back under this name (TlsLink)
        if self.port is not None and self.port.getHost().type == "UDP" and \
                ":" in self.port.getHost().host and ":" not in host:
            host = f"::ffff:{host}"  # an IPv4 server through the dual-stack socket
        return host, server.port

    def _order(self, now: float) -> list[int]:
        indexes = range(len(self.settings.servers))
        # Alive servers in configured order, then those in backoff (still tried).
        return sorted(indexes, key=lambda i: (self._dead_until.get(i, 0) > now, i))

    def _allocate(self, addr: tuple[str, int]) -> int | None:
        start = self._next_id.get(addr, 0)
        for step in range(256):
            ident = (start + step) % 256
            if (addr[0], addr[1], ident) not in self._pending:
                self._next_id[addr] = (ident + 1) % 256
                return ident
        return None

    @defer.inlineCallbacks
    def exchange(self, raw_request: bytes, password: str | None, *, pinned: int | None = None):
        """Forward one verified downstream request; fires with an `Exchange`, never errbacks."""
        attempts = 0
        order = [pinned] if pinned is not None else self._order(self.clock.seconds())
        for index in order:
            server = self.settings.servers[index]
            addr = self._address(server)
            ident = self._allocate(addr)
            if ident is None:
                self.counters.inc("upstream_busy", server=server.name)
                continue
            try:
                request = build_request(raw_request, ident=ident, secret=server.secret,
                                        password=password)
            except AttributeError_ as exc:
                logs.event(log, logging.WARNING, "upstream.unforwardable",
                           client=self.client_name, error=str(exc))
                return Exchange(None, None, attempts)
            key = (addr[0], addr[1], ident)
            pending = self._pending[key] = _Pending(request, server)
            try:
                for attempt in range(server.attempts):
                    attempts += 1
                    if attempt:
                        self.counters.inc("upstream_resends", server=server.name)
                    reply = yield self._attempt(pending, addr)
                    if reply is not None:
                        self._dead_until.pop(index, None)
                        return Exchange(index, reply, attempts)
                    if self.stopped:
                        return Exchange(None, None, attempts)
            finally:
                del self._pending[key]
            self._dead_until[index] = self.clock.seconds() + BACKOFF
            self.counters.inc("upstream_timeouts", server=server.name)
            logs.event(log, logging.WARNING, "upstream.no_answer", client=self.client_name,
                       server=server.name, waited_s=server.worst_case,
                       next=("none" if index == order[-1] else "failover"))
        return Exchange(None, None, attempts)

    def _attempt(self, pending: _Pending, addr) -> defer.Deferred:
        waiter: defer.Deferred = defer.Deferred()
        pending.waiter = waiter
        timer = self.clock.callLater(pending.server.timeout,
                                     lambda: waiter.called or waiter.callback(None))

        def settled(result):
            if timer.active():
                timer.cancel()
            return result

        waiter.addCallback(settled)
        link = self._links.get(self.settings.servers.index(pending.server)) \
            if pending.server.tls is not None else None
        if link is not None:
            link.send(pending.request.data)
            return waiter
        try:
            self.transport.write(pending.request.data, addr)
        except (OSError, AttributeError) as exc:
            # An unreachable address is a silent server: the timer moves on.
            logs.event(log, logging.WARNING, "upstream.send_failed", server=pending.server.name,
                       error=str(exc))
        return waiter

    def datagramReceived(self, data: bytes, addr) -> None:
        """A reply: verified against the pending request it names, else dropped and counted."""
        if len(data) < 20:
            self.counters.inc("upstream_drops", reason="malformed")
            return
        pending = self._pending.get((addr[0], addr[1], data[1]))
        if pending is None or pending.waiter is None or pending.waiter.called:
            self.counters.inc("upstream_drops", reason="unexpected")
            return
        try:
            reply = decode_reply(data, pending.request, pending.server.secret, self.names,
                                 require_message_authenticator=(
                                     pending.server.require_message_authenticator))
        except ReplyError as exc:
            self.counters.inc("upstream_drops", reason="invalid")
            # Spoofed replies can come fast: one line a minute per server and error.
            suppressed = self._bad_log.note((pending.server.name, str(exc)),
                                            self.clock.seconds())
            if suppressed is not None:
                logs.event(log, logging.WARNING, "upstream.bad_reply",
                           server=pending.server.name, error=str(exc),
                           suppressed=suppressed or None)
            return
        pending.waiter.callback(reply)
