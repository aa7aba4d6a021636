"""Limits on passcode guessing: pause, then lock, per user and per source.

A stolen password plus a script must not be able to guess a 6-digit TOTP
code. Every passcode attempt that is not a valid code is a failure, kept in
the store (so the limits survive a restart and can be shared by every node
of a cluster); these pure rules turn the failure times into a verdict:

- ``max_failures`` failures of one user within ``window`` seconds pause that
  user's passcodes for ``pause`` seconds (an alert is raised);
- ``lock_after`` failures of one user within ``lock_window`` seconds lock the
  user like a fraud report: no login at all, push or passcode, until an admin
  runs ``pushproxy unlock USER``;
- ``source_max_failures`` failures from one source (client and calling
  station, or the client's address when there is none) within ``window``
  pause passcodes from that source for ``pause`` seconds, so one source
  cannot spread its guesses over many users.

Attempts refused during a pause count as failures too (they extend the pause
and lead to the lock): whoever keeps typing codes while told to wait is
guessing. Windows slide: a failure at ``t`` counts while ``now < t + window``.
Pure: no I/O, ``now`` is passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

#: The reason a guessing lock is stored with (``pushproxy locks`` shows it).
LOCK_REASON = "passcode guessing"


@dataclass(frozen=True)
class PasscodeLimits:
    """How many wrong passcodes are tolerated. Seconds for every duration."""

    max_failures: int = 5  # failures per user within `window` pause the user's passcodes
    window: float = 900.0
    pause: float = 900.0
    lock_after: int = 10  # failures per user within `lock_window` lock the user
    lock_window: float = 86400.0
    source_max_failures: int = 20  # failures per source within `window` pause that source

    def __post_init__(self) -> None:
        for name in ("max_failures", "lock_after", "source_max_failures"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a whole number >= 1")
        for name in ("window", "pause", "lock_window"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")

    @property
    def horizon(self) -> float:
        """How far back a failure can still change a verdict (older ones may be deleted)."""
        return max(self.lock_window, self.window + self.pause)


class Refusal(enum.Enum):
    """Why a passcode is refused before it is checked."""

    USER_PAUSED = "user_paused"
    SOURCE_PAUSED = "source_paused"


@dataclass(frozen=True)
class Consequences:
    """What one more failure at ``now`` sets off."""

    user_paused: bool  # the user's passcodes are paused from now on (raise an alert)
    source_paused: bool  # the source's passcodes are paused from now on (raise an alert)
    lock: bool  # the user must be locked


def paused_until(times: Sequence[float], threshold: int, window: float, pause: float,
                 now: float) -> float | None:
    """When a pause set off by ``threshold`` failures within ``window`` ends, or None.

    Each failure that is the ``threshold``-th within a window starts (or
    extends) a pause of ``pause`` seconds; ``times`` need not be sorted.
    """
    ordered = sorted(t for t in times if t <= now)
    until = None
    for i in range(threshold - 1, len(ordered)):
        if ordered[i] - ordered[i - threshold + 1] < window:
            until = ordered[i] + pause
    return until if until is not None and now < until else None


def refusal(limits: PasscodeLimits, user_times: Sequence[float],
            source_times: Sequence[float], now: float) -> Refusal | None:
    """Why a passcode attempt at ``now`` must be refused unchecked, or None if it may be checked."""
    if paused_until(user_times, limits.max_failures, limits.window, limits.pause, now):
        return Refusal.USER_PAUSED
    if paused_until(source_times, limits.source_max_failures, limits.window, limits.pause, now):
        return Refusal.SOURCE_PAUSED
    return None


def after_failure(limits: PasscodeLimits, user_times: Sequence[float],
                  source_times: Sequence[float], now: float) -> Consequences:
    """What a failure at ``now`` sets off, given the failures before it."""
    def newly(times: Sequence[float], threshold: int) -> bool:
        before = paused_until(times, threshold, limits.window, limits.pause, now)
        after = paused_until([*times, now], threshold, limits.window, limits.pause, now)
        return before is None and after is not None

    recent = sum(1 for t in user_times if now < t + limits.lock_window and t <= now)
    return Consequences(user_paused=newly(user_times, limits.max_failures),
                        source_paused=newly(source_times, limits.source_max_failures),
                        lock=recent + 1 >= limits.lock_after)


def parse_passcode_limits(c, value, path: str = "push.passcode_limits") -> PasscodeLimits:
    """``push.passcode_limits`` from the config (a `pushproxy.checker.Checker` collects problems)."""
    d = PasscodeLimits()
    m = c.mapping(value, path, optional=("max_failures", "window", "pause", "lock_after",
                                         "lock_window", "source_max_failures"))
    if m is None:
        return d
    limits = dict(
        max_failures=c.number(m, "max_failures", f"{path}.max_failures", d.max_failures,
                              minimum=1, maximum=1000, integer=True),
        window=c.number(m, "window", f"{path}.window", d.window, minimum=1, maximum=86400),
        pause=c.number(m, "pause", f"{path}.pause", d.pause, minimum=1, maximum=86400),
        lock_after=c.number(m, "lock_after", f"{path}.lock_after", d.lock_after, minimum=1,
                            maximum=10000, integer=True),
        lock_window=c.number(m, "lock_window", f"{path}.lock_window", d.lock_window,
                             minimum=1, maximum=30 * 86400),
        source_max_failures=c.number(m, "source_max_failures", f"{path}.source_max_failures",
                                     d.source_max_failures, minimum=1, maximum=100000,
                                     integer=True))
    if limits["lock_after"] <= limits["max_failures"]:
        c.problem(f"{path}.lock_after", f"must be greater than max_failures "
                                        f"({limits['max_failures']}): the pause comes first")
    if limits["lock_window"] < limits["window"]:
        c.problem(f"{path}.lock_window", "must not be shorter than window")
    try:
        return PasscodeLimits(**limits)
    except ValueError:
        return d
