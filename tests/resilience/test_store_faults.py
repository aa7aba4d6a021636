"""The approval store's database locked by another process (a stuck admin command,
a backup holding a write transaction)."""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import threads

from tests.resilience import rig


def logins(n, user="alice", password="alice-pw", tag="s"):
    return [(user, password, f"{tag}-{i}") for i in range(n)]


@pytest_twisted.inlineCallbacks
def test_store_locked_by_another_process_ends_each_login_within_the_timeout_then_recovers(
        slapd, tmp_path, resilience):
    stack = rig.make_stack(tmp_path, slapd, timeout=5)
    yield stack.start()
    try:
        state = yield stack.device()
        counters = stack.daemon.counters
        locker = yield threads.deferToThread(rig.SqliteLocker, stack.config.approval.database)
        try:
            started = time.monotonic()
            results = yield rig.burst(stack.radius, logins(10), timeout=20)
            locked_for = time.monotonic() - started
        finally:
            locker.release()
        reasons = rig.audit_reasons(tmp_path / "audit.jsonl")
        # the lock is gone: a login gets its push and the device approves it
        login = rig.burst(stack.radius, logins(1, tag="after"), timeout=20)
        from tests.integration.test_approval_e2e import first_request
        from pushproxy.approval import authenticator as auth
        request = yield threads.deferToThread(first_request, state)
        ans = yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        print("DEBUG", request, ans)
        (after,) = yield login
        resilience.record(
            fault="store database locked by another process (BEGIN EXCLUSIVE held), 10 logins",
            expected="failmode secure: every login Reject within push.timeout (5 s) + margin; "
                     "push_provider_errors counted; Accept again once the lock is released",
            measured=f"outcomes {rig.outcomes(results)}, slowest {rig.slowest(results):.2f} s, "
                     f"{rig.audit_reasons(tmp_path / 'audit.jsonl')} "
                     f"all done in {locked_for:.1f} s; audit {reasons}; push_provider_errors "
                     f"{counters.get('push_provider_errors'):g}; after release: {after.outcome}")
        assert rig.outcomes(results) == {"reject": 10}
        assert rig.slowest(results) < 5 + 1.5
        assert after.outcome == "accept"
    finally:
        yield stack.stop()
