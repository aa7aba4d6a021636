"""The collector's pauses (pushproxy.gcwatch): each generation counted and timed."""

import gc

from pushproxy.gcwatch import GcWatch


def test_a_full_collection_is_counted_and_timed_and_shown_as_gauges():
    ticks = iter([10.0, 10.25, 20.0, 20.5])
    watch = GcWatch(clock=lambda: next(ticks))
    watch("start", {"generation": 2})
    watch("stop", {"generation": 2, "collected": 0})
    watch("start", {"generation": 0})
    watch("stop", {"generation": 0, "collected": 0})
    assert watch.count == [1, 0, 1] and watch.total == [0.5, 0.0, 0.25]
    assert watch.longest == [0.5, 0.0, 0.25]
    gauges = watch.gauges()
    assert gauges["gc_full_collections"][1]() == 1
    assert gauges["gc_full_pause_max_seconds"][1]() == 0.25
    assert gauges["gc_young_pause_seconds_total"][1]() == 0.5


def test_installed_it_sees_real_collections_and_uninstalls():
    watch = GcWatch().install()
    try:
        watch.install()  # once only
        assert gc.callbacks.count(watch) == 1
        gc.collect()
        assert watch.count[2] >= 1 and watch.total[2] > 0
    finally:
        watch.uninstall()
    assert watch not in gc.callbacks


def test_tune_runs_full_collections_less_often_than_cpython_by_default():
    """The daemon's thresholds (issue 22): young collections as CPython's, a full one
    only after every 100 middle ones (not 10), so a fill of 20,000 held logins runs
    2 full collections instead of 12 (bench.pendingmem --threshold)."""
    from pushproxy.gcwatch import THRESHOLDS, tune

    before = gc.get_threshold()
    try:
        tune()
        assert gc.get_threshold() == THRESHOLDS
        assert THRESHOLDS[0] == 700 and THRESHOLDS[2] >= 100
    finally:
        gc.set_threshold(*before)


class _FakeGc:
    """The collector calls a Freezer makes, recorded (the real collector's permanent
    generation is process-wide: a test must not freeze pytest's objects)."""

    def __init__(self):
        self.calls = []
        self.frozen = 0

    def collect(self, generation=2):
        self.calls.append(("collect", generation))

    def freeze(self):
        self.calls.append(("freeze",))
        self.frozen = 1000

    def unfreeze(self):
        self.calls.append(("unfreeze",))
        self.frozen = 0

    def get_freeze_count(self):
        self.calls.append(("get_freeze_count",))
        return self.frozen


def _full_collection(watch, pause):
    ticks = iter([0.0, pause])
    watch.clock = lambda: next(ticks)
    watch("start", {"generation": 2})
    watch("stop", {"generation": 2})


def test_a_slow_full_collection_has_its_survivors_frozen_and_a_quick_one_not():
    from pushproxy.gcwatch import Freezer

    watch, fake, pending = GcWatch(), _FakeGc(), [20000]
    freezer = Freezer(lambda: pending[0], watch=watch, slow=0.1, gc_module=fake)
    assert freezer.tick() is None and fake.calls == []  # no collection yet
    _full_collection(watch, 0.05)
    assert freezer.tick() is None and fake.calls == []  # quick: nothing to gain
    _full_collection(watch, 0.4)
    assert freezer.tick() == "freeze"
    # the young generations first (recent short-lived cycles are not frozen), then freeze
    assert fake.calls == [("collect", 1), ("freeze",), ("get_freeze_count",)]
    assert freezer.frozen_with == 20000 and freezer.freezes == 1
    assert freezer.tick() is None  # the same collection is not frozen twice
    # The gauge is the count taken at the freeze: gc.get_freeze_count() walks every
    # frozen object with the interpreter lock held (0.1 s per million), and a
    # scrape every 0.1 s calling it starved the daemon in a 100,000-login run.
    calls = len(fake.calls)
    assert [freezer.gauges()["gc_frozen_objects"][1]() for _ in range(3)] == [1000] * 3
    assert len(fake.calls) == calls


def test_the_frozen_objects_are_handed_back_once_the_pending_logins_are_few():
    """Cycles among frozen objects wait for the unfreeze: it must come once the logins
    frozen have mostly ended (a tenth of them left, or fewer than the floor)."""
    from pushproxy.gcwatch import Freezer

    watch, fake, pending = GcWatch(), _FakeGc(), [40000]
    freezer = Freezer(lambda: pending[0], watch=watch, slow=0.1, share=0.1, floor=1000,
                      gc_module=fake)
    _full_collection(watch, 2.0)
    assert freezer.tick() == "freeze"
    pending[0] = 30000
    _full_collection(watch, 0.5)  # a second slow one while still growing: frozen too
    assert freezer.tick() == "freeze" and freezer.frozen_with == 40000
    pending[0] = 4001
    assert freezer.tick() is None
    pending[0] = 4000
    assert freezer.tick() == "unfreeze"
    assert fake.calls[-1] == ("unfreeze",) and freezer.frozen_with is None
    assert freezer.gauges()["gc_frozen_objects"][1]() == 0
    assert freezer.tick() is None  # nothing frozen: nothing more to do
    assert (freezer.freezes, freezer.unfreezes) == (2, 1)


def test_a_small_freeze_is_unfrozen_below_the_floor():
    from pushproxy.gcwatch import Freezer

    watch, fake, pending = GcWatch(), _FakeGc(), [1500]
    freezer = Freezer(lambda: pending[0], watch=watch, slow=0.1, floor=1000, gc_module=fake)
    _full_collection(watch, 0.2)
    assert freezer.tick() == "freeze"
    pending[0] = 999
    assert freezer.tick() == "unfreeze"


def test_the_daemon_freezer_runs_on_the_event_loop_and_logs_what_it_did(caplog):
    """Started like `pushproxy.cli` starts it: a LoopingCall on the reactor (a Clock
    here), never inside the collector."""
    import logging

    from twisted.internet import task

    from pushproxy.gcwatch import Freezer

    clock, watch, fake = task.Clock(), GcWatch(), _FakeGc()
    freezer = Freezer(watch=watch, slow=0.1, gc_module=fake)
    freezer.start(clock, lambda: 25000)
    try:
        _full_collection(watch, 1.5)
        assert fake.calls == []  # nothing happens inside the collector
        with caplog.at_level(logging.INFO, logger="pushproxy.gcwatch"):
            clock.advance(Freezer.EVERY)
        assert ("freeze",) in fake.calls
        assert "gc.freeze" in caplog.text and "25000" in caplog.text
    finally:
        freezer.stop()
        watch.uninstall()
    assert not clock.getDelayedCalls()
