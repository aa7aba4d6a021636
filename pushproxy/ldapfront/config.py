"""The ``ldap_front:`` section: listeners, TLS, which binds skip the push, limits.

Parsed with the shared `Checker`, so every problem is reported with its path
(``ldap_front.listen_ldaps[0]: ...``) together with the rest of the file.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from pushproxy import sensitivity
from pushproxy.sensitivity import ClientRequirements
from pushproxy.checker import Checker
from pushproxy.config import NoDeviceMode
from pushproxy.ldapnames import normalize_dn


class SaslMode(enum.Enum):
    """What a SASL bind gets (it cannot carry a push: the proxy never sees a password)."""

    REFUSE = "refuse"  # authMethodNotSupported
    PASS = "pass"  # forwarded unchanged: no MFA for these binds


@dataclass(frozen=True)
class LdapFrontConfig:
    """The LDAP front end. DN lists hold normalized DNs (`normalize_dn`)."""

    name: str  # the client name the engine, policy rules and the audit trail see
    listen: tuple[tuple[str, int], ...]  # plain LDAP (StartTLS offered when TLS is set)
    listen_ldaps: tuple[tuple[str, int], ...]
    tls_cert: str | None
    tls_key: str | None
    require_tls: bool  # simple binds only after StartTLS or on LDAPS
    login_attribute: str  # the entry attribute holding the enrolled username
    service_dns: frozenset[str]  # bind straight through, no push
    exempt_ous: tuple[str, ...]  # DNs at or below these: no push
    exempt_groups: frozenset[str]  # members: no push (checked after the bind)
    allow_anonymous: bool  # empty name and password, forwarded
    allow_unauthenticated: bool  # a name with an empty password, forwarded
    sasl: SaslMode
    no_device: NoDeviceMode | None  # None: push.no_device
    bind_cache_seconds: float  # 0: off
    bind_cache_size: int
    max_message_size: int
    max_connections: int
    max_queued: int  # messages a client may send while its bind is decided
    idle_timeout: float  # seconds without a complete message (or an answer) before closing
    max_connections_per_source: int = 100  # 0: off (pushproxy/connlimit.py)
    first_message_timeout: float = 10.0  # accept (TLS handshake included) to a whole message
    # sensitivity (pushproxy.sensitivity): presence required for every bind's push
    requires: ClientRequirements = ClientRequirements()

    def timeout_advice(self, need: float) -> list[str]:
        """What LDAP clients must allow for a bind that waits for a phone."""
        return [f"ldap_front ({self.name}): LDAP clients must wait at least {need:.0f} s for "
                "a bind (sssd: ldap_opt_timeout, default 8 s; pam_ldap/nslcd: "
                "bind_timelimit; applications: their LDAP operation timeout)"]


KEYS = ("name", "listen", "listen_ldaps", "tls_cert", "tls_key", "require_tls",
        "login_attribute", "service_dns", "exempt_ous", "exempt_groups", "allow_anonymous",
        "allow_unauthenticated", "sasl", "no_device", "bind_cache_seconds", "bind_cache_size",
        "max_message_size", "max_connections", "max_queued", "idle_timeout",
        "max_connections_per_source", "first_message_timeout", *sensitivity.KEYS)


def _dns(c: Checker, m: dict, key: str, path: str) -> list[str]:
    found = []
    for i, item in enumerate(c.seq(m, key, f"{path}.{key}", [])):
        where = f"{path}.{key}[{i}]"
        if not isinstance(item, str) or not item.strip():
            c.problem(where, "must be a DN")
            continue
        try:
            parse_dn(item, escape=False, strip=True)
        except (LDAPInvalidDnError, ValueError):
            c.problem(where, f"{item!r} is not a valid DN")
            continue
        found.append(normalize_dn(item))
    return found


def _addresses(c: Checker, m: dict, key: str, path: str) -> tuple[tuple[str, int], ...]:
    out = []
    for i, item in enumerate(c.seq(m, key, f"{path}.{key}", [])):
        addr = c.host_port(item, f"{path}.{key}[{i}]")
        if addr:
            out.append(addr)
    return tuple(out)


def parse_ldap_front(c: Checker, value, path: str = "ldap_front",
                     account_attribute: str | None = None) -> LdapFrontConfig | None:
    """Validate the section; None when it is absent or has problems (recorded in ``c``).

    ``account_attribute``: ``ldap.username_attribute``, the default (and the
    only allowed value) of ``login_attribute``, so that RADIUS and LDAP logins
    of one user key on one account.
    """
    if value is None:
        return None
    before = len(c.problems)
    m = c.mapping(value, path, optional=KEYS)
    if m is None:
        return None
    listen = _addresses(c, m, "listen", path)
    ldaps = _addresses(c, m, "listen_ldaps", path)
    if not listen and not ldaps and "listen" not in m and "listen_ldaps" not in m:
        c.problem(path, "set listen (LDAP with StartTLS) and/or listen_ldaps")
    cert = c.readable_file(m, "tls_cert", f"{path}.tls_cert")
    key = c.private_file(m, "tls_key", f"{path}.tls_key")
    if ("tls_cert" in m) != ("tls_key" in m):
        c.problem(path, "tls_cert and tls_key go together")
    require_tls = c.boolean(m, "require_tls", f"{path}.require_tls", True)
    if ldaps and "tls_cert" not in m:
        c.problem(f"{path}.listen_ldaps", "needs tls_cert and tls_key")
    if require_tls and listen and "tls_cert" not in m:
        c.problem(f"{path}.require_tls", "binds need TLS but no tls_cert/tls_key is set "
                                        "for StartTLS; set them, or require_tls: false")
    attribute = c.string(m, "login_attribute", f"{path}.login_attribute", required=False) \
        or account_attribute or "uid"
    if not attribute.replace("-", "").replace(";", "").isalnum():
        c.problem(f"{path}.login_attribute", f"{attribute!r} is not an attribute name")
    elif account_attribute and attribute.lower() != account_attribute.lower():
        c.problem(f"{path}.login_attribute",
                  f"{attribute!r} differs from ldap.username_attribute "
                  f"{account_attribute!r}: a user's RADIUS and LDAP logins would key on two "
                  "accounts (devices, limits, locks); leave it out or make them the same")
    no_device = None
    if "no_device" in m:
        no_device = NoDeviceMode(c.choice(m, "no_device", f"{path}.no_device",
                                          [e.value for e in NoDeviceMode], "reject"))
    config = LdapFrontConfig(
        name=c.string(m, "name", f"{path}.name", required=False) or "ldap",
        listen=listen, listen_ldaps=ldaps, tls_cert=cert, tls_key=key,
        require_tls=require_tls, login_attribute=attribute,
        service_dns=frozenset(_dns(c, m, "service_dns", path)),
        exempt_ous=tuple(_dns(c, m, "exempt_ous", path)),
        exempt_groups=frozenset(_dns(c, m, "exempt_groups", path)),
        allow_anonymous=c.boolean(m, "allow_anonymous", f"{path}.allow_anonymous", False),
        allow_unauthenticated=c.boolean(m, "allow_unauthenticated",
                                        f"{path}.allow_unauthenticated", False),
        sasl=SaslMode(c.choice(m, "sasl", f"{path}.sasl", [e.value for e in SaslMode],
                               "refuse")),
        no_device=no_device,
        bind_cache_seconds=c.number(m, "bind_cache_seconds", f"{path}.bind_cache_seconds",
                                    30, minimum=0, maximum=600),
        bind_cache_size=c.number(m, "bind_cache_size", f"{path}.bind_cache_size", 10000,
                                 minimum=1, maximum=1_000_000, integer=True),
        max_message_size=c.number(m, "max_message_size", f"{path}.max_message_size",
                                  1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024,
                                  integer=True),
        max_connections=c.number(m, "max_connections", f"{path}.max_connections", 1000,
                                 minimum=1, maximum=100_000, integer=True),
        max_queued=c.number(m, "max_queued", f"{path}.max_queued", 32, minimum=1,
                            maximum=10_000, integer=True),
        idle_timeout=c.number(m, "idle_timeout", f"{path}.idle_timeout", 900, minimum=10,
                              maximum=86400),
        max_connections_per_source=c.number(
            m, "max_connections_per_source", f"{path}.max_connections_per_source", 100,
            minimum=0, maximum=100_000, integer=True),
        first_message_timeout=c.number(m, "first_message_timeout",
                                       f"{path}.first_message_timeout", 10, minimum=1,
                                       maximum=300),
        requires=sensitivity.parse(c, m, path, verification_allowed=False),
    )
    return config if len(c.problems) == before else None
