"""One log line per key and minute: floods of bad datagrams are counted, not logged each."""

from __future__ import annotations


class LogLimiter:
    """Lets one log line per key through every ``every`` seconds; counts the rest.

    ``max_lines`` caps the lines of all keys together per ``every`` seconds:
    thousands of spoofed source addresses are thousands of keys, and would
    otherwise still be a line each (tests/test_adversarial_radius.py).
    """

    def __init__(self, every: float = 60.0, max_keys: int = 10_000, max_lines: int = 100):
        self.every = every
        self.max_keys = max_keys
        self.max_lines = max_lines
        self._last: dict = {}
        self._window = (float("-inf"), 0)  # (start, lines logged in it)
        self.over_budget = 0  # lines withheld by max_lines (the counters still count all)

    def note(self, key, now: float) -> int | None:
        """None: stay quiet. A number: log now, this many were suppressed since the last line."""
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.every:
            entry[1] += 1
            return None
        start, lines = self._window
        if now - start >= self.every:
            start, lines = now, 0
        if lines >= self.max_lines:
            self.over_budget += 1
            return None
        self._window = (start, lines + 1)
        if len(self._last) >= self.max_keys:
            self._last.clear()  # thousands of spoofed sources: forget, never grow unbounded
        self._last[key] = [now, 0]
        return entry[1] if entry is not None else 0
