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
import logging
import time

from pushproxy import logs

log = logging.getLogger("pushproxy.gcwatch")


class GcWatch:
    """Collections per generation: ``count``, ``total`` and ``longest`` pause (seconds)."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self.last = [0.0, 0.0, 0.0]
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
        self.last[gen] = pause
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


#: A full collection at least this long has its survivors frozen (`Freezer`).
FREEZE_AFTER = 0.1
#: ... and they are unfrozen once the pending logins are down to this share of
#: what they were at the freeze (the next full collection then walks what is live).
UNFREEZE_SHARE = 0.1
#: Below this many pending logins a full collection is short anyway.
UNFREEZE_BELOW = 1000


class Freezer:
    """Keeps the objects of logins held pending out of later full collections.

    A full collection walks every tracked object: about 60 per pending login,
    so 8.5 s with 40,000 logins held on a loaded 2-core machine (measured
    during a 100,000-login fill, issue 16), every thread stopped, and CPython
    runs one each time the oldest generation grew by a quarter. Held logins
    are exactly the objects that outlive many collections, so once a full
    collection took ``slow`` seconds or more its survivors are moved to the
    permanent generation (``gc.freeze``): the next one walks only what came
    since. What a frozen login frees by reference counting is freed at once;
    only a reference cycle among frozen objects (a failure's traceback, say)
    waits, until the pending logins are back to ``share`` of their number at
    the freeze (or below ``floor``): then everything is unfrozen and the
    next full collection, short by then, takes those cycles too. So the
    memory a freeze can keep is bounded by the logins it froze.

    ``tick`` runs on the event loop (a `LoopingCall`), never inside the
    collector: freezing from a `gc.callbacks` hook would run on whichever
    thread the collector interrupted. The young generations are collected
    first, so that recent short-lived cycles are not frozen with the rest.
    """

    #: How often the event loop looks (seconds).
    EVERY = 1.0

    def __init__(self, pending=lambda: 0, *, watch: GcWatch, slow: float = FREEZE_AFTER,
                 share: float = UNFREEZE_SHARE, floor: int = UNFREEZE_BELOW, gc_module=gc):
        self.pending = pending
        self.watch = watch
        self.slow, self.share, self.floor = slow, share, floor
        self.gc = gc_module
        self.frozen_with: int | None = None  # pending logins at the last freeze
        self.freezes = self.unfreezes = 0
        self.frozen = 0  # objects frozen by the last freeze (start-up's included)
        self._seen = self.watch.count[2]
        self._loop = None

    def start(self, reactor, pending) -> None:
        """Look every `EVERY` seconds on ``reactor``; ``pending()``: logins held now."""
        from twisted.internet import task

        self.pending = pending
        self._seen = self.watch.install().count[2]
        self._loop = task.LoopingCall(self._logged_tick)
        self._loop.clock = reactor
        self._loop.start(self.EVERY, now=False)

    def stop(self) -> None:
        """Stop looking (what is frozen stays frozen)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _logged_tick(self) -> None:
        what = self.tick()
        if what is not None:
            logs.event(log, logging.INFO, f"gc.{what}", pending=self.pending(),
                       frozen_objects=self.frozen,
                       full_pause_ms=round(self.watch.last[2] * 1000, 1))

    def tick(self) -> str | None:
        """Freeze after a slow full collection, unfreeze once quiet; says which (or None)."""
        full = self.watch.count[2]
        if full != self._seen:
            self._seen = full
            if self.watch.last[2] >= self.slow:
                self.gc.collect(1)
                self._seen = self.watch.count[2]
                self.gc.freeze()
                # Counted here, once per freeze: gc.get_freeze_count() walks the whole
                # permanent generation (~0.1 s at a million objects, holding the
                # interpreter lock), far too slow for every /metrics scrape.
                self.frozen = self.gc.get_freeze_count()
                self.frozen_with = max(self.frozen_with or 0, self.pending())
                self.freezes += 1
                return "freeze"
        if self.frozen_with is not None:
            now = self.pending()
            if now < self.floor or now <= self.frozen_with * self.share:
                self.gc.unfreeze()
                self.frozen = 0
                self.frozen_with = None
                self.unfreezes += 1
                return "unfreeze"
        return None

    def gauges(self) -> dict:
        """/metrics gauges: how often survivors were frozen and unfrozen, and how many are."""
        return {
            "gc_freezes": ("Full collections whose survivors were frozen (slow ones)",
                           lambda: self.freezes),
            "gc_unfreezes": ("Times the frozen objects were handed back to the collector",
                             lambda: self.unfreezes),
            "gc_frozen_objects": ("Objects frozen by the last freeze, 0 once unfrozen",
                                  lambda: self.frozen),
        }


#: The daemon's one freezer (`pushproxy.cli` starts it once the daemon is ready).
FREEZER = Freezer(watch=WATCH)


def tune() -> None:
    """Set the daemon's collector thresholds (called once start-up objects are frozen)."""
    gc.set_threshold(*THRESHOLDS)
