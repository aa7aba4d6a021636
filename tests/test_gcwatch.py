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
