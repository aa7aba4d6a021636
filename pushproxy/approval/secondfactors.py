"""Second factors without a push (the `SecondFactors` side of the approval service, a
mixin of `ApprovalService`): passcodes (TOTP, bypass codes) within the guessing
limits, fraud locks and fatigue alerts. The attributes used (store, cpu, counters,
alerter) are set by ApprovalService.
"""

from __future__ import annotations

import logging

from twisted.internet import defer
from twisted.internet.defer import Deferred

from pushproxy import logs, passcode_limits, passcodes
from pushproxy.approval.store import StoreError
from pushproxy.passcode_limits import PasscodeLimits
from pushproxy.push import PasscodeVerdict, ProviderUnavailable

log = logging.getLogger("pushproxy.approval")

# Checked when a bypass code names no stored code, so that the answer takes as
# long as for a stored one (the selector's existence does not leak by timing).
_NO_BYPASS_CODE = "scrypt$" + "A" * 22 + "==$" + "A" * 43 + "="


class PasscodeSide:
    """Passcodes, locks and fatigue alerts of the approval service."""

    def verify_passcode(self, username: str, code: str, now: float, *, source: str = "-",
                        limits: PasscodeLimits | None = None) -> Deferred[PasscodeVerdict]:
        """Check a passcode of ``username`` within the guessing limits.

        The attempt is counted as a failure before the code is checked (and
        forgotten if it was right), in the store, so neither concurrency nor a
        restart hands out more guesses. A locked user's code is not checked; nor
        is one while the user or the ``source`` is paused.
        """
        return defer.ensureDeferred(self._verify_passcode(username, code, now, source,
                                                          limits or PasscodeLimits()))

    async def _verify_passcode(self, username: str, code: str, now: float, source: str,
                               limits: PasscodeLimits) -> PasscodeVerdict:
        try:
            attempt = await self.store.claim_passcode_attempt(username, source, now,
                                     now - limits.horizon)
            if attempt.lock is not None:
                self.counters.inc("passcode_refusals", why="locked")
                return (PasscodeVerdict.LOCKED_GUESSING
                        if attempt.lock.reason == passcode_limits.LOCK_REASON
                        else PasscodeVerdict.LOCKED)
            refusal = passcode_limits.refusal(limits, attempt.user_times, attempt.source_times,
                                              now)
            if refusal is None:
                kind = await self._check_code(username, code, now)
                if kind is not None:
                    await self.store.forget_passcode_attempt(attempt.id)
                    return kind
                self.counters.inc("passcode_failures")
            else:
                self.counters.inc("passcode_refusals", why=refusal.value)
            await self._passcode_failed(username, source, attempt, limits, now)
        except StoreError as exc:
            raise ProviderUnavailable(f"store: {exc}") from None
        if refusal is passcode_limits.Refusal.USER_PAUSED:
            return PasscodeVerdict.USER_PAUSED
        if refusal is passcode_limits.Refusal.SOURCE_PAUSED:
            return PasscodeVerdict.SOURCE_PAUSED
        return PasscodeVerdict.WRONG

    async def _check_code(self, username: str, code: str, now: float) -> PasscodeVerdict | None:
        """TOTP or BYPASS if ``code`` is a valid unused passcode (used up now), else None."""
        if passcodes.is_totp_code(code):
            for device in await self.store.devices(username):
                step = (passcodes.totp_matches(device.totp_secret, code, now)
                        if device.totp_secret else None)
                # Accepted once: the store refuses a step it has seen for this device.
                if step is not None and await self.store.use_totp_step(device.id, step):
                    return PasscodeVerdict.TOTP
            return None
        if not passcodes.is_bypass_code(code):
            return None
        selector = passcodes.bypass_selector(code)
        if selector is not None:
            # The selector names one stored code: a guess costs one scrypt, however
            # many codes the user has (and one when it names none, for even timing).
            row = await self.store.bypass_code_for(username, selector, now)
            code_id, stored = row if row is not None else (None, _NO_BYPASS_CODE)
            candidates = [(code_id, stored)]
        else:
            # A 10-digit code issued before selectors: one scrypt per such code
            # still valid (they expire; the guessing limits bound the guesses).
            candidates = await self.store.legacy_bypass_candidates(username, now)
        for code_id, stored in candidates:
            # scrypt costs ~50 ms: never on the reactor thread.
            if await self.cpu(passcodes.bypass_code_matches, code, stored) and \
                    code_id is not None and await self.store.consume_bypass_code(code_id, now):
                return PasscodeVerdict.BYPASS
        return None

    async def _passcode_failed(self, username: str, source: str, attempt, limits: PasscodeLimits,
                               now: float) -> None:
        """A counted failure: pause alerts, and the lock once there were too many."""
        then = passcode_limits.after_failure(limits, attempt.user_times, attempt.source_times, now)
        if then.user_paused:
            logs.event(log, logging.WARNING, "passcode.paused", user=username, source=source,
                       pause_s=limits.pause)
            if self.alerter is not None:
                self.alerter.user_alert("passcodes_paused", username, now, source=source)
        if then.source_paused:
            logs.event(log, logging.WARNING, "passcode.source_paused", user=username,
                       source=source, pause_s=limits.pause)
            if self.alerter is not None:
                self.alerter.user_alert("passcodes_paused_source", username, now, source=source)
        if then.lock and await self.store.lock_user(username, now,
                                        passcode_limits.LOCK_REASON, None):
            self.counters.inc("passcode_locks")
            logs.event(log, logging.WARNING, "passcode.user_locked", user=username,
                       source=source)
            if self.alerter is not None:
                self.alerter.user_alert("user_locked", username, now,
                                        reason=passcode_limits.LOCK_REASON, source=source)

    def lock_of(self, username: str) -> Deferred:
        """The user's lock (fraud report or passcode guessing), or None."""
        d = self.store.user_lock(username)

        def unavailable(failure):
            failure.trap(StoreError)
            raise ProviderUnavailable(f"store: {failure.value}")

        return d.addErrback(unavailable)

    def fatigue_alert(self, username: str, now: float) -> None:
        """Pushes for ``username`` were paused after repeated denials."""
        if self.alerter is not None:
            self.alerter.user_alert("pushes_paused", username, now)

