"""A /metrics scraper in a process of its own, as Prometheus would scrape.

The benchmark's generator is itself a busy Python process: a scrape timed
from inside it also measures how late its own event loop and interpreter lock
let the request go out. Issue 22 asks whether the *daemon* answers every
scrape within 1 s, so this watcher scrapes from a separate process every
``interval`` seconds for the whole scenario and reports what it saw.
"""

from __future__ import annotations

import multiprocessing
import time
import urllib.error
import urllib.request


def _watch(url: str, interval: float, stop, results) -> None:
    took: list[float] = []
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
            took.append(time.monotonic() - started)
        except (OSError, urllib.error.URLError):
            failures += 1
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    results.put((took, failures))


class ScrapeWatch:
    """Start with `start`, read the figures from `stop` (a dict)."""

    def __init__(self, metrics_port: int, interval: float = 0.5):
        self.url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.interval = interval
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._results = ctx.Queue()
        self._proc = ctx.Process(target=_watch, name="scrape-watch", daemon=True,
                                 args=(self.url, interval, self._stop, self._results))

    def start(self) -> "ScrapeWatch":
        """Begin scraping."""
        self._proc.start()
        return self

    def stop(self) -> dict:
        """Stop scraping; the number of scrapes, failures, the slowest and the p99 (seconds)."""
        self._stop.set()
        try:
            took, failures = self._results.get(timeout=30)
        finally:
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        ordered = sorted(took)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None
        return {"scrapes": len(took), "failed": failures,
                "slowest_s": round(ordered[-1], 3) if ordered else None,
                "p99_s": round(p99, 3) if p99 is not None else None}
