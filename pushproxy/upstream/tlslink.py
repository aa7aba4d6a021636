"""RADIUS/TLS toward an upstream server: one persistent, verified TLS connection per server.

The upstream client (`pushproxy.upstream.client`) stays the one place that
matches replies to requests and verifies them; a `TlsLink` only carries bytes:
requests written to the stream (connecting first when needed), replies cut out
of it by their Length field (`pushproxy.radsec.framing`) and handed back as if
they were datagrams from the server's address. The server's certificate must
chain to ``tls.ca_file`` and carry ``tls.server_name`` (DNS name or IP address);
``tls.cert_file`` is our client certificate. A lost connection is reopened by the
next request; requests written into a dying connection time out like lost
datagrams and fail over.
"""

from __future__ import annotations

import logging

from twisted.internet import ssl
from twisted.internet.protocol import ClientFactory, Protocol

from pushproxy import logs
from pushproxy.radsec.framing import Framer, FramingError
from pushproxy.tlsnames import NameCheckedTLS
from pushproxy.upstream.settings import UpstreamServer

log = logging.getLogger("pushproxy.upstream")


def client_options(server: UpstreamServer):
    """Twisted client TLS options: CA, our certificate, the server's name checked."""
    tls = server.tls
    with open(tls.ca_file, "rb") as f:
        trust = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(pem) for pem in _pems(f.read())])
    client_cert = None
    if tls.cert_file:
        with open(tls.cert_file, "rb") as f, open(tls.key_file, "rb") as k:
            client_cert = ssl.PrivateCertificate.loadPEM(f.read() + k.read())
    # A DNS name is checked against the SAN dNSNames, an IP address against the
    # SAN iPAddresses, failing closed (Twisted's own check lets a certificate
    # without usable subjectAltNames through: see pushproxy.tlsnames).
    return NameCheckedTLS(tls.server_name, trust, clientCertificate=client_cert,
                          extraCertificateOptions={
                              "raiseMinimumTo": ssl.TLSVersion.TLSv1_2})


def _pems(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [part + marker for part in data.split(marker) if b"-----BEGIN" in part]


class _Stream(Protocol):
    def __init__(self, link: "TlsLink"):
        self.link = link
        self.framer = Framer()

    def connectionMade(self):
        self.link.connected(self)

    def dataReceived(self, data: bytes):
        try:
            packets = self.framer.feed(data)
        except FramingError as exc:
            packets = exc.packets
            self.link.counters.inc("upstream_drops", reason="framing")
            self.transport.abortConnection()
        for packet in packets:
            self.link.deliver(packet)

    def connectionLost(self, reason=None):
        self.link.lost(self, reason)


class TlsLink(ClientFactory):
    """The connection to one TLS upstream server; `send` connects on demand."""

    noisy = False

    def __init__(self, server: UpstreamServer, reactor, deliver, counters):
        self.server = server
        self.reactor = reactor
        self.deliver_to = deliver  # (packet, (host, port)) -> None: the client's reply path
        self.counters = counters
        self.options = client_options(server)
        self.stream: _Stream | None = None
        self.connecting = False
        self.queue: list[bytes] = []
        self.closed = False

    def buildProtocol(self, addr):
        """One stream per connection."""
        return _Stream(self)

    def send(self, data: bytes) -> None:
        """Write ``data`` now, or once the connection is up."""
        if self.closed:
            return
        if self.stream is not None:
            self.stream.transport.write(data)
            return
        self.queue.append(data)
        if not self.connecting:
            self.connecting = True
            self.reactor.connectSSL(self.server.host, self.server.port, self, self.options,
                                    timeout=max(self.server.timeout, 1))

    def connected(self, stream: _Stream) -> None:
        """TCP is up (TLS finishes before the queued bytes leave)."""
        self.connecting = False
        self.stream = stream
        queue, self.queue = self.queue, []
        for data in queue:
            stream.transport.write(data)

    def deliver(self, packet: bytes) -> None:
        """A reply from the stream: to the client's matching and verification."""
        self.deliver_to(packet, (self.server.host, self.server.port))

    def lost(self, stream: _Stream, reason) -> None:
        """The connection ended (TLS failure, server close): the next request reconnects."""
        if self.stream is stream or self.stream is None:
            self.stream = None
        self.connecting = False
        if not self.closed:
            logs.event(log, logging.WARNING, "upstream.tls_closed", server=self.server.name,
                       reason=reason.getErrorMessage()[:200] if reason is not None else None)

    def clientConnectionFailed(self, connector, reason):
        """No connection: queued requests time out and fail over."""
        self.connecting = False
        self.queue = []
        self.counters.inc("upstream_tls_failures", server=self.server.name)
        logs.event(log, logging.WARNING, "upstream.tls_connect_failed",
                   server=self.server.name, reason=reason.getErrorMessage()[:200])

    def close(self) -> None:
        """Stop: drop the connection."""
        self.closed = True
        if self.stream is not None and self.stream.transport is not None:
            self.stream.transport.loseConnection()
