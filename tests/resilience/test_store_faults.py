"""The approval store's database locked by another process (a stuck admin command,
a backup holding a write transaction): every login still ends within the push
timeout as ``push.failmode`` says, health reports the store as failing, and it all recovers
when the lock goes away."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from pushproxy.approval import authenticator as auth
from tests.integration.test_approval_e2e import first_request
from tests.resilience import rig

EXPECTED = {"secure": ("reject", "push_unavailable_failmode_secure"),
            "safe": ("accept", "push_unavailable_failmode_safe")}


@pytest.mark.parametrize("failmode", ["secure", "safe"])
@pytest_twisted.inlineCallbacks
def test_store_locked_by_another_process_gives_failmode_within_the_timeout_then_recovers(
        slapd, tmp_path, resilience, failmode):
    stack = rig.make_stack(tmp_path, slapd, timeout=5, failmode=failmode)
    yield stack.start()
    try:
        state = yield stack.device()
        counters = stack.daemon.counters
        devices_before = yield stack.daemon.provider.store.devices()
        locker = yield threads.deferToThread(rig.SqliteLocker, stack.config.approval.database)
        try:
            started = time.monotonic()
            results, health = yield defer.gatherResults([
                rig.burst(stack.radius, [("alice", "alice-pw", f"s-{i}") for i in range(10)],
                          timeout=20),
                stack.daemon.health()])
            locked_for = time.monotonic() - started
        finally:
            locker.release()
        reasons = rig.audit_reasons(tmp_path / "audit.jsonl")
        # the lock is gone: the next login gets its push and the device approves it
        login = rig.burst(stack.radius, [("alice", "alice-pw", "after")], timeout=20)
        request = yield threads.deferToThread(first_request, state)
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        (after,) = yield login
        devices_after = yield stack.daemon.provider.store.devices()
        outcome, reason = EXPECTED[failmode]
        resilience.record(
            fault=f"store database locked by another process (BEGIN EXCLUSIVE held), "
                  f"10 concurrent logins, failmode {failmode}",
            expected=f"every login {outcome.capitalize()} ({reason}) within push.timeout "
                     f"(5 s); push_provider_errors counted; Accept "
                     f"by push again once the lock is released",
            measured=f"outcomes {rig.outcomes(results)} in {locked_for:.1f} s (slowest "
                     f"{rig.slowest(results):.2f} s); audit {reasons}; push_provider_errors "
                     f"{counters.get('push_provider_errors'):g}; /healthz store "
                     f"{health['store']}; after release: {after.outcome}; devices "
                     f"{len(devices_before)} -> {len(devices_after)}")
        assert rig.outcomes(results) == {outcome: 10}
        assert reasons == {reason: 10}
        assert rig.slowest(results) < 5 + 1.5
        assert counters.get("push_provider_errors") >= 1
        # /healthz takes the write lock, as every push does: it sees the outage.
        assert health["store"]["ok"] is False and not health["healthy"]
        assert after.outcome == "accept"
        assert [d.id for d in devices_after] == [d.id for d in devices_before]
    finally:
        yield stack.stop()
