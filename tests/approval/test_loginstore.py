"""The login decision state in the store (fatigue, challenges, remembered logins), on both backends."""

from __future__ import annotations

import inspect

import pytest

from pushproxy.approval.loginstore import (ChallengeRow, LoginStateStore, PostgresLoginState,
                                           SQLiteLoginState)
from pushproxy.fatigue import BlockReason, FatigueGuard, FatigueLimits

LIMITS = FatigueLimits(max_pending=1, max_pushes=3, window=100.0, max_denials=2,
                       denial_window=50.0, pause=30.0)


@pytest.fixture
def stores(backend):
    """Two store objects (two connections, as two nodes) on one database."""
    a, b = backend.open(), backend.open()
    yield a, b
    a.close()
    b.close()


def test_every_login_state_method_has_its_twin():
    """Both dialects offer the protocol's methods with its signatures."""
    expected = {name: list(inspect.signature(member).parameters)
                for name, member in vars(LoginStateStore).items()
                if callable(member) and not name.startswith("_")}
    assert expected
    for cls in (SQLiteLoginState, PostgresLoginState):
        for name, params in expected.items():
            assert list(inspect.signature(getattr(cls, name)).parameters) == params, name


def test_admission_matches_the_in_memory_guard_across_two_connections(stores):
    """Pending, rate and the pause give the same answers as FatigueGuard, whichever
    connection (node) asks."""
    a, b = stores
    guard = FatigueGuard(LIMITS)
    t = 1000.0
    for step in range(8):
        node = (a, b)[step % 2]
        now = t + step * 10
        expected = guard.check("alice", now)
        got = node.fatigue_admit("alice", now, LIMITS, f"tx{step}", now + 5, None)
        assert got == expected, step
        if got is None:
            guard.push_started("alice", now)
            guard.push_finished("alice")
            node.fatigue_push_ended(f"tx{step}", now + 1)
    assert got is not None and got.reason is BlockReason.RATE_LIMITED


def test_a_pending_push_on_one_node_blocks_the_other(stores):
    a, b = stores
    assert a.fatigue_admit("bob", 10.0, LIMITS, "t1", 40.0, None) is None
    block = b.fatigue_admit("bob", 11.0, LIMITS, "t2", 41.0, None)
    assert block.reason is BlockReason.TOO_MANY_PENDING
    a.fatigue_push_ended("t1", 12.0)
    assert b.fatigue_admit("bob", 13.0, LIMITS, "t2", 43.0, None) is None
    # an expired push stops counting as pending even if nobody ended it
    assert a.fatigue_admit("bob", 44.0, LIMITS, "t3", 74.0, None) is None


def test_denials_pause_once_and_count_once_per_transaction(stores):
    a, b = stores
    assert a.fatigue_denial("carol", 100.0, LIMITS, "tx1") is False
    # the same transaction's denial seen by the other node is not a second one
    assert b.fatigue_denial("carol", 100.5, LIMITS, "tx1") is False
    assert b.fatigue_denial("carol", 101.0, LIMITS, "tx2") is True
    block = a.fatigue_admit("carol", 102.0, LIMITS, "tx3", 132.0, None)
    assert block.reason is BlockReason.PAUSED and block.until == 131.0
    # denials during the pause neither extend it nor raise another alert
    assert a.fatigue_denial("carol", 103.0, LIMITS, "tx4") is False
    assert b.fatigue_admit("carol", 131.0, LIMITS, "tx5", 161.0, None) is None


def test_an_unlock_clears_the_denials_behind_the_lock(stores, backend):
    a, b = stores
    a.fatigue_denial("dave", 1.0, LIMITS, "x1")
    a.fatigue_denial("dave", 2.0, LIMITS, "x2")
    a.lock_user("dave", 2.0, "fraud", "x2")
    a.fatigue_locked("dave", 3.0)
    # locked: refused by the lock first (the pause stays behind it)
    assert b.fatigue_admit("dave", 4.0, LIMITS, "x3", 9.0, None).reason is BlockReason.LOCKED
    b.unlock_user("dave")
    assert b.fatigue_admit("dave", 5.0, LIMITS, "x4", 9.0, None) is None


def test_a_challenge_is_seen_by_the_other_node_until_closed_or_expired(stores):
    a, b = stores
    row = ChallengeRow("ab" * 32, "vpn", "erin", "erin", "number_match", "42", "tx", "r1",
                       60.0, {"groups": ["g"], "attributes": []})
    a.open_challenge(row)
    assert b.challenge(row.state_hash, 10.0) == row
    assert b.challenge(row.state_hash, 60.0) is None  # expired
    assert b.close_challenge(row.state_hash) is True
    assert a.challenge(row.state_hash, 10.0) is None
    assert a.close_challenge(row.state_hash) is False


def test_remembered_logins_are_shared_and_forgotten_per_user(stores):
    a, b = stores
    a.remember_login("k1", "frank", 100.0)
    a.remember_login("k2", "frank", 100.0)
    assert b.remembered_login("k1", 50.0) and not b.remembered_login("k1", 100.0)
    assert b.forget_logins("frank") == 2
    assert not a.remembered_login("k2", 50.0)


def test_purge_drops_expired_rows_and_keeps_pending_pushes(stores):
    a, _ = stores
    a.fatigue_admit("gina", 0.0, LIMITS, "p1", 10 ** 6, None)
    a.fatigue_denial("gina", 0.0, LIMITS, "p0")
    a.remember_login("k", "gina", 5.0)
    a.open_challenge(ChallengeRow("cd" * 32, "vpn", "gina", "gina", "code_to_login", None,
                                  None, None, 5.0, {}))
    assert a.purge_login_state(2 * 86400.0) == 3
    assert a.fatigue_admit("gina", 2 * 86400.0, LIMITS, "p2", 10 ** 7, None).reason \
        is BlockReason.TOO_MANY_PENDING


def test_the_same_login_failed_over_joins_the_pending_push_without_counting(stores):
    """A pending push with the login's join key admits it (the provider joins that push);
    another session of the same user is still held to max_pending."""
    a, b = stores
    assert a.fatigue_admit("hugo", 10.0, LIMITS, "t1", 70.0, "k1") is None
    assert b.fatigue_admit("hugo", 11.0, LIMITS, "t2", 71.0, "k1") is None
    assert b.fatigue_admit("hugo", 12.0, LIMITS, "t3", 72.0, "k2").reason \
        is BlockReason.TOO_MANY_PENDING
    a.fatigue_push_ended("t1", 13.0)
    # one push counted, not two: two more fit under max_pushes (3)
    assert b.fatigue_admit("hugo", 14.0, LIMITS, "t4", 15.0, "k3") is None
    b.fatigue_push_ended("t4", 15.0)
    assert a.fatigue_admit("hugo", 16.0, LIMITS, "t5", 17.0, None) is None
