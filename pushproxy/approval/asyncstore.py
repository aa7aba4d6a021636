"""The store as the daemon holds it: one method per store operation, returning a Deferred.

`AsyncStore` mirrors `pushproxy.approval.storeapi.StoreAPI` method for method,
same names and arguments (a test holds them in step), so a caller reads
``await self.store.open_transaction(tx)`` and a type checker sees the arguments
and the result. Each method hands the bound method of the open store to the
`Runner`: the daemon's store thread (`ThreadRunner`, which keeps the fault/busy
classification, skips calls whose caller gave up, batches wake-ups and counts
calls and commits per method name in /metrics) or, in tests, `InlineRunner`.

Errors are those of the store: StoreError (the database failed, or the runner
classified the wait as a fault), ValueError for misuse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.internet.defer import Deferred

from pushproxy.approval.runner import InlineRunner

if TYPE_CHECKING:
    from pushproxy.approval.baselinestore import Baseline
    from pushproxy.approval.clusterstore import Answer, Opened
    from pushproxy.approval.loginstore import ChallengeRow
    from pushproxy.approval.passkeystore import Passkey
    from pushproxy.approval.rolloutstore import UserRollout
    from pushproxy.approval.store import Device, Enrollment, Lock, PasscodeAttempt, Transaction
    from pushproxy.approval.storeapi import Runner, StoreAPI
    from pushproxy.fatigue import Block, FatigueLimits


class AsyncStore:
    """`StoreAPI` with every method returning a Deferred; see the module docstring."""

    def __init__(self, runner: Runner):
        self._runner = runner

    @classmethod
    def inline(cls, store: StoreAPI, counters=None) -> AsyncStore:
        """Over an `InlineRunner` (tests with a Clock): every Deferred has fired on return."""
        return cls(InlineRunner(store, counters))

    @property
    def runner(self) -> Runner:
        """The runner (admission control reads its queue figures, the daemon starts it)."""
        return self._runner

    # -- devices, enrollment links, transactions, passcodes, locks, settings (Store)

    def create_enrollment(self, username: str, token_hash: str, now: float,
                          expires: float) -> Deferred[Enrollment]:
        """`StoreAPI.create_enrollment`, where the store runs."""
        return self._runner.submit(self._runner.store.create_enrollment,
                                   username, token_hash, now, expires)

    def enrollment(self, token_hash: str) -> Deferred[Enrollment | None]:
        """`StoreAPI.enrollment`, where the store runs."""
        return self._runner.submit(self._runner.store.enrollment, token_hash)

    def redeem_enrollment(self, token_hash: str, now: float,
                          device: Device) -> Deferred[Device | None]:
        """`StoreAPI.redeem_enrollment`, where the store runs."""
        return self._runner.submit(self._runner.store.redeem_enrollment, token_hash, now, device)

    def devices(self, username: str | None = None,
                include_revoked: bool = False) -> Deferred[list[Device]]:
        """`StoreAPI.devices`, where the store runs."""
        return self._runner.submit(self._runner.store.devices, username, include_revoked)

    def device(self, device_id: str) -> Deferred[Device | None]:
        """`StoreAPI.device`, where the store runs."""
        return self._runner.submit(self._runner.store.device, device_id)

    def revoke_device(self, device_id: str, now: float) -> Deferred[bool]:
        """`StoreAPI.revoke_device`, where the store runs."""
        return self._runner.submit(self._runner.store.revoke_device, device_id, now)

    def touch_device(self, device_id: str, now: float) -> Deferred[None]:
        """`StoreAPI.touch_device`, where the store runs."""
        return self._runner.submit(self._runner.store.touch_device, device_id, now)

    def set_subscription(self, device_id: str, subscription: dict | None) -> Deferred[bool]:
        """`StoreAPI.set_subscription`, where the store runs."""
        return self._runner.submit(self._runner.store.set_subscription, device_id, subscription)

    def create_transaction(self, tx: Transaction) -> Deferred[None]:
        """`StoreAPI.create_transaction`, where the store runs."""
        return self._runner.submit(self._runner.store.create_transaction, tx)

    def open_transaction(self, tx: Transaction) -> Deferred[list[Device]]:
        """`StoreAPI.open_transaction`, where the store runs."""
        return self._runner.submit(self._runner.store.open_transaction, tx)

    def transaction(self, txid: str) -> Deferred[Transaction | None]:
        """`StoreAPI.transaction`, where the store runs."""
        return self._runner.submit(self._runner.store.transaction, txid)

    def pending_transactions(self, username: str, now: float) -> Deferred[list[Transaction]]:
        """`StoreAPI.pending_transactions`, where the store runs."""
        return self._runner.submit(self._runner.store.pending_transactions, username, now)

    def decide_transaction(self, txid: str, state: str, device_id: str | None,
                           now: float) -> Deferred[bool]:
        """`StoreAPI.decide_transaction`, where the store runs."""
        return self._runner.submit(self._runner.store.decide_transaction,
                                   txid, state, device_id, now)

    def expire_transactions(self, txids: list[str], now: float) -> Deferred[int]:
        """`StoreAPI.expire_transactions`, where the store runs."""
        return self._runner.submit(self._runner.store.expire_transactions, txids, now)

    def cancel_pending(self, now: float) -> Deferred[int]:
        """`StoreAPI.cancel_pending`, where the store runs."""
        return self._runner.submit(self._runner.store.cancel_pending, now)

    def purge(self, now: float, keep: float = 2592000) -> Deferred[int]:
        """`StoreAPI.purge`, where the store runs."""
        return self._runner.submit(self._runner.store.purge, now, keep)

    def use_totp_step(self, device_id: str, step: int) -> Deferred[bool]:
        """`StoreAPI.use_totp_step`, where the store runs."""
        return self._runner.submit(self._runner.store.use_totp_step, device_id, step)

    def add_bypass_codes(self, username: str, hashes: list[str], now: float, expires: float, *,
                         replace: bool = False,
                         selectors: list[str] | None = None) -> Deferred[None]:
        """`StoreAPI.add_bypass_codes`, where the store runs."""
        return self._runner.submit(self._runner.store.add_bypass_codes,
                                   username, hashes, now, expires, replace=replace,
                                   selectors=selectors)

    def bypass_candidates(self, username: str, now: float) -> Deferred[list[tuple[int, str]]]:
        """`StoreAPI.bypass_candidates`, where the store runs."""
        return self._runner.submit(self._runner.store.bypass_candidates, username, now)

    def consume_bypass_code(self, code_id: int, now: float) -> Deferred[bool]:
        """`StoreAPI.consume_bypass_code`, where the store runs."""
        return self._runner.submit(self._runner.store.consume_bypass_code, code_id, now)

    def delete_bypass_codes(self, username: str) -> Deferred[int]:
        """`StoreAPI.delete_bypass_codes`, where the store runs."""
        return self._runner.submit(self._runner.store.delete_bypass_codes, username)

    def bypass_code_for(self, username: str, selector: str,
                        now: float) -> Deferred[tuple[int, str] | None]:
        """`StoreAPI.bypass_code_for`, where the store runs."""
        return self._runner.submit(self._runner.store.bypass_code_for, username, selector, now)

    def legacy_bypass_candidates(self, username: str,
                                 now: float) -> Deferred[list[tuple[int, str]]]:
        """`StoreAPI.legacy_bypass_candidates`, where the store runs."""
        return self._runner.submit(self._runner.store.legacy_bypass_candidates, username, now)

    def bypass_selectors(self, username: str) -> Deferred[set[str]]:
        """`StoreAPI.bypass_selectors`, where the store runs."""
        return self._runner.submit(self._runner.store.bypass_selectors, username)

    def claim_passcode_attempt(self, username: str, source: str, now: float,
                               since: float) -> Deferred[PasscodeAttempt]:
        """`StoreAPI.claim_passcode_attempt`, where the store runs."""
        return self._runner.submit(self._runner.store.claim_passcode_attempt,
                                   username, source, now, since)

    def forget_passcode_attempt(self, attempt_id: int) -> Deferred[None]:
        """`StoreAPI.forget_passcode_attempt`, where the store runs."""
        return self._runner.submit(self._runner.store.forget_passcode_attempt, attempt_id)

    def clear_passcode_failures(self, username: str) -> Deferred[int]:
        """`StoreAPI.clear_passcode_failures`, where the store runs."""
        return self._runner.submit(self._runner.store.clear_passcode_failures, username)

    def lock_user(self, username: str, now: float, reason: str,
                  txid: str | None) -> Deferred[bool]:
        """`StoreAPI.lock_user`, where the store runs."""
        return self._runner.submit(self._runner.store.lock_user, username, now, reason, txid)

    def user_lock(self, username: str) -> Deferred[Lock | None]:
        """`StoreAPI.user_lock`, where the store runs."""
        return self._runner.submit(self._runner.store.user_lock, username)

    def unlock_user(self, username: str) -> Deferred[bool]:
        """`StoreAPI.unlock_user`, where the store runs."""
        return self._runner.submit(self._runner.store.unlock_user, username)

    def locked_users(self) -> Deferred[list[Lock]]:
        """`StoreAPI.locked_users`, where the store runs."""
        return self._runner.submit(self._runner.store.locked_users)

    def setting(self, key: str) -> Deferred[str | None]:
        """`StoreAPI.setting`, where the store runs."""
        return self._runner.submit(self._runner.store.setting, key)

    def setting_or_create(self, key: str, make: Callable[[], str]) -> Deferred[str]:
        """`StoreAPI.setting_or_create`, where the store runs."""
        return self._runner.submit(self._runner.store.setting_or_create, key, make)

    def check_writable(self) -> Deferred[None]:
        """`StoreAPI.check_writable`, where the store runs."""
        return self._runner.submit(self._runner.store.check_writable)

    # -- the login decision state of cluster mode (LoginStateStore)

    def fatigue_admit(self, username: str, now: float, limits: FatigueLimits, txid: str,
                      expires: float, join_key: str | None) -> Deferred[Block | None]:
        """`StoreAPI.fatigue_admit`, where the store runs."""
        return self._runner.submit(self._runner.store.fatigue_admit,
                                   username, now, limits, txid, expires, join_key)

    def fatigue_push_ended(self, txid: str, now: float) -> Deferred[None]:
        """`StoreAPI.fatigue_push_ended`, where the store runs."""
        return self._runner.submit(self._runner.store.fatigue_push_ended, txid, now)

    def fatigue_denial(self, username: str, now: float, limits: FatigueLimits,
                       txid: str | None) -> Deferred[bool]:
        """`StoreAPI.fatigue_denial`, where the store runs."""
        return self._runner.submit(self._runner.store.fatigue_denial, username, now, limits, txid)

    def fatigue_locked(self, username: str, now: float) -> Deferred[None]:
        """`StoreAPI.fatigue_locked`, where the store runs."""
        return self._runner.submit(self._runner.store.fatigue_locked, username, now)

    def fatigue_clear(self, username: str, now: float) -> Deferred[None]:
        """`StoreAPI.fatigue_clear`, where the store runs."""
        return self._runner.submit(self._runner.store.fatigue_clear, username, now)

    def open_challenge(self, row: ChallengeRow) -> Deferred[None]:
        """`StoreAPI.open_challenge`, where the store runs."""
        return self._runner.submit(self._runner.store.open_challenge, row)

    def challenge(self, state_hash: str, now: float) -> Deferred[ChallengeRow | None]:
        """`StoreAPI.challenge`, where the store runs."""
        return self._runner.submit(self._runner.store.challenge, state_hash, now)

    def close_challenge(self, state_hash: str) -> Deferred[bool]:
        """`StoreAPI.close_challenge`, where the store runs."""
        return self._runner.submit(self._runner.store.close_challenge, state_hash)

    def remember_login(self, key_hash: str, username: str, until: float) -> Deferred[None]:
        """`StoreAPI.remember_login`, where the store runs."""
        return self._runner.submit(self._runner.store.remember_login, key_hash, username, until)

    def remembered_login(self, key_hash: str, now: float) -> Deferred[bool]:
        """`StoreAPI.remembered_login`, where the store runs."""
        return self._runner.submit(self._runner.store.remembered_login, key_hash, now)

    def forget_logins(self, username: str) -> Deferred[int]:
        """`StoreAPI.forget_logins`, where the store runs."""
        return self._runner.submit(self._runner.store.forget_logins, username)

    def purge_login_state(self, now: float, keep: float = 86400.0) -> Deferred[int]:
        """`StoreAPI.purge_login_state`, where the store runs."""
        return self._runner.submit(self._runner.store.purge_login_state, now, keep)

    # -- cluster mode (ClusterStore)

    def open_or_join_transaction(self, tx: Transaction, owner: str, join_key: str | None,
                                 now: float) -> Deferred[Opened]:
        """`StoreAPI.open_or_join_transaction`, where the store runs."""
        return self._runner.submit(self._runner.store.open_or_join_transaction,
                                   tx, owner, join_key, now)

    def watch_transaction(self, txid: str, node: str | None) -> Deferred[Transaction | None]:
        """`StoreAPI.watch_transaction`, where the store runs."""
        return self._runner.submit(self._runner.store.watch_transaction, txid, node)

    def answer_transaction(self, txid: str, state: str, device_id: str, now: float, outcome: str,
                           code: str | None) -> Deferred[bool]:
        """`StoreAPI.answer_transaction`, where the store runs."""
        return self._runner.submit(self._runner.store.answer_transaction,
                                   txid, state, device_id, now, outcome, code)

    def release_transactions(self, txids: list[str], node: str, now: float,
                             live_since: float) -> Deferred[int]:
        """`StoreAPI.release_transactions`, where the store runs."""
        return self._runner.submit(self._runner.store.release_transactions,
                                   txids, node, now, live_since)

    def retire_stale(self, node: str, now: float, live_since: float) -> Deferred[int]:
        """`StoreAPI.retire_stale`, where the store runs."""
        return self._runner.submit(self._runner.store.retire_stale, node, now, live_since)

    def heartbeat(self, node: str, now: float) -> Deferred[None]:
        """`StoreAPI.heartbeat`, where the store runs."""
        return self._runner.submit(self._runner.store.heartbeat, node, now)

    def live_nodes(self, live_since: float) -> Deferred[list[str]]:
        """`StoreAPI.live_nodes`, where the store runs."""
        return self._runner.submit(self._runner.store.live_nodes, live_since)

    def waiting_transactions(self, username: str, now: float,
                             live_since: float) -> Deferred[list[Transaction]]:
        """`StoreAPI.waiting_transactions`, where the store runs."""
        return self._runner.submit(self._runner.store.waiting_transactions,
                                   username, now, live_since)

    def claim_device_nonce(self, device_id: str, nonce: str, expires: float) -> Deferred[bool]:
        """`StoreAPI.claim_device_nonce`, where the store runs."""
        return self._runner.submit(self._runner.store.claim_device_nonce,
                                   device_id, nonce, expires)

    def claim_and_list_waiting(self, device_id: str, nonce: str, expires: float,
                               username: str, now: float,
                               live_since: float) -> Deferred[list[Transaction] | None]:
        """`StoreAPI.claim_and_list_waiting`, where the store runs."""
        return self._runner.submit(self._runner.store.claim_and_list_waiting,
                                   device_id, nonce, expires, username, now, live_since)

    def claim_and_answer(self, device_id: str, nonce: str, expires: float, txid: str,
                         state: str, now: float, outcome: str,
                         code: str | None) -> Deferred[Answer]:
        """`StoreAPI.claim_and_answer`, where the store runs."""
        return self._runner.submit(self._runner.store.claim_and_answer, device_id, nonce,
                                   expires, txid, state, now, outcome, code)

    # -- the rollout: open links and enrollment mails (RolloutStore)

    def rollout_overview(self, now: float) -> Deferred[dict[str, UserRollout]]:
        """`StoreAPI.rollout_overview`, where the store runs."""
        return self._runner.submit(self._runner.store.rollout_overview, now)

    def delete_unused_enrollment(self, token_hash: str) -> Deferred[bool]:
        """`StoreAPI.delete_unused_enrollment`, where the store runs."""
        return self._runner.submit(self._runner.store.delete_unused_enrollment, token_hash)

    def end_open_enrollments(self, username: str, now: float,
                             keep: str | None) -> Deferred[int]:
        """`StoreAPI.end_open_enrollments`, where the store runs."""
        return self._runner.submit(self._runner.store.end_open_enrollments, username, now, keep)

    def record_enrollment_mail(self, username: str, token_hash: str, address: str,
                               reason: str, now: float) -> Deferred[None]:
        """`StoreAPI.record_enrollment_mail`, where the store runs."""
        return self._runner.submit(self._runner.store.record_enrollment_mail,
                                   username, token_hash, address, reason, now)

    def claim_enrollment_mail(self, username: str, now: float, window: float,
                              limit: int) -> Deferred[int | None]:
        """`StoreAPI.claim_enrollment_mail`, where the store runs."""
        return self._runner.submit(self._runner.store.claim_enrollment_mail,
                                   username, now, window, limit)

    def mail_sent(self, claim_id: int, token_hash: str, address: str,
                  now: float) -> Deferred[None]:
        """`StoreAPI.mail_sent`, where the store runs."""
        return self._runner.submit(self._runner.store.mail_sent,
                                   claim_id, token_hash, address, now)

    def forget_enrollment_mail(self, claim_id: int) -> Deferred[None]:
        """`StoreAPI.forget_enrollment_mail`, where the store runs."""
        return self._runner.submit(self._runner.store.forget_enrollment_mail, claim_id)

    # -- per-user login baselines (BaselineStore)

    def user_baseline(self, username: str) -> Deferred[Baseline]:
        """`StoreAPI.user_baseline`, where the store runs."""
        return self._runner.submit(self._runner.store.user_baseline, username)

    def learn_login(self, username: str, now: float, items: list[tuple[str, str]],
                    place: tuple[float, float, str | None] | None, keep: int) -> Deferred[None]:
        """`StoreAPI.learn_login`, where the store runs."""
        return self._runner.submit(self._runner.store.learn_login,
                                   username, now, items, place, keep)

    def forget_baseline(self, username: str) -> Deferred[int]:
        """`StoreAPI.forget_baseline`, where the store runs."""
        return self._runner.submit(self._runner.store.forget_baseline, username)

    # -- passkeys and WebAuthn challenges (PasskeyStore)

    def add_passkey(self, passkey: Passkey) -> Deferred[bool]:
        """`StoreAPI.add_passkey`, where the store runs."""
        return self._runner.submit(self._runner.store.add_passkey, passkey)

    def passkeys(self, device_id: str) -> Deferred[list[Passkey]]:
        """`StoreAPI.passkeys`, where the store runs."""
        return self._runner.submit(self._runner.store.passkeys, device_id)

    def put_webauthn_challenge(self, device_id: str, subject: str, nonce: str,
                               expires: float, now: float) -> Deferred[None]:
        """`StoreAPI.put_webauthn_challenge`, where the store runs."""
        return self._runner.submit(self._runner.store.put_webauthn_challenge,
                                   device_id, subject, nonce, expires, now)

    def take_webauthn_challenge(self, device_id: str, subject: str,
                                now: float) -> Deferred[str | None]:
        """`StoreAPI.take_webauthn_challenge`, where the store runs."""
        return self._runner.submit(self._runner.store.take_webauthn_challenge,
                                   device_id, subject, now)

    def passkey_used(self, credential_id: str, device_id: str, old_count: int,
                     new_count: int, now: float) -> Deferred[bool]:
        """`StoreAPI.passkey_used`, where the store runs."""
        return self._runner.submit(self._runner.store.passkey_used,
                                   credential_id, device_id, old_count, new_count, now)
