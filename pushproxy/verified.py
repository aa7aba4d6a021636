"""Verified push: the Access-Challenge with its State, and the follow-up that answers it.

Part of the engine (`pushproxy.engine.Engine` mixes this in). The first
request gets an Access-Challenge at once while the push goes out (number
matching: the login screen shows the number; code to login: the phone shows a
code after approval). The gateway's follow-up returns the State with the
user's input and waits for the push.

The challenge lives in the engine's `LoginState`: in memory for a single
process, in the store in cluster mode. A follow-up that lands on a node that
did not start the push (the gateway failed over) finds the stored challenge
and waits for the push's result through the provider's
``await_decision(txid)``.
"""

from __future__ import annotations

import dataclasses
import logging

from twisted.internet import defer
from twisted.internet.defer import Deferred

from pushproxy import logs
from pushproxy.challenges import Challenge, ChallengeError
from pushproxy.decision import (Decision, Outcome, PrimaryResult, PrimaryStatus, PushResult,
                                PushStatus, Reason)
from pushproxy.passcodes import is_bypass_code, is_totp_code
from pushproxy.policy import Verification
from pushproxy.push import ProviderUnavailable

log = logging.getLogger("pushproxy.engine")

_MESSAGES = {
    Verification.NUMBER_MATCH: "Enter {number} in your authenticator app, then continue here.",
    Verification.CODE_TO_LOGIN: "Approve the request in your authenticator app, then enter "
                                "the code it shows.",
}
_DENIED = (PushStatus.DENIED, PushStatus.FRAUD, PushStatus.NUMBER_MISMATCH)
# Seconds a follow-up on another node waits past the push's expiry for the
# provider to report it (its own timeout fires at the expiry).
_REMOTE_GRACE = 5.0


class VerifiedPush:
    """The challenge half of the engine; uses the engine's state, provider and helpers."""

    @defer.inlineCallbacks
    def _challenge(self, req, mode: Verification, rule: str | None, now: float,
                   primary: PrimaryResult, sent: str | None):
        """Open a challenge, start its push, and answer the first request with the State."""
        user = req.username.casefold()
        txid = self.new_txid()
        try:
            block = yield self.state.admit(user, now, txid, now + self.push.timeout)
        except ProviderUnavailable as exc:
            return self._state_unavailable(req, exc, rule)
        if block is not None:
            return Decision.of(self._block_reason(block), rule=rule)
        if self._stopping:  # stopped while the limits were asked: send nothing
            self.state.push_ended(user, txid, self.wallclock())
            return Decision.of(Reason.SHUTTING_DOWN, rule=rule)
        challenge = self.state.open_challenge(req.client_name, req.username, mode.value, now,
                                              self.push.timeout, sent)
        challenge.txid, challenge.rule, challenge.request = txid, rule, req
        # Kept for the follow-up's Accept.
        challenge.attributes, challenge.groups = primary.attributes, primary.groups
        _, d = self._start_push(req, mode, challenge.number, txid=txid)

        def settle(result: PushResult) -> None:
            challenge.result, challenge.settled = result, True
            if result.status in _DENIED:
                self._count_denial(req.username, self.wallclock(), txid)
            for waiter in challenge.waiters:
                waiter.callback(result)
            challenge.waiters = []

        d.addCallback(settle)
        try:
            # shared before the gateway sees the State: its follow-up may go anywhere
            yield self.state.save_challenge(challenge)
        except ProviderUnavailable as exc:
            self.state.close_challenge(challenge)
            self._withdraw(txid)
            return self._state_unavailable(req, exc, rule)
        return Decision(Outcome.CHALLENGE, Reason.CHALLENGE_SENT, txid=txid, rule=rule,
                        message=_MESSAGES[mode].format(number=challenge.number),
                        state=challenge.state)

    def _respond(self, req, started: float) -> Deferred[Decision]:
        """The follow-up request that returns a challenge's State."""
        self._answering += 1

        def refused(failure):
            failure.trap(ChallengeError, ProviderUnavailable)
            logs.event(log, logging.WARNING, "challenge.refused", user=req.username,
                       client=req.client_name, why=str(failure.value))
            self._answering -= 1
            return self._finish(Decision.of(Reason.CHALLENGE_INVALID), req, started, False)

        def found(challenge: Challenge):
            def done(decision: Decision) -> Decision:
                self._answering -= 1
                self.state.close_challenge(challenge)  # single use: a replay finds nothing
                return self._finish(decision, req, started, False)

            answered = defer.ensureDeferred(self._answer(challenge, req))
            # Decided for the challenged account, whatever spelling the follow-up used.
            answered.addCallback(lambda decision: dataclasses.replace(
                decision, user=challenge.username))
            return self._guarded(answered).addCallback(done)

        found_d = self.state.find_challenge(req.state, req.client_name, req.username,
                                            self.wallclock())
        return found_d.addCallbacks(found, refused)

    async def _answer(self, challenge: Challenge, req) -> Decision:
        response = (req.password or "").strip()
        mode = Verification(challenge.mode)
        own_code = (mode is Verification.CODE_TO_LOGIN and challenge.settled
                    and challenge.result.code == response)
        if (is_totp_code(response) or is_bypass_code(response)) and not own_code:
            # Phone offline: a TOTP or bypass code at the prompt replaces the push.
            # The follow-up may spell the name differently; the limits key on the
            # challenge's account, the source on where this request came from.
            decision = await self._passcode(
                dataclasses.replace(req, username=challenge.username), response,
                self.wallclock(), challenge.rule)
            if decision.outcome is Outcome.ACCEPT or mode is Verification.NUMBER_MATCH:
                self._withdraw(challenge.txid)
                return self._challenge_attributes(challenge, decision)
        if challenge.remote and not challenge.settled:
            challenge.result = await self._remote_result(challenge)
            challenge.settled = True
            if challenge.result.status in _DENIED:
                # counted once per transaction, whichever node sees it first
                self._count_denial(challenge.username, self.wallclock(), challenge.txid)
        if not challenge.settled:
            waiter: Deferred = Deferred()
            challenge.waiters.append(waiter)
            await waiter
        return self._challenge_attributes(challenge, self._after_push(
            challenge.request, challenge.result, challenge.rule, response=response, mode=mode))

    def _remote_result(self, challenge: Challenge) -> Deferred[PushResult]:
        """The result of a push another node started: the provider's ``await_decision``."""
        wait = getattr(self.provider, "await_decision", None)
        if wait is None:
            return defer.succeed(PushResult(PushStatus.UNAVAILABLE, challenge.txid,
                                            detail="provider cannot join a remote push"))
        d = defer.maybeDeferred(wait, challenge.txid)
        left = max(0.0, challenge.expires - self.wallclock()) + _REMOTE_GRACE
        d.addTimeout(left, self.clock)
        d.addErrback(self._push_failed, _Txid(challenge.txid))
        return d

    def _challenge_attributes(self, challenge: Challenge, decision: Decision) -> Decision:
        """An Accept at the end of a challenge carries the first request's reply attributes."""
        if decision.outcome is not Outcome.ACCEPT:
            return decision
        primary = PrimaryResult(PrimaryStatus.OK, groups=challenge.groups,
                                attributes=challenge.attributes)
        return dataclasses.replace(decision, attributes=primary.attributes
                                   + self._mapped(challenge.request, primary, decision))

    def _withdraw(self, txid: str | None) -> None:
        call = self._push_calls.get(txid) if txid else None
        if call is not None:
            call.cancel()


@dataclasses.dataclass(frozen=True)
class _Txid:
    """What `_push_failed` reads of a request: its txid."""

    txid: str | None
