"""Primary authentication against LDAP / Active Directory.

ldap3 is synchronous, so every directory conversation runs in a dedicated,
bounded thread pool that nothing else uses (a slow directory must not starve
other work, and other work must not starve binds). Each worker thread keeps its
own connections per server: ldap3 connections are not thread-safe, and
reconnecting (TCP + TLS) for every login would cost more than the bind itself.

Failover is a plain ordered list rather than ldap3's ServerPool (which keeps
every connection and has no lock): servers are tried in order, a server that
fails is skipped for ``backoff`` seconds, and connect and response timeouts
bound how long one server can hold a login.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import ldap3
from ldap3.core import exceptions as lexc
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn
from twisted.internet import threads
from twisted.internet.defer import succeed
from twisted.python.threadpool import ThreadPool

from pushproxy import logs
from pushproxy.config import GroupMode, LdapConfig, LdapServer
from pushproxy.decision import PrimaryResult, PrimaryStatus
from pushproxy.metrics import Counters

log = logging.getLogger("pushproxy.ldap")

# Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: membership through nested groups.
AD_IN_CHAIN = "1.2.840.113556.1.4.1941"
INVALID_CREDENTIALS = 49


# Passed instead of a password: search the user and its groups, bind as nobody.
_LOOKUP = object()


class ServerFailed(Exception):
    """This server could not serve the request; try the next one."""


def normalize_dn(dn: str) -> str:
    """A DN in a form where equal DNs compare equal (case, spacing)."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except (lexc.LDAPInvalidDnError, ValueError):
        return dn.strip().lower()
    return ",".join(f"{attr.lower()}={value.lower()}" for attr, value, _ in parts)


def user_filter(template: str, username: str) -> str:
    """The search filter for ``username``, escaped per RFC 4515."""
    return template.replace("{username}", escape_filter_chars(username))


def direct_bind_name(template: str, username: str) -> str:
    """The bind name of a direct-bind template: DN-escaped when it is a DN."""
    if "=" in template.split("{username}")[0]:
        return template.replace("{username}", escape_rdn(username))
    return template.replace("{username}", username)


def account_of(attrs: dict, attribute: str, dn: str) -> str | None:
    """The account an entry proves: its stored ``attribute`` value, casefolded.

    Never the name typed: slapd matches "alİce" (U+0130) or "ＡＬＩＣＥ" to
    alice by its own folding, which Python's does not reproduce, so state
    keyed on the typed spelling would miss alice's devices, locks and rules.
    A multi-valued attribute gives the value the DN is named by, else the
    first in casefold order, so every spelling of one entry gives one account.
    """
    values = next((v for k, v in attrs.items() if k.lower() == attribute.lower()), None)
    if isinstance(values, (str, bytes)):
        values = [values]
    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
              for v in values or ()]
    values = [v for v in values if v]
    if not values:
        return None
    try:
        rdn = parse_dn(dn, escape=False, strip=True)[0]
    except (lexc.LDAPInvalidDnError, ValueError, IndexError):
        rdn = None
    if rdn is not None and rdn[0].lower() == attribute.lower():
        named = [v for v in values if v.casefold() == rdn[1].casefold()]
        if named:
            return named[0].casefold()
    return min(values, key=lambda v: (v.casefold(), v)).casefold()


def group_query(mode: GroupMode, dn: str, username: str, group: str) -> tuple[str, str]:
    """The base-scope search (base DN, filter) that finds something iff the user is in ``group``."""
    if mode is GroupMode.AD_NESTED:
        # Read the user's own entry, matching memberOf through nested groups.
        return dn, f"(memberOf:{AD_IN_CHAIN}:={escape_filter_chars(group)})"
    esc = escape_filter_chars(dn)
    return group, (f"(|(member={esc})(uniqueMember={esc})"
                   f"(memberUid={escape_filter_chars(username)}))")


@dataclass
class _ServerState:
    server: LdapServer
    down_until: float = 0.0
    probing: bool = False  # in backoff, and one login is trying it now


class LdapDirectory:
    """`Directory` implementation: search-then-bind or direct bind, with failover."""

    def __init__(self, config: LdapConfig, reactor, counters: Counters,
                 monotonic=time.monotonic, policy_groups: frozenset[str] = frozenset()):
        self.config = config
        # Groups whose membership the result reports: the required ones (access)
        # and those the policy's rules name (normalized DNs).
        self._required = frozenset(normalize_dn(g) for g in config.required_groups)
        self._candidates = self._required | frozenset(policy_groups)
        self.reactor = reactor
        self.counters = counters
        self.monotonic = monotonic
        self.pool = ThreadPool(minthreads=1, maxthreads=config.pool_size, name="ldap")
        self._servers = [_ServerState(s) for s in config.servers]
        self._lock = threading.Lock()
        self._local = threading.local()
        self._outstanding = 0
        # Certificates are always verified: against ca_file, else the system's trust store.
        self._tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=config.ca_file,
                              version=ssl.PROTOCOL_TLS_CLIENT)

    def start(self) -> None:
        """Start the worker threads."""
        self.pool.start()

    def stop(self) -> None:
        """Stop the worker threads (waits for running binds)."""
        self.pool.stop()

    @property
    def outstanding(self) -> int:
        """LDAP conversations queued or running now (admission control reads it)."""
        return self._outstanding

    def authenticate(self, username: str, password: str):
        """Check ``username``/``password``; fires with a PrimaryResult, never errbacks."""
        if not password:
            # Never reached through the engine (it refuses these first); a
            # password-less check must never turn into a lookup that says OK.
            return succeed(PrimaryResult(PrimaryStatus.BAD_CREDENTIALS, detail="no password"))
        return self._queue(username, password)

    def lookup(self, username: str):
        """The user's DN and groups without a password (the service account searches).

        For logins whose password was checked elsewhere (``primary: radius``
        with ``groups_from_ldap``): fires with OK (and groups), UNKNOWN_USER,
        AMBIGUOUS_USER, NOT_IN_GROUP (``required_groups``) or UNAVAILABLE;
        never errbacks. Needs ``bind_dn``: a direct-bind setup cannot search.
        """
        if self.config.bind_dn is None:
            return succeed(PrimaryResult(PrimaryStatus.UNAVAILABLE,
                                         detail="ldap.bind_dn is needed to look users up"))
        return self._queue(username, _LOOKUP)

    def lookup_blocking(self, username: str, *, keep: bool = False) -> PrimaryResult:
        """``lookup`` in the calling thread (command-line tools; never the reactor).

        ``keep``: leave this thread's connections open for the next lookup (many
        users in a row: half the time on plain LDAP, far more with TLS); the caller
        ends them with `close_blocking`."""
        if self.config.bind_dn is None:
            return PrimaryResult(PrimaryStatus.UNAVAILABLE,
                                 detail="ldap.bind_dn is needed to look users up")
        try:
            return self._authenticate_sync(username, _LOOKUP)
        finally:
            if not keep:
                self.close_blocking()

    def close_blocking(self) -> None:
        """Close the calling thread's connections (after ``lookup_blocking(keep=True)``)."""
        for state in self._servers:
            self._drop_connections(state.server)

    def _queue(self, username: str, password):
        limit = self.config.pool_size + self.config.max_queue
        if self._outstanding >= limit:
            self.counters.inc("ldap_busy")
            return succeed(PrimaryResult(PrimaryStatus.BUSY, detail="queue full"))
        self._outstanding += 1
        d = threads.deferToThreadPool(self.reactor, self.pool, self._authenticate_sync,
                                      username, password)

        def finished(result):
            self._outstanding -= 1
            return result

        def crashed(failure):
            log.error("ldap.internal_error %s", failure.getTraceback())
            return PrimaryResult(PrimaryStatus.UNAVAILABLE, detail="internal error")

        return d.addErrback(crashed).addBoth(finished)

    # -- in the worker threads from here on --

    def _order(self) -> tuple[list[_ServerState], bool]:
        """The servers to try, and whether they are backoff probes (to release after)."""
        now = self.monotonic()
        with self._lock:
            up = [s for s in self._servers if s.down_until <= now]
            if up:
                return up, False
            # Every server in backoff: try them anyway rather than fail outright,
            # but one login at a time per server. If every login waited out the
            # timeouts of a hung directory, the pool would fall behind and the
            # queue would answer minutes late; the others fail at once instead.
            probes = [s for s in self._servers if not s.probing]
            for state in probes:
                state.probing = True
            return probes, True

    def _authenticate_sync(self, username: str, password: str) -> PrimaryResult:
        states, probing = self._order()
        try:
            return self._try_servers(states, username, password)
        finally:
            if probing:
                with self._lock:
                    for state in states:
                        state.probing = False

    def _try_servers(self, states, username: str, password: str) -> PrimaryResult:
        errors = [] if states else ["every server is down; another login is probing them"]
        for state in states:
            started = self.monotonic()
            try:
                result = self._on_server(state.server, username, password)
            except ServerFailed as exc:
                self._drop_connections(state.server)
                with self._lock:
                    state.down_until = self.monotonic() + self.config.backoff
                self.counters.inc("ldap_server_errors", server=state.server.url)
                logs.event(log, logging.WARNING, "ldap.server_failed", server=state.server.url,
                           error=str(exc), elapsed_ms=round((self.monotonic() - started) * 1e3))
                errors.append(f"{state.server.url}: {exc}")
                continue
            with self._lock:
                state.down_until = 0.0
            self.counters.observe("ldap_seconds", self.monotonic() - started,
                                  server=state.server.url)
            return result
        return PrimaryResult(PrimaryStatus.UNAVAILABLE, detail="; ".join(errors))

    def _on_server(self, server: LdapServer, username: str, password: str) -> PrimaryResult:
        for attempt in range(2):
            # A kept connection may have been closed by the server's idle
            # timeout; that says nothing about the server, so retry once on
            # fresh connections before calling the server failed.
            reused = any(url == server.url for url, _ in self._conns())
            try:
                if self.config.bind_template and password is not _LOOKUP:
                    return self._direct(server, username, password)
                return self._search_then_bind(server, username, password)
            except ServerFailed:
                raise
            except (lexc.LDAPException, OSError, ssl.SSLError) as exc:
                self._drop_connections(server)
                # (not after a timeout: a hung server would cost the login twice)
                if reused and attempt == 0 and "timed out" not in str(exc):
                    continue
                raise ServerFailed(f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    def _search_then_bind(self, server, username, password) -> PrimaryResult:
        search = self._connection(server, "search")
        entries = self._find_user(search, username)
        if not entries:
            return PrimaryResult(PrimaryStatus.UNKNOWN_USER, server=server.url)
        if len(entries) > 1:
            return PrimaryResult(PrimaryStatus.AMBIGUOUS_USER, server=server.url)
        dn, attrs = entries[0]
        if password is not _LOOKUP and not self._bind(self._connection(server, "user"), dn,
                                                      password):
            return PrimaryResult(PrimaryStatus.BAD_CREDENTIALS, dn=dn, server=server.url)
        return self._found(server, search, dn, username, attrs)

    def _found(self, server, conn, dn: str, username: str, attrs: dict) -> PrimaryResult:
        """The result for a user whose password was right: account and groups."""
        account = account_of(attrs, self.config.username_attribute, dn)
        if account is None:
            # Without the stored name there is nothing safe to key devices and
            # locks on: fail closed rather than fall back to the typed spelling.
            return PrimaryResult(PrimaryStatus.UNKNOWN_USER, dn=dn, server=server.url,
                                 detail=f"no {self.config.username_attribute} readable "
                                        "in the entry")
        groups = self._member_groups(conn, dn, username, attrs)
        if self._required and not groups & self._required:
            return PrimaryResult(PrimaryStatus.NOT_IN_GROUP, dn=dn, server=server.url,
                                 account=account)
        return PrimaryResult(PrimaryStatus.OK, dn=dn, server=server.url, groups=groups,
                             account=account)

    def _direct(self, server, username, password) -> PrimaryResult:
        conn = self._connection(server, "user")
        if not self._bind(conn, direct_bind_name(self.config.bind_template, username), password):
            return PrimaryResult(PrimaryStatus.BAD_CREDENTIALS, server=server.url)
        # Read our own entry as the user: we need its DN for the group check.
        entries = self._find_user(conn, username)
        if len(entries) != 1:
            status = PrimaryStatus.UNKNOWN_USER if not entries else PrimaryStatus.AMBIGUOUS_USER
            return PrimaryResult(status, server=server.url)
        dn, attrs = entries[0]
        return self._found(server, conn, dn, username, attrs)

    def _find_user(self, conn, username) -> list[tuple[str, dict]]:
        wanted = [self.config.username_attribute]
        if self.config.group_mode is GroupMode.MEMBER_OF:
            wanted.append("memberOf")
        ok = conn.search(self.config.user_base, user_filter(self.config.user_filter, username),
                         search_scope=ldap3.SUBTREE, attributes=wanted, size_limit=2)
        code = conn.result.get("result", 0)
        if not ok and code not in (0, 4, 32):  # success, sizeLimitExceeded, noSuchObject
            raise ServerFailed(f"user search failed: {conn.result.get('description')}")
        return [(e["dn"], e.get("attributes", {})) for e in conn.response or []
                if e.get("type") == "searchResEntry"]

    def _bind(self, conn, name: str, password: str) -> bool:
        if not password:
            # Never an unauthenticated bind (RFC 4513 5.1.2), whoever the caller is.
            return False
        self.counters.inc("ldap_user_binds")
        conn.authentication = ldap3.SIMPLE
        conn.user, conn.password = name, password
        if conn.bind():
            return True
        code = conn.result.get("result")
        if code == INVALID_CREDENTIALS:
            return False
        raise ServerFailed(f"user bind failed: {conn.result.get('description')}")

    def _member_groups(self, conn, dn: str, username: str, attrs: dict) -> frozenset[str]:
        """Which of the groups we care about hold the user (normalized DNs)."""
        if not self._candidates:
            return frozenset()
        if self.config.group_mode is GroupMode.MEMBER_OF:
            return self._candidates & {normalize_dn(g) for g in attrs.get("memberOf", [])}
        found = set()
        for group in sorted(self._candidates):
            base, flt = group_query(self.config.group_mode, dn, username, group)
            conn.search(base, flt, search_scope=ldap3.BASE, attributes=ldap3.NO_ATTRIBUTES)
            if any(e.get("type") == "searchResEntry" for e in conn.response or []):
                found.add(group)
        return frozenset(found)

    def _connection(self, server: LdapServer, role: str):
        """This thread's open connection to ``server`` for ``role`` (search/user)."""
        conns = self._conns()
        conn = conns.get((server.url, role))
        if conn is not None and not conn.closed:
            return conn
        conn = conns[(server.url, role)] = self._open(server, role)
        return conn

    def _open(self, server: LdapServer, role: str):
        """A new connection to ``server``: TCP (+TLS), and the service bind for "search"."""
        srv = ldap3.Server(server.host, port=server.port, use_ssl=server.use_ssl, tls=self._tls,
                           connect_timeout=self.config.connect_timeout, get_info=ldap3.NONE)
        user = password = None
        if role == "search":
            user, password = self.config.bind_dn, self.config.bind_password
        conn = ldap3.Connection(srv, user=user, password=password, auto_bind=ldap3.AUTO_BIND_NONE,
                                read_only=True, raise_exceptions=False,
                                receive_timeout=self.config.response_timeout,
                                client_strategy=ldap3.SYNC)
        conn.open(read_server_info=False)
        # ldap3 never sets TCP_NODELAY: without it every bind waits ~40 ms on
        # Nagle + delayed ACK.
        conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.config.start_tls and not conn.start_tls(read_server_info=False):
            raise ServerFailed("StartTLS failed")
        if role == "search" and user is not None and not conn.bind():
            raise ServerFailed(f"service account bind failed: {conn.result.get('description')}")
        return conn

    def probe(self):
        """Whether each server answers right now: Deferred of {url: None or the error}."""
        return threads.deferToThreadPool(self.reactor, self.pool, self._probe_sync)

    def _probe_sync(self) -> dict[str, str | None]:
        found = {}
        for state in self._servers:
            try:
                self._open(state.server, "search").unbind()
                found[state.server.url] = None
            except (ServerFailed, lexc.LDAPException, OSError, ssl.SSLError) as exc:
                found[state.server.url] = f"{type(exc).__name__}: {exc}"
        return found

    def _conns(self) -> dict:
        """This worker thread's connections, keyed by (server URL, role)."""
        return self._local.__dict__.setdefault("conns", {})

    def _drop_connections(self, server: LdapServer) -> None:
        conns = self._conns()
        for role in ("search", "user"):
            conn = conns.pop((server.url, role), None)
            if conn is not None:
                try:
                    conn.unbind()
                except Exception:  # closing a broken socket: nothing left to do
                    pass
