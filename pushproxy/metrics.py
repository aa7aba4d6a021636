"""In-process counters: every drop, decision and backend error is counted.

A plain labelled counter keeps the core free of any metrics library; the
Prometheus endpoint (production operations) reads these same counters.
"""

from __future__ import annotations

from collections import Counter


class Counters:
    """Named counters with optional labels, e.g. ``inc("radius_drops", reason="malformed")``."""

    def __init__(self) -> None:
        self._values: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add ``amount`` to the counter ``name`` with these labels."""
        self._values[(name, tuple(sorted(labels.items())))] += amount

    def get(self, name: str, **labels: str) -> int:
        """The value of one labelled counter; with no labels, the sum over all labels."""
        if labels:
            return self._values[(name, tuple(sorted(labels.items())))]
        return sum(v for (n, _), v in self._values.items() if n == name)

    def snapshot(self) -> dict[str, int]:
        """All counters as ``name{label="value"}`` strings, for logs and tests."""
        out = {}
        for (name, labels), value in sorted(self._values.items()):
            text = ",".join(f'{k}="{v}"' for k, v in labels)
            out[f"{name}{{{text}}}" if text else name] = value
        return out
