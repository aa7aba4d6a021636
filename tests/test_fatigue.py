"""Fatigue defenses, with explicit times: pending cap, rate limit, pause after denials."""

import pytest

from pushproxy.fatigue import Block, BlockReason, FatigueGuard, FatigueLimits

T0 = 1_796_000_000.0


def spam(guard, user, times, answer=True):
    """Logins at ``times``; each allowed push is answered at once. Returns the allowed times."""
    allowed = []
    for now in times:
        if guard.admit(user, now) is None:
            allowed.append(now)
            if answer:
                guard.push_finished(user)
    return allowed


def test_defaults():
    limits = FatigueLimits()
    assert (limits.max_pending, limits.max_pushes, limits.window) == (1, 5, 600.0)
    assert (limits.max_denials, limits.denial_window, limits.pause) == (3, 900.0, 900.0)


@pytest.mark.parametrize("bad", [{"max_pending": 0}, {"max_pushes": -1}, {"window": 0},
                                 {"pause": -5}, {"max_users": 0}, {"max_denials": 1.5}])
def test_nonsense_limits_are_refused(bad):
    with pytest.raises(ValueError):
        FatigueLimits(**bad)


def test_twenty_logins_in_a_minute_get_at_most_max_pushes():
    guard = FatigueGuard()
    allowed = spam(guard, "alice", [T0 + 3 * i for i in range(20)])
    assert len(allowed) == 5
    block = guard.check("alice", T0 + 60)
    assert block == Block(BlockReason.RATE_LIMITED, allowed[0] + 600)


def test_twenty_unanswered_logins_get_one_push():
    guard = FatigueGuard()
    assert len(spam(guard, "alice", [T0 + 3 * i for i in range(20)], answer=False)) == 1
    assert guard.check("alice", T0 + 60) == Block(BlockReason.TOO_MANY_PENDING)


def test_rate_window_boundary_is_exact():
    guard = FatigueGuard(FatigueLimits(max_pushes=2, window=100))
    assert spam(guard, "alice", [T0, T0 + 10]) == [T0, T0 + 10]
    assert guard.check("alice", T0 + 99.999) == Block(BlockReason.RATE_LIMITED, T0 + 100)
    assert guard.check("alice", T0 + 100) is None  # the push at T0 no longer counts
    assert spam(guard, "alice", [T0 + 100]) == [T0 + 100]
    assert guard.check("alice", T0 + 109.9) == Block(BlockReason.RATE_LIMITED, T0 + 110)
    assert guard.check("alice", T0 + 110) is None


def test_pending_cap_counts_concurrent_pushes():
    guard = FatigueGuard(FatigueLimits(max_pending=2))
    assert guard.admit("alice", T0) is None
    assert guard.admit("alice", T0 + 1) is None
    assert guard.admit("alice", T0 + 2) == Block(BlockReason.TOO_MANY_PENDING)
    guard.push_finished("alice")
    assert guard.admit("alice", T0 + 3) is None
    guard.push_finished("alice")
    guard.push_finished("alice")
    guard.push_finished("alice")  # one too many: never negative
    assert guard.check("alice", T0 + 4) is None
    guard.push_started("alice", T0 + 4)
    guard.push_started("alice", T0 + 4)
    assert guard.check("alice", T0 + 5) == Block(BlockReason.TOO_MANY_PENDING)


def test_users_are_independent():
    guard = FatigueGuard()
    spam(guard, "alice", [T0 + i for i in range(10)])
    assert guard.check("alice", T0 + 10) is not None
    assert guard.check("bob", T0 + 10) is None


def test_denials_pause_pushes_then_resume_exactly_after_pause():
    guard = FatigueGuard()
    assert guard.record_denial("alice", T0) is False
    assert guard.record_denial("alice", T0 + 100) is False
    assert guard.check("alice", T0 + 101) is None
    assert guard.record_denial("alice", T0 + 200) is True  # the third: alert
    until = T0 + 200 + 900
    assert guard.check("alice", T0 + 201) == Block(BlockReason.PAUSED, until)
    assert guard.paused_until("alice", T0 + 201) == until
    assert guard.check("alice", until - 0.001) == Block(BlockReason.PAUSED, until)
    assert guard.check("alice", until) is None
    assert guard.paused_until("alice", until) is None


def test_denials_during_a_pause_neither_extend_nor_alert_again():
    guard = FatigueGuard()
    for i in range(3):
        crossed = guard.record_denial("alice", T0 + i)
    assert crossed is True
    assert guard.record_denial("alice", T0 + 10) is False
    assert guard.check("alice", T0 + 2 + 900) is None
    # after the pause, a new pause takes max_denials new denials
    assert guard.record_denial("alice", T0 + 1000) is False
    assert guard.record_denial("alice", T0 + 1001) is False
    assert guard.record_denial("alice", T0 + 1002) is True


def test_denial_window_boundary_is_exact():
    guard = FatigueGuard(FatigueLimits(max_denials=2, denial_window=100, pause=50))
    assert guard.record_denial("alice", T0) is False
    assert guard.record_denial("alice", T0 + 100) is False  # the first one just expired
    assert guard.record_denial("alice", T0 + 199.9) is True


def test_pause_wins_over_other_blocks():
    guard = FatigueGuard(FatigueLimits(max_denials=1))
    guard.push_started("alice", T0)
    guard.record_denial("alice", T0 + 1)
    assert guard.check("alice", T0 + 2).reason is BlockReason.PAUSED


def test_clear_ends_pause_and_rate_limit_but_keeps_pending():
    guard = FatigueGuard()
    spam(guard, "alice", [T0 + i for i in range(5)])
    for i in range(3):
        guard.record_denial("alice", T0 + 10 + i)
    assert guard.check("alice", T0 + 20).reason is BlockReason.PAUSED
    guard.clear("alice")
    assert guard.check("alice", T0 + 21) is None
    guard.push_started("alice", T0 + 22)
    guard.clear("alice")
    assert guard.check("alice", T0 + 23) == Block(BlockReason.TOO_MANY_PENDING)
    guard.clear("nobody")  # unknown users are fine


def test_idle_users_are_forgotten_on_use():
    guard = FatigueGuard()
    for i in range(100):
        spam(guard, f"user{i}", [T0 + i])
    assert guard.tracked == 100
    assert guard.check("alice", T0 + 100) is None
    assert guard.tracked == 100  # a check allocates nothing, and all are still recent
    for i in range(20):
        guard.check("someone", T0 + 10_000 + i)  # long after: each use prunes a few
    assert guard.tracked == 0


def test_paused_users_are_kept_while_paused():
    guard = FatigueGuard(FatigueLimits(max_denials=1, pause=5000))
    guard.record_denial("mallory-target", T0)
    for i in range(10):
        guard.check("x", T0 + 1000 + i)
    assert guard.check("mallory-target", T0 + 1000).reason is BlockReason.PAUSED


def test_tracked_users_are_capped_oldest_first_among_those_with_no_push_waiting():
    guard = FatigueGuard(FatigueLimits(max_users=3, max_pushes=1))
    for i, name in enumerate(["a", "b", "c", "d"]):
        guard.push_started(name, T0 + i)
        guard.push_finished(name)
    assert guard.tracked == 3
    assert guard.check("a", T0 + 5) is None  # evicted: its rate limit is forgotten
    assert guard.check("d", T0 + 5) == Block(BlockReason.RATE_LIMITED, T0 + 3 + 600)


def test_push_history_stays_bounded():
    guard = FatigueGuard()
    for i in range(1000):
        guard.push_started("alice", T0 + i * 0.01)
        guard.push_finished("alice")
    user = guard._users["alice"]
    assert len(user.pushes) == 5


def test_a_user_with_a_push_waiting_is_never_forgotten_by_a_flood_of_other_users():
    guard = FatigueGuard(FatigueLimits(max_pending=1, max_users=10))
    guard.push_started("victim", 0.0)
    for i in range(50):
        guard.check(f"user{i}", 1.0)
        guard.push_started(f"user{i}", 1.0)
        guard.push_finished(f"user{i}")
    block = guard.check("victim", 2.0)
    assert block is not None and block.reason is BlockReason.TOO_MANY_PENDING
    assert guard.tracked <= 11
