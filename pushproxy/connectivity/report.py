"""The step-by-step report of ``pushproxy test-connection``: one line per step."""

from __future__ import annotations

import time
from typing import TextIO


class Report:
    """Prints one line per step and remembers the failures for the summary and exit code."""

    def __init__(self, out: TextIO):
        self.out = out
        self.failures: list[str] = []
        self.warnings = 0

    def section(self, title: str) -> None:
        """Start a block of steps (one LDAP server, the store, ...)."""
        print(f"\n{title}", file=self.out, flush=True)

    def step(self, status: str, name: str, message: str, ms: float | None = None,
             where: str = "") -> None:
        """One step's verdict: status OK, WARN, FAIL, SKIP or INFO; FAILs count."""
        timing = "" if ms is None else f" ({ms:.0f} ms)"
        print(f"  {status:<4}  {name:<11} {message}{timing}", file=self.out, flush=True)
        if status == "FAIL":
            self.failures.append(f"{where}: {name}: {message}" if where else f"{name}: {message}")
        elif status == "WARN":
            self.warnings += 1

    def detail(self, text: str) -> None:
        """A supporting line under the previous step (what the server presented, ...)."""
        print(f"{'':19}{text}", file=self.out, flush=True)

    def skip(self, names: list[str], because: str) -> None:
        """The steps that cannot run because ``because`` failed."""
        if names:
            self.step("SKIP", ", ".join(names), f"(skipped: {because} failed)")


def since(started: float) -> float:
    """Milliseconds since ``started`` (a perf_counter reading)."""
    return (time.perf_counter() - started) * 1000
