"""One log line per key and minute: floods of bad datagrams are counted, not logged each."""

from __future__ import annotations


class LogLimiter:
    """Lets one log line per key through every ``every`` seconds; counts the rest."""

    def __init__(self, every: float = 60.0, max_keys: int = 10_000):
        self.every = every
        self.max_keys = max_keys
        self._last: dict = {}

    def note(self, key, now: float) -> int | None:
        """None: stay quiet. A number: log now, this many were suppressed since the last line."""
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.every:
            entry[1] += 1
            return None
        if len(self._last) >= self.max_keys:
            self._last.clear()  # thousands of spoofed sources: forget, never grow unbounded
        self._last[key] = [now, 0]
        return entry[1] if entry is not None else 0
