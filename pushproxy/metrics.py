"""In-process counters and histograms: every drop, decision and backend call is counted.

A plain labelled store keeps the core free of any metrics library; the
Prometheus endpoint (`pushproxy.metrics_http`) renders these same values at
scrape time. LDAP worker threads update it too, hence the lock.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

# Seconds; fits both LDAP binds (ms) and push decisions (tens of seconds).
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0)

_Key = tuple[str, tuple[tuple[str, str], ...]]


class Histogram:
    """Counts of observations per bucket upper bound, plus their sum."""

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations <= bound) pairs, ending with +Inf, as Prometheus wants."""
        out, running = [], 0
        for bound, n in zip(list(self.buckets) + [float("inf")], self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Counters:
    """Named counters and histograms with optional labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[_Key] = Counter()
        self._histograms: dict[_Key, Histogram] = {}

    @staticmethod
    def _key(name: str, labels: dict[str, str]) -> _Key:
        # Called for every count: most have no label or one (no sort, no generator).
        if not labels:
            return name, ()
        if len(labels) == 1:
            [(k, v)] = labels.items()
            return name, ((k, v if v.__class__ is str else str(v)),)
        items = [(k, v if v.__class__ is str else str(v)) for k, v in labels.items()]
        items.sort()
        return name, tuple(items)

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add ``amount`` to the counter ``name`` with these labels."""
        key = self._key(name, labels)
        with self._lock:
            self._values[key] += amount

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record ``value`` (seconds) in the histogram ``name``."""
        key = self._key(name, labels)
        with self._lock:
            hist = self._histograms.get(key)
            if hist is None:
                hist = self._histograms[key] = Histogram()
            hist.observe(value)

    def get(self, name: str, **labels: str) -> int:
        """The value of one labelled counter; with no labels, the sum over all labels."""
        with self._lock:
            if labels:
                return self._values[self._key(name, labels)]
            return sum(v for (n, _), v in self._values.items() if n == name)

    def histogram(self, name: str, **labels: str) -> Histogram | None:
        """One labelled histogram, or None if nothing was observed."""
        with self._lock:
            return self._histograms.get(self._key(name, labels))

    def counters(self) -> list[tuple[str, dict[str, str], int]]:
        """Every counter as (name, labels, value)."""
        with self._lock:
            return [(n, dict(lbl), v) for (n, lbl), v in sorted(self._values.items())]

    def histograms(self) -> list[tuple[str, dict[str, str], Histogram]]:
        """Every histogram as (name, labels, histogram); the histograms are copies."""
        with self._lock:
            out = []
            for (n, lbl), h in sorted(self._histograms.items()):
                copy = Histogram(h.buckets)
                copy.counts, copy.sum = list(h.counts), h.sum
                out.append((n, dict(lbl), copy))
            return out

    def snapshot(self) -> dict[str, int]:
        """All counters as ``name{label="value"}`` strings, for logs and tests."""
        out = {}
        for name, labels, value in self.counters():
            text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            out[f"{name}{{{text}}}" if text else name] = value
        return out
