"""A bounded per-source limit on failed attempts at the approval API.

Enrollment tokens carry 256 random bits and device requests are ECDSA-signed,
so guessing cannot succeed; what a flood of wrong guesses can do is burn CPU
(a signature check each), fill the log and hide in it. `FailureLimiter`
counts refused attempts per source address in a sliding window; a source
with ``max_failures`` of them is answered 429 at once, before any parsing,
store lookup or signature check, until its oldest counted failure leaves the
window. Memory is bounded: at most ``max_sources`` addresses are tracked (the
least recently failing one is forgotten first).

Pure and in memory; time comes from ``clock.seconds()`` so tests drive it
with `twisted.internet.task.Clock`. Behind a reverse proxy every request has
the proxy's address, so one source's failures block everyone: see
docs/security.md for the trade-off (``approval.max_failures: 0`` turns the
limit off).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque

from pushproxy import logs
from pushproxy.metrics import Counters

log = logging.getLogger("pushproxy.approval")


class FailureLimiter:
    """Failed attempts per source in a sliding window; too many and the source waits."""

    def __init__(self, *, clock, counters: Counters, kind: str, max_failures: int = 10,
                 window: float = 300.0, max_sources: int = 10_000):
        self.clock = clock
        self.counters = counters
        self.kind = kind  # "enroll" or "device_auth": the counter label and log field
        self.max_failures = max_failures
        self.window = window
        self.max_sources = max_sources
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, source: str | None) -> float | None:
        """Seconds ``source`` must wait before trying again, or None if it may try now."""
        if not self.max_failures or source is None:
            return None
        times = self._recent(source, self.clock.seconds())
        if times is None or len(times) < self.max_failures:
            return None
        self.counters.inc("approval_rate_limited", kind=self.kind)
        return max(times[0] + self.window - self.clock.seconds(), 0.0)

    def failed(self, source: str | None) -> None:
        """Count one refused attempt from ``source``; log when it reaches the limit."""
        if not self.max_failures or source is None:
            return
        now = self.clock.seconds()
        times = self._recent(source, now)
        if times is None:
            times = self._failures[source] = deque(maxlen=self.max_failures)
            while len(self._failures) > self.max_sources:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(source)
        times.append(now)
        if len(times) == self.max_failures:
            # Once per blocking: later refusals are counted, not logged.
            logs.event(log, logging.WARNING, "approval.rate_limited", kind=self.kind,
                       source=source, failures=self.max_failures, window=self.window)

    def _recent(self, source: str, now: float) -> deque[float] | None:
        """The source's failures still inside the window (forgotten when none are)."""
        times = self._failures.get(source)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[source]
            return None
        return times
