"""The LDAP front end as a daemon component: listeners, shared state, life cycle.

`build_daemon` adds one `LdapFront` when the config has an ``ldap_front:``
section. It reads the daemon's engine and current config when it needs them,
so a reload applies to the next bind; only listener addresses and
certificate files need a restart.
"""

from __future__ import annotations

import logging

from OpenSSL import crypto
from twisted.internet import defer, ssl

from pushproxy import connlimit, logs
from pushproxy.config import Config
from pushproxy.ldapfront import ber
from pushproxy.ldapfront.binds import BindCache
from pushproxy.ldapfront.server import DropLog, LdapFrontFactory, normalized
from pushproxy.ldapfront.upstream import UpstreamConnector
from pushproxy.policy import interesting_groups

log = logging.getLogger("pushproxy.ldapfront")


def server_tls(cert_file: str, key_file: str):
    """Server TLS options from PEM files (the certificate file may carry its chain)."""
    with open(cert_file, "rb") as handle:
        pem = handle.read()
    with open(key_file, "rb") as handle:
        key = ssl.KeyPair.load(handle.read(), crypto.FILETYPE_PEM)
    marker = b"-----END CERTIFICATE-----"
    certs = [ssl.Certificate.loadPEM(block + marker)
             for block in pem.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
    if not certs:
        raise ValueError(f"{cert_file}: no PEM certificate")
    return ssl.CertificateOptions(
        privateKey=key.original, certificate=certs[0].original,
        extraCertChain=[c.original for c in certs[1:]],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


class LdapFront:
    """Listeners for plain LDAP (+StartTLS) and LDAPS, and what their connections share."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.reactor = daemon.reactor
        self.counters = daemon.counters
        self.connector = UpstreamConnector(self.reactor, self.counters, daemon.config.ldap)
        cfg = daemon.config.ldap_front
        self.cache = BindCache(cfg.bind_cache_seconds, cfg.bind_cache_size)
        self.drops = DropLog(self.reactor)
        self.connections: set = set()
        # One budget for the plain and the LDAPS listeners together.
        self.budget = connlimit.ConnectionBudget(
            "ldap_front", total=cfg.max_connections,
            per_source=cfg.max_connections_per_source)
        self.ports: list = []
        self.tls_options = None
        self.accepting = True
        self._apply(daemon.config)

    def _apply(self, config: Config) -> None:
        self.config = config.ldap_front
        self.connector.ldap = config.ldap
        self.group_mode = config.ldap.group_mode
        # AD login names in bind DNs (pushproxy.adnames), searched with ldap.user_filter
        self.active_directory = config.ldap.active_directory
        self.user_filter = config.ldap.user_filter
        self.required_groups = normalized(config.ldap.required_groups)
        self.candidates = (self.required_groups | interesting_groups(config.policy)
                           | self.config.exempt_groups)
        self.push_no_device = config.push.no_device
        self.cache.reconfigure(self.config.bind_cache_seconds, self.config.bind_cache_size)
        self.budget.total = self.config.max_connections
        self.budget.per_source = self.config.max_connections_per_source

    @property
    def engine(self):
        """The daemon's engine (the same one RADIUS logins use)."""
        return self.daemon.engine

    @property
    def admission(self):
        """The daemon's admission control: new user binds are answered busy (51) while
        it sheds (pushproxy.overload)."""
        return getattr(self.daemon, "admission", None)

    def note_drop(self, why: str, peer: str) -> None:
        """A client connection closed for bad input: counted, logged (rate-limited)."""
        self.counters.inc("ldap_front_disconnects")
        self.drops.note(why, peer)

    def start(self):
        """Load the certificate and listen."""
        cfg = self.config
        if cfg.tls_cert:
            try:
                self.tls_options = server_tls(cfg.tls_cert, cfg.tls_key)
            except Exception as exc:  # OpenSSL's own errors say little: name the files
                raise ValueError(f"ldap_front.tls_cert/tls_key: cannot load {cfg.tls_cert} "
                                 f"and {cfg.tls_key}: {exc}") from None
        for (host, port), ldaps in [(a, False) for a in cfg.listen] + \
                [(a, True) for a in cfg.listen_ldaps]:
            factory = LdapFrontFactory(self, ldaps)
            listening = connlimit.listen(self.reactor, port, factory, self.budget,
                                         self.counters, interface=host,
                                         tls_options=self.tls_options if ldaps else None)
            self.ports.append((listening, ldaps))
            bound = listening.getHost()
            logs.event(log, logging.INFO, "ldap_front.listening", address=bound.host,
                       port=bound.port, ldaps=ldaps, name=cfg.name)
        return defer.succeed(None)

    def port(self, ldaps: bool = False) -> int:
        """The first bound port of that kind (tests, and ports chosen as 0)."""
        return next(p.getHost().port for p, is_ldaps in self.ports if is_ldaps is ldaps)

    def stop_accepting(self):
        """SIGTERM: no new connections, no new binds; running binds may finish."""
        self.accepting = False
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p, _ in ports])

    @defer.inlineCallbacks
    def stop(self):
        """After the drain: close every client connection with a notice."""
        yield self.stop_accepting()
        for proto in list(self.connections):
            proto._disconnect(ber.UNAVAILABLE, "server shutting down", log_it=False)

    def reload(self, new: Config) -> list[str]:
        """Apply ``new``; returns what needs a restart."""
        old = self.config
        if new.ldap_front is None:
            return ["ldap_front removed: restart to apply"]
        restart = [f"ldap_front.{key} changed: restart to apply"
                   for key in ("listen", "listen_ldaps", "tls_cert", "tls_key")
                   if getattr(old, key) != getattr(new.ldap_front, key)]
        self._apply(new)
        return restart
