"""The RadSec listener: RADIUS over TLS on TCP 2083, beside the UDP listener.

    accept (connection budget: total, per source IP)
    -> TLS handshake (TLS 1.2+, client certificate verified against ca_file,
       ALPN radius/1.1 | radius/1.0, handshake_timeout)
    -> client by certificate names (unknown: refused, logged, counted)
    -> per-client connection cap
    -> stream cut into packets by the Length field (junk: this connection closes)
    -> the UDP path's receive(): retransmit table, decode + verify, engine, reply

RADIUS/1.0 inside TLS uses the shared secret "radsec" (RFC 6614 2.3); with
ALPN radius/1.1 (RFC 9765) the authenticator field is the Token and nothing
is hidden with MD5. A connection closes after ``idle_timeout`` seconds with
no request and no request pending. Status-Server is answered like over UDP
(RFC 5997), which is the watchdog radsecproxy and FreeRADIUS send.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import Counter

from cryptography import x509
from OpenSSL import crypto
from twisted.internet import defer, ssl
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from pushproxy import connlimit, logs
from pushproxy.radius.codec import DropReason, peek_header
from pushproxy.radius.codec import DropPacket
from pushproxy.radius.loglimit import LogLimiter
from pushproxy.radius.retransmit import RequestKey, State
from pushproxy.radsec import identity
from pushproxy.radsec.framing import Framer, FramingError
from pushproxy.radsec.settings import RadsecConfig

log = logging.getLogger("pushproxy.radsec")

ALPN = {"1.0": b"radius/1.0", "1.1": b"radius/1.1"}
# A request dropped for these reasons means the peer's encoder (or its idea of
# the secret) is broken; RFC 6613: close rather than guess at the stream.
_CLOSING_DROPS = {DropReason.MALFORMED, DropReason.BAD_MESSAGE_AUTHENTICATOR}


def tls_options(config: RadsecConfig) -> ssl.CertificateOptions:
    """Server TLS: our certificate chain, client certificates required and verified."""
    with open(config.cert_file, "rb") as f:
        chain = x509.load_pem_x509_certificates(f.read())
    with open(config.key_file, "rb") as f:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
    with open(config.ca_file, "rb") as f:
        cas = x509.load_pem_x509_certificates(f.read())
    return ssl.CertificateOptions(
        privateKey=key, certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        verify=True, requireCertificate=True,
        caCerts=[crypto.X509.from_cryptography(c) for c in cas],
        # TLS 1.3 is negotiated whenever the peer offers it; 1.2 is the floor
        # (draft-ietf-radext-radiusdtls-bis). OpenSSL accepts no 0-RTT data
        # unless max_early_data is raised, which we never do.
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        # In our order of preference; no overlap with the peer's list fails the
        # handshake (RFC 9765 3.2), no ALPN at all from the peer is RADIUS/1.0.
        acceptableProtocols=[ALPN[v] for v in config.versions])


@implementer(IHandshakeListener)
class RadsecConnection(Protocol):
    """One TLS connection from one RadSec peer."""

    def __init__(self, factory: "RadsecFactory", host: str, port: int):
        self.factory = factory
        self.host = host
        self.port = port
        # The retransmit table's key for this connection's requests: never a UDP
        # port and never an earlier connection's, so a RADIUS/1.1 Token (often a
        # counter) cannot fetch a reply cached for another connection that had
        # the same source port.
        self.key_port = next(factory.serials)
        self.client = None  # RadsecClient, once the certificate named one
        self.v11 = False
        self.framer = Framer()
        self.pending: set[RequestKey] = set()
        self._timer = None
        self._closed = False
        self._refused = False
        self._early = b""

    # -- lifecycle -----------------------------------------------------------

    def connectionMade(self) -> None:
        """The TCP connection is up; the handshake must finish in time."""
        self.factory.counters.inc("radsec_connections")
        self._arm(self.factory.config.handshake_timeout, "handshake_timeout")

    def handshakeCompleted(self) -> None:
        """TLS is up and the chain verified: find the client the certificate names."""
        factory = self.factory
        protocol = getattr(self.transport, "negotiatedProtocol", None)
        if protocol is None and (factory.config.require_alpn
                                 or "1.0" not in factory.config.versions):
            return self._refuse("no_alpn", "the peer offered no ALPN protocol")
        self.v11 = protocol == ALPN["1.1"]
        if factory.psk is not None:
            proved = factory.psk.identity_of(self.transport.getHandle())
            names = identity.CertificateNames(cn=(f"psk:{proved!r}",))
            client = identity.find_psk_client(factory.config.psk_clients, proved, self.host)
        else:
            cert = self.transport.getPeerCertificate()
            names = identity.names_of(cert.to_cryptography()) if cert is not None \
                else identity.CertificateNames()
            client = identity.find_client(factory.config.clients, names, self.host)
        if client is None:
            return self._refuse("unknown_client", names.summary())
        name = client.client.name
        if factory.per_client[name] >= factory.config.max_connections_per_client:
            return self._refuse("per_client", f"{name} has "
                                              f"{factory.per_client[name]} connections")
        factory.per_client[name] += 1
        if factory.secret is not None:  # DTLS: RFC 7360's "radius/dtls"
            client = dataclasses.replace(client, client=dataclasses.replace(
                client.client, secret=factory.secret))
        self.client = client
        logs.event(log, logging.INFO, "radsec.connected", source=self.host, client=name,
                   version="1.1" if self.v11 else "1.0", tls=self._tls_version(),
                   names=names.summary())
        self._arm(factory.config.idle_timeout, "idle")
        self._deliver(b"")  # anything that came with the handshake

    def _tls_version(self) -> str | None:
        try:
            return self.transport.getHandle().get_protocol_version_name()
        except Exception:  # a transport without an OpenSSL handle (tests): not logged
            return None

    def connectionLost(self, reason=None) -> None:
        """Give the client's slot back; a failed handshake is logged (rate-limited)."""
        ours, self._closed = self._closed, True
        self._cancel()
        self.factory.connections.discard(self)
        if self.factory.psk is not None and self.client is None:
            # A handshake that failed after the PSK callback (wrong key) left its entry.
            try:
                self.factory.psk.identity_of(self.transport.getHandle())
            except Exception:  # no handle: nothing was recorded
                pass
        if self.client is not None:
            name = self.client.client.name
            self.factory.per_client[name] -= 1
            if self.factory.per_client[name] <= 0:
                del self.factory.per_client[name]
        elif not ours:
            # Bad or missing certificate, wrong CA, no common TLS version or ALPN.
            self.factory.counters.inc("radsec_refused", reason="tls_handshake")
            detail = reason.getErrorMessage()[:300] if reason is not None else ""
            self.factory.note("tls_handshake", self.host, detail, level=logging.WARNING)

    # -- data ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Bytes from inside TLS; held until the peer is identified."""
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if self.client is None:
            # Twisted reports the handshake before the data after it; held just in case.
            self._early += data
            if len(self._early) > 65536:
                self._close("framing", "data before the peer was identified")
            return
        data, self._early = self._early + data, b""
        if not data:
            return
        junk = None
        try:
            packets = self.framer.feed(data)
        except FramingError as exc:
            packets, junk = exc.packets, exc
        for packet in packets:
            if self._closed:
                return
            self._packet(packet)
        if junk is not None:
            self._close("framing", junk.detail)

    def _packet(self, data: bytes) -> None:
        factory = self.factory
        self._arm(factory.config.idle_timeout, "idle")
        try:
            _, ident, authenticator = peek_header(data)
        except DropPacket as exc:  # the framer checked the length; defensive
            return self._close("framing", exc.detail)
        key = RequestKey(self.host, self.key_port, ident, authenticator)
        if len(self._in_flight()) >= factory.config.max_in_flight and key not in self.pending:
            factory.counters.inc("radsec_drops", reason="in_flight")
            factory.note("in_flight", self.host, f"{len(self.pending)} requests pending",
                         client=self.client.client.name)
            return None
        dropped = factory.radius.receive(data, self.host, self.key_port, self.client.client,
                                         self._send, v11=self.v11)
        if dropped in _CLOSING_DROPS:
            return self._close(dropped.value, "")
        if factory.radius.table.state(key, factory.clock.seconds()) is State.IN_FLIGHT:
            self.pending.add(key)
        return None

    def _send(self, reply: bytes) -> None:
        """A reply (or a cached one) for this connection; dropped if it has closed."""
        if self._closed or self.transport is None:
            return
        self.transport.write(reply)
        if self.client is not None:
            self._arm(self.factory.config.idle_timeout, "idle")

    def _in_flight(self) -> set[RequestKey]:
        now = self.factory.clock.seconds()
        table = self.factory.radius.table
        self.pending = {k for k in self.pending if table.state(k, now) is State.IN_FLIGHT}
        return self.pending

    # -- timers and closing --------------------------------------------------

    def _arm(self, seconds: float, why: str) -> None:
        self._cancel()
        self._timer = self.factory.clock.callLater(seconds, self._expired, why)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expired(self, why: str) -> None:
        self._timer = None
        if why == "idle" and self._in_flight():
            # A login waiting for a phone is not idleness: look again later.
            return self._arm(self.factory.config.idle_timeout, "idle")
        return self._close(why, "")

    def _refuse(self, reason: str, detail: str) -> None:
        self._refused = True
        self.factory.counters.inc("radsec_refused", reason=reason)
        self.factory.note(reason, self.host, detail, level=logging.WARNING)
        self._abort()

    def _close(self, reason: str, detail: str) -> None:
        if self._closed:
            return
        self.factory.counters.inc("radsec_closed", reason=reason)
        self.factory.note(reason, self.host, detail,
                          client=self.client.client.name if self.client else None)
        self._abort()

    def _abort(self) -> None:
        self._closed = True
        self._cancel()
        if self.transport is not None:
            self.transport.abortConnection()


class RadsecFactory(Factory):
    """Shared state of one or more RadSec listeners."""

    noisy = False

    def __init__(self, config: RadsecConfig, radius, counters, clock, *,
                 secret: bytes | None = None, psk=None):
        self.config = config
        self.secret = secret  # None: the clients' own ("radsec"); DTLS: "radius/dtls"
        self.psk = psk  # a PskContextFactory: clients known by their PSK identity
        self.radius = radius  # the RadiusProtocol whose receive() every packet goes through
        self.counters = counters
        self.clock = clock
        self.per_client: Counter[str] = Counter()
        self.connections: set[RadsecConnection] = set()
        self.serials = itertools.count(65536)  # RadsecConnection.key_port
        self._log = LogLimiter(every=60.0, max_lines=50)

    def buildProtocol(self, addr):
        """A connection protocol (it leaves `connections` when it closes)."""
        conn = RadsecConnection(self, getattr(addr, "host", "?"), getattr(addr, "port", 0))
        self.connections.add(conn)
        return conn

    def note(self, reason: str, host: str, detail: str, *, client: str | None = None,
             level: int = logging.INFO) -> None:
        """One log line per reason and source a minute (floods stay counted, not logged)."""
        suppressed = self._log.note((reason, host), self.clock.seconds())
        if suppressed is not None:
            logs.event(log, level, "radsec.closed", reason=reason, source=host, client=client,
                       detail=detail or None, suppressed=suppressed or None)


class RadsecListener:
    """Daemon component: the RadSec listeners, sharing the daemon's RADIUS path."""

    def __init__(self, daemon, *, reuse_port: bool = False):
        self.daemon = daemon
        self.config: RadsecConfig = daemon.config.radius.radsec
        self.reuse_port = reuse_port
        self.factory = None
        self.ports = []
        self.dtls = []  # DtlsListener per radius.radsec.dtls_listen address
        self.extra_factories = []  # the PSK listener's

    def start(self):
        """Listen on every ``radius.radsec.listen`` address."""
        daemon = self.daemon
        # A RadiusProtocol of the daemon's (its table, engine, admission, and the
        # daemon's stop() makes it refuse new requests) that never binds UDP.
        self.factory = RadsecFactory(self.config, daemon.protocol(), daemon.counters,
                                     daemon.reactor)
        options = tls_options(self.config)
        budget = connlimit.ConnectionBudget(
            "radsec", total=self.config.max_connections,
            per_source=self.config.max_connections_per_source)
        for host, port in self.config.listen:
            listening = connlimit.listen(daemon.reactor, port, self.factory, budget,
                                         daemon.counters, interface=host, tls_options=options,
                                         reuse_port=self.reuse_port)
            self.ports.append(listening)
            bound = listening.getHost()
            logs.event(log, logging.INFO, "radsec.listening", address=bound.host,
                       port=bound.port, versions=",".join(self.config.versions))
        if self.config.psk_listen:
            from pushproxy.radsec.psk import PskContextFactory

            psk = PskContextFactory(self.config, [ALPN[v] for v in self.config.versions])
            psk_factory = RadsecFactory(self.config, self.factory.radius, daemon.counters,
                                        daemon.reactor, psk=psk)
            self.extra_factories.append(psk_factory)
            for host, port in self.config.psk_listen:
                listening = connlimit.listen(daemon.reactor, port, psk_factory, budget,
                                             daemon.counters, interface=host,
                                             tls_options=psk, reuse_port=self.reuse_port)
                self.ports.append(listening)
                bound = listening.getHost()
                logs.event(log, logging.INFO, "radsec.listening", transport="tls-psk",
                           address=bound.host, port=bound.port)
        for host, port in self.config.dtls_listen:
            from pushproxy.radsec.dtls import DTLS_SECRET, DtlsListener

            dtls = DtlsListener(self.config, RadsecFactory(
                self.config, self.factory.radius, daemon.counters, daemon.reactor,
                secret=DTLS_SECRET), daemon.counters, daemon.reactor)
            listening = daemon.reactor.listenUDP(port, dtls, interface=host)
            self.ports.append(listening)
            self.dtls.append(dtls)
            bound = listening.getHost()
            logs.event(log, logging.INFO, "radsec.listening", transport="dtls",
                       address=bound.host, port=bound.port)
        return defer.succeed(None)

    @defer.inlineCallbacks
    def stop(self):
        """Stop listening and close the connections (pending logins were drained before)."""
        for port in self.ports:
            yield port.stopListening()
        self.ports = []
        for factory in ([self.factory] if self.factory else []) + self.extra_factories:
            for conn in list(factory.connections):
                conn._abort()
        for dtls in self.dtls:
            dtls.close_all()
        self.dtls = []
