"""The ``radius.radsec`` config section: a RADIUS/TLS listener and the clients it admits.

A RadSec client is known by its certificate, not by its address: the chain must
verify against ``ca_file`` and the certificate must carry the names in the
client's ``match`` (SAN dNSName, SAN URI, SAN IP address, subject CN; every name
given must be present). Clients share the RADIUS clients' name space, so
``policy`` rules and ``reply_attributes`` name them the same way. A client may
check its first factor on an upstream RADIUS server (``primary: radius`` with
``upstream:``), parsed by the same code as a UDP client's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pushproxy import sensitivity
from pushproxy.checker import Checker

# RFC 6614 section 2.3: RADIUS/1.0 over TLS uses this fixed shared secret.
RADSEC_SECRET = b"radsec"
VERSIONS = ("1.1", "1.0")  # ALPN radius/1.1 (RFC 9765) preferred over radius/1.0
MATCH_KEYS = ("dns", "uri", "ip", "cn")


@dataclass(frozen=True)
class CertificateMatch:
    """Names a client's certificate must carry (empty tuples are not checked)."""

    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()
    cn: tuple[str, ...] = ()


@dataclass(frozen=True)
class RadsecClient:
    """A RadSec peer: the RADIUS client it acts as, and how its certificate is recognised."""

    client: "object"  # pushproxy.config.RadiusClient, with the secret "radsec"
    match: CertificateMatch
    network: "ipaddress.IPv4Network | ipaddress.IPv6Network | None" = None  # None: any source


@dataclass(frozen=True)
class PskClient:
    """A RadSec peer known by a TLS-PSK identity and key (no certificates)."""

    client: "object"  # pushproxy.config.RadiusClient, with the secret "radsec"
    identity: bytes
    key: bytes = field(repr=False)
    network: "ipaddress.IPv4Network | ipaddress.IPv6Network | None" = None


@dataclass(frozen=True)
class RadsecConfig:
    """The RadSec listener."""

    listen: tuple[tuple[str, int], ...]
    cert_file: str
    key_file: str
    ca_file: str
    clients: tuple[RadsecClient, ...]
    versions: tuple[str, ...] = VERSIONS  # ALPN protocols offered, in preference order
    dtls_listen: tuple[tuple[str, int], ...] = ()  # RADIUS/DTLS (UDP) addresses; () off
    psk_listen: tuple[tuple[str, int], ...] = ()  # TLS-PSK addresses; () off
    psk_clients: tuple[PskClient, ...] = ()
    require_alpn: bool = False  # refuse peers that offer no ALPN at all
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0  # no request and nothing pending: close
    max_connections: int = 1000
    max_connections_per_source: int = 32  # before the handshake: by IP address
    max_connections_per_client: int = 8  # after it: by configured client
    max_in_flight: int = 256  # requests waiting for a reply, per connection


def parse_radsec(c: Checker, value, path: str) -> RadsecConfig | None:
    """Check ``radius.radsec``; every problem is recorded with its path."""
    m = c.mapping(value, path, required=("cert_file", "key_file", "ca_file", "clients"),
                  optional=("listen", "dtls_listen", "psk_listen", "psk_clients", "versions",
                            "require_alpn",
                            "handshake_timeout",
                            "idle_timeout", "max_connections", "max_connections_per_source",
                            "max_connections_per_client", "max_in_flight"))
    if m is None or not m:
        if value is not None and m is not None:
            c.problem(path, "missing cert_file, key_file, ca_file and clients")
        return None
    listen = []
    for i, item in enumerate(c.seq(m, "listen", f"{path}.listen", ["0.0.0.0:2083"])):
        addr = c.host_port(item, f"{path}.listen[{i}]")
        if addr:
            listen.append(addr)
    dtls_listen = []
    for i, item in enumerate(c.seq(m, "dtls_listen", f"{path}.dtls_listen", [])):
        addr = c.host_port(item, f"{path}.dtls_listen[{i}]")
        if addr:
            dtls_listen.append(addr)
    psk_listen = []
    for i, item in enumerate(c.seq(m, "psk_listen", f"{path}.psk_listen", [])):
        addr = c.host_port(item, f"{path}.psk_listen[{i}]")
        if addr:
            psk_listen.append(addr)
    psk_clients = []
    for i, item in enumerate(c.seq(m, "psk_clients", f"{path}.psk_clients", [])):
        psk = _psk_client(c, item, f"{path}.psk_clients[{i}]")
        if psk:
            psk_clients.append(psk)
    if bool(psk_listen) != bool(psk_clients):
        c.problem(path, "psk_listen and psk_clients go together")
    identities = [p.identity for p in psk_clients]
    for ident in sorted({i for i in identities if identities.count(i) > 1}):
        c.problem(f"{path}.psk_clients", f"identity {ident.decode()!r} is used more than once")
    cert = _required_file(c, m, "cert_file", f"{path}.cert_file", c.readable_file)
    key = _required_file(c, m, "key_file", f"{path}.key_file", c.private_file)
    ca = _required_file(c, m, "ca_file", f"{path}.ca_file", c.readable_file)
    if cert and key:
        _check_pair(c, cert, key, path)
    if ca:
        check_certificates(c, ca, f"{path}.ca_file")
    versions = []
    for i, item in enumerate(c.seq(m, "versions", f"{path}.versions", list(VERSIONS),
                                   min_len=1)):
        if str(item) not in VERSIONS:
            c.problem(f"{path}.versions[{i}]", f"must be one of {', '.join(VERSIONS)} "
                                              f"(got {item!r}; quote it: \"1.1\")")
        elif str(item) not in versions:
            versions.append(str(item))
    clients = []
    for i, item in enumerate(c.seq(m, "clients", f"{path}.clients", None, min_len=1)):
        client = _client(c, item, f"{path}.clients[{i}]")
        if client:
            clients.append(client)
    config = RadsecConfig(
        listen=tuple(listen), dtls_listen=tuple(dtls_listen), psk_listen=tuple(psk_listen),
        psk_clients=tuple(psk_clients), cert_file=cert or "",
        key_file=key or "", ca_file=ca or "",
        clients=tuple(clients),
        versions=tuple(v for v in VERSIONS if v in versions) or VERSIONS,
        require_alpn=c.boolean(m, "require_alpn", f"{path}.require_alpn", False),
        handshake_timeout=c.number(m, "handshake_timeout", f"{path}.handshake_timeout", 10,
                                   minimum=1, maximum=120),
        idle_timeout=c.number(m, "idle_timeout", f"{path}.idle_timeout", 300, minimum=5,
                              maximum=86400),
        max_connections=c.number(m, "max_connections", f"{path}.max_connections", 1000,
                                 minimum=1, maximum=100_000, integer=True),
        max_connections_per_source=c.number(
            m, "max_connections_per_source", f"{path}.max_connections_per_source", 32,
            minimum=0, maximum=100_000, integer=True),
        max_connections_per_client=c.number(
            m, "max_connections_per_client", f"{path}.max_connections_per_client", 8,
            minimum=1, maximum=10_000, integer=True),
        max_in_flight=c.number(m, "max_in_flight", f"{path}.max_in_flight", 256, minimum=1,
                               maximum=65_536, integer=True),
    )
    # Returned even with a file missing (that problem is recorded, so no Config is
    # built): its clients still take part in the name checks, every problem at once.
    return config


def _required_file(c: Checker, m: dict, key: str, path: str, reader) -> str | None:
    if key not in m:
        return None  # reported as missing by c.mapping
    return reader(m, key, path)


def _check_pair(c: Checker, cert: str, key: str, path: str) -> None:
    """The key must belong to the certificate (found now, not at the first handshake)."""
    from OpenSSL import SSL, crypto

    try:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        with open(cert, "rb") as f:
            ctx.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, f.read()))
        with open(key, "rb") as f:
            ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, f.read()))
        ctx.check_privatekey()
    except (SSL.Error, crypto.Error, OSError, ValueError) as exc:
        c.problem(f"{path}.key_file", f"does not load as the key of cert_file: {exc}")


def check_certificates(c: Checker, name: str, path: str) -> None:
    """At least one PEM certificate, all of them readable (else the listener cannot start)."""
    from cryptography import x509

    try:
        with open(name, "rb") as f:
            x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as exc:
        c.problem(path, f"no PEM certificates could be read from {name}: {exc}")


def _client(c: Checker, value, path: str) -> RadsecClient | None:
    from pushproxy.config import RadiusClient, _names, client_modes
    from pushproxy.upstream.settings import KEYS as UPSTREAM_KEYS
    from pushproxy.upstream.settings import parse_client_upstream

    m = c.mapping(value, path, required=("name", "match"),
                  optional=("address", "require_message_authenticator", "no_device",
                            "verification", *sensitivity.KEYS, *UPSTREAM_KEYS))
    if m is None:
        return None
    name = c.string(m, "name", f"{path}.name")
    network = c.network(m["address"], f"{path}.address") if "address" in m else None
    match = _match(c, m.get("match"), f"{path}.match")
    no_device, verification = client_modes(c, m, path)
    requires = sensitivity.parse(c, m, path)
    upstream = parse_client_upstream(c, m, path, _names())
    # TLS protects every packet, so Message-Authenticator is not demanded by default
    # (RFC 6614 / RFC 9765); a site may still ask for it on RADIUS/1.0.
    mauth = c.boolean(m, "require_message_authenticator",
                      f"{path}.require_message_authenticator", False)
    if name is None or ("address" in m and network is None) or match is None:
        return None
    return RadsecClient(
        client=RadiusClient(name=name, network=network or ipaddress.ip_network("0.0.0.0/0"),
                            secret=RADSEC_SECRET, require_message_authenticator=mauth,
                            no_device=no_device, verification=verification,
                            upstream=upstream, requires=requires,
                            # TLS already protects the packet: proxies (FreeRADIUS)
                            # add Proxy-State and need not sign it.
                            limit_proxy_state=False),
        match=match, network=network)


def _psk_client(c: Checker, value, path: str) -> PskClient | None:
    """``name``, ``identity``, ``key_file``/``key_env`` (hex, at least 16 octets)."""
    from pushproxy.config import RadiusClient, _names, client_modes
    from pushproxy.upstream.settings import KEYS as UPSTREAM_KEYS
    from pushproxy.upstream.settings import parse_client_upstream

    m = c.mapping(value, path, required=("name", "identity"),
                  optional=("key_file", "key_env", "address", "no_device", "verification",
                            *sensitivity.KEYS, *UPSTREAM_KEYS),
                  secret_keys=("key",))
    if m is None:
        return None
    name = c.string(m, "name", f"{path}.name")
    identity = c.string(m, "identity", f"{path}.identity")
    network = c.network(m["address"], f"{path}.address") if "address" in m else None
    text = c.secret(m, path, "key")
    key = None
    if text is not None:
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            c.problem(f"{path}.key", "must be hexadecimal (as openssl s_client -psk takes it)")
        else:
            if len(key) < 16:
                c.problem(f"{path}.key", f"{len(key)} octets; use at least 16 random ones "
                                         "(32 best)")
                key = None
    no_device, verification = client_modes(c, m, path)
    requires = sensitivity.parse(c, m, path)
    upstream = parse_client_upstream(c, m, path, _names())
    if name is None or identity is None or key is None or ("address" in m and network is None):
        return None
    return PskClient(
        client=RadiusClient(name=name, network=network or ipaddress.ip_network("0.0.0.0/0"),
                            secret=RADSEC_SECRET, require_message_authenticator=False,
                            no_device=no_device, verification=verification,
                            upstream=upstream, limit_proxy_state=False,
                            requires=requires),
        identity=identity.encode("utf-8"), key=key, network=network)


def _match(c: Checker, value, path: str) -> CertificateMatch | None:
    m = c.mapping(value, path, optional=MATCH_KEYS)
    if m is None:
        return None
    found: dict[str, tuple[str, ...]] = {}
    for key in MATCH_KEYS:
        if key not in m:
            continue
        raw = m[key] if isinstance(m[key], list) else [m[key]]
        items = []
        for i, item in enumerate(raw):
            where = f"{path}.{key}" if not isinstance(m[key], list) else f"{path}.{key}[{i}]"
            if not isinstance(item, str) or not item:
                c.problem(where, "must be a non-empty text")
                continue
            if key == "ip":
                try:
                    item = str(ipaddress.ip_address(item))
                except ValueError:
                    c.problem(where, f"{item!r} is not an IP address")
                    continue
            if key == "dns":
                item = item.lower().rstrip(".")
                if "*" in item[1:] or (item.startswith("*") and not item.startswith("*.")):
                    c.problem(where, "a wildcard is only allowed as the whole first label "
                                     "(*.example.com)")
                    continue
            items.append(item)
        found[key] = tuple(items)
    if not any(found.values()):
        c.problem(path, f"name at least one of {', '.join(MATCH_KEYS)}: the certificate "
                        "names that identify this client")
        return None
    return CertificateMatch(**found)
