"""ThreadRunner: a store call stuck behind another process's lock cannot hold logins
longer than the call timeout, and calls whose caller gave up are skipped, not replayed;
but a call that only waits its turn behind quick calls (a busy store) is not a fault."""

from __future__ import annotations

import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from pushproxy.approval.runner import ThreadRunner
from pushproxy.approval.store import StoreError


class BlockingStore:
    """A store whose ``stuck`` call blocks until released; records what ran."""

    def __init__(self):
        self.release = threading.Event()
        self.ran: list[str] = []

    def stuck(self):
        self.ran.append("stuck")
        self.release.wait(10)
        return "stuck-done"

    def quick(self, value):
        self.ran.append(f"quick:{value}")
        return value

    def slow(self, value):
        self.ran.append(f"slow:{value}")
        time.sleep(0.1)
        return value

    def failing(self):
        self.ran.append("failing")
        time.sleep(0.2)
        raise StoreError("database is locked")

    def keyed(self, value, *, extra):
        return value, extra

    def close(self):
        pass


@pytest_twisted.inlineCallbacks
def test_callers_get_a_store_error_at_the_timeout_and_abandoned_calls_are_skipped():
    store = BlockingStore()
    runner = ThreadRunner(reactor, lambda: store, timeout=0.3)
    yield runner.start()
    try:
        first = runner.submit(store.stuck)
        second = runner.submit(store.quick, 1)
        with pytest.raises(StoreError, match="did not answer"):
            yield first
        # queued behind the stuck call: it fails too, naming the stuck store
        with pytest.raises(StoreError, match="stuck"):
            yield second
        store.release.set()
        # the thread is free again: a new call runs; the abandoned "quick 1" never did
        assert (yield runner.submit(store.quick, 2)) == 2
        assert store.ran == ["stuck", "quick:2"]
    finally:
        store.release.set()
        runner.stop()


@pytest_twisted.inlineCallbacks
def test_the_store_is_opened_at_start_and_calls_take_its_bound_methods():
    store = BlockingStore()
    runner = ThreadRunner(reactor, lambda: store, timeout=5)
    with pytest.raises(StoreError, match="not open"):
        runner.store  # noqa: B018 -- not opened before start
    yield runner.start()
    try:
        assert runner.store is store
        assert (yield runner.submit(runner.store.keyed, 1, extra=2)) == (1, 2)
    finally:
        runner.stop()


@pytest_twisted.inlineCallbacks
def test_calls_answered_in_time_are_unaffected():
    store = BlockingStore()
    runner = ThreadRunner(reactor, lambda: store, timeout=5)
    yield runner.start()
    try:
        results = yield runner.submit(store.quick, "a")
        assert results == "a"
    finally:
        runner.stop()


@pytest_twisted.inlineCallbacks
def test_a_queued_call_behind_busy_quick_calls_is_not_timed_out():
    """Ten 0.1 s calls with a 0.3 s timeout: the last waits ~1 s, but the store makes
    progress all along, so every caller gets its answer (the old bound, counted
    from the call, failed the last seven as if the database were locked)."""
    store = BlockingStore()
    runner = ThreadRunner(reactor, lambda: store, timeout=0.3)
    yield runner.start()
    try:
        results = yield defer.gatherResults([runner.submit(store.slow, i) for i in range(10)])
        assert results == list(range(10))
    finally:
        runner.stop()


@pytest_twisted.inlineCallbacks
def test_queued_calls_fail_within_the_timeout_while_the_store_keeps_failing():
    """Calls that each fail after 0.2 s (busy timeout of a locked database): a call
    queued behind eight of them fails within about the timeout, not after 1.6 s."""
    store = BlockingStore()
    runner = ThreadRunner(reactor, lambda: store, timeout=0.5)
    yield runner.start()
    try:
        failing = [runner.submit(store.failing) for _ in range(8)]
        started = time.monotonic()
        with pytest.raises(StoreError, match="failing"):
            yield runner.submit(store.quick, "late")
        assert time.monotonic() - started < 1.2
        for d in failing:
            d.addErrback(lambda f: f.trap(StoreError))
        yield defer.DeferredList(failing)
        assert "quick:late" not in store.ran
    finally:
        runner.stop()


@pytest_twisted.inlineCallbacks
def test_depth_age_and_per_method_counts():
    """What admission control and /metrics read: queue depth and age, calls by method."""
    from pushproxy.metrics import Counters

    store = BlockingStore()
    counters = Counters()
    runner = ThreadRunner(reactor, lambda: store, timeout=5, counters=counters)
    yield runner.start()
    try:
        first = runner.submit(store.stuck)
        queued = runner.submit(store.quick, 1)
        yield deferLater(reactor, 0.2, lambda: None)
        assert runner.depth() == 2
        assert runner.age() >= 0.15 and runner.running_for() >= 0.1
        store.release.set()
        yield defer.gatherResults([first, queued])
        assert runner.depth() == 0 and runner.age() == 0.0
        assert counters.get("store_calls", method="quick") == 1
        assert counters.get("store_calls", method="stuck") == 1
    finally:
        store.release.set()
        runner.stop()


def test_a_call_finished_on_the_store_thread_is_not_timed_out_while_the_loop_is_late():
    """The event loop can run late (a storm, a busy machine): a call the store thread
    answered in time must not be failed as "did not answer" by its watchdog just
    because the delivery of its result has not run yet (seen in the 20,000-login run)."""
    from twisted.internet.task import Clock

    clock = Clock()
    delivered: list = []
    clock.callFromThread = lambda f, *a: delivered.append((f, a))
    store = BlockingStore()
    runner = ThreadRunner(clock, lambda: store, timeout=0.3, monotonic=clock.seconds)
    d = runner.submit(store.quick, 1)
    # what the store thread does (run here, without the thread, to control time)
    call = runner._queue.popleft()
    call.started = clock.seconds()
    ok, result = runner._execute(call)
    call.finished = clock.seconds() + 0.01
    runner._done.append((call, ok, result))
    clock.advance(0.5)  # the watchdog fires before the late loop delivers
    assert not d.called
    runner._deliver()
    assert d.result == 1


@pytest_twisted.inlineCallbacks
def test_a_slow_call_without_an_error_gets_twice_the_timeout():
    """A call that runs 1.5 x the timeout without failing (the store thread waiting for
    the interpreter lock on a busy machine) is load: its caller gets the answer. Locks
    surface as database errors after SQLite's busy timeout, and those fail at once."""
    store = BlockingStore()
    runner = ThreadRunner(reactor, lambda: store, timeout=0.3)
    yield runner.start()
    try:
        first = runner.submit(store.stuck)
        reactor.callLater(0.45, store.release.set)
        assert (yield first) == "stuck-done"
    finally:
        store.release.set()
        runner.stop()


def _clocked_runner():
    """A ThreadRunner on a Clock whose store thread the test plays by hand."""
    from twisted.internet.task import Clock

    clock = Clock()
    clock.callFromThread = lambda f, *a: None
    store = BlockingStore()
    runner = ThreadRunner(clock, lambda: store, timeout=0.3, monotonic=clock.seconds)
    return clock, store, runner


def test_a_call_answered_while_the_whole_process_stood_still_is_not_failed():
    """The process stood still for longer than the stall bound (a long garbage
    collection, no CPU on a loaded machine) while SQLite answered a call: when the
    loop wakes, the store thread has not yet run Python to stamp the call finished.
    The watchdog must let it, not fail the login as a stuck store (issue 22: the one
    failmode decision of a 20,000-login run)."""
    clock, store, runner = _clocked_runner()
    d = runner.submit(store.quick, 1)
    call = runner._queue.popleft()
    runner._running = call
    call.started = clock.seconds()
    clock.advance(5)  # one jump: the loop did not run for 5 s (stall bound 0.6 s)
    assert not d.called
    # the store thread gets the interpreter lock once the loop runs again
    ok, result = runner._execute(call)
    call.finished = clock.seconds()
    runner._running = None
    runner._done.append((call, ok, result))
    clock.advance(runner.confirm)
    runner._deliver()
    assert d.result == 1


def test_a_call_still_running_after_the_confirmation_fails_and_so_does_the_queue():
    """A frozen disk: the call stays unfinished while the loop runs on; it fails
    ``confirm`` after the stall bound is seen, and the call queued behind it too."""
    clock, store, runner = _clocked_runner()
    first = runner.submit(store.stuck)
    second = runner.submit(store.quick, 2)
    call = runner._queue.popleft()
    runner._running = call
    call.started = clock.seconds()
    clock.advance(0.6)  # at the stall bound: seen, not yet failed
    assert not first.called
    clock.advance(runner.confirm)
    assert isinstance(first.result.value, StoreError)
    assert "did not answer stuck" in str(first.result.value)
    first.addErrback(lambda _: None)
    clock.advance(0.5)  # the queued call's next look
    assert "stuck on a call" in str(second.result.value)
    second.addErrback(lambda _: None)


def test_slow_calls_are_logged_at_most_once_a_second_with_what_they_waited_for(caplog):
    clock, store, runner = _clocked_runner()
    caplog.set_level("INFO", logger="pushproxy.approval.runner")
    for at in (10.0, 10.5, 11.2):
        runner.submit(store.quick, 1)
        call = runner._queue.popleft()
        call.started, call.finished = at - 0.6, at
        runner._slow(call, cpu=0.01, process=0.5, collecting=0.0)
    lines = [r.getMessage() for r in caplog.records if "store.slow_call" in r.getMessage()]
    assert len(lines) == 2
    assert "thread_cpu_s=0.01" in lines[0] and "process_cpu_s=0.5" in lines[0]
    assert "not_logged_since=1" in lines[1]


def test_calls_submitted_in_one_turn_wake_the_idle_store_thread_once_after_it():
    """An idle store thread is woken once per turn of the event loop, when the turn's
    work is done, not once per call in the middle of it (each wake-up is a switch of
    threads; the largest own cost in the push path's profile, issue 16)."""
    from twisted.internet.task import Clock

    class Counting(threading.Condition):
        def notify(self, n=1):
            notified.append(n)
            super().notify(n)

    notified: list[int] = []
    clock, store = Clock(), BlockingStore()
    runner = ThreadRunner(clock, lambda: store, timeout=5)
    runner._wake = Counting()
    runner._sleeping = True  # the store thread waits for work (not started here)
    for i in range(5):
        runner.submit(store.quick, i)
    assert notified == [] and len(runner._queue) == 5
    clock.advance(0)  # the end of the turn
    assert notified == [1]
    runner.submit(store.quick, 5)  # the thread has not run yet: the next turn wakes it again
    clock.advance(0)
    assert notified == [1, 1]


class AnsweringStore(BlockingStore):
    """Also has the answer's compare-and-set, by its store method's name."""

    def __init__(self):
        super().__init__()
        self.answered = threading.Event()

    def decide_transaction(self, txid, state="approved", device_id="d", now=0.0):
        self.ran.append(f"decide:{txid}")
        self.answered.set()
        return True


def test_an_answer_wakes_the_idle_store_thread_at_once_other_calls_after_the_turn():
    """The answer's compare-and-set (a login waits on it for its reply) wakes an idle
    store thread when it is submitted, not at the end of the reactor's turn; other
    calls keep the once-per-turn wake-up."""
    from twisted.internet.task import Clock

    class Counting(threading.Condition):
        def notify(self, n=1):
            notified.append(n)
            super().notify(n)

    notified: list[int] = []
    clock, store = Clock(), AnsweringStore()
    runner = ThreadRunner(clock, lambda: store, timeout=5)
    runner._wake = Counting()
    runner._sleeping = True  # the store thread waits for work (not started here)
    runner.submit(store.quick, 1)
    assert notified == []  # after the turn
    runner.submit(store.decide_transaction, "tx1")
    assert notified == [1]  # now, in the middle of the turn
    # the store thread takes calls in the order they came
    assert [c.method for c in runner._queue] == ["quick", "decide_transaction"]


def test_an_answer_submitted_to_a_busy_store_thread_waits_its_turn_in_the_queue():
    """A busy store thread is not woken (it looks at the queue again by itself), and
    an answer never overtakes a call submitted before it."""
    from twisted.internet.task import Clock

    clock, store = Clock(), AnsweringStore()
    runner = ThreadRunner(clock, lambda: store, timeout=5)
    runner._sleeping = False  # running a call
    runner.submit(store.quick, 1)
    runner.submit(store.decide_transaction, "tx1")
    runner.submit(store.quick, 2)
    assert [c.method for c in runner._queue] == ["quick", "decide_transaction", "quick"]
    assert clock.getDelayedCalls() and all(c.func != runner._kick
                                           for c in clock.getDelayedCalls())


def test_results_finished_together_are_delivered_answer_first():
    """Calls the store thread finished before the reactor got to them are fired in
    one turn; the answer's first, the rest in the order they were submitted."""
    clock, store, runner = _clocked_runner()
    store = AnsweringStore()
    runner._store = store
    fired: list = []
    for call_of in (lambda: runner.submit(store.quick, "first"),
                    lambda: runner.submit(store.decide_transaction, "tx1"),
                    lambda: runner.submit(store.quick, "last")):
        call_of().addCallback(fired.append)
    while runner._queue:  # play the store thread: run each, in order
        call = runner._queue.popleft()
        runner._done.append((call, *runner._execute(call)))
    assert store.ran == ["quick:first", "decide:tx1", "quick:last"]
    runner._deliver()
    assert fired == [True, "first", "last"]


@pytest_twisted.inlineCallbacks
def test_the_store_thread_runs_an_answer_while_the_reactor_turn_that_submitted_it_goes_on():
    """With the real store thread: the answer's call runs while the turn that submitted
    it is still going (here: blocked waiting for it, releasing the interpreter lock as
    a socket call would). With a wake-up only at the end of the turn it would not."""
    store = AnsweringStore()
    runner = ThreadRunner(reactor, lambda: store, timeout=5)
    yield runner.start()
    try:
        for _ in range(500):  # until the thread sleeps, waiting for work
            if runner._sleeping:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        assert runner._sleeping
        d = runner.submit(store.decide_transaction, "tx1")
        ran_within_the_turn = store.answered.wait(10)  # this turn does not end meanwhile
        assert ran_within_the_turn
        assert (yield d) is True
    finally:
        runner.stop()


def test_one_watchdog_timer_serves_every_call_and_each_is_checked_at_its_own_deadline():
    """The watchdog is one reactor timer for all calls, not one per call (issue 16);
    a call is still looked at when its own deadline passes, in the order submitted."""
    clock, store, runner = _clocked_runner()  # timeout 0.3: stall 0.6
    first = runner.submit(store.quick, 1)
    clock.advance(0.1)
    second = runner.submit(store.stuck)
    clock.advance(0.1)
    third = runner.submit(store.quick, 3)
    for _ in range(50):
        runner.submit(store.quick, 0).addErrback(lambda _: None)
    assert len(clock.getDelayedCalls()) == 1  # 53 calls, one timer
    # play the store thread: the first call answered, the second hangs (a frozen disk)
    call = runner._queue.popleft()
    call.started = clock.seconds()
    runner._done.append((call, *runner._execute(call)))
    call.finished = clock.seconds()
    runner._deliver()
    assert first.result == 1
    stuck = runner._queue.popleft()
    runner._running = stuck
    stuck.started = clock.seconds()
    clock.advance(0.15)  # past the first call's deadline (answered): nothing fails
    assert not second.called and not third.called
    for _ in range(12):  # the loop runs on: the stuck call fails, then the one behind it
        clock.advance(0.1)
    assert "did not answer stuck" in str(second.result.value)
    assert "stuck on a call" in str(third.result.value)
    for d in (second, third):
        d.addErrback(lambda _: None)


@pytest_twisted.inlineCallbacks
def test_the_store_s_data_version_is_read_at_most_every_version_every_seconds():
    """The store thread reads data_version after a call only when its last reading is
    `VERSION_EVERY` old (each reading is a statement of its own, issue 16); what it
    serves is stamped with the time of that reading."""
    from pushproxy.approval.runner import VERSION_EVERY

    class VersionedStore(BlockingStore):
        def __init__(self):
            super().__init__()
            self.versions_read = 0

        def data_version(self):
            self.versions_read += 1
            return 7

    now = [50.0]
    store = VersionedStore()
    runner = ThreadRunner(reactor, lambda: store, timeout=5, monotonic=lambda: now[0])
    yield runner.start()
    try:
        for i in range(5):
            assert (yield runner.submit(store.quick, i)) == i
        assert store.versions_read == 1  # after the first call (the open)
        assert runner.data_version(1.0) == 7
        now[0] += VERSION_EVERY
        yield runner.submit(store.quick, 5)
        yield runner.submit(store.quick, 6)  # taken after the reading that followed 5
        assert store.versions_read == 2
        now[0] += 1.5  # no call since: the reading is too old to serve
        assert runner.data_version(1.0) is None
    finally:
        runner.stop()


def test_every_call_that_ends_a_waiting_login_is_prompt_and_a_store_method():
    """The answer's compare-and-set in each of its forms: a single process's
    ``decide_transaction``, a cluster node's ``answer_transaction`` and the usual
    ``claim_and_answer`` (the request's nonce claim in the same call). A name that
    no store method has would silently never be prompt."""
    from pushproxy.approval import runner as runner_mod
    from pushproxy.approval.storeapi import StoreAPI

    assert runner_mod.PROMPT == {"decide_transaction", "answer_transaction",
                                 "claim_and_answer"}
    assert all(callable(getattr(StoreAPI, name, None)) for name in runner_mod.PROMPT)
