"""RADIUS/DTLS (RFC 7360, draft-ietf-radext-radiusdtls-bis) on UDP, with pyOpenSSL memory BIOs.

Twisted has no DTLS transport, so this module is one: a UDP listener keeps one
pyOpenSSL ``Connection`` (memory BIOs) per peer address and plays the TLS
transport for the same `RadsecConnection` protocol the TCP listener uses
(certificate names, per-client caps, in-flight cap, idle timeout, the shared
RADIUS path). What differs from TLS:

- A new peer first gets a stateless HelloVerifyRequest (``DTLSv1_listen`` with
  an HMAC cookie over its address): no state and no certificate is sent to a
  spoofed source until it proves it receives our datagrams.
- Handshake flights are retransmitted on OpenSSL's timer (``DTLSv1_get_timeout``).
- Records are cut to ``MTU`` and packed into datagrams by record boundaries.
- RADIUS/1.0 over DTLS uses the secret "radius/dtls" (RFC 7360 2.1).
- One RADIUS packet per record; the protocol's framer still checks the Length.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.protocol import DatagramProtocol

from pushproxy import logs
from pushproxy.radsec.listener import ALPN
from pushproxy.radsec.settings import RadsecConfig

log = logging.getLogger("pushproxy.radsec")

DTLS_SECRET = b"radius/dtls"
MTU = 1200  # ciphertext per datagram; safe on any path without PMTU discovery
_RECORD_HEADER = 13
DTLS1_2_VERSION = 0xFEFD  # OpenSSL's DTLS1_2_VERSION; pyOpenSSL names no DTLS versions


def dtls_context(config: RadsecConfig, cookie_key: bytes) -> SSL.Context:
    """Server DTLS 1.2: our chain, client certificates required and verified, ALPN."""
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
    with open(config.cert_file, "rb") as f:
        chain = x509.load_pem_x509_certificates(f.read())
    ctx.use_certificate(crypto.X509.from_cryptography(chain[0]))
    for extra in chain[1:]:
        ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    with open(config.key_file, "rb") as f:
        ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, f.read()))
    ctx.check_privatekey()
    ctx.load_verify_locations(config.ca_file)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                   lambda conn, cert, errno, depth, ok: bool(ok))
    offered = [ALPN[v] for v in config.versions]

    def select(conn, protocols):
        for ours in offered:
            if ours in protocols:
                return ours
        return b""  # no overlap: fail the handshake (RFC 9765)

    ctx.set_alpn_select_callback(select)

    def cookie(conn) -> bytes:
        host, port = conn.get_app_data()
        return hmac.new(cookie_key, f"{host}|{port}".encode(), hashlib.sha256).digest()[:16]

    ctx.set_cookie_generate_callback(cookie)
    ctx.set_cookie_verify_callback(lambda conn, value: hmac.compare_digest(cookie(conn), value))
    return ctx


def datagrams(out: bytes, mtu: int = MTU) -> list[bytes]:
    """Whole DTLS records from the write BIO, packed into datagrams of at most ``mtu``."""
    records, pos = [], 0
    while pos + _RECORD_HEADER <= len(out):
        length = struct.unpack_from("!H", out, pos + 11)[0]
        records.append(out[pos:pos + _RECORD_HEADER + length])
        pos += _RECORD_HEADER + length
    grams, current = [], b""
    for record in records:
        if current and len(current) + len(record) > mtu:
            grams.append(current)
            current = b""
        current += record
    if current:
        grams.append(current)
    return grams


class DtlsSession:
    """One peer's DTLS connection; the transport of its `RadsecConnection`."""

    def __init__(self, listener: "DtlsListener", addr, conn: SSL.Connection):
        self.listener = listener
        self.addr = addr
        self.conn = conn
        self.protocol = None
        self.established = False
        self._timer = None
        self.closed = False

    # -- what RadsecConnection uses of a TLS transport ------------------------

    @property
    def negotiatedProtocol(self) -> bytes | None:
        """The ALPN protocol, or None."""
        return self.conn.get_alpn_proto_negotiated() or None

    def getPeerCertificate(self):
        """The client's verified certificate (pyOpenSSL X509)."""
        return self.conn.get_peer_certificate()

    def getHandle(self) -> SSL.Connection:
        """The pyOpenSSL connection (its protocol version for the log)."""
        return self.conn

    def write(self, data: bytes) -> None:
        """One RADIUS packet, one record."""
        if self.closed:
            return
        try:
            self.conn.send(data)
        except SSL.Error:
            return self.abortConnection()
        self._flush()
        return None

    def abortConnection(self) -> None:
        """Forget the peer (a new handshake starts over with a cookie)."""
        if self.closed:
            return
        self.closed = True
        self._cancel()
        self.listener.sessions.pop(self.addr, None)
        if self.protocol is not None:
            self.protocol.connectionLost(None)

    # -- datagrams ---------------------------------------------------------------

    def datagram(self, data: bytes) -> None:
        """A datagram from the peer: handshake progress or records to decrypt."""
        self.conn.bio_write(data)
        if not self.established:
            self._handshake()
            if not self.established:
                return
        while not self.closed:
            try:
                packet = self.conn.recv(65535)
            except SSL.WantReadError:
                break
            except (SSL.ZeroReturnError, SSL.Error):
                self._flush()
                return self.abortConnection()
            self.protocol.dataReceived(packet)
        self._flush()
        return None

    def _handshake(self) -> None:
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            self._flush()
            self._arm()
            return
        except SSL.Error as exc:
            self._flush()  # the alert
            self.listener.counters.inc("radsec_refused", reason="dtls_handshake")
            self.listener.factory.note("dtls_handshake", self.addr[0], str(exc)[:300],
                                       level=logging.WARNING)
            self.protocol._closed = True  # refused before identification: no double count
            return self.abortConnection()
        self._flush()
        self._cancel()
        self.established = True
        self.protocol.handshakeCompleted()

    def _flush(self) -> None:
        out = b""
        while True:
            try:
                chunk = self.conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        for gram in datagrams(out):
            self.listener.send(gram, self.addr)

    def _arm(self) -> None:
        self._cancel()
        timeout = self.conn.DTLSv1_get_timeout()
        if timeout is not None:
            self._timer = self.listener.clock.callLater(max(timeout, 0.01), self._resend)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _resend(self) -> None:
        self._timer = None
        if self.closed or self.established:
            return
        try:
            self.conn.DTLSv1_handle_timeout()
        except SSL.Error:
            return self.abortConnection()
        self._flush()
        self._arm()
        return None


class DtlsListener(DatagramProtocol):
    """UDP 2083: stateless cookies for new peers, then one `DtlsSession` each."""

    def __init__(self, config: RadsecConfig, factory, counters, clock):
        self.config = config
        self.factory = factory  # a RadsecFactory with secret "radius/dtls"
        self.counters = counters
        self.clock = clock
        self.context = dtls_context(config, os.urandom(32))
        self.sessions: dict[tuple, DtlsSession] = {}
        self._per_source: dict[str, int] = {}

    def send(self, data: bytes, addr) -> None:
        """A datagram to ``addr`` (dropped if the listener has closed)."""
        if self.transport is not None:
            self.transport.write(data, addr)

    def datagramReceived(self, data: bytes, addr) -> None:
        """Route to the peer's session, or answer a ClientHello with a cookie."""
        session = self.sessions.get(addr)
        if session is not None:
            return session.datagram(data)
        conn = SSL.Connection(self.context, None)
        conn.set_app_data(addr)
        conn.set_ciphertext_mtu(MTU)
        conn.set_accept_state()
        conn.bio_write(data)
        try:
            conn.DTLSv1_listen()
        except SSL.WantReadError:
            # No valid cookie yet: a HelloVerifyRequest goes back, nothing is kept.
            try:
                out = conn.bio_read(65536)
            except SSL.WantReadError:
                out = b""  # not a ClientHello at all: silence
            for gram in datagrams(out):
                self.send(gram, addr)
            return None
        except SSL.Error:
            self.counters.inc("radsec_drops", reason="dtls_junk")
            return None
        if len(self.sessions) >= self.config.max_connections or \
                self._count(addr[0]) >= (self.config.max_connections_per_source or 1 << 30):
            self.counters.inc("connections_refused", listener="radsec-dtls", reason="limit")
            return None
        session = DtlsSession(self, addr, conn)
        self.sessions[addr] = session
        protocol = self.factory.buildProtocol(type("Addr", (), {"host": addr[0],
                                                                  "port": addr[1]})())
        session.protocol = protocol
        protocol.makeConnection(session)
        session._handshake()
        logs.event(log, logging.DEBUG, "radsec.dtls_session", source=addr[0])
        return None

    def _count(self, host: str) -> int:
        return sum(1 for (h, _) in self.sessions if h == host)

    def close_all(self) -> None:
        """Drop every session (shutdown)."""
        for session in list(self.sessions.values()):
            session.abortConnection()
