"""The LDAP listener: one protocol per client connection, proxying to its own upstream.

    bytes -> frame (size limit from the header) -> envelope
      BindRequest     -> refused | forwarded (service, exempt OU, allowed anonymous/SASL)
                         | user: bind upstream, read the entry, engine (push), answer
      StartTLS        -> answered here, TLS with the front end's certificate
      UnbindRequest   -> forwarded, both connections closed
      anything else   -> forwarded byte for byte; responses come back the same way

While a user's bind is being decided the client's other messages wait (RFC
4511 4.2.1 says a client sends none), at most ``max_queued`` of them. A
message that cannot be parsed or is too large ends the connection with a
Notice of Disconnection; the listener goes on serving everyone else.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import deque

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin

from pushproxy import logs
from pushproxy.adgroups import IncompleteAnswer
from pushproxy.adnames import ForeignDomain
from pushproxy.adstate import AccountState, ad_diagnostic
from pushproxy.decision import Decision, Outcome, PrimaryResult, PrimaryStatus, Reason
from pushproxy.engine import LoginRequest
from pushproxy.ldapnames import normalize_dn
from pushproxy.ldapfront import ber
from pushproxy.ldapfront.binds import (PASS_THROUGH, REFUSAL_CODES, REFUSAL_MESSAGES,
                                       ad_bind, cache_may_answer, classify, in_subtree,
                                       is_dn, rdn_value)
from pushproxy.ldapfront.primary import read_user
from pushproxy.ldapfront.upstream import Upstream, UpstreamFailed
from pushproxy.netaddr import peer_address
from pushproxy.passcodes import parse_password
from pushproxy.policy import LoginContext, Verification
from pushproxy.push import ProviderUnavailable
from pushproxy.radius.loglimit import LogLimiter

log = logging.getLogger("pushproxy.ldapfront")
ABORT_AFTER = 10.0  # seconds a disconnected peer gets to read its notice

# Reasons that are an AD account state (they share its values).
_AD_STATES = {Reason(state.value): state for state in AccountState}
_DECISION_CODES = {
    Reason.DIRECTORY_UNAVAILABLE: (ber.UNAVAILABLE, "directory unavailable"),
    Reason.SHUTTING_DOWN: (ber.UNAVAILABLE, "shutting down"),
    Reason.DIRECTORY_BUSY: (ber.BUSY, "directory busy"),
}


def bind_result(decision: Decision) -> tuple[int, str]:
    """The one mapping from a decision to a BindResponse (result code, message).

    Deliberately vague about which factor failed, like the RADIUS reply;
    except that an account AD refuses gets AD's own diagnostic (``data 773``
    must change, ``data 533`` disabled...), which Windows and AD-aware
    clients act on. AD says those only to the right password (775, locked,
    to anyone), so the client learns no more than AD would tell it.
    """
    if decision.outcome is Outcome.ACCEPT:
        return ber.SUCCESS, ""
    state = _AD_STATES.get(decision.reason)
    if state is not None:
        return ber.INVALID_CREDENTIALS, ad_diagnostic(state)
    return _DECISION_CODES.get(decision.reason, (ber.INVALID_CREDENTIALS, "Login denied"))


class _Known:
    """A first factor that already ran: the bind happened before the engine was asked.

    The engine needs the username before it calls the first factor, and the
    username is read from the entry, which only the bound user may read.
    """

    def __init__(self, result: PrimaryResult):
        self.result = result

    def authenticate(self, username: str, password: str) -> defer.Deferred:
        """The result of the bind already made on the client's connection."""
        return defer.succeed(self.result)


def client_address(host: str) -> str:
    """The peer's address as policy rules and the audit trail see it.

    A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; the plain
    IPv4 form lets ``networks: [10.0.0.0/8]`` match them.
    """
    addr = peer_address(host)
    return host if addr is None else str(addr)


_CONNECTIONS = itertools.count(1)
_LOCK_UNKNOWN = object()  # a lock read the store could not answer (ProviderUnavailable)


def _unknown_lock(failure):
    failure.trap(ProviderUnavailable)
    return _LOCK_UNKNOWN


class LdapFrontProtocol(Protocol, TimeoutMixin):
    """One client connection."""

    def __init__(self, front, ldaps: bool):
        self.front = front
        self.tls = ldaps
        self.buffer = bytearray()
        self.queue: deque[ber.Message] = deque()
        self.busy = False  # a user's bind or the upstream connect is in progress
        self.closed = False
        self.upstream: Upstream | None = None
        self.peer = "?"
        self.waiting_first = True  # no whole message yet (or since StartTLS)
        # Tells this connection from every other, for the engine's joins: two
        # binds as alice join one push only on the same connection.
        self.session = f"connection {next(_CONNECTIONS)}"
        self._abort = None  # forced close after a notice the peer does not read

    # -- connection --

    def connectionMade(self) -> None:
        """Count the connection and start its first-message deadline."""
        self.peer = client_address(getattr(self.transport.getPeer(), "host", "?"))
        self.front.connections.add(self)
        self.transport.setTcpNoDelay(True)
        # A new connection gets first_message_timeout (TLS handshake included)
        # for one whole message; after that, idle_timeout, which only a whole
        # message (or an answer going out) restarts: single bytes trickled in
        # never do, so a connection cannot be held open by them.
        self.setTimeout(self.front.config.first_message_timeout)
        self.waiting_first = True
        # max_connections and max_connections_per_source are enforced when the
        # connection is accepted (pushproxy/connlimit.py), before any TLS.
        self._waiting()

    def connectionLost(self, reason=None) -> None:
        """The client left: close its upstream connection too."""
        self.closed = True
        self.setTimeout(None)
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self.front.connections.discard(self)
        budget = getattr(self.front, "budget", None)
        if budget is not None:
            budget.working(self)
        self._drop_upstream()

    def timeoutConnection(self) -> None:
        """No whole message in time: idle, or a first message (or handshake) never came.

        A pending bind is not idle.
        """
        if self.closed:
            return None  # already closing; its own abort timer ends it
        if self.busy:
            self.setTimeout(self.front.config.idle_timeout)  # the fired timer is gone: re-arm
            return None
        if self.waiting_first:
            # Cut at once, no notice: a peer stuck in its TLS handshake could
            # not read one, and a closing TLS connection would wait for it.
            self.front.counters.inc("ldap_front_first_message_timeouts")
            self.closed = True
            self._drop_upstream()
            self.transport.abortConnection()
            return None
        self.front.counters.inc("ldap_front_idle_closed")
        self._disconnect(ber.UNAVAILABLE, "idle timeout", log_it=False)

    def _to_client(self, data: bytes) -> None:
        self.resetTimeout()
        self.transport.write(data)

    def _disconnect(self, code: int, why: str, *, log_it: bool = True) -> None:
        """Notice of Disconnection (RFC 4511 4.4.1), then close."""
        if self.closed:
            return
        if log_it:
            self.front.note_drop(why, self.peer)
        self.closed = True
        self.transport.write(ber.notice_of_disconnection(code, why))
        self.transport.loseConnection()
        # A peer that stops reading would keep the socket (and its slot) open
        # until the notice is flushed: cut it off after a while.
        self._abort = self.front.reactor.callLater(ABORT_AFTER, self._abort_now)
        self._drop_upstream()

    def _abort_now(self) -> None:
        self.transport.abortConnection()

    # -- client bytes --

    def dataReceived(self, data: bytes) -> None:
        """Frame messages; handle them, or queue them while a bind is decided."""
        if self.closed:
            return
        self.buffer += data
        limit = self.front.config.max_message_size
        while not self.closed:
            try:
                taken = ber.next_message(self.buffer, limit)
                if taken is None:
                    return
                raw, msg = taken
                self.waiting_first = False
                self.setTimeout(self.front.config.idle_timeout)  # a whole message: not idle
                self._waiting()
            except ber.ProtocolError as exc:
                self.front.counters.inc("ldap_front_protocol_errors")
                return self._disconnect(ber.PROTOCOL_ERROR, str(exc))
            if self.busy:
                if len(self.queue) >= self.front.config.max_queued:
                    return self._disconnect(ber.PROTOCOL_ERROR,
                                            "too many requests while a bind is in progress")
                self.queue.append(msg)
            else:
                self._handle(msg)

    def _waiting(self) -> None:
        """Tell the listener's budget we wait on the client (a full listener may evict us)."""
        budget = getattr(self.front, "budget", None)
        if budget is not None and not self.closed:
            budget.waiting(self, self.front.reactor.seconds(), self._evicted)

    def _evicted(self) -> bool:
        """Closed to make room (the listener is full); never while a bind or connect runs."""
        if self.busy or self.closed:
            return False
        self.front.counters.inc("ldap_front_evicted")
        self.closed = True
        self.setTimeout(None)
        self._drop_upstream()
        self.transport.abortConnection()
        return True

    def _release(self) -> None:
        """The bind (or connect) is over: handle what waited meanwhile."""
        self.busy = False
        self._waiting()
        while self.queue and not self.busy and not self.closed:
            self._handle(self.queue.popleft())

    def _handle(self, msg: ber.Message) -> None:
        try:
            if msg.op_tag == ber.BIND_REQUEST:
                return self._bind(msg, ber.parse_bind(msg.op))
            if msg.op_tag == ber.UNBIND_REQUEST:
                if self.upstream is not None:
                    self.upstream.transport.write(msg.raw)
                self.closed = True
                self.transport.loseConnection()
                return self._drop_upstream()
            if msg.op_tag == ber.EXTENDED_REQUEST and \
                    ber.parse_extended_name(msg.op) == ber.STARTTLS_OID:
                return self._start_tls(msg)
        except ber.ProtocolError as exc:
            self.front.counters.inc("ldap_front_protocol_errors")
            return self._disconnect(ber.PROTOCOL_ERROR, str(exc))
        return self._forward(msg)

    # -- pass-through --

    def _forward(self, msg: ber.Message) -> None:
        if self.upstream is not None:
            self.upstream.transport.write(msg.raw)
            return
        # First operation that needs the directory: connect now; what arrives
        # meanwhile waits in the queue behind this message.
        self.busy = True

        def connected(upstream: Upstream) -> None:
            upstream.transport.write(msg.raw)
            self._release()

        def failed(failure):
            failure.trap(UpstreamFailed)
            self._disconnect(ber.UNAVAILABLE, "directory unavailable", log_it=False)

        self._ensure_upstream().addCallbacks(connected, failed)

    def _ensure_upstream(self) -> defer.Deferred:
        if self.upstream is not None:
            return defer.succeed(self.upstream)

        def attach(upstream: Upstream) -> Upstream:
            if self.closed:
                upstream.transport.loseConnection()
                raise UpstreamFailed("client left")
            self.upstream = upstream
            upstream.deliver = self._to_client
            upstream.on_lost = self._upstream_lost
            # Backpressure both ways: a full socket buffer pauses the other side.
            self.transport.registerProducer(upstream.transport, True)
            upstream.transport.registerProducer(self.transport, True)
            return upstream

        return defer.ensureDeferred(self.front.connector.connect()).addCallback(attach)

    def _upstream_lost(self, upstream: Upstream, reason) -> None:
        if upstream is self.upstream:
            self.upstream = None
            # The client's bound identity went with it: it must reconnect.
            self._disconnect(ber.UNAVAILABLE, "directory connection lost", log_it=False)

    def _drop_upstream(self) -> None:
        """Close the upstream connection on purpose (the next operation opens a new one)."""
        upstream, self.upstream = self.upstream, None
        if upstream is None:
            return
        upstream.on_lost = upstream.deliver = None
        if not self.closed:
            self.transport.unregisterProducer()
        upstream.transport.loseConnection()

    # -- StartTLS --

    def _start_tls(self, msg: ber.Message) -> None:
        options = self.front.tls_options
        if options is None:
            self.transport.write(ber.extended_response(
                msg.message_id, ber.PROTOCOL_ERROR, "StartTLS is not offered here"))
            return
        if self.tls:
            self.transport.write(ber.extended_response(
                msg.message_id, ber.OPERATIONS_ERROR, "TLS is already active"))
            return
        if self.buffer or self.queue:
            return self._disconnect(ber.PROTOCOL_ERROR, "data after the StartTLS request")
        self.transport.write(ber.extended_response(msg.message_id, ber.SUCCESS,
                                                   name=ber.STARTTLS_OID))
        self.transport.startTLS(options)
        self.tls = True
        # The handshake and the next message get the first-message deadline.
        self.waiting_first = True
        self.setTimeout(self.front.config.first_message_timeout)

    # -- binds --

    def _bind(self, msg: ber.Message, req: ber.BindRequest) -> None:
        front = self.front
        kind = classify(req, front.config, tls=self.tls,
                        ad=getattr(front, "active_directory", None))
        if not front.accepting:
            self.transport.write(ber.bind_response(msg.message_id, ber.UNAVAILABLE,
                                                   "shutting down"))
            return
        if kind in REFUSAL_CODES:
            front.counters.inc("ldap_front_binds_refused", kind=kind.value)
            logs.event(log, logging.INFO, "ldap_front.bind_refused", kind=kind.value,
                       dn=req.name or None, source=self.peer)
            # A failed bind leaves the connection anonymous (RFC 4511 4.2.1),
            # not bound as whoever bound on it before.
            self._drop_upstream()
            self.transport.write(ber.bind_response(msg.message_id, REFUSAL_CODES[kind],
                                                   REFUSAL_MESSAGES[kind]))
            return
        if kind in PASS_THROUGH:
            front.counters.inc("ldap_front_binds_passed", kind=kind.value)
            logs.event(log, logging.INFO, "ldap_front.bind_passed", kind=kind.value,
                       dn=req.name or None, mechanism=req.sasl_mechanism, source=self.peer)
            return self._forward(msg)
        admission = getattr(front, "admission", None)
        shed = admission.check() if admission is not None else None
        if shed is not None:
            # Busy, not broken (issue 22): the client tries again or another
            # server; a failed bind leaves the connection anonymous.
            front.counters.inc("ldap_front_overloaded", reason=shed.value)
            self._drop_upstream()
            self.transport.write(ber.bind_response(msg.message_id, ber.BUSY,
                                                   "server busy, try again"))
            return
        self.busy = True
        d = defer.ensureDeferred(self._user_bind(msg, req))

        def crashed(failure):
            log.error("ldap_front.internal_error %s", failure.getTraceback())
            front.counters.inc("internal_errors")
            self._drop_upstream()
            if not self.closed:
                self.transport.write(ber.bind_response(msg.message_id, ber.UNAVAILABLE,
                                                       "internal error"))

        d.addErrback(crashed).addBoth(lambda _: self._release())

    async def _user_bind(self, msg: ber.Message, req: ber.BindRequest) -> None:
        front, mid = self.front, msg.message_id
        password = req.password.decode("utf-8")  # classify checked it
        first = parse_password(password, front.engine.delimiter).password
        now = front.reactor.seconds()
        key = front.cache.key(self.peer, req.name, req.password)
        cached = front.cache.hit(key, now)
        # A hit's lock is read beside the upstream bind, not after it: the store's
        # round trip overlaps the directory's (the read still follows the bind's arrival).
        lock_ahead = self._read_lock(front.cache.account_of(key)) if cached else None
        result, username = await self._primary(mid, req.name, first)
        if self.closed:
            return
        if cached and result.status is PrimaryStatus.OK:
            passed_over = await self._cache_passed_over(username, result, lock_ahead)
            if self.closed:
                return
            if passed_over is None:
                front.counters.inc("ldap_front_bind_cache_hits")
                logs.event(log, logging.INFO, "ldap_front.bind_cached", user=username,
                           dn=req.name, source=self.peer)
                self.transport.write(ber.bind_response(mid, ber.SUCCESS))
                return
            # This bind needs more than the approval cached for it (presence, a
            # group it left, a lock): the engine decides, as for a first bind.
            front.counters.inc("ldap_front_bind_cache_passed_over", why=passed_over)
            logs.event(log, logging.INFO, "ldap_front.bind_cache_passed_over", user=username,
                       dn=req.name, source=self.peer, why=passed_over)
        if cached:
            front.cache.forget(key)  # the password no longer works upstream, or needs more
        if result.status is PrimaryStatus.OK and result.dn and not is_dn(req.name):
            # An AD name (svc@corp.example, CORP\svc) of a service account or of an
            # exempt OU: known only now, from the entry the directory bound.
            stored = normalize_dn(result.dn)
            kind = ("service" if stored in front.config.service_dns else "exempt_ou"
                    if any(in_subtree(stored, ou) for ou in front.config.exempt_ous) else None)
            if kind is not None:
                front.counters.inc("ldap_front_binds_passed", kind=kind)
                logs.event(log, logging.INFO, "ldap_front.bind_passed", kind=kind,
                           dn=result.dn, user=username, source=self.peer)
                self.transport.write(ber.bind_response(mid, ber.SUCCESS))
                return
        if result.status is PrimaryStatus.OK and result.groups & front.config.exempt_groups:
            front.counters.inc("ldap_front_binds_passed", kind="exempt_group")
            logs.event(log, logging.INFO, "ldap_front.bind_passed", kind="exempt_group",
                       dn=req.name, user=username, source=self.peer)
            self.transport.write(ber.bind_response(mid, ber.SUCCESS))
            return
        required = front.required_groups
        if result.status is PrimaryStatus.OK and required and not result.groups & required:
            result = dataclasses.replace(result, status=PrimaryStatus.NOT_IN_GROUP)
        decision = await front.engine.login(LoginRequest(
            protocol="ldap", username=username, password=password,
            client_name=front.config.name, source=self.peer, calling_station=self.peer,
            nas=None, port=self.session, peer_is_application=True,
            no_device=front.config.no_device or front.push_no_device,
            # LDAP cannot carry a challenge: plain push unless a rule says otherwise
            # (such a rule gets a Reject here, see docs/ldap-front.md).
            verification=Verification.NONE, primary=_Known(result),
            requires=front.config.requires))
        if decision.outcome is Outcome.ACCEPT:
            if decision.presence is None:
                # An approval made with presence is not remembered: the face or
                # fingerprint is asked for every bind (docs/presence.md).
                front.cache.remember(key, front.reactor.seconds(),
                                     (result.account or username).casefold())
        else:
            # The upstream connection may be bound as the user (password right,
            # push denied): never let the client use it. The next operation
            # opens a fresh, anonymous one.
            self._drop_upstream()
        if not self.closed:
            code, text = bind_result(decision)
            self.transport.write(ber.bind_response(mid, code, text))

    def _read_lock(self, account: str | None) -> tuple[str, defer.Deferred] | None:
        """Start reading ``account``'s lock now: (account, Deferred firing with the lock,
        or `_LOCK_UNKNOWN` when the store cannot say); None without an account or locks."""
        factors = self.front.engine.factors
        if account is None or factors is None:
            return None
        # Trapped here, so that a read nobody waits for (a wrong password now) logs nothing.
        return account, defer.maybeDeferred(factors.lock_of, account).addErrback(_unknown_lock)

    async def _cache_passed_over(self, username: str, result: PrimaryResult,
                                 lock_ahead: tuple[str, defer.Deferred] | None = None
                                 ) -> str | None:
        """Why the bind cache may not answer this bind (see `cache_may_answer`), or a lock
        (a fraud report, passcode guessing) set since the approval; None: it may.

        ``lock_ahead``: a read of the lock started when the bind arrived (`_read_lock`),
        used when it was for the account this bind's entry names."""
        front = self.front
        engine = front.engine
        account = (result.account or username).casefold()
        why = cache_may_answer(engine.policy, LoginContext(
            username=account, client_name=front.config.name, client_ip=self.peer,
            groups=result.groups, now=engine.wallclock(), peer_is_application=True),
            front.config.requires, front.required_groups)
        if why is not None or engine.factors is None:
            return why
        if lock_ahead is None or lock_ahead[0] != account:
            lock_ahead = self._read_lock(account)
        locked = await lock_ahead[1]
        if locked is _LOCK_UNKNOWN:
            return "lock_unknown"  # the engine meets the same failure and decides
        return "locked" if locked else None

    async def _primary(self, mid: int, dn: str, password: str) -> tuple[PrimaryResult, str]:
        """Bind as the user on this client's upstream connection, then read the entry."""
        cfg, ad = self.front.config, getattr(self.front, "active_directory", None)
        guess = rdn_value(dn, cfg.login_attribute) or dn
        ad_name = None
        if ad is not None and not is_dn(dn):
            # An AD login name (classify let only these through without a DN).
            ad_name = ad_bind(ad, dn, self.front.user_filter)
            if isinstance(ad_name, ForeignDomain):
                self.front.counters.inc("ldap_foreign_domain")
                return PrimaryResult(PrimaryStatus.UNKNOWN_DOMAIN, detail=ad_name.why), dn
        if not password:
            # "password" was only a passcode: never an unauthenticated bind upstream.
            return PrimaryResult(PrimaryStatus.BAD_CREDENTIALS, dn=dn), guess
        try:
            upstream = await self._ensure_upstream()
        except UpstreamFailed as exc:
            return PrimaryResult(PrimaryStatus.UNAVAILABLE, dn=dn, detail=str(exc)), guess
        try:
            return await read_user(upstream, mid, dn, password, cfg.login_attribute,
                                   self.front.group_mode, self.front.candidates,
                                   self.front.counters, now=self.front.reactor.seconds(),
                                   ad_name=ad_name, ad=ad)
        except IncompleteAnswer as exc:
            # A referral or ranged memberOf: deciding on the part that came
            # back could grant or deny wrongly (pushproxy.adgroups).
            self.front.counters.inc("ldap_incomplete_answers", why=exc.why)
            logs.event(log, logging.WARNING, "ldap_front.incomplete_answer",
                       server=upstream.server.url, why=exc.why, detail=str(exc))
            return PrimaryResult(PrimaryStatus.UNAVAILABLE, dn=dn, detail=str(exc)), guess
        except (UpstreamFailed, ber.ProtocolError) as exc:
            self._drop_upstream()
            logs.event(log, logging.WARNING, "ldap_front.user_bind_failed",
                       server=upstream.server.url, error=str(exc))
            return PrimaryResult(PrimaryStatus.UNAVAILABLE, dn=dn, detail=str(exc)), guess


class LdapFrontFactory(Factory):
    """Builds protocols for one listener (plain or LDAPS)."""

    def __init__(self, front, ldaps: bool):
        self.front = front
        self.ldaps = ldaps

    def buildProtocol(self, addr):
        """A protocol for one client connection."""
        return LdapFrontProtocol(self.front, self.ldaps)


def normalized(dns) -> frozenset[str]:
    """Normalized DNs."""
    return frozenset(normalize_dn(d) for d in dns)


class DropLog:
    """Counted always, logged once a minute per peer and reason (a junk flood stays quiet)."""

    def __init__(self, clock):
        self.clock = clock
        self.limiter = LogLimiter()

    def note(self, why: str, peer: str) -> None:
        """Log one dropped connection, unless this peer was just logged for the same."""
        suppressed = self.limiter.note((why.split(" ")[0], peer), self.clock.seconds())
        if suppressed is not None:
            logs.event(log, logging.WARNING, "ldap_front.disconnect", source=peer, why=why,
                       suppressed=suppressed or None)
