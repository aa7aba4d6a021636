"""ThreadRunner: a store call stuck behind another process's lock cannot hold logins
longer than the call timeout, and calls whose caller gave up are skipped, not replayed."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from twisted.internet import reactor

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

    def setting(self, key):
        return None

    def close(self):
        pass


@pytest_twisted.inlineCallbacks
def test_callers_get_a_store_error_at_the_timeout_and_abandoned_calls_are_skipped():
    store = BlockingStore()
    runner = ThreadRunner(reactor, lambda: store, timeout=0.3)
    yield runner.start()
    try:
        first = runner("stuck")
        second = runner("quick", 1)
        for d in (first, second):
            with pytest.raises(StoreError, match="did not answer"):
                yield d
        store.release.set()
        # the thread is free again: a new call runs; the abandoned "quick 1" never did
        assert (yield runner("quick", 2)) == 2
        assert store.ran == ["stuck", "quick:2"]
    finally:
        store.release.set()
        runner.stop()


@pytest_twisted.inlineCallbacks
def test_calls_answered_in_time_are_unaffected():
    store = BlockingStore()
    runner = ThreadRunner(reactor, lambda: store, timeout=5)
    yield runner.start()
    try:
        results = yield runner("quick", "a")
        assert results == "a"
    finally:
        runner.stop()
