"""Many deadlines, one reactor timer: the push timeouts of every pending login.

A daemon holding 100,000 pending logins used to hold 100,000 `DelayedCall`s
(each with its closures, and the reactor re-sorting its list of calls); a
timer here is one small slotted record in a heap, and the reactor holds one
`DelayedCall`, for the earliest deadline. Cancelling is O(1) (the record is
marked; the heap drops it when it reaches the top, or compacts itself when
most of it is cancelled). Timers due at the same moment run in the order
they were set. The clock is passed in (`IReactorTime`), so tests drive it
with `twisted.internet.task.Clock`.
"""

from __future__ import annotations

import heapq
import logging
from typing import Callable

from twisted.internet.interfaces import IReactorTime

log = logging.getLogger("pushproxy.timers")


class Timer:
    """One deadline; `cancel` it if it is no longer needed."""

    __slots__ = ("when", "seq", "fn", "arg", "wheel")

    def __init__(self, when: float, seq: int, fn: Callable, arg, wheel: "TimerWheel | None"):
        self.when = when
        self.seq = seq
        self.fn = fn
        self.arg = arg
        self.wheel = wheel  # None once it ran or was cancelled

    def __lt__(self, other: "Timer") -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def active(self) -> bool:
        """Whether it will still run (as `IDelayedCall.active`)."""
        return self.wheel is not None

    def cancel(self) -> None:
        """It will not run (a no-op once it ran or was cancelled)."""
        wheel, self.wheel = self.wheel, None
        if wheel is not None:
            self.fn = self.arg = None  # let go of what it would have touched
            wheel._cancelled()


class TimerWheel:
    """Deadlines in one heap, driven by one reactor timer for the earliest of them.

    ``fn(arg)`` runs at ``when`` (seconds on ``clock.seconds()``), or at the
    next tick after it; an exception from ``fn`` is logged and the other
    timers still run.
    """

    def __init__(self, clock: IReactorTime):
        self.clock = clock
        self._heap: list[Timer] = []
        self._seq = 0
        self._live = 0
        self._call = None  # the one DelayedCall, for self._call_at
        self._call_at = None

    def __len__(self) -> int:
        """Timers that will still run."""
        return self._live

    def call_at(self, when: float, fn: Callable, arg=None) -> Timer:
        """Run ``fn(arg)`` at ``when``."""
        self._seq += 1
        timer = Timer(when, self._seq, fn, arg, self)
        heapq.heappush(self._heap, timer)
        self._live += 1
        if self._call_at is None or when < self._call_at:
            self._arm(when)
        return timer

    def call_later(self, delay: float, fn: Callable, arg=None) -> Timer:
        """Run ``fn(arg)`` in ``delay`` seconds."""
        return self.call_at(self.clock.seconds() + delay, fn, arg)

    def _cancelled(self) -> None:
        self._live -= 1
        heap = self._heap
        if self._live == 0:
            heap.clear()
            self._disarm()
        elif len(heap) > 64 and self._live < len(heap) // 2:
            # Mostly cancelled (approved logins cancel their timeouts): rebuild
            # rather than keep the dead records until their deadlines.
            self._heap = [t for t in heap if t.wheel is not None]
            heapq.heapify(self._heap)

    def _arm(self, when: float) -> None:
        self._disarm()
        self._call_at = when
        self._call = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._run)

    def _disarm(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._call_at = None

    def _run(self) -> None:
        self._call = self._call_at = None
        now = self.clock.seconds()
        heap = self._heap
        while heap and heap[0].when <= now:
            timer = heapq.heappop(heap)
            if timer.wheel is None:
                continue
            fn, arg = timer.fn, timer.arg
            timer.wheel = timer.fn = timer.arg = None
            self._live -= 1
            try:
                fn(arg)
            except Exception:
                log.exception("timers.callback_failed")
            heap = self._heap  # a callback may have cancelled enough to compact it
        while heap and heap[0].wheel is None:
            heapq.heappop(heap)
        # a callback may have armed the reactor timer for a later timer of its own
        if heap and (self._call_at is None or heap[0].when < self._call_at):
            self._arm(heap[0].when)

    def stop(self) -> None:
        """Cancel everything (at shutdown)."""
        for timer in self._heap:
            timer.wheel = timer.fn = timer.arg = None
        self._heap = []
        self._live = 0
        self._disarm()
