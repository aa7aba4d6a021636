"""Per-client upstream settings (``primary: radius``), validated like the rest of the config.

::

    clients:
      - name: vpn
        address: 10.0.0.0/24
        secret_file: vpn.secret
        primary: radius               # ldap (default) | radius
        upstream:                     # tried in order; the next one when one is silent
          - address: 10.0.1.5:1812
            secret_file: nps.secret
            timeout: 3                # seconds per attempt
            retries: 1                # resends to the same server before the next one
          - address: 10.0.1.6:1812
            secret_file: nps.secret
          - address: 10.0.1.7:2083    # RADIUS/TLS (RadSec): the secret is "radsec"
            tls: {ca_file: radsec-ca.pem, cert_file: us.pem, key_file: us.key,
                  server_name: nps1.example.com}
        pass_attributes: [Class, Filter-Id, Fortinet-Group-Name]   # or: all (default)
        trust_outer_identity: false   # EAP: push the outer User-Name if the Accept has none
        groups_from_ldap: false       # look the user up in ldap: for groups and required_groups

RadSec clients (``radius.radsec.clients``, ``psk_clients``) take the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from pushproxy.radius.attributes import Names

# Seconds a server that did not answer is tried last (it is still tried when
# every server is in backoff: a dead list must not mean no attempt at all).
BACKOFF = 30.0


@dataclass(frozen=True)
class UpstreamTls:
    """RADIUS/TLS toward an upstream: whom to trust, who we are, the name to check."""

    ca_file: str
    cert_file: str | None
    key_file: str | None
    server_name: str  # checked against the server certificate's SAN (DNS name or IP)


@dataclass(frozen=True)
class UpstreamServer:
    """One upstream RADIUS server."""

    host: str
    port: int
    secret: bytes
    timeout: float
    retries: int  # resends after the first attempt
    require_message_authenticator: bool
    tls: UpstreamTls | None = None  # RADIUS/TLS (RFC 6614) instead of UDP

    @property
    def name(self) -> str:
        """``host:port`` for logs and counters."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def attempts(self) -> int:
        """Sends per request: over TLS no resend (RFC 6614 2.3: TCP retransmits)."""
        return 1 if self.tls is not None else self.retries + 1

    @property
    def worst_case(self) -> float:
        """Seconds this server can hold a request before failover."""
        return self.timeout * self.attempts


@dataclass(frozen=True)
class UpstreamSettings:
    """What a ``primary: radius`` client forwards to, and what comes back to it."""

    servers: tuple[UpstreamServer, ...]
    pass_attributes: frozenset[tuple[int, int]] | None  # None: all
    trust_outer_identity: bool = False
    groups_from_ldap: bool = False

    @property
    def worst_case(self) -> float:
        """Seconds until the last server has had its chance."""
        return sum(s.worst_case for s in self.servers)


KEYS = ("primary", "upstream", "pass_attributes", "trust_outer_identity", "groups_from_ldap")


def parse_client_upstream(c, m: dict, path: str, names: Names) -> UpstreamSettings | None:
    """The upstream part of one RADIUS client's mapping (UDP or RadSec); None for
    ``primary: ldap``."""
    primary = c.choice(m, "primary", f"{path}.primary", ("ldap", "radius"), "ldap")
    if primary != "radius":
        for key in KEYS[1:]:
            if key in m:
                c.problem(f"{path}.{key}", "only used with primary: radius")
        return None
    servers = []
    for i, item in enumerate(c.seq(m, "upstream", f"{path}.upstream", None, min_len=1)):
        server = _server(c, item, f"{path}.upstream[{i}]")
        if server is not None:
            servers.append(server)
    passed = _pass_attributes(c, m.get("pass_attributes", "all"), f"{path}.pass_attributes",
                              names)
    trust = c.boolean(m, "trust_outer_identity", f"{path}.trust_outer_identity", False)
    groups = c.boolean(m, "groups_from_ldap", f"{path}.groups_from_ldap", False)
    return UpstreamSettings(servers=tuple(servers), pass_attributes=passed,
                            trust_outer_identity=trust, groups_from_ldap=groups)


def _server(c, value, path: str) -> UpstreamServer | None:
    m = c.mapping(value, path, required=("address",),
                  optional=("secret_file", "secret_env", "timeout", "retries",
                            "require_message_authenticator", "tls"),
                  secret_keys=("secret",))
    if m is None:
        return None
    addr = c.host_port(m.get("address"), f"{path}.address")
    tls = _tls(c, m["tls"], f"{path}.tls", addr) if "tls" in m else None
    if "tls" in m:
        if "secret_file" in m or "secret_env" in m:
            c.problem(f"{path}.secret", "not used over TLS (the secret is \"radsec\")")
        secret = "radsec"
    else:
        secret = c.secret(m, path, "secret")
    timeout = c.number(m, "timeout", f"{path}.timeout", 3, minimum=0.2, maximum=30)
    retries = c.number(m, "retries", f"{path}.retries", 1, minimum=0, maximum=10, integer=True)
    # Over TLS the reply is protected by TLS: Message-Authenticator not demanded.
    mauth = c.boolean(m, "require_message_authenticator",
                      f"{path}.require_message_authenticator", "tls" not in m)
    if addr is None or secret is None or ("tls" in m and tls is None):
        return None
    if addr[1] == 0:
        c.problem(f"{path}.address", "needs a port (usually 1812, 2083 with tls)")
        return None
    return UpstreamServer(host=addr[0], port=addr[1], secret=secret.encode("utf-8"),
                          timeout=timeout, retries=retries,
                          require_message_authenticator=mauth, tls=tls)


def _tls(c, value, path: str, addr) -> UpstreamTls | None:
    """``tls:`` of one upstream server: ca_file required, our certificate optional."""
    m = c.mapping(value, path, required=("ca_file",),
                  optional=("cert_file", "key_file", "server_name"))
    if m is None or not m:
        if m is not None:
            c.problem(path, "needs at least ca_file (the CA of the server's certificate)")
        return None
    ca = c.readable_file(m, "ca_file", f"{path}.ca_file")
    if ca is not None:
        from pushproxy.radsec.settings import check_certificates

        check_certificates(c, ca, f"{path}.ca_file")
    cert = c.readable_file(m, "cert_file", f"{path}.cert_file")
    key = c.private_file(m, "key_file", f"{path}.key_file")
    if ("cert_file" in m) != ("key_file" in m):
        c.problem(path, "cert_file and key_file go together")
    name = c.string(m, "server_name", f"{path}.server_name", required=False)
    if ca is None or (addr is None and name is None):
        return None
    return UpstreamTls(ca_file=ca, cert_file=cert, key_file=key,
                       server_name=name or addr[0])


def _pass_attributes(c, value, path: str, names: Names):
    if value == "all":
        return None
    if not isinstance(value, list):
        c.problem(path, "must be \"all\" or a list of attribute names")
        return None
    keys = set()
    for i, name in enumerate(value):
        spec = names.spec(name) if isinstance(name, str) else None
        if spec is None:
            c.problem(f"{path}[{i}]", f"unknown attribute {name!r} (not in pushproxy's "
                                      "dictionary)")
            continue
        keys.add((spec.vendor, spec.type))
    return frozenset(keys)
