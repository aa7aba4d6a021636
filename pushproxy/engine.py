"""The engine: one login from credentials to decision, readable top to bottom.

    check input -> join a pending identical login? -> primary auth (directory)
    -> join a pending push for the same user/client/station? -> push with
    timeout -> decision -> one audit event

This is the only module that turns decisions into Deferreds and timers. The
decisions themselves come from the pure functions in `pushproxy.decision`;
the clock and every backend are passed in, so tests drive time with
`twisted.internet.task.Clock` and scripted backends.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Callable, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from pushproxy import logs
from pushproxy.audit import AuditEvent, AuditLog, utc_stamp
from pushproxy.config import NoDeviceMode, PushConfig
from pushproxy.decision import (Decision, PrimaryResult, PushResult, PushStatus, Reason,
                                check_credentials, primary_decision, push_decision)
from pushproxy.metrics import Counters
from pushproxy.push import ApprovalRequest, ProviderUnavailable, PushProvider

log = logging.getLogger("pushproxy.engine")


class Directory(Protocol):
    """The first factor: checks a username and password."""

    def authenticate(self, username: str, password: str) -> Deferred[PrimaryResult]:
        """Fires with a PrimaryResult; never errbacks."""


@dataclass(frozen=True)
class LoginRequest:
    """A login as any front end (RADIUS, later LDAP) hands it to the engine."""

    protocol: str
    username: str | None
    password: str | None
    client_name: str
    source: str
    calling_station: str | None
    nas: str | None
    no_device: NoDeviceMode


class _Fanout:
    """One result, any number of waiters (joined logins and pushes)."""

    def __init__(self) -> None:
        self._waiters: list[Deferred] = []

    def wait(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def fire(self, result) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(result)


@dataclass
class _PendingLogin:
    digest: bytes
    fanout: _Fanout


class Engine:
    """Runs logins; one instance per daemon."""

    def __init__(self, *, clock: IReactorTime, directory: Directory, provider: PushProvider,
                 push: PushConfig, audit: AuditLog, counters: Counters,
                 wallclock: Callable[[], float] | None = None,
                 new_txid: Callable[[], str] = lambda: secrets.token_urlsafe(16)):
        self.clock = clock
        self.directory = directory
        self.provider = provider
        self.push = push
        self.audit = audit
        self.counters = counters
        self.wallclock = wallclock or clock.seconds
        self.new_txid = new_txid
        # Keyed HMAC so that equal passwords can be recognised without keeping them.
        self._digest_key = secrets.token_bytes(32)
        self._logins: dict[tuple, _PendingLogin] = {}
        self._pushes: dict[tuple, _Fanout] = {}
        self._push_calls: dict[str, Deferred] = {}
        self._stopping = False

    @property
    def pending(self) -> int:
        """Logins waiting for a decision right now."""
        return len(self._logins)

    def login(self, req: LoginRequest) -> Deferred[Decision]:
        """Decide one login; the Deferred always fires with a Decision."""
        started = self.clock.seconds()
        bad = check_credentials(req.username, req.password)
        if bad is not None:
            return defer.succeed(self._finish(Decision.of(bad), req, started, False))
        key = (req.client_name, req.username.casefold(), req.calling_station)
        digest = hmac.new(self._digest_key, req.password.encode("utf-8"), hashlib.sha256).digest()
        pending = self._logins.get(key)
        if pending is not None and hmac.compare_digest(pending.digest, digest):
            # The NAS gave up on us and sent the same login again (new id, or
            # via its second server): wait for the login already running.
            self.counters.inc("logins_joined")
            d = pending.fanout.wait()
            d.addCallback(self._finish, req, started, True)
            return d
        mine = _PendingLogin(digest, _Fanout())
        if pending is None:
            self._logins[key] = mine

        def done(decision: Decision) -> Decision:
            if self._logins.get(key) is mine:
                del self._logins[key]
            mine.fanout.fire(decision)
            return self._finish(decision, req, started, False)

        return self._run(req, key).addCallback(done)

    @defer.inlineCallbacks
    def _run(self, req: LoginRequest, key: tuple):
        try:
            primary = yield self.directory.authenticate(req.username, req.password)
            decision = primary_decision(primary)
            if decision is not None:
                return decision
            if self._stopping:
                return Decision.of(Reason.SHUTTING_DOWN)
            result = yield self._push_for(req, key)
            if self._stopping:
                return Decision.of(Reason.SHUTTING_DOWN, result)
            return push_decision(result, self.push.failmode, req.no_device)
        except Exception:
            log.exception("engine.internal_error")
            self.counters.inc("internal_errors")
            return Decision.of(Reason.INTERNAL_ERROR)

    def _push_for(self, req: LoginRequest, key: tuple) -> Deferred[PushResult]:
        """One push per user/client/station at a time; later logins join it."""
        fanout = self._pushes.get(key)
        if fanout is not None:
            self.counters.inc("pushes_joined")
            return fanout.wait()
        fanout = self._pushes[key] = _Fanout()
        now = self.wallclock()
        request = ApprovalRequest(
            txid=self.new_txid(), username=req.username, application=req.client_name,
            client_ip=req.calling_station, nas=req.nas, created=now,
            expires=now + self.push.timeout)
        self.counters.inc("pushes_requested")
        call = defer.maybeDeferred(self.provider.request_approval, request)
        self._push_calls[request.txid] = call
        call.addTimeout(self.push.timeout, self.clock)
        call.addErrback(self._push_failed, request)

        def settle(result: PushResult) -> None:
            self._push_calls.pop(request.txid, None)
            del self._pushes[key]
            fanout.fire(result)

        waiter = fanout.wait()
        call.addCallback(settle)
        return waiter

    def _push_failed(self, failure, request: ApprovalRequest) -> PushResult:
        """Classify a push error: timeout, unreachable provider, or a bug there."""
        if failure.check(defer.TimeoutError):
            return PushResult(PushStatus.TIMEOUT, request.txid)
        if failure.check(defer.CancelledError):
            return PushResult(PushStatus.UNAVAILABLE, request.txid, detail="cancelled")
        if failure.check(ProviderUnavailable):
            detail = str(failure.value)
        else:
            log.error("push.provider_error %s", failure.getTraceback())
            detail = "provider error"
        self.counters.inc("push_provider_errors")
        logs.event(log, logging.WARNING, "push.unavailable", txid=request.txid, detail=detail)
        return PushResult(PushStatus.UNAVAILABLE, request.txid, detail=detail)

    def _finish(self, decision: Decision, req: LoginRequest, started: float,
                joined: bool) -> Decision:
        """The one place a decision is counted, logged and audited."""
        elapsed = self.clock.seconds() - started
        latency = elapsed * 1000.0
        self.counters.inc("decisions", client=req.client_name, outcome=decision.outcome.value,
                          reason=decision.reason.value)
        self.counters.observe("decision_seconds", elapsed, outcome=decision.outcome.value)
        fields = dict(protocol=req.protocol, user=req.username, client=req.client_name,
                      source=req.source, calling_station=req.calling_station, nas=req.nas,
                      outcome=decision.outcome.value, reason=decision.reason.value,
                      latency_ms=round(latency, 1), txid=decision.txid,
                      device=decision.device, joined=joined)
        logs.event(log, logging.INFO, "login.decision", **fields)
        self.audit.record(AuditEvent(time=utc_stamp(self.wallclock()), **fields))
        return decision

    def stop(self) -> None:
        """Shutting down: every pending push is withdrawn and its login rejected."""
        self._stopping = True
        for call in list(self._push_calls.values()):
            call.cancel()
