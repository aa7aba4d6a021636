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
        pass_attributes: [Class, Filter-Id, Fortinet-Group-Name]   # or: all (default)
        trust_outer_identity: false   # EAP: push the outer User-Name if the Accept has none
        groups_from_ldap: false       # look the user up in ldap: for groups and required_groups
"""

from __future__ import annotations

from dataclasses import dataclass

from pushproxy.radius.attributes import Names

# Seconds a server that did not answer is tried last (it is still tried when
# every server is in backoff: a dead list must not mean no attempt at all).
BACKOFF = 30.0


@dataclass(frozen=True)
class UpstreamServer:
    """One upstream RADIUS server."""

    host: str
    port: int
    secret: bytes
    timeout: float
    retries: int  # resends after the first attempt
    require_message_authenticator: bool

    @property
    def name(self) -> str:
        """``host:port`` for logs and counters."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def worst_case(self) -> float:
        """Seconds this server can hold a request before failover."""
        return self.timeout * (self.retries + 1)


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
    """The upstream part of one ``radius.clients[i]`` mapping; None for ``primary: ldap``."""
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
                            "require_message_authenticator"),
                  secret_keys=("secret",))
    if m is None:
        return None
    addr = c.host_port(m.get("address"), f"{path}.address")
    secret = c.secret(m, path, "secret")
    timeout = c.number(m, "timeout", f"{path}.timeout", 3, minimum=0.2, maximum=30)
    retries = c.number(m, "retries", f"{path}.retries", 1, minimum=0, maximum=10, integer=True)
    mauth = c.boolean(m, "require_message_authenticator",
                      f"{path}.require_message_authenticator", True)
    if addr is None or secret is None:
        return None
    if addr[1] == 0:
        c.problem(f"{path}.address", "needs a port (usually 1812)")
        return None
    return UpstreamServer(host=addr[0], port=addr[1], secret=secret.encode("utf-8"),
                          timeout=timeout, retries=retries,
                          require_message_authenticator=mauth)


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
