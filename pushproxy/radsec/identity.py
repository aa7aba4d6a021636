"""Which configured RadSec client a verified peer certificate names (pure).

The TLS layer has already verified the chain against ``ca_file``; this module
only reads the names in the leaf certificate and picks the first configured
client whose every listed name is present. A certificate that names no client
is refused by the listener (logged, counted), exactly like an unknown UDP source.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from pushproxy.netaddr import holds, peer_address
from pushproxy.radsec.settings import CertificateMatch, PskClient, RadsecClient


@dataclass(frozen=True)
class CertificateNames:
    """The names a certificate carries (DNS names lower-cased)."""

    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()
    cn: tuple[str, ...] = ()

    def summary(self) -> str:
        """A short text for log lines."""
        parts = [f"{k}={','.join(v)}" for k, v in (("dns", self.dns), ("uri", self.uri),
                                                    ("ip", self.ip), ("cn", self.cn)) if v]
        return " ".join(parts) or "(no names)"


def names_of(cert: x509.Certificate) -> CertificateNames:
    """The SAN dNSName / URI / IP entries and subject CNs of ``cert``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
        uri = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        ip = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, uri, ip = (), (), ()
    except ValueError:  # an undecodable SAN names nobody
        dns, uri, ip = (), (), ()
    cn = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return CertificateNames(dns=dns, uri=uri, ip=ip, cn=cn)


def _dns_matches(pattern: str, names: tuple[str, ...]) -> bool:
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com": exactly one label in front
        return any(n.endswith(suffix) and n[:-len(suffix)] and "." not in n[:-len(suffix)]
                   for n in names)
    return pattern in names


def matches(match: CertificateMatch, names: CertificateNames) -> bool:
    """Every name listed in ``match`` is carried by the certificate."""
    if not any((match.dns, match.uri, match.ip, match.cn)):
        return False  # config refuses this; never let an empty rule match everyone
    ips = {str(ipaddress.ip_address(a)) for a in names.ip}
    return (all(_dns_matches(p, names.dns) for p in match.dns)
            and all(u in names.uri for u in match.uri)
            and all(a in ips for a in match.ip)
            and all(c in names.cn for c in match.cn))


def find_client(clients: tuple[RadsecClient, ...], names: CertificateNames,
                host: str) -> RadsecClient | None:
    """The first client (config order) whose names and source address fit, or None."""
    address = peer_address(host)
    for client in clients:
        if client.network is not None and (address is None
                                           or not holds(client.network, address)):
            continue
        if matches(client.match, names):
            return client
    return None


def find_psk_client(clients: tuple[PskClient, ...], proved: bytes | None,
                    host: str) -> PskClient | None:
    """The client whose PSK identity the handshake proved (and whose address fits)."""
    if proved is None:
        return None
    address = peer_address(host)
    for client in clients:
        if client.identity != proved:
            continue
        if client.network is not None and (address is None
                                           or not holds(client.network, address)):
            return None
        return client
    return None
