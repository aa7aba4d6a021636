"""Primary authentication against LDAP / Active Directory.

The two operations of a login (search as the service account, simple bind as
the user) run on the reactor through `pushproxy.ldapclient`: requests are a
few bytes of BER built directly (no pyasn1), searches are pipelined on kept
service-bound connections, and each login's bind borrows a connection of its
own (`pushproxy.ldapconns`). Nothing waits in a thread, so a slow directory
holds sockets and timers, not workers. ldap3 stays for the blocking lookup of
the command-line tools (`pushproxy.ldapsync`) and for `test-connection`.

Failover is a plain ordered list rather than ldap3's ServerPool (which keeps
every connection and has no lock): servers are tried in order, a server that
fails is skipped for ``backoff`` seconds, and connect and response timeouts
bound how long one server can hold a login.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.defer import succeed
from twisted.python import threadable
from twisted.python.failure import Failure

from pushproxy import adgroups, adstate, logs
from pushproxy.adgroups import IncompleteAnswer
from pushproxy.adnames import ForeignDomain, canonical_account, foreign_domain, user_search
from pushproxy.config import GroupMode, LdapConfig, LdapServer
from pushproxy.decision import PrimaryResult, PrimaryStatus
from pushproxy.ldapanswers import (NO_PASSWORD, ServerFailed, account_refusal, bind_refusal,
                                   user_entries)
from pushproxy.ldapclient import BASE, SUBTREE, LdapConnectionLost, LdapError, LdapTimeout
from pushproxy.ldapconns import ServerConnections
from pushproxy.ldapfilter import FilterError, FilterTemplate, compile_filter
from pushproxy.ldapnames import (account_of, conclude, direct_bind_name, group_query,
                                 normalize_dn, values_of)
from pushproxy.metrics import Counters
from pushproxy.radius.loglimit import LogLimiter

log = logging.getLogger("pushproxy.ldap")

# Passed instead of a password: search the user and its groups, bind as nobody.
_LOOKUP = object()


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
        self._servers = [_ServerState(s) for s in config.servers]
        self._rids = adgroups.GroupRids()  # the configured groups' RIDs (primary group)
        self._pools: dict[str, ServerConnections] = {}
        self._outstanding = 0
        self._blocking = threading.local()  # lookup_blocking's kept connections
        self._slow_log = LogLimiter(every=10.0, max_lines=10)  # ldap.slow_operation lines
        self._stopped = False
        # A filter the encoder cannot read fails every login the same way:
        # say so once, instead of marking each server failed in turn.
        try:
            self._user_filter = FilterTemplate(config.user_filter)
            self._filter_error = None
        except FilterError as exc:
            self._user_filter, self._filter_error = None, f"ldap.user_filter: {exc}"
        self._filters = {config.user_filter: self._user_filter}
        if config.active_directory is not None:
            try:
                upn = config.active_directory.upn_filter
                self._filters[upn] = FilterTemplate(upn)
            except FilterError as exc:
                self._filter_error = f"ldap.active_directory.upn_filter: {exc}"

    def start(self) -> None:
        """Nothing to start: connections open on first use."""

    def stop(self) -> None:
        """Refuse new logins; close the kept connections once the running ones are done.

        Callable from any thread (the service joins it off the reactor).
        """
        if self.reactor is not None and not threadable.isInIOThread():
            self.reactor.callFromThread(self._close)
        else:
            self._close()

    def _close(self) -> None:
        # New logins are refused from now on; those already talking to the
        # directory finish on the kept connections, which close after the last.
        self._stopped = True
        if not self._outstanding:
            for pool in self._pools.values():
                pool.close()

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
        """``lookup`` in the calling thread with ldap3 (command-line tools; never the reactor).

        ``keep``: leave this thread's connections open for the next lookup (many
        users in a row: half the time on plain LDAP, far more with TLS); the caller
        ends them with `close_blocking`."""
        if self.config.bind_dn is None:
            return PrimaryResult(PrimaryStatus.UNAVAILABLE,
                                 detail="ldap.bind_dn is needed to look users up")
        from pushproxy import ldapsync

        try:
            return ldapsync.lookup(self.config, username, self._candidates, self._required,
                                   conns=self._blocking_conns())
        finally:
            if not keep:
                self.close_blocking()

    def _blocking_conns(self) -> dict:
        """This thread's kept ldap3 connections, by server URL."""
        conns = getattr(self._blocking, "conns", None)
        if conns is None:
            conns = self._blocking.conns = {}
        return conns

    def close_blocking(self) -> None:
        """Close the calling thread's connections (after ``lookup_blocking(keep=True)``)."""
        from pushproxy import ldapsync

        ldapsync.close_all(self._blocking_conns())

    def _queue(self, username: str, password):
        limit = self.config.pool_size + self.config.max_queue
        if self._outstanding >= limit:
            self.counters.inc("ldap_busy")
            return succeed(PrimaryResult(PrimaryStatus.BUSY, detail="queue full"))
        if self._filter_error is not None:
            return succeed(PrimaryResult(PrimaryStatus.UNAVAILABLE, detail=self._filter_error))
        if self._stopped:
            return succeed(PrimaryResult(PrimaryStatus.UNAVAILABLE, detail="directory stopped"))
        search = user_search(self.config, username)
        if isinstance(search, ForeignDomain):
            # Before any directory traffic: a name for another domain is not ours to check.
            self.counters.inc("ldap_foreign_domain")
            return succeed(foreign_domain(search))
        self._outstanding += 1
        d = self._authenticate(username, password)

        def finished(result):
            self._outstanding -= 1
            if self._stopped and not self._outstanding:
                self._close()
            return result

        def crashed(failure):
            log.error("ldap.internal_error %s", failure.getTraceback())
            return finished(PrimaryResult(PrimaryStatus.UNAVAILABLE, detail="internal error"))

        return d.addCallbacks(finished, crashed)

    def _order(self) -> tuple[list[_ServerState], bool]:
        """The servers to try, and whether they are backoff probes (to release after)."""
        now = self.monotonic()
        up = [s for s in self._servers if s.down_until <= now]
        if up:
            return up, False
        # Every server in backoff: try them anyway rather than fail outright,
        # but one login at a time per server. If every login waited out the
        # timeouts of a hung directory, logins would queue behind each other
        # and answer minutes late; the others fail at once instead.
        probes = [s for s in self._servers if not s.probing]
        for state in probes:
            state.probing = True
        return probes, True

    def _authenticate(self, username: str, password):
        states, probing = self._order()
        d = self._try_servers(states, username, password)
        if probing:
            def release(result):
                for state in states:
                    state.probing = False
                return result
            d.addBoth(release)
        return d

    def _pool(self, server: LdapServer) -> ServerConnections:
        pool = self._pools.get(server.url)
        if pool is None:
            pool = self._pools[server.url] = ServerConnections(self.reactor, server, self.config)
        return pool

    def _try_servers(self, states, username: str, password):
        """The first answer of a server in ``states``; UNAVAILABLE if each one fails.

        Written as a callback chain rather than a generator: it runs for
        every login, and each generator layer costs more than the work here.
        """
        errors = [] if states else ["every server is down; another login is probing them"]

        def attempt(index: int):
            if index == len(states):
                return PrimaryResult(PrimaryStatus.UNAVAILABLE, detail="; ".join(errors))
            state, started = states[index], self.monotonic()

            def answered(result):
                state.down_until = 0.0
                self.counters.observe("ldap_seconds", self.monotonic() - started,
                                      server=state.server.url)
                return result

            def failed(failure):
                failure.trap(ServerFailed)  # anything else is a bug: logged by _queue
                exc = failure.value
                self._pool(state.server).drop()
                state.down_until = self.monotonic() + self.config.backoff
                self.counters.inc("ldap_server_errors", server=state.server.url)
                logs.event(log, logging.WARNING, "ldap.server_failed", server=state.server.url,
                           error=str(exc), elapsed_ms=round((self.monotonic() - started) * 1e3))
                errors.append(f"{state.server.url}: {exc}")
                return attempt(index + 1)
            return self._on_server(state.server, username, password).addCallbacks(answered,
                                                                                  failed)
        return defer.maybeDeferred(attempt, 0)

    def _on_server(self, server: LdapServer, username: str, password, attempt: int = 0):
        """One server's answer; fails with ServerFailed when the server is at fault."""
        if self.config.bind_template and password is not _LOOKUP:
            d = self._direct(server, username, password)
        else:
            d = self._search_then_bind(server, username, password)

        def failed(failure):
            exc = failure.value
            if isinstance(exc, IncompleteAnswer):
                return self._incomplete(server, exc)
            if not isinstance(exc, (LdapError, OSError, SSL.Error, FilterError)):
                return failure  # ServerFailed as it is; anything else is a bug (logged)
            # A kept connection may have been closed by the server's idle
            # timeout; that says nothing about the server, so retry once on
            # fresh connections before calling the server failed (not after
            # a timeout or a malformed answer: a hung or broken server would
            # cost the login twice).
            if attempt == 0 and exc.reused and isinstance(exc, LdapConnectionLost):
                return self._on_server(server, username, password, attempt=1)
            if isinstance(exc, LdapTimeout) and exc.server_answering:
                return self._slow_operation(server, username, password, attempt, exc)
            raise ServerFailed(f"{type(exc).__name__}: {exc}")
        return d.addErrback(failed)

    def _incomplete(self, server: LdapServer, exc: IncompleteAnswer) -> PrimaryResult:
        """A partial answer (referral, ranged memberOf): refused, the server stays up."""
        self.counters.inc("ldap_incomplete_answers", why=exc.why)
        logs.event(log, logging.WARNING, "ldap.incomplete_answer", server=server.url,
                   why=exc.why, detail=str(exc))
        return PrimaryResult(PrimaryStatus.UNAVAILABLE, server=server.url, detail=str(exc))

    def _now(self) -> float:
        """Wall-clock seconds (accountExpires is a date): the reactor's, so tests use a Clock."""
        return self.reactor.seconds() if self.reactor is not None else time.time()

    def _refused(self, server: LdapServer, dn: str | None, attrs: dict,
                 refusal: adstate.BindRefusal | None = None) -> PrimaryResult | None:
        """`account_refusal` for this login (counted); None when the account is usable."""
        now = self._now()
        if refusal is None and adstate.entry_state(attrs, now) is None:
            return None  # usable (every login that gets on): no account to name
        account = account_of(attrs, self.config.username_attribute, dn) if dn else None
        if account is not None:
            account = canonical_account(self.config.active_directory, account, dn)
        result = account_refusal(server.url, dn, account, attrs, refusal, now)
        if result is not None and result.account_state is not None:
            self.counters.inc("ldap_account_refusals", state=result.account_state.value)
        return result

    def _slow_operation(self, server: LdapServer, username: str, password, attempt: int,
                        exc: LdapTimeout):
        """One operation timed out while the server went on answering others: busy.

        Only that login is concerned (its connection was retired, nothing else
        on it failed) and the server is not marked failed: it is retried once on
        the server's other connections, then answered ``directory_busy``.
        """
        self.counters.inc("ldap_op_timeouts", server=server.url)
        suppressed = self._slow_log.note(server.url, self.monotonic())
        if suppressed is not None:
            logs.event(log, logging.WARNING, "ldap.slow_operation", server=server.url,
                       error=str(exc), retry=attempt == 0, suppressed=suppressed or None)
        if attempt == 0:
            return self._on_server(server, username, password, attempt=1)
        return PrimaryResult(PrimaryStatus.BUSY, server=server.url,
                             detail=f"directory busy: {exc}")

    def _search_then_bind(self, server, username, password):
        """Search as the service account, then bind as the entry found (callback chain)."""
        pool = self._pool(server)

        def searched(entries, search):
            if not entries:
                return PrimaryResult(PrimaryStatus.UNKNOWN_USER, server=server.url)
            if len(entries) > 1:
                return PrimaryResult(PrimaryStatus.AMBIGUOUS_USER, server=server.url)
            dn, attrs = entries[0]
            if password is _LOOKUP:
                return self._with_groups(pool, search, server, dn, username, attrs)

            def bound(refusal):
                if refusal is not None:
                    return self._refused(server, dn, attrs, refusal)
                return self._with_groups(pool, search, server, dn, username, attrs)
            return self._bind_user(pool, dn, password).addCallback(bound)

        def connected(search):
            return self._find_user(search, username).addCallback(searched, search)
        ready = pool.ready_search_connection()
        if ready is None:
            return pool.search_connection().addCallback(connected)
        try:  # no wait for a connection: the usual case, without one more Deferred
            return connected(ready)
        except Exception:  # as the callback would have carried it
            return defer.fail()

    def _with_groups(self, pool, search, server, dn: str, username: str, attrs: dict):
        """`conclude` once the user's groups are known (the search connection asks).

        Runs inside a callback: returns the PrimaryResult itself when the groups
        are known from the entry (memberOf), else a Deferred of it."""
        refused = self._refused(server, dn, attrs)  # the password is proved (or looked up)
        if refused is not None:
            return refused
        # member_of reads the entry alone, unless AD's primary group is to be compared.
        needs_search = self._candidates and (self.config.group_mode is not GroupMode.MEMBER_OF
                                             or adgroups.primary_group_id(attrs) is not None)
        if (search.closed or search.retiring) and needs_search:  # the group queries need one
            d = pool.search_connection()
            d.addCallback(lambda conn: self._member_groups(conn, dn, username, attrs))
            return d.addCallback(self._concluded, server, dn, attrs)
        groups = self._member_groups(search, dn, username, attrs)
        if isinstance(groups, defer.Deferred):
            return groups.addCallback(self._concluded, server, dn, attrs)
        return self._concluded(groups, server, dn, attrs)

    def _concluded(self, groups: frozenset[str], server, dn: str, attrs: dict) -> PrimaryResult:
        return conclude(self.config, self._required, server.url, dn, attrs, groups)

    @defer.inlineCallbacks
    def _direct(self, server, username, password):
        pool = self._pool(server)
        conn = yield pool.borrow()
        healthy = False
        try:
            refusal = yield self._bind(conn, direct_bind_name(self.config.bind_template,
                                                               username), password)
            if refusal is not None:
                healthy = True
                return self._refused(server, None, {}, refusal)
            # Read our own entry as the user: we need its DN for the group check.
            entries = yield self._find_user(conn, username)
            if len(entries) != 1:
                healthy = True
                status = (PrimaryStatus.UNKNOWN_USER if not entries
                          else PrimaryStatus.AMBIGUOUS_USER)
                return PrimaryResult(status, server=server.url)
            dn, attrs = entries[0]
            refused = self._refused(server, dn, attrs)
            if refused is not None:
                healthy = True
                return refused
            groups = yield self._member_groups(conn, dn, username, attrs)
            healthy = True
            return conclude(self.config, self._required, server.url, dn, attrs, groups)
        finally:
            pool.give_back(conn, healthy)

    def _find_user(self, conn, username):
        """The entries the user filter finds (at most two: more is ambiguous anyway)."""
        # AD's account flags and primary group ride along (a directory
        # without them answers without them).
        wanted = [self.config.username_attribute, *adstate.STATE_ATTRIBUTES,
                  adgroups.PRIMARY_GROUP_ID]
        if self.config.group_mode is GroupMode.MEMBER_OF:
            wanted.append("memberOf")
        search = user_search(self.config, username)
        if isinstance(search, ForeignDomain):  # refused in _queue already; never searched
            return succeed(())
        base, template, value = search
        compiled = self._filters.get(template) or FilterTemplate(template)  # implicit UPNs
        flt = compiled.render(value)  # escaping: see FilterTemplate
        return conn.search(base, flt, wanted, scope=SUBTREE,
                           size_limit=2).addCallback(user_entries)

    def _bind_user(self, pool: ServerConnections, name: str, password: str):
        """Bind as the user on a connection of its own (never the shared search ones)."""
        if not password:
            return succeed(NO_PASSWORD)

        def lent(conn):
            def back(result):
                pool.give_back(conn, healthy=not isinstance(result, Failure))
                return result
            return self._bind(conn, name, password).addBoth(back)
        idle = pool.borrow_idle()
        if idle is None:
            return pool.borrow().addCallback(lent)
        return lent(idle)  # an idle connection: no Deferred to wait on

    def _bind(self, conn, name: str, password: str):
        """Fires None (bound) or the BindRefusal of invalid credentials; others fail the server."""
        if not password:
            # Never an unauthenticated bind (RFC 4513 5.1.2), whoever the caller is.
            return succeed(NO_PASSWORD)
        self.counters.inc("ldap_user_binds")
        return conn.bind(name, password).addCallback(bind_refusal)

    def _member_groups(self, conn, dn: str, username: str, attrs: dict):
        """Which of the groups we care about hold the user (normalized DNs): the set
        itself when the entry's memberOf says it, else a Deferred of it."""
        if not self._candidates:
            return frozenset()
        direct: frozenset[str] = frozenset()
        groups: list[str] = []
        if self.config.group_mode is GroupMode.MEMBER_OF:
            ranged = adgroups.ranged(attrs, "memberOf")
            if ranged is not None:
                raise IncompleteAnswer("range", f"the entry lists {ranged} (more groups than "
                                       "the DC returns at once): use group_mode ad_nested")
            direct = self._candidates & {normalize_dn(g) for g in values_of(attrs, "memberOf")}
        else:
            groups = sorted(self._candidates)
        rid = adgroups.primary_group_id(attrs)
        now = self.monotonic()
        primary = []  # AD's primary group is in no member list: compare RIDs
        for group in adgroups.primary_group_candidates(normalize_dn(dn),
                                                       sorted(self._candidates), rid):
            known, group_rid = self._rids.get(group, now)
            if not known:
                primary.append(group)
            elif group_rid == rid:
                direct |= {group}
        if not groups and not primary:
            return direct
        searches = []
        for group in groups:  # pipelined: every query is on the wire before the first answer
            base, flt = group_query(self.config.group_mode, dn, username, group)
            searches.append(conn.search(base, compile_filter(flt), ["1.1"], scope=BASE))
        token_filter, token_attrs = adgroups.primary_group_query()
        for group in primary:
            searches.append(conn.search(group, token_filter, token_attrs, scope=BASE))

        def answered(results):
            found = set(direct)
            for group, r in zip(groups + primary, results):
                adgroups.check_group_answer(group, r.code, r.message)
            found.update(g for g, r in zip(groups, results) if r.entries)
            for group, r in zip(primary, results[len(groups):]):
                self._rids.put(group, adgroups.group_rid(r.entries), now)
                if adgroups.is_primary_group(rid, r.entries):
                    found.add(group)
            return frozenset(found)
        return defer.gatherResults(searches, consumeErrors=True).addCallbacks(
            answered, lambda f: f.value.subFailure)

    def probe(self):
        """Whether each server answers right now: Deferred of {url: None or the error}."""
        return defer.ensureDeferred(self._probe())

    async def _probe(self) -> dict[str, str | None]:
        async def one(state):
            try:
                conn = await self._pool(state.server).open(service=True)
            except (LdapError, OSError, SSL.Error) as exc:
                return f"{type(exc).__name__}: {exc}"
            conn.close()
            return None
        found = await defer.gatherResults(
            [defer.ensureDeferred(one(s)) for s in self._servers])
        return {s.server.url: error for s, error in zip(self._servers, found)}
