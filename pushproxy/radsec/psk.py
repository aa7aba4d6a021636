"""TLS-PSK for RadSec (draft-ietf-radext-radiusdtls-bis): clients known by a PSK identity.

Python 3.11's ``ssl`` has no PSK server callback (3.13 adds one) and pyOpenSSL
has no PSK API, so the OpenSSL callback is set through the cffi bindings that
``cryptography`` ships (the ones pyOpenSSL itself is built on). A PSK listener
has its own addresses (``radius.radsec.psk_listen``) and context: TLS 1.2 PSK
cipher suites with (EC)DHE first, and TLS 1.3 (OpenSSL takes the same callback
for TLS 1.3 with SHA-256 suites). No certificates are exchanged; the identity
the handshake proved picks the client.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from pushproxy.radsec.settings import RadsecConfig

_ffi, _lib = Binding.ffi, Binding.lib
TLS1_2_VERSION = 0x0303
# Forward secrecy first; plain PSK last for peers that offer nothing else.
CIPHERS = (b"ECDHE-PSK-AES128-CBC-SHA256:ECDHE-PSK-AES256-CBC-SHA384:"
           b"DHE-PSK-AES128-GCM-SHA256:DHE-PSK-AES256-GCM-SHA384:"
           b"PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384")


def available() -> bool:
    """Whether this OpenSSL build and its bindings do PSK."""
    return bool(getattr(_lib, "Cryptography_HAS_PSK", False)) and \
        hasattr(_lib, "SSL_CTX_set_psk_server_callback")


def ssl_pointer(conn: SSL.Connection) -> int:
    """The SSL* of a pyOpenSSL connection, as a number (the callback's key)."""
    return int(_ffi.cast("uintptr_t", conn._ssl))


@implementer(IOpenSSLContextFactory)
class PskContextFactory:
    """A server context for PSK clients; remembers which identity each handshake used."""

    def __init__(self, config: RadsecConfig, alpn: list[bytes]):
        self.keys = {c.identity: c.key for c in config.psk_clients}
        self.identities: dict[int, bytes] = {}  # SSL* -> identity proved
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(TLS1_2_VERSION)
        ctx.set_cipher_list(CIPHERS)
        ctx.set_options(SSL.OP_NO_TICKET)

        def select(conn, protocols):
            for ours in alpn:
                if ours in protocols:
                    return ours
            return b""

        ctx.set_alpn_select_callback(select)

        @_ffi.callback("unsigned int(SSL *, const char *, unsigned char *, unsigned int)")
        def server_psk(ssl, identity, out, max_len):
            try:
                name = _ffi.string(identity)
                key = None
                for known, value in self.keys.items():
                    if hmac.compare_digest(known, name):
                        key = value
                if key is None or len(key) > max_len:
                    return 0  # unknown identity: the handshake fails
                _ffi.memmove(out, key, len(key))
                self.identities[int(_ffi.cast("uintptr_t", ssl))] = name
                return len(key)
            except Exception:  # never let an exception cross into OpenSSL
                return 0

        self._callback = server_psk  # kept alive as long as the context
        _lib.SSL_CTX_set_psk_server_callback(ctx._context, server_psk)
        self.context = ctx

    def getContext(self) -> SSL.Context:
        """Twisted's server context factory interface."""
        return self.context

    def identity_of(self, conn: SSL.Connection) -> bytes | None:
        """The identity this connection's handshake proved (taken once)."""
        return self.identities.pop(ssl_pointer(conn), None)
