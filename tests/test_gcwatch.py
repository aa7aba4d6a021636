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
