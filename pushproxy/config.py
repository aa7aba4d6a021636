"""The configuration: YAML in, typed frozen objects out, every problem at once.

`load_config` reads the file, checks it as a whole and either returns a
`Config` or raises `ConfigError` carrying every problem with its path and line
(``radius.clients[1].secret_file: cannot read /etc/x: No such file (line 9)``).
Unknown keys are errors, so a typo never silently falls back to a default.
Secrets are read from files or environment variables, never from the YAML.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pushproxy import yamlsource
from pushproxy.approval.backends import is_postgres_url, postgres_url_problems
from pushproxy.checker import Checker
from pushproxy.fatigue import FatigueLimits
from pushproxy.passcode_limits import PasscodeLimits, parse_passcode_limits
from pushproxy.password_throttle import PasswordLimits, parse_password_limits
from pushproxy.overload import OverloadLimits, parse_limits
from pushproxy.policy import Policy, Verification, parse_policy
from pushproxy import sensitivity
from pushproxy.sensitivity import ClientRequirements
from pushproxy.replyattrs import ReplyMap, parse_reply_attributes
from pushproxy.upstream.settings import KEYS as UPSTREAM_KEYS
from pushproxy.upstream.settings import UpstreamSettings, parse_client_upstream

if TYPE_CHECKING:  # the section's parser imports this module
    from pushproxy.adnames import ActiveDirectory
    from pushproxy.ldapfront.config import LdapFrontConfig
    from pushproxy.radsec.settings import RadsecConfig
    from pushproxy.risk import ContextConfig
    from pushproxy.rollout.mailconfig import MailConfig


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists them all."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class FailMode(Enum):
    """What a login gets when the push layer cannot be reached."""

    SECURE = "secure"  # deny
    SAFE = "safe"  # allow on the primary factor alone


class GroupMode(Enum):
    """How required-group membership is read from the directory."""

    MEMBER_OF = "member_of"  # memberOf attribute on the user (AD, slapd memberof overlay)
    AD_NESTED = "ad_nested"  # AD LDAP_MATCHING_RULE_IN_CHAIN: nested groups
    GROUP_SEARCH = "group_search"  # search groups whose member/uniqueMember is the user


class NoDeviceMode(Enum):
    """What a user without an enrolled device gets."""

    REJECT = "reject"
    ALLOW = "allow"  # primary factor only, for a rollout period
    ENROLL = "enroll"  # reject, and mail an enrollment link (needs mail:; pushproxy.rollout)


@dataclass(frozen=True)
class RadiusClient:
    """A RADIUS client (NAS) allowed to talk to us."""

    name: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    secret: bytes
    require_message_authenticator: bool
    no_device: NoDeviceMode | None  # None: follow push.no_device
    verification: "Verification | None" = None  # None: the policy decides
    upstream: "UpstreamSettings | None" = None  # primary: radius (issue 10); None: LDAP
    # Blast-RADIUS for clients that send no Message-Authenticator: drop requests
    # that carry Proxy-State without one (the attack needs Proxy-State).
    limit_proxy_state: bool = True
    # sensitivity (pushproxy.sensitivity): verified push / presence required
    # for this client's logins, whatever the policy rules say
    requires: ClientRequirements = ClientRequirements()


@dataclass(frozen=True)
class RadiusConfig:
    """The RADIUS front end."""

    listen: tuple[tuple[str, int], ...]
    clients: tuple[RadiusClient, ...]
    receive_buffer: int
    reply_cache_seconds: float
    radsec: "RadsecConfig | None" = None  # RADIUS over TLS (pushproxy.radsec); None: off
    # Accounting-Request listeners (pushproxy.radius.accounting); empty: off
    accounting_listen: tuple[tuple[str, int], ...] = ()

    @property
    def all_clients(self) -> tuple[RadiusClient, ...]:
        """UDP clients and RadSec clients: one name space for policy and reply rules."""
        if self.radsec is None:
            return self.clients
        return self.clients + tuple(r.client for r in self.radsec.clients
                                    + self.radsec.psk_clients)


@dataclass(frozen=True)
class LdapServer:
    """One directory server, in failover order."""

    url: str
    host: str
    port: int
    use_ssl: bool


@dataclass(frozen=True)
class LdapConfig:
    """Primary authentication against the directory."""

    servers: tuple[LdapServer, ...]
    start_tls: bool
    ca_file: str | None
    bind_dn: str | None
    bind_password: str | None
    user_base: str
    user_filter: str
    bind_template: str | None
    required_groups: tuple[str, ...]
    group_mode: GroupMode
    group_base: str | None
    connect_timeout: float
    response_timeout: float
    backoff: float
    pool_size: int
    max_queue: int
    # The entry attribute whose stored value is the account every piece of
    # per-user state is keyed on (see PrimaryResult.account).
    username_attribute: str = "uid"
    # AD login names (UPN, DOMAIN\user) and the domains served (pushproxy.adnames); None: off
    active_directory: "ActiveDirectory | None" = None


@dataclass(frozen=True)
class PushConfig:
    """The push step."""

    timeout: float
    failmode: FailMode
    no_device: NoDeviceMode
    passcode_delimiter: str = ","  # "password,123456"; empty: no suffix parsing
    limits: FatigueLimits = FatigueLimits()
    passcode_limits: PasscodeLimits = PasscodeLimits()  # guessing: pause, then lock
    password_limits: PasswordLimits = PasswordLimits()  # wrong primary passwords per source


@dataclass(frozen=True)
class AuditConfig:
    """Where the audit trail goes; ``path`` None means standard output."""

    path: str | None


@dataclass(frozen=True)
class ApprovalConfig:
    """The built-in approval service (API for devices, enrollment, delivery)."""

    listen: tuple[str, int]
    public_url: str
    tls_cert: str | None
    tls_key: str | None
    database: str
    enrollment_ttl: float
    vapid_subject: str
    alert_webhook: str | None
    alert_syslog: bool
    max_body: int
    max_failures: int = 10  # refused enrollments / device logins per source per window; 0: off
    failure_window: float = 300.0
    # Reverse proxies whose X-Forwarded-For names the client (rate limits, logs).
    trusted_proxies: tuple = ()
    # Connection budget and read deadlines (issue 14, finding 3; pushproxy/connlimit.py).
    max_connections: int = 4000
    max_connections_per_source: int = 256  # 0: off; trusted_proxies are exempt
    header_timeout: float = 10.0  # request line + headers, from accept or the first byte
    body_timeout: float = 30.0  # the body, from the end of the headers
    keepalive_timeout: float = 60.0  # after an answer, until the next request's first byte
    # Web Push endpoints on private addresses (an in-house push relay); https:// still.
    allow_private_push_endpoints: bool = False
    # for a postgresql:// database: from database_password_file/_env, never in repr
    database_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LogConfig:
    """Where operational logs go (the audit trail is separate)."""

    level: str
    format: str  # text | json
    syslog: bool


@dataclass(frozen=True)
class DaemonConfig:
    """Process-level settings."""

    stop_grace: float  # seconds pending logins may still finish after SIGTERM
    metrics_listen: tuple[str, int] | None  # /metrics and /healthz; None: off
    metrics_max_connections: int = 64  # the admin listener's connection budget
    metrics_max_connections_per_source: int = 16
    # bounds past which new requests are shed (pushproxy.overload)
    overload: OverloadLimits = OverloadLimits()
    # this node's name in a cluster (transaction owner, heartbeat): default the hostname
    node_name: str = ""
    # worker processes sharing the RADIUS and approval ports (pushproxy.workers)
    workers: int = 1


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    radius: RadiusConfig
    ldap: LdapConfig
    push: PushConfig
    audit: AuditConfig
    approval: ApprovalConfig
    log: LogConfig
    daemon: DaemonConfig
    policy: Policy
    source: str
    reply_attributes: "ReplyMap | None" = None  # group/rule -> Accept attributes
    ldap_front: LdapFrontConfig | None = None  # the LDAP front end; None: off
    mail: "MailConfig | None" = None  # enrollment mails (pushproxy.rollout); None: off
    # (config path, file, kind) of every secret file and private key: pushproxy.filemodes
    sensitive_files: tuple[tuple[str, str, str], ...] = ()
    # location databases, per-user baselines and risk signals (issue 21); None: off
    context: "ContextConfig | None" = None

    def timeout_advice(self) -> list[str]:
        """What a network admin must set on each gateway so logins can finish."""
        def first(c: RadiusClient) -> tuple[float, str]:
            if c.upstream is not None:
                return c.upstream.worst_case, "upstream servers' timeout x (retries + 1)"
            return self.ldap.response_timeout, "ldap.response_timeout"

        return [
            f"radius.clients[{i}] ({c.name}): set the gateway's RADIUS timeout x "
            f"(retries + 1) to at least {self.push.timeout + first(c)[0]:.0f} s (push.timeout "
            f"{self.push.timeout:.0f} s + {first(c)[1]} {first(c)[0]:.0f} s); many gateways "
            "default to 5 s x 3, which rejects every login that waits for a phone"
            for i, c in enumerate(self.radius.clients)
        ] + self._radsec_advice() + (
            self.ldap_front.timeout_advice(self.push.timeout + self.ldap.response_timeout)
            if self.ldap_front else [])

    def _radsec_advice(self) -> list[str]:
        """RadSec peers forget a request after a fixed wait (radsecproxy RetryInterval,
        FreeRADIUS response_window: at most 60 s), whatever the NAS would wait."""
        if self.radius.radsec is None:
            return []
        # The slowest first factor among the RadSec clients (LDAP or primary: radius).
        first, what = self.ldap.response_timeout, "ldap.response_timeout"
        for r in self.radius.radsec.clients + self.radius.radsec.psk_clients:
            if r.client.upstream is not None and r.client.upstream.worst_case > first:
                first, what = r.client.upstream.worst_case, "upstream servers' timeout"
        need = self.push.timeout + first
        text = (f"radius.radsec: RadSec peers must wait at least {need:.0f} s for a reply "
                f"(push.timeout {self.push.timeout:.0f} s + {what} "
                f"{first:.0f} s): radsecproxy RetryInterval, "
                "FreeRADIUS response_window")
        if need > 60:
            text += ("; both allow at most 60 s, so lower push.timeout to "
                     f"{max(60 - first - 5, 5):.0f} s or less")
        return [text]


def _named_clients(radius: "RadiusConfig | None"):
    """(config list, client) for UDP and RadSec clients: problems name the right list."""
    if radius is None:
        return []
    found = [("radius.clients", cl) for cl in radius.clients]
    if radius.radsec is not None:
        found += [("radius.radsec.clients", r.client) for r in radius.radsec.clients]
        found += [("radius.radsec.psk_clients", r.client) for r in radius.radsec.psk_clients]
    return found


def load_config(path: str | os.PathLike, env: dict[str, str] | None = None) -> Config:
    """Read and validate the YAML file at ``path``; raise ConfigError on problems."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse_config(text, base_dir=path.parent, env=os.environ if env is None else env,
                        source=str(path))


def load_config_or_report(path, stream=None) -> Config | None:
    """The config at ``path``, or None after printing every problem to ``stream`` (stderr)."""
    import sys

    try:
        return load_config(path)
    except ConfigError as exc:
        out = stream or sys.stderr
        print(f"{path}: {len(exc.problems)} problem(s):", file=out)
        for problem in exc.problems:
            print(f"  {problem}", file=out)
        return None


def parse_config(text: str, *, base_dir: Path, env, source: str = "<config>") -> Config:
    """Validate YAML text; relative file paths are taken from ``base_dir``."""
    try:
        doc = yamlsource.load(text)
    except yamlsource.YamlSourceError as exc:
        raise ConfigError([str(exc)]) from None
    c = Checker(doc, base_dir=base_dir, env=env)
    root = c.mapping(doc.data, "", required=("radius", "ldap", "approval"),
                     optional=("push", "audit", "log", "daemon", "policy",
                               "reply_attributes", "ldap_front", "mail", "context"))
    if root is None:
        raise ConfigError(c.problems)
    radius = _radius(c, root.get("radius"))
    ldap = _ldap(c, root.get("ldap"))
    push = _push(c, root.get("push", {}))
    audit = _audit(c, root.get("audit", {}))
    approval = _approval(c, root.get("approval"))
    log = _log(c, root.get("log", {}))
    daemon = _daemon(c, root.get("daemon", {}))
    from pushproxy.ldapfront.config import parse_ldap_front  # imports this module

    ldap_front = parse_ldap_front(c, root.get("ldap_front"),
                                  account_attribute=ldap.username_attribute if ldap else None)
    front_names = {ldap_front.name} if ldap_front else set()
    policy = parse_policy(c, root.get("policy"), "policy",
                          client_names={cl.name for cl in radius.all_clients} | front_names
                          if radius else None)
    for where, cl in _named_clients(radius):
        if cl.upstream and cl.upstream.groups_from_ldap and ldap and ldap.bind_dn is None:
            c.problem(f"{where} ({cl.name}).groups_from_ldap",
                      "needs ldap.bind_dn: users are looked up by the service account")
    reply_map = parse_reply_attributes(
        c, root.get("reply_attributes"), "reply_attributes", names=_names(),
        rule_names={r.name for r in policy.rules} if policy else None,
        client_names={cl.name for cl in radius.all_clients} if radius else None)
    _check_workers(c, daemon, radius, approval)
    _check_tls_files(c, ldap, approval, ldap_front)
    from pushproxy.rollout.mailconfig import parse_mail  # imports pushproxy.checker only

    mail = parse_mail(c, root.get("mail"))
    from pushproxy.risk import parse_context  # location databases, baselines, signals

    context = parse_context(c, root.get("context"))
    enroll_modes = [("push.no_device", push.no_device if push else None)] + [
        (f"radius.clients ({cl.name}).no_device", cl.no_device)
        for cl in (radius.clients if radius else ())]
    if ldap_front is not None:
        enroll_modes.append(("ldap_front.no_device", ldap_front.no_device))
    for where, mode in enroll_modes:
        if mode is NoDeviceMode.ENROLL and mail is None and root.get("mail") is None:
            c.problem(where, "enroll mails a link: it needs the mail: section")
        if mode is NoDeviceMode.ENROLL and ldap and ldap.bind_dn is None:
            c.problem(where, "enroll reads the user's mail address: it needs ldap.bind_dn")
    if c.problems:
        raise ConfigError(c.problems)
    return Config(radius=radius, ldap=ldap, push=push, audit=audit, approval=approval,
                  log=log, daemon=daemon, policy=policy, source=source,
                  reply_attributes=reply_map, ldap_front=ldap_front, mail=mail,
                  sensitive_files=tuple(c.sensitive), context=context)


def _check_tls_files(c: Checker, ldap, approval, ldap_front) -> None:
    """Load certificates, keys and CA files as `serve` would (pushproxy.tlsfiles)."""
    from pushproxy import tlsfiles

    found = []
    if ldap is not None and ldap.ca_file:
        found += tlsfiles.ca_bundle(ldap.ca_file, "ldap.ca_file")
    if approval is not None and approval.tls_cert and approval.tls_key:
        found += tlsfiles.server_pair(approval.tls_cert, approval.tls_key, "approval")
    if ldap_front is not None and ldap_front.tls_cert and ldap_front.tls_key:
        found += tlsfiles.server_pair(ldap_front.tls_cert, ldap_front.tls_key, "ldap_front")
    for where, problem in found:
        c.problem(where, problem)


@functools.lru_cache(maxsize=1)
def _names():
    """Attribute names from pushproxy's RADIUS dictionary (upstream and reply attributes)."""
    from pushproxy.radius.attributes import Names
    from pushproxy.radius.codec import load_dictionary
    return Names(load_dictionary())


def _log(c: Checker, value) -> LogConfig | None:
    m = c.mapping(value, "log", optional=("level", "format", "syslog"))
    if m is None:
        return None
    return LogConfig(
        level=c.choice(m, "level", "log.level", ("debug", "info", "warning", "error"), "info"),
        format=c.choice(m, "format", "log.format", ("text", "json"), "text"),
        syslog=c.boolean(m, "syslog", "log.syslog", False))


def _daemon(c: Checker, value) -> DaemonConfig | None:
    m = c.mapping(value, "daemon", optional=("stop_grace", "metrics_listen",
                                             "metrics_max_connections",
                                             "metrics_max_connections_per_source",
                                             "overload", "node_name", "workers"))
    if m is None:
        return None
    metrics = c.host_port(m["metrics_listen"], "daemon.metrics_listen") \
        if "metrics_listen" in m else None
    return DaemonConfig(
        stop_grace=c.number(m, "stop_grace", "daemon.stop_grace", 15, minimum=0, maximum=600),
        metrics_listen=metrics,
        metrics_max_connections=c.number(m, "metrics_max_connections",
                                         "daemon.metrics_max_connections", 64, minimum=1,
                                         maximum=100_000, integer=True),
        metrics_max_connections_per_source=c.number(
            m, "metrics_max_connections_per_source", "daemon.metrics_max_connections_per_source",
            16, minimum=0, maximum=100_000, integer=True),
        overload=parse_limits(c, m.get("overload")),
        workers=c.number(m, "workers", "daemon.workers", 1, minimum=1, maximum=64,
                         integer=True),
        node_name=_node_name(c, m))


def _check_workers(c: Checker, daemon, radius, approval) -> None:
    """Several workers share fixed ports and one store (pushproxy.workers)."""
    if daemon is None or daemon.workers == 1:
        return
    ports = [("radius.listen", port) for _, port in (radius.listen if radius else ())]
    ports += [("radius.accounting_listen", port)
              for _, port in (radius.accounting_listen if radius else ())]
    ports += [("approval.listen", approval.listen[1])] if approval else []
    ports += [("daemon.metrics_listen", daemon.metrics_listen[1])] \
        if daemon.metrics_listen else []
    for path, port in ports:
        if port == 0:
            c.problem(path, "port 0 (any free port) cannot be shared by daemon.workers "
                            f"({daemon.workers}) processes: name a port")
    if daemon.metrics_listen and daemon.metrics_listen[1] + daemon.workers - 1 > 65535:
        c.problem("daemon.metrics_listen", "worker I listens on this port + I: the "
                                           "last worker's port would be above 65535")
    if approval and approval.database == ":memory:":
        c.problem("daemon.workers", "several workers need one shared store: approval.database "
                                    "must be a file or a postgresql:// URL, not :memory:")


_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _node_name(c: Checker, m: dict) -> str:
    """daemon.node_name: letters, digits, ".", "_", "-" (it names a node in the store and
    in logs); default the host's name, shortened to what the pattern allows."""
    if "node_name" not in m:
        return default_node_name()
    value = m["node_name"]
    if not isinstance(value, str) or not _NODE_NAME.match(value):
        c.problem("daemon.node_name", "must be 1-63 letters, digits, '.', '_' or '-', "
                                    "starting with a letter or digit")
        return default_node_name()
    return value


def default_node_name() -> str:
    """The host's name as a node name (characters outside the pattern become "-")."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:63].lstrip("._-")
    return name or "node"


def _radius(c: Checker, value) -> RadiusConfig | None:
    m = c.mapping(value, "radius", required=("clients",),
                  optional=("listen", "receive_buffer", "reply_cache_seconds", "radsec",
                            "accounting_listen"))
    if m is None:
        return None
    listen = []
    for i, item in enumerate(c.seq(m, "listen", "radius.listen", ["0.0.0.0:1812"])):
        addr = c.host_port(item, f"radius.listen[{i}]")
        if addr:
            listen.append(addr)
    accounting = []
    for i, item in enumerate(c.seq(m, "accounting_listen", "radius.accounting_listen", [])):
        addr = c.host_port(item, f"radius.accounting_listen[{i}]")
        if addr and addr in listen and addr[1] != 0:
            c.problem(f"radius.accounting_listen[{i}]", f"{item} is also in radius.listen: "
                      "accounting needs a port of its own (usually 1813)")
        elif addr:
            accounting.append(addr)
    clients = []
    for i, item in enumerate(c.seq(m, "clients", "radius.clients", None, min_len=1)):
        client = _radius_client(c, item, f"radius.clients[{i}]")
        if client:
            clients.append(client)
    from pushproxy.radsec.settings import parse_radsec

    radsec = parse_radsec(c, m.get("radsec"), "radius.radsec") if "radsec" in m else None
    names = [cl.name for cl in clients] + [r.client.name for r in radsec.clients
                                           + radsec.psk_clients] \
        if radsec else [cl.name for cl in clients]
    for name in sorted({n for n in names if names.count(n) > 1}):
        c.problem("radius.clients", f"client name {name!r} is used more than once "
                                    "(radius.clients and radius.radsec.clients included)")
    nets = [cl.network for cl in clients]
    for net in sorted({str(n) for n in nets if nets.count(n) > 1}):
        c.problem("radius.clients", f"address {net} is listed more than once")
    return RadiusConfig(
        listen=tuple(listen),
        clients=tuple(clients),
        receive_buffer=c.number(m, "receive_buffer", "radius.receive_buffer", 4 * 1024 * 1024,
                                minimum=65536, integer=True),
        reply_cache_seconds=c.number(m, "reply_cache_seconds", "radius.reply_cache_seconds",
                                     30, minimum=1, maximum=600),
        radsec=radsec,
        accounting_listen=tuple(accounting),
    )



def client_modes(c: Checker, m: dict, path: str) -> tuple["NoDeviceMode | None",
                                                          "Verification | None"]:
    """A RADIUS client's own ``no_device`` and ``verification`` (None: the defaults),
    for UDP and RadSec clients alike."""
    no_device = None
    if "no_device" in m:
        no_device = NoDeviceMode(c.choice(m, "no_device", f"{path}.no_device",
                                          [e.value for e in NoDeviceMode], "reject"))
    verification = None
    if "verification" in m:
        verification = Verification(c.choice(m, "verification", f"{path}.verification",
                                             [v.value for v in Verification], "none"))
    return no_device, verification

def _radius_client(c: Checker, value, path: str) -> RadiusClient | None:
    m = c.mapping(value, path, required=("name", "address"),
                  optional=("secret_file", "secret_env", "require_message_authenticator",
                            "limit_proxy_state", "no_device", "verification",
                            *sensitivity.KEYS, *UPSTREAM_KEYS),
                  secret_keys=("secret",))
    if m is None:
        return None
    name = c.string(m, "name", f"{path}.name")
    network = c.network(m.get("address"), f"{path}.address") if "address" in m else None
    secret = c.secret(m, path, "secret")
    if secret is not None and len(secret) < 12:
        c.problem(f"{path}.secret", "shorter than 12 characters; use a long random secret")
    mauth = c.boolean(m, "require_message_authenticator",
                      f"{path}.require_message_authenticator", True)
    limit_proxy_state = c.boolean(m, "limit_proxy_state", f"{path}.limit_proxy_state", True)
    no_device, verification = client_modes(c, m, path)
    requires = sensitivity.parse(c, m, path)
    upstream = parse_client_upstream(c, m, path, _names())
    if name is None or network is None or secret is None:
        return None
    return RadiusClient(name=name, network=network, secret=secret.encode("utf-8"),
                        require_message_authenticator=mauth, no_device=no_device,
                        verification=verification, upstream=upstream,
                        limit_proxy_state=limit_proxy_state, requires=requires)


def _ldap(c: Checker, value) -> LdapConfig | None:
    m = c.mapping(value, "ldap", required=("servers", "user_base"),
                  optional=("start_tls", "ca_file", "bind_dn", "bind_password_file",
                            "bind_password_env", "user_filter", "bind_template",
                            "required_groups", "group_membership", "group_base",
                            "connect_timeout", "response_timeout", "backoff", "pool_size",
                            "max_queue", "username_attribute", "active_directory"),
                  secret_keys=("bind_password",))
    if m is None:
        return None
    servers = []
    for i, item in enumerate(c.seq(m, "servers", "ldap.servers", None, min_len=1)):
        server = _ldap_url(c, item, f"ldap.servers[{i}]")
        if server:
            servers.append(server)
    start_tls = c.boolean(m, "start_tls", "ldap.start_tls", False)
    if start_tls and any(s.use_ssl for s in servers):
        c.problem("ldap.start_tls", "cannot be combined with ldaps:// servers")
    bind_dn = c.string(m, "bind_dn", "ldap.bind_dn", required=False)
    password = c.secret(m, "ldap", "bind_password", required=bind_dn is not None)
    if password is not None and bind_dn is None:
        c.problem("ldap.bind_dn", "missing (a bind password was given)")
    template = c.string(m, "bind_template", "ldap.bind_template", required=False)
    if template is not None and "{username}" not in template:
        c.problem("ldap.bind_template", "must contain {username}")
    if template is None and bind_dn is None:
        c.problem("ldap", "set bind_dn (search, then bind as the user) or bind_template "
                          "(direct bind)")
    user_filter = c.string(m, "user_filter", "ldap.user_filter", required=False) \
        or "(&(objectClass=person)(uid={username}))"
    if "{username}" not in user_filter:
        c.problem("ldap.user_filter", "must contain {username}")
    elif not (user_filter.startswith("(") and user_filter.endswith(")")):
        c.problem("ldap.user_filter", "must be an LDAP filter in parentheses")
    username_attribute = _username_attribute(c, m, user_filter)
    from pushproxy.adnames import parse_active_directory  # imports pushproxy.checker only

    active_directory = parse_active_directory(
        c, m["active_directory"], "ldap.active_directory",
        username_attribute=username_attribute) if "active_directory" in m else None
    groups = tuple(c.string({"g": g}, "g", f"ldap.required_groups[{i}]") or ""
                   for i, g in enumerate(c.seq(m, "required_groups", "ldap.required_groups", [])))
    mode = c.choice(m, "group_membership", "ldap.group_membership",
                    [e.value for e in GroupMode], GroupMode.MEMBER_OF.value)
    group_base = c.string(m, "group_base", "ldap.group_base", required=False)
    # Without ca_file the system's trust store verifies the directory's certificate.
    ca_file = c.readable_file(m, "ca_file", "ldap.ca_file")
    return LdapConfig(
        servers=tuple(servers), start_tls=start_tls, ca_file=ca_file, bind_dn=bind_dn,
        bind_password=password,
        user_base=c.string(m, "user_base", "ldap.user_base") or "",
        user_filter=user_filter, bind_template=template, required_groups=groups,
        group_mode=GroupMode(mode) if mode else GroupMode.MEMBER_OF, group_base=group_base,
        connect_timeout=c.number(m, "connect_timeout", "ldap.connect_timeout", 3,
                                 minimum=0.1, maximum=60),
        response_timeout=c.number(m, "response_timeout", "ldap.response_timeout", 5,
                                  minimum=0.1, maximum=120),
        backoff=c.number(m, "backoff", "ldap.backoff", 30, minimum=0, maximum=3600),
        pool_size=c.number(m, "pool_size", "ldap.pool_size", 8, minimum=1, maximum=256,
                           integer=True),
        max_queue=c.number(m, "max_queue", "ldap.max_queue", 1000, minimum=1, integer=True),
        username_attribute=username_attribute or "uid",
        active_directory=active_directory,
    )


def _username_attribute(c: Checker, m: dict, user_filter: str) -> str | None:
    """``ldap.username_attribute``, by default the attribute user_filter compares to {username}."""
    if "username_attribute" in m:
        name = c.string(m, "username_attribute", "ldap.username_attribute")
        if name is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", name):
            c.problem("ldap.username_attribute", f"{name!r} is not an attribute name")
        return name
    found = re.findall(r"\(\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*\{username\}\s*\)", user_filter)
    if found:
        return found[0]
    if "{username}" in user_filter:
        c.problem("ldap.username_attribute", "missing: ldap.user_filter compares {username} "
                                             "to no plain attribute, so name the attribute "
                                             "whose stored value identifies the user (uid, "
                                             "sAMAccountName)")
    return None


def _ldap_url(c: Checker, value, path: str) -> LdapServer | None:
    if not isinstance(value, str):
        c.problem(path, "must be a URL like ldaps://dc1.example.com")
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        c.problem(path, f"{value!r} is not an ldap:// or ldaps:// URL")
        return None
    if parts.path not in ("", "/") or parts.query:
        c.problem(path, "must not carry a path or query")
        return None
    try:
        port = parts.port or (636 if parts.scheme == "ldaps" else 389)
    except ValueError:
        c.problem(path, "has an invalid port")
        return None
    return LdapServer(url=value, host=parts.hostname, port=port,
                      use_ssl=parts.scheme == "ldaps")


def _push(c: Checker, value) -> PushConfig | None:
    m = c.mapping(value, "push", optional=("timeout", "failmode", "no_device",
                                           "passcode_delimiter", "limits",
                                           "passcode_limits", "password_limits"))
    if m is None:
        return None
    delimiter = m.get("passcode_delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) > 1 or delimiter.isalnum():
        c.problem("push.passcode_delimiter", "must be one non-alphanumeric character, "
                                             "or \"\" to turn passcode suffixes off")
        delimiter = ","
    return PushConfig(
        timeout=c.number(m, "timeout", "push.timeout", 60, minimum=5, maximum=600),
        failmode=FailMode(c.choice(m, "failmode", "push.failmode",
                                   [e.value for e in FailMode], "secure")),
        no_device=NoDeviceMode(c.choice(m, "no_device", "push.no_device",
                                        [e.value for e in NoDeviceMode], "reject")),
        passcode_delimiter=delimiter,
        limits=_limits(c, m.get("limits", {})),
        passcode_limits=parse_passcode_limits(c, m.get("passcode_limits", {})),
        password_limits=parse_password_limits(c, m.get("password_limits", {})),
    )


def _limits(c: Checker, value) -> FatigueLimits:
    m = c.mapping(value, "push.limits", optional=("max_pending", "max_pushes", "window",
                                                  "max_denials", "denial_window", "pause"))
    if m is None:
        return FatigueLimits()
    d = FatigueLimits()
    return FatigueLimits(
        max_pending=c.number(m, "max_pending", "push.limits.max_pending", d.max_pending,
                             minimum=1, maximum=100, integer=True),
        max_pushes=c.number(m, "max_pushes", "push.limits.max_pushes", d.max_pushes,
                            minimum=1, maximum=1000, integer=True),
        window=c.number(m, "window", "push.limits.window", d.window, minimum=1,
                        maximum=86400),
        max_denials=c.number(m, "max_denials", "push.limits.max_denials", d.max_denials,
                             minimum=1, maximum=1000, integer=True),
        denial_window=c.number(m, "denial_window", "push.limits.denial_window",
                               d.denial_window, minimum=1, maximum=86400),
        pause=c.number(m, "pause", "push.limits.pause", d.pause, minimum=1, maximum=86400),
    )


def _audit(c: Checker, value) -> AuditConfig | None:
    m = c.mapping(value, "audit", optional=("path",))
    if m is None:
        return None
    path = c.string(m, "path", "audit.path", required=False)
    if path is not None:
        path = str(c.resolve(path))
    return AuditConfig(path=path)


def _approval(c: Checker, value) -> ApprovalConfig | None:
    m = c.mapping(value, "approval", required=("public_url", "database"),
                  optional=("listen", "tls_cert", "tls_key", "enrollment_ttl",
                            "vapid_subject", "alert_webhook", "alert_syslog", "max_body",
                            "max_failures", "failure_window", "trusted_proxies",
                            "max_connections", "max_connections_per_source",
                            "header_timeout", "body_timeout", "keepalive_timeout",
                            "allow_private_push_endpoints", "database_password_file",
                            "database_password_env"),
                  secret_keys=("database_password",))
    if m is None:
        return None
    listen = c.host_port(m.get("listen", "127.0.0.1:8443"), "approval.listen")
    public_url = c.string(m, "public_url", "approval.public_url") or ""
    if public_url and urlsplit(public_url).scheme not in ("http", "https"):
        c.problem("approval.public_url", "must start with https:// (or http:// behind a proxy)")
    cert = c.readable_file(m, "tls_cert", "approval.tls_cert")
    key = c.private_file(m, "tls_key", "approval.tls_key")
    if (cert is None) != (key is None):
        c.problem("approval", "tls_cert and tls_key go together")
    database = c.string(m, "database", "approval.database") or ""
    if is_postgres_url(database):
        for problem in postgres_url_problems(database):
            c.problem("approval.database", problem)
    elif database and database != ":memory:":
        database = str(c.resolve(database))
    db_password = c.secret(m, "approval", "database_password", required=False)
    if db_password is not None and not is_postgres_url(database):
        c.problem("approval.database_password", "only for a postgresql:// database")
    proxies = tuple(
        net for i, value in enumerate(c.seq(m, "trusted_proxies", "approval.trusted_proxies", ()))
        if (net := c.network(value, f"approval.trusted_proxies[{i}]")) is not None)
    webhook = c.string(m, "alert_webhook", "approval.alert_webhook", required=False)
    if webhook and urlsplit(webhook).scheme not in ("http", "https"):
        c.problem("approval.alert_webhook", "must be an http(s) URL")
    return ApprovalConfig(
        listen=listen or ("127.0.0.1", 8443), public_url=public_url.rstrip("/"),
        tls_cert=cert, tls_key=key, database=database,
        enrollment_ttl=c.number(m, "enrollment_ttl", "approval.enrollment_ttl", 900,
                                minimum=60, maximum=7 * 86400),
        vapid_subject=c.string(m, "vapid_subject", "approval.vapid_subject", required=False)
        or "mailto:admin@localhost",
        alert_webhook=webhook,
        alert_syslog=c.boolean(m, "alert_syslog", "approval.alert_syslog", False),
        max_body=c.number(m, "max_body", "approval.max_body", 16384, minimum=1024,
                          maximum=1048576, integer=True),
        max_failures=c.number(m, "max_failures", "approval.max_failures", 10, minimum=0,
                              maximum=10000, integer=True),
        failure_window=c.number(m, "failure_window", "approval.failure_window", 300,
                                minimum=10, maximum=86400),
        trusted_proxies=proxies,
        max_connections=c.number(m, "max_connections", "approval.max_connections", 4000,
                                 minimum=1, maximum=1_000_000, integer=True),
        max_connections_per_source=c.number(
            m, "max_connections_per_source", "approval.max_connections_per_source", 256,
            minimum=0, maximum=1_000_000, integer=True),
        header_timeout=c.number(m, "header_timeout", "approval.header_timeout", 10,
                                minimum=1, maximum=300),
        body_timeout=c.number(m, "body_timeout", "approval.body_timeout", 30, minimum=1,
                              maximum=600),
        keepalive_timeout=c.number(m, "keepalive_timeout", "approval.keepalive_timeout", 60,
                                   minimum=1, maximum=3600),
        allow_private_push_endpoints=c.boolean(m, "allow_private_push_endpoints",
                                               "approval.allow_private_push_endpoints", False),
        database_password=db_password,
    )
