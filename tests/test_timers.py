"""The timer heap (pushproxy.timers) with a Clock: order, cancel, many timers on one
reactor timer; and the engine on it: a pending login answered after its neighbours
timed out, staggered timeouts each at its own deadline."""

import random

from twisted.internet.task import Clock

from pushproxy.decision import Outcome, PushStatus, Reason
from pushproxy.timers import TimerWheel
from tests.support import ScriptedDirectory
from tests.test_engine import login, make, result_of


def wheel():
    clock = Clock()
    clock.advance(1000)
    return clock, TimerWheel(clock)


def test_timers_run_in_deadline_order_and_equal_deadlines_in_the_order_set():
    clock, timers = wheel()
    ran = []
    timers.call_later(3, ran.append, "c")
    timers.call_later(1, ran.append, "a1")
    timers.call_later(2, ran.append, "b")
    timers.call_later(1, ran.append, "a2")
    clock.advance(0.999)
    assert ran == []
    clock.advance(0.001)
    assert ran == ["a1", "a2"]
    clock.advance(5)
    assert ran == ["a1", "a2", "b", "c"] and len(timers) == 0


def test_a_cancelled_timer_never_runs_and_cancel_is_idempotent():
    clock, timers = wheel()
    ran = []
    first = timers.call_later(1, ran.append, "first")
    timers.call_later(2, ran.append, "second")
    first.cancel()
    first.cancel()
    assert not first.active() and len(timers) == 1
    clock.advance(3)
    assert ran == ["second"]
    first.cancel()  # after the others ran: still nothing
    assert ran == ["second"]


def test_many_timers_share_one_reactor_call_and_all_run_in_order():
    clock, timers = wheel()
    rng = random.Random(16)
    ran = []
    handles = [timers.call_later(rng.uniform(0, 100), ran.append, n) for n in range(20_000)]
    assert len(clock.getDelayedCalls()) == 1  # not one DelayedCall per timer
    cancelled = set(rng.sample(range(20_000), 15_000))
    for n in cancelled:
        handles[n].cancel()
    assert len(timers) == 5_000
    assert len(timers._heap) < 20_000  # mostly cancelled: compacted, not kept to the deadline
    for _ in range(101):
        clock.advance(1)
    assert sorted(ran, key=lambda n: handles[n].when) == ran  # (each ran once, in order)
    assert set(ran) == set(range(20_000)) - cancelled and len(ran) == 5_000
    assert clock.getDelayedCalls() == [] and len(timers) == 0


def test_a_timer_set_from_a_callback_before_the_next_one_runs_on_time():
    clock, timers = wheel()
    ran = []
    timers.call_later(10, ran.append, "late")
    timers.call_later(1, lambda _: timers.call_later(2, ran.append, "from-callback"))
    timers.call_later(1, lambda _: timers.call_later(20, ran.append, "latest"))
    clock.advance(1)
    clock.advance(2)
    assert ran == ["from-callback"]
    clock.advance(7)
    assert ran == ["from-callback", "late"]
    clock.advance(10.999)
    assert ran == ["from-callback", "late"]
    clock.advance(0.001)
    assert ran == ["from-callback", "late", "latest"]


def test_a_failing_callback_is_logged_and_the_others_still_run(caplog):
    clock, timers = wheel()
    ran = []
    timers.call_later(1, lambda _: 1 / 0)
    timers.call_later(1, ran.append, "next")
    clock.advance(1)
    assert ran == ["next"] and "timers.callback_failed" in caplog.text


def test_stop_cancels_everything_and_leaves_no_reactor_call():
    clock, timers = wheel()
    ran = []
    handles = [timers.call_later(n, ran.append, n) for n in range(1, 5)]
    timers.stop()
    clock.advance(10)
    assert ran == [] and clock.getDelayedCalls() == []
    assert not any(h.active() for h in handles)


def test_a_pending_login_is_answered_after_its_neighbours_timed_out(tmp_path):
    """Push timeouts on the heap: the logins around one time out at their deadlines,
    the one in the middle is still held, and the phone's later approval accepts it."""
    users = {f"user{n}": f"pw{n}" for n in range(5)}
    engine, clock = make(tmp_path, timeout=60, directory=ScriptedDirectory(users=users))
    got = {}
    for n in range(5):
        got[n] = result_of(engine.login(login(user=f"user{n}", password=f"pw{n}",
                                              station=f"10.0.0.{n}")))
        clock.advance(1)
    middle = engine.provider.requests[2].txid
    assert len(clock.getDelayedCalls()) <= 1  # the timeouts share one reactor timer
    clock.advance(56.5)  # t = 61.5: user0 and user1 timed out (60 s after each began)
    assert [bool(got[n]) for n in range(5)] == [True, True, False, False, False]
    assert all(got[n][0].reason is Reason.PUSH_TIMEOUT for n in (0, 1))
    engine.provider.answer(middle, PushStatus.APPROVED)
    assert got[2][0].outcome is Outcome.ACCEPT and got[2][0].reason is Reason.PUSH_APPROVED
    clock.advance(3)
    assert all(got[n] and got[n][0].reason is Reason.PUSH_TIMEOUT for n in (3, 4))
    assert engine.pending == 0 and len(engine.timers) == 0
    assert sorted(engine.provider.cancelled) == sorted(
        r.txid for i, r in enumerate(engine.provider.requests) if i != 2)


def test_an_answered_login_cancels_its_timeout(tmp_path):
    engine, clock = make(tmp_path, timeout=60)
    got = result_of(engine.login(login()))
    assert len(engine.timers) == 1
    engine.provider.answer(status=PushStatus.DENIED)
    assert got[0].reason is Reason.PUSH_DENIED and len(engine.timers) == 0
    assert clock.getDelayedCalls() == []
