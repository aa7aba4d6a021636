"""The server-name check of every Twisted TLS client connection, failing closed.

Twisted's ``optionsForClientTLS`` checks the name in a verify callback that
catches service_identity's ``VerificationError`` only. service_identity raises
``CertificateError`` (not a subclass) for a certificate without usable
subjectAltNames and for a malformed pattern such as ``local*``; with Twisted
26.10 and service_identity 26.1 that error is logged and the handshake goes
on, so a certificate that chains to a trusted CA but names nothing was
accepted for any host name. Every Twisted client of ours (the directory, the
LDAP front end's directory link, RADIUS/TLS upstreams, Web Push, the alert
webhook) builds its TLS through here instead: service_identity's rules (DNS
and IP-address subjectAltNames, whole-label wildcards only, never the
subject's common name), and any error refuses the connection.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.hazmat import (DNS_ID, DNSPattern, IPAddress_ID, IPAddressPattern,
                                     verify_service_identity)
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


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
    (SNI for a DNS name, none for an address; ``options`` are passed on, such as
    ``clientCertificate``; ``trust`` None is the platform's store); the callback checks the leaf
    with `name_problem` and refuses on any error, where Twisted's would let
    service_identity's CertificateError through as a pass.
    """

    def __init__(self, host: str, trust=None, **options):
        self.host = host
        self._options = tssl.optionsForClientTLS(host, trustRoot=trust, **options)

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


@implementer(IPolicyForHTTPS)
class NameCheckedPolicy:
    """An HTTPS policy for Twisted's Agent (and treq) whose connections use `NameCheckedTLS`.

    ``trustRoot`` None trusts the platform's store, as ``BrowserLikePolicyForHTTPS``.
    """

    def __init__(self, trustRoot=None):  # noqa: N803 (Twisted's spelling)
        self._trust = trustRoot

    def creatorForNetloc(self, hostname: bytes, port: int):  # noqa: N802 (Twisted's interface)
        """The connection creator for ``hostname`` (bytes, as Agent passes it)."""
        return NameCheckedTLS(hostname.decode("ascii"), self._trust)
