"""The name check of every LDAP TLS connection (ldaps:// and StartTLS), on every Python.

ldap3 2.9.1 checks the name itself after the handshake, with
``ssl.match_hostname``; Python 3.12 removed that function, and ldap3 then
falls back to its own old copy, which ignores IP-address subjectAltNames
(``ldaps://127.0.0.1`` refused although the certificate names IP:127.0.0.1)
and accepts partial wildcards (``w*.example.com``, ``local*``) that Python
refuses. Which name check decided a connection thus depended on the Python
version.

Here the context does the check during the handshake (``check_hostname``
with ``server_hostname`` set: OpenSSL's X509_check_host / X509_check_ip, the
same on 3.11, 3.12 and 3.13), and `CheckedTls` hands that context to ldap3 so
ldap3's own check never runs. The daemon's logins and the LDAP front end's
upstream connections go through Twisted (`pushproxy.ldapconns`,
`pushproxy.ldapfront.upstream`; pyOpenSSL), with `pushproxy.tlsnames.NameCheckedTLS`,
which fails closed on the same rules. The context here ignores the common name
too, so a certificate one path accepts the other accepts as well.
"""

from __future__ import annotations

import ssl

import ldap3


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context: chain verified against ``ca_file`` (or the system store), name checked.

    The name is checked against subjectAltName entries only (DNS, and IP for
    an address), as the daemon's Twisted client does; a certificate that names
    its host only in the subject's CN is refused on every path alike.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.hostname_checks_common_name = False
    if ca_file:
        ctx.load_verify_locations(ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx


class CheckedTls(ldap3.Tls):
    """ldap3's TLS settings for one server, with the handshake done by ``context``.

    ldap3 wraps the socket through ``Tls.wrap_socket`` for ldaps:// and for
    StartTLS alike; this one wraps it with ``context`` and ``server_hostname``
    (so the handshake itself fails with ssl.SSLCertVerificationError on a
    wrong name) and skips ldap3's ``check_hostname``.
    """

    def __init__(self, context: ssl.SSLContext, server_name: str):
        super().__init__(validate=ssl.CERT_REQUIRED)
        if not context.check_hostname or context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("CheckedTls needs a context that verifies and checks the name")
        self.context = context
        self.server_name = server_name

    def wrap_socket(self, connection, do_handshake=False):
        """Layer TLS on ``connection.socket``; the name is checked in the handshake."""
        connection.socket = self.context.wrap_socket(
            connection.socket, server_side=False, do_handshake_on_connect=do_handshake,
            server_hostname=self.server_name)


def ldap3_tls(ca_file: str | None, host: str) -> CheckedTls:
    """The ldap3 ``tls=`` argument for a server reached as ``host`` (name or IP address)."""
    return CheckedTls(client_context(ca_file), host)
