"""Connections to the directory servers, one per client connection.

Each client connection gets its own upstream connection, so that operations
after a bind run with the identity the client bound as, exactly as if it
talked to the directory itself. Servers come from the ``ldap:`` section
(failover order, ldaps:// or StartTLS, ``ca_file``, connect and response
timeouts, ``backoff`` for a server that failed). Certificates are always
verified. Responses to the proxy's own requests (the user's bind, reading the
user's entry) are picked out by message id; everything else goes to the client.
"""

from __future__ import annotations

import logging
import time

from twisted.internet import defer, ssl
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Protocol
from zope.interface import implementer

from pushproxy import logs
from pushproxy.config import LdapConfig, LdapServer
from pushproxy.ldapfront import ber
from pushproxy.tlsnames import NameCheckedTLS
from pushproxy.metrics import Counters

log = logging.getLogger("pushproxy.ldapfront")

UPSTREAM_MAX_MESSAGE = 64 * 1024 * 1024  # an entry with photos; the directory is trusted
MAX_OWN_MESSAGES = 16  # the proxy's own searches ask for one entry


class UpstreamFailed(Exception):
    """The directory could not be reached or stopped answering."""


def client_tls(server: LdapServer, ca_file: str | None):
    """TLS options that verify ``server``'s certificate (``ca_file``, else the system's)."""
    if ca_file is None:
        trust = ssl.platformTrust()
    else:
        with open(ca_file, "rb") as handle:
            pem = handle.read()
        marker = b"-----END CERTIFICATE-----"
        certs = [ssl.Certificate.loadPEM(block + marker)
                 for block in pem.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
        trust = ssl.trustRootFromCertificates(certs)
    # Not optionsForClientTLS itself: its name check lets a certificate without
    # usable subjectAltNames through (see tlsnames.NameCheckedTLS).
    return NameCheckedTLS(server.host, trust)


class _Exchange:
    """The responses to one request of the proxy's own, until its final response."""

    def __init__(self, final: frozenset[int]):
        self.final = final
        self.messages: list[ber.Message] = []
        self.done: defer.Deferred = defer.Deferred()
        self.timer = None


@implementer(IHandshakeListener)
class Upstream(Protocol):
    """One connection to one directory server."""

    def __init__(self, server: LdapServer, clock, response_timeout: float):
        self.server = server
        self.clock = clock
        self.response_timeout = response_timeout
        self.buffer = bytearray()
        self.deliver = None  # callable(raw message) once a client is attached
        self.on_lost = None  # callable(reason) once a client is attached
        self.ready: defer.Deferred = defer.Deferred()
        self.handshake: defer.Deferred | None = None
        self._own: dict[int, _Exchange] = {}
        self.lost = False

    def connectionMade(self) -> None:
        """Connected (for ldaps:// the handshake follows)."""
        self.transport.setTcpNoDelay(True)  # no Nagle delay on small request/answer pairs
        self.ready.callback(self)

    def handshakeCompleted(self) -> None:
        """TLS is up and the server's certificate was accepted."""
        if self.handshake is not None and not self.handshake.called:
            self.handshake.callback(self)

    def dataReceived(self, data: bytes) -> None:
        """Split the stream into messages: the proxy's own, or the client's."""
        self.buffer += data
        while not self.lost:
            try:
                taken = ber.next_message(self.buffer, UPSTREAM_MAX_MESSAGE)
                if taken is None:
                    return
                raw, msg = taken
            except ber.ProtocolError as exc:
                logs.event(log, logging.WARNING, "ldap_front.upstream_garbled",
                           server=self.server.url, error=str(exc))
                self.transport.abortConnection()
                return
            exchange = self._own.get(msg.message_id)
            if exchange is not None:
                self._collect(msg.message_id, exchange, msg)
            elif self.deliver is not None:
                self.deliver(raw)

    def _collect(self, message_id: int, exchange: _Exchange, msg: ber.Message) -> None:
        exchange.messages.append(msg)
        if msg.op_tag in exchange.final or len(exchange.messages) >= MAX_OWN_MESSAGES:
            del self._own[message_id]
            exchange.timer.cancel()
            exchange.done.callback(exchange.messages)

    def exchange(self, request: bytes, message_id: int,
                 final: frozenset[int]) -> defer.Deferred:
        """Send one of the proxy's requests; fires with its responses, or UpstreamFailed."""
        if self.lost:
            return defer.fail(UpstreamFailed("connection closed"))
        exchange = self._own[message_id] = _Exchange(final)
        exchange.timer = self.clock.callLater(self.response_timeout, self._timed_out, message_id)
        self.transport.write(request)
        return exchange.done

    def _timed_out(self, message_id: int) -> None:
        exchange = self._own.pop(message_id, None)
        if exchange is not None:
            exchange.done.errback(UpstreamFailed(
                f"{self.server.url}: no answer within {self.response_timeout} s"))
            # A late answer must not surprise whoever uses the connection next.
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        """Fail the proxy's own requests; tell the client side."""
        self.lost = True
        if self.handshake is not None and not self.handshake.called:
            self.handshake.errback(UpstreamFailed(f"TLS failed: {reason.getErrorMessage()}"))
        own, self._own = self._own, {}
        for exchange in own.values():
            if exchange.timer.active():
                exchange.timer.cancel()
            exchange.done.errback(UpstreamFailed(f"connection lost: {reason.getErrorMessage()}"))
        if self.on_lost is not None:
            self.on_lost(self, reason)


class _Factory(ClientFactory):
    def __init__(self, protocol: Upstream):
        self.protocol_instance = protocol

    def buildProtocol(self, addr):
        return self.protocol_instance

    def clientConnectionFailed(self, connector, reason):
        if not self.protocol_instance.ready.called:
            self.protocol_instance.ready.errback(
                UpstreamFailed(f"connect failed: {reason.getErrorMessage()}"))


class UpstreamConnector:
    """Opens a verified connection to the first directory server that answers."""

    def __init__(self, reactor, counters: Counters, ldap: LdapConfig,
                 monotonic=time.monotonic):
        self.reactor = reactor
        self.counters = counters
        self.ldap = ldap  # replaced on reload: new connections use the new servers
        self.monotonic = monotonic
        self._down_until: dict[str, float] = {}

    def _order(self) -> list[LdapServer]:
        now = self.monotonic()
        up = [s for s in self.ldap.servers if self._down_until.get(s.url, 0.0) <= now]
        # Every server in backoff: try them all anyway rather than fail outright.
        return up or list(self.ldap.servers)

    async def connect(self) -> Upstream:
        """The first server in order that connects (and completes TLS); else UpstreamFailed."""
        errors = []
        for server in self._order():
            try:
                upstream = await self._open(server)
            except UpstreamFailed as exc:
                self._down_until[server.url] = self.monotonic() + self.ldap.backoff
                self.counters.inc("ldap_front_upstream_failures", server=server.url)
                logs.event(log, logging.WARNING, "ldap_front.upstream_failed",
                           server=server.url, error=str(exc))
                errors.append(f"{server.url}: {exc}")
                continue
            self._down_until.pop(server.url, None)
            self.counters.inc("ldap_front_upstream_connections", server=server.url)
            return upstream
        raise UpstreamFailed("; ".join(errors) or "no directory servers")

    async def _open(self, server: LdapServer) -> Upstream:
        cfg = self.ldap
        tls = client_tls(server, cfg.ca_file) if server.use_ssl or cfg.start_tls else None
        upstream = Upstream(server, self.reactor, cfg.response_timeout)
        factory = _Factory(upstream)
        if server.use_ssl:
            upstream.handshake = defer.Deferred()
            self.reactor.connectSSL(server.host, server.port, factory, tls,
                                    timeout=cfg.connect_timeout)
        else:
            self.reactor.connectTCP(server.host, server.port, factory,
                                    timeout=cfg.connect_timeout)
        await upstream.ready
        try:
            if cfg.start_tls:
                (answer,) = (await upstream.exchange(
                    ber.extended_request(1, ber.STARTTLS_OID), 1,
                    frozenset({ber.EXTENDED_RESPONSE})))[-1:]
                code = ber.parse_result(answer.op).code
                if code != ber.SUCCESS:
                    raise UpstreamFailed(f"StartTLS refused (result {code})")
                upstream.handshake = defer.Deferred()
                upstream.transport.startTLS(tls)
            if upstream.handshake is not None:
                await self._bounded(upstream, upstream.handshake, cfg.connect_timeout)
        except (UpstreamFailed, ber.ProtocolError) as exc:
            upstream.transport.abortConnection()
            raise UpstreamFailed(str(exc)) from None
        return upstream

    async def _bounded(self, upstream: Upstream, d: defer.Deferred, seconds: float):
        timer = self.reactor.callLater(seconds, upstream.transport.abortConnection)
        try:
            return await d
        finally:
            if timer.active():
                timer.cancel()
