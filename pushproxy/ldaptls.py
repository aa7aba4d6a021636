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
`pushproxy.ldapfront.upstream`; pyOpenSSL), with `NameCheckedTLS`: service_identity's
rules (DNS and IP-address subjectAltNames, whole-label wildcards only, never
the subject's common name), failing closed. Twisted's own callback
(``optionsForClientTLS``, Twisted 26.10 with service_identity 26.1) logs and
ignores service_identity's CertificateError, so a trusted certificate without
subjectAltNames, or with only a malformed wildcard such as ``local*``, was
accepted for any host name. The context here ignores the common name too, so a
certificate one path accepts the other accepts as well.
"""

from __future__ import annotations

import ipaddress
import ssl

import ldap3
from cryptography import x509
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.hazmat import (DNS_ID, DNSPattern, IPAddress_ID, IPAddressPattern,
                                     verify_service_identity)
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer


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


class CertificateNameError(Exception):
    """The server's certificate is trusted but does not name the host we connected to."""


def names_of(cert: x509.Certificate) -> list[str]:
    """The certificate's subjectAltName entries that can name a server: DNS:... and IP:..."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
            + [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)])


def name_problem(cert: x509.Certificate, host: str) -> str | None:
    """None if ``cert`` names ``host`` (a DNS name or an IP address), else what it names.

    service_identity's rules; an entry it cannot parse (``local*``,
    ``*.com``) names nothing, and a certificate without usable entries names
    nothing at all (its common name does not count).
    """
    patterns = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    for name in san.get_values_for_type(x509.DNSName) if san is not None else ():
        try:
            patterns.append(DNSPattern.from_bytes(name.encode("ascii")))
        except (CertificateError, UnicodeError, ValueError):
            pass  # a malformed pattern matches no host
    for address in san.get_values_for_type(x509.IPAddress) if san is not None else ():
        patterns.append(IPAddressPattern(address))
    try:
        ipaddress.ip_address(host)
        wanted = IPAddress_ID(host)
    except ValueError:
        wanted = DNS_ID(host)
    try:
        verify_service_identity(patterns, [wanted], [])
        return None
    except (VerificationError, CertificateError):
        names = ", ".join(names_of(cert)) or "no subjectAltName"
        return f"the TLS certificate does not name {host} (it names {names})"


@implementer(IOpenSSLClientConnectionCreator)
class NameCheckedTLS:
    """Twisted client TLS for one server: chain verified by ``trust``, name checked, fail closed.

    Everything but the verify callback is Twisted's ``optionsForClientTLS``
    (SNI for a DNS name, none for an address); the callback checks the leaf
    with `name_problem` and refuses on any error, where Twisted's would let
    service_identity's CertificateError through as a pass.
    """

    def __init__(self, host: str, trust):
        self.host = host
        self._options = tssl.optionsForClientTLS(host, trustRoot=trust)

    def clientConnectionForTLS(self, tls_protocol):
        """The pyOpenSSL connection for ``tls_protocol``, with our verify callback."""
        connection = self._options.clientConnectionForTLS(tls_protocol)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                              self._verifier(tls_protocol))
        return connection

    def _verifier(self, tls_protocol):
        protocol = [tls_protocol]  # dropped after the leaf: no cycle kept through OpenSSL

        def verify(connection, cert, errno, depth, ok) -> bool:
            if depth != 0 or not ok:
                return bool(ok)  # the chain: OpenSSL's verdict stands
            try:
                problem = name_problem(cert.to_cryptography(), self.host)
            except BaseException as exc:  # an exception must not escape into OpenSSL
                problem = f"the TLS certificate's names could not be checked: {exc!r}"
            if problem is not None and protocol:
                protocol[0].failVerification(Failure(CertificateNameError(problem)))
            protocol.clear()
            return problem is None
        return verify
