"""Pure guessing limits with plain values: passcode pause/lock rules and the wrong-password
throttle per source (issue 14, finding 1)."""

import pytest

from pushproxy.passcode_limits import (PasscodeLimits, Refusal, after_failure, paused_until,
                                       refusal)
from pushproxy.password_throttle import PasswordLimits, PasswordThrottle

L = PasscodeLimits(max_failures=5, window=900, pause=900, lock_after=10, lock_window=86400,
                   source_max_failures=20)


def test_four_failures_do_not_pause_the_fifth_does():
    assert refusal(L, [100.0] * 4, [], 101) is None
    then = after_failure(L, [100.0] * 4, [], 101)
    assert then.user_paused and not then.lock and not then.source_paused
    assert refusal(L, [100.0] * 4 + [101.0], [], 102) is Refusal.USER_PAUSED


def test_failures_spread_wider_than_the_window_never_pause():
    times = [0.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0]
    assert paused_until(times, 5, 900, 900, 5001) is None


def test_the_pause_ends_after_pause_seconds_from_the_last_counted_failure():
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert paused_until(times, 5, 900, 900, 903.9) == 904.0
    assert paused_until(times, 5, 900, 900, 904.0) is None


def test_attempts_during_a_pause_extend_it_and_raise_no_second_alert():
    times = [0.0, 1.0, 2.0, 3.0, 4.0]
    then = after_failure(L, times, [], 10)
    assert not then.user_paused  # already paused: one alert per pause
    assert paused_until(times + [10.0], 5, 900, 900, 11) == 910.0


def test_the_tenth_failure_within_the_lock_window_locks():
    assert not after_failure(L, [float(t) for t in range(8)], [], 9).lock
    assert after_failure(L, [float(t) for t in range(9)], [], 9).lock
    # failures older than the lock window do not count
    old = [float(t) for t in range(9)]
    assert not after_failure(L, old, [], 86400 + 9).lock


def test_a_source_spraying_many_users_is_paused_by_its_own_count():
    source = [float(t) for t in range(19)]
    then = after_failure(L, [], source, 20)
    assert then.source_paused and not then.user_paused
    assert refusal(L, [], source + [20.0], 21) is Refusal.SOURCE_PAUSED


def test_horizon_covers_the_lock_window_and_a_whole_pause():
    assert L.horizon == 86400
    assert PasscodeLimits(window=900, pause=900, lock_window=1000).horizon == 1800


@pytest.mark.parametrize("bad", [dict(max_failures=0), dict(window=0), dict(lock_after=0),
                                 dict(source_max_failures=-1), dict(pause=-5)])
def test_nonsense_limits_are_refused(bad):
    with pytest.raises(ValueError):
        PasscodeLimits(**bad)


P = PasswordLimits(max_failures=3, window=60, pause=120)


def test_wrong_passwords_from_one_source_pause_it_and_only_it():
    t = PasswordThrottle()
    assert t.failed(P, "a", 0) is False and t.failed(P, "a", 1) is False
    assert t.failed(P, "a", 2) is True  # starts the pause: logged once
    assert t.blocked_until(P, "a", 3) == 122
    assert t.blocked_until(P, "b", 3) is None
    assert t.blocked_until(P, "a", 122) is None  # over


def test_wrong_passwords_slower_than_the_window_never_pause():
    t = PasswordThrottle()
    assert not any(t.failed(P, "a", i * 61.0) for i in range(10))
    assert t.blocked_until(P, "a", 700) is None


def test_max_failures_zero_turns_the_throttle_off():
    off = PasswordLimits(max_failures=0)
    t = PasswordThrottle()
    assert not any(t.failed(off, "a", 0) for _ in range(100))
    assert t.blocked_until(off, "a", 0) is None and len(t) == 0


def test_memory_is_bounded_by_max_sources():
    small = PasswordLimits(max_failures=3, max_sources=10)
    t = PasswordThrottle()
    for i in range(100):
        t.failed(small, f"s{i}", 0)
    assert len(t) == 10
