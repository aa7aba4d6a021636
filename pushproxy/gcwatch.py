"""How long the garbage collector stops the daemon, per generation, for /metrics.

A full (generation 2) collection walks every tracked object, so its pause
grows with the logins held pending (issue 16). `GcWatch`, a `gc.callbacks`
hook, counts the collections of each generation, their total and their
longest pause; /metrics shows them as gauges (``pushproxy_gc_*``).

The hook runs inside the collector, on whichever thread triggered it: it
takes no lock (a lock held by the interrupted code would deadlock) and only
updates plain numbers, which the interpreter lock keeps whole.
"""

from __future__ import annotations

import gc
import time


class GcWatch:
    """Collections per generation: ``count``, ``total`` and ``longest`` pause (seconds)."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        """The `gc.callbacks` hook."""
        if phase == "start":
            self._started = self.clock()
            return
        if self._started is None:
            return
        pause, self._started = self.clock() - self._started, None
        gen = min(max(int(info.get("generation", 0)), 0), 2)
        self.count[gen] += 1
        self.total[gen] += pause
        if pause > self.longest[gen]:
            self.longest[gen] = pause

    def install(self) -> "GcWatch":
        """Start timing collections (once)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def uninstall(self) -> None:
        """Stop timing collections."""
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def gauges(self) -> dict:
        """The /metrics gauges: name -> (help, read function)."""
        out = {}
        for gen, name in ((0, "young"), (1, "middle"), (2, "full")):
            out[f"gc_{name}_collections"] = (
                f"Garbage collections of generation {gen}", lambda g=gen: self.count[g])
            out[f"gc_{name}_pause_seconds_total"] = (
                f"Seconds the generation {gen} collections stopped the process",
                lambda g=gen: self.total[g])
            out[f"gc_{name}_pause_max_seconds"] = (
                f"The longest generation {gen} collection so far",
                lambda g=gen: self.longest[g])
        return out


#: The daemon's one watch (a process has one collector).
WATCH = GcWatch()

#: The daemon's collector thresholds (`tune`); CPython's default is (700, 10, 10).
#: A full collection walks every object the pending logins hold (~100 each):
#: seconds with 20,000 pending on a loaded 2-core machine, every thread
#: stopped. CPython starts one after every 10 middle collections (~70,000
#: objects that survived into the oldest generation), so a fill of 20,000
#: logins ran 12-19 of them; after every 100 it runs 2 (``python -m
#: bench.pendingmem 20000 --threshold ...``, docs/benchmarks.md). The price:
#: cyclic garbage that reached the oldest generation waits longer for its
#: collection (CPython still also waits for that generation to grow by 25 %).
THRESHOLDS = (700, 10, 100)


def tune() -> None:
    """Set the daemon's collector thresholds (called once start-up objects are frozen)."""
    gc.set_threshold(*THRESHOLDS)
