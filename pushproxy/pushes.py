"""Pushes: admitted by the fatigue limits, asked of the provider, joined per session.

Part of the engine (`pushproxy.engine.Engine` mixes this in). One push per
session and credential at a time: a later login of the same session joins the
push already pending (`pushproxy.engine.join_key`). The fatigue limits are
asked through the engine's `LoginState` (in memory, or the store in cluster
mode) in one step with recording the push, and every push carries its
cross-node ``join_key`` so a provider can join a login that failed over from
another node.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.defer import Deferred

from pushproxy import logs
from pushproxy.decision import Decision, PushResult, PushStatus, Reason, push_decision
from pushproxy.fatigue import Block
from pushproxy.policy import Verification
from pushproxy.push import ApprovalRequest, ProviderUnavailable

if TYPE_CHECKING:
    from pushproxy.engine import LoginRequest

log = logging.getLogger("pushproxy.engine")

_BLOCKS = {"PAUSED": Reason.PUSHES_PAUSED, "TOO_MANY_PENDING": Reason.TOO_MANY_PENDING,
           "RATE_LIMITED": Reason.RATE_LIMITED, "LOCKED": Reason.USER_LOCKED,
           "LOCKED_GUESSING": Reason.USER_LOCKED_GUESSING}


# A device's answers: what the store's `answer_transaction` records.
ANSWERED = frozenset({PushStatus.APPROVED, PushStatus.DENIED, PushStatus.FRAUD,
                      PushStatus.NUMBER_MISMATCH, PushStatus.PRESENCE_NOT_VERIFIED})


def _cancel(call: Deferred) -> None:
    call.cancel()


class Fanout:
    """One result, any number of waiters (joined logins and pushes).

    Slotted and list-free for the usual single waiter: one of these lives
    for every pending login (issue 16)."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: Deferred | list[Deferred] | None = None

    def wait(self) -> Deferred:
        """A Deferred that fires with the result."""
        d: Deferred = Deferred()
        if self._waiters is None:
            self._waiters = d
        elif isinstance(self._waiters, list):
            self._waiters.append(d)
        else:
            self._waiters = [self._waiters, d]
        return d

    def fire(self, result) -> None:
        """Fire every waiter with ``result`` (once; later waiters are not fired)."""
        waiters, self._waiters = self._waiters, None
        if isinstance(waiters, Deferred):
            waiters.callback(result)
        elif waiters:
            for d in waiters:
                d.callback(result)


class _Settle:
    """A push's end for the logins that wait on it: unregistered, its waiters
    fired. A bound method of this record is cheaper per pending login than a
    closure (issue 16)."""

    __slots__ = ("pushes", "key", "fanout")

    def __init__(self, pushes: dict, key: tuple | None, fanout: Fanout):
        self.pushes = pushes
        self.key = key
        self.fanout = fanout

    def __call__(self, result) -> None:
        if self.key is not None and self.pushes.get(self.key) is self.fanout:
            del self.pushes[self.key]
        self.fanout.fire(result)


class _PushCall:
    """One push asked of the provider: its timer and how its answer is classified."""

    __slots__ = ("engine", "txid", "user", "timer")

    def __init__(self, engine: Pushes, txid: str, user: str, timer):
        self.engine = engine
        self.txid = txid  # also what `Pushes._push_failed` reads of a request
        self.user = user
        self.timer = timer

    def finished(self, result: PushResult) -> PushResult:
        """The provider answered."""
        return self.engine._push_finished(result, self.txid, self.user, self.timer)

    def failed(self, failure) -> PushResult:
        """Timeout, unreachable provider or a bug there, then as an answer."""
        return self.finished(self.engine._push_failed(failure, self, self.timer))


class Pushes:
    """The push half of the engine; uses the engine's state, provider, clock and counters."""

    def _push_for(self, req: LoginRequest, key: tuple | None) -> Deferred:
        """One push per session and credential at a time (`join_key`); later logins join it.

        Fires with a PushResult, or with a Decision when the fatigue limits
        refuse the push (or its state cannot be read: failmode).
        """
        fanout = self._pushes.get(key) if key is not None else None
        if fanout is not None:
            self.counters.inc("pushes_joined")
            return fanout.wait()
        fanout = Fanout()
        if key is not None:
            # registered before the limits are asked: in the store that takes a
            # round trip, and a login of the same session meanwhile joins this one
            self._pushes[key] = fanout
        waiter = fanout.wait()
        settle = _Settle(self._pushes, key, fanout)

        now, txid = self.wallclock(), self.new_txid()
        # the same login on every node gets the same key (None: single process)
        join_key = self.state.join_key(key[:-1], key[-1]) if key else None

        def admitted(block: Block | None) -> None:
            if block is not None:
                settle(Decision.of(self._block_reason(block)))
                return
            if self._stopping:  # stopped while the limits were asked: send nothing
                self.state.push_ended(req.username.casefold(), txid, self.wallclock())
                settle(PushResult(PushStatus.UNAVAILABLE, txid, detail="cancelled"))
                return
            self._start_push(req, Verification.NONE, None, txid=txid,
                             join_key=join_key)[1].addCallbacks(settle)

        def unavailable(failure) -> None:
            failure.trap(ProviderUnavailable)
            settle(self._state_unavailable(req, failure.value, None))

        def crashed(failure) -> None:
            # a bug must end in a Reject, never leave the login (and its joiners) hanging
            log.error("engine.internal_error %s", failure.getTraceback())
            self.counters.inc("internal_errors")
            settle(Decision.of(Reason.INTERNAL_ERROR))

        self.state.admit(req.username.casefold(), now, txid, now + self.push.timeout,
                         join_key).addCallbacks(admitted, unavailable).addErrback(crashed)
        return waiter

    @staticmethod
    def _block_reason(block: Block) -> Reason:
        return _BLOCKS[block.reason.name]

    def _state_unavailable(self, req: LoginRequest, exc, rule: str | None) -> Decision:
        """The shared login state cannot be read: as an unreachable push layer, failmode."""
        self.counters.inc("push_provider_errors")
        logs.event(log, logging.WARNING, "push.unavailable", user=req.username,
                   detail=f"login state: {exc}")
        return dataclasses.replace(push_decision(PushResult(PushStatus.UNAVAILABLE),
                                                 self.push.failmode, req.no_device), rule=rule)

    def _start_push(self, req: LoginRequest, mode: Verification, number: str | None, *,
                    txid: str, join_key: str | None = None) -> tuple[str, Deferred]:
        """Ask the provider (the push was admitted, ``txid`` counted as started by the
        fatigue limits); the Deferred fires with a PushResult at the latest at the timeout."""
        now = self.wallclock()
        request = ApprovalRequest(
            # Directories match usernames without regard to case; devices, limits
            # and locks must too, or "ALICE" would slip past alice's limits.
            txid=txid, username=req.username.casefold(), application=req.client_name,
            client_ip=req.calling_station, nas=req.nas, created=now,
            expires=now + self.push.timeout, verification=mode.value, number=number,
            join_key=join_key,
            location=req.context.location.as_dict() if req.context is not None else None,
            warnings=req.context.warnings if req.context is not None else (),
            user_verification=req.user_verification)
        self.counters.inc("pushes_requested")
        call = defer.maybeDeferred(self.provider.request_approval, request)
        self._push_calls[request.txid] = call
        # One record in the engine's timer heap, not a DelayedCall per push
        # (`pushproxy.timers`); when it fires, the call is cancelled, and a
        # cancellation whose timer has run is the timeout.
        timer = self.timers.call_later(self.push.timeout, _cancel, call)
        pushed = _PushCall(self, request.txid, request.username, timer)
        call.addCallbacks(pushed.finished, pushed.failed)
        return request.txid, call

    def _push_finished(self, result: PushResult, txid: str, user: str, timer) -> PushResult:
        timer.cancel()
        self._push_calls.pop(txid, None)
        # a device's answer, recorded by a provider whose store answer ends the push
        # for the fatigue limits in its own transaction (the approval service in
        # cluster mode): no separate write
        answered = result.device is not None and result.status in ANSWERED \
            and getattr(self.provider, "answers_end_pushes", False)
        self.state.push_ended(user, txid, self.wallclock(), answered)
        return result

    def _push_failed(self, failure, request: ApprovalRequest, timer=None) -> PushResult:
        """Classify a push error: timeout, unreachable provider, or a bug there."""
        if failure.check(defer.TimeoutError) or (
                timer is not None and not timer.active() and failure.check(defer.CancelledError)):
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
