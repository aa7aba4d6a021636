"""Wrong primary passwords, throttled per source.

Every login pushproxy checks costs a bind in the directory, and a directory
counts wrong passwords towards its own account lockout (Active Directory's
lockout threshold, OpenLDAP's ppolicy). Without a limit, a script could use
pushproxy to lock every account out at hundreds of binds per second.
`PasswordThrottle` counts ``bad_credentials`` per source; ``max_failures``
of them within ``window`` seconds refuse every login from that source for
``pause`` seconds, before any directory traffic.

A source is the client, its address and the calling station (the end user's
address as the gateway reports it); without a Calling-Station-Id every user
behind one gateway shares the gateway's count (docs/security.md).

Pure and in memory, ``now`` passed in: a restart forgets the counts (the
directory's own lockout still counts), and each node of a cluster counts
for itself. Memory is bounded by ``max_sources`` (the least recent is
forgotten first). Single-threaded: call it from the reactor thread only.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PasswordLimits:
    """How many wrong passwords one source may send. ``max_failures`` 0 turns the limit off."""

    max_failures: int = 20
    window: float = 60.0
    pause: float = 60.0
    max_sources: int = 10_000

    def __post_init__(self) -> None:
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ValueError("max_failures must be a whole number >= 0")
        if not isinstance(self.max_sources, int) or self.max_sources < 1:
            raise ValueError("max_sources must be a whole number >= 1")
        for name in ("window", "pause"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")


@dataclass
class _Source:
    failures: deque
    paused_until: float | None = None


@dataclass
class PasswordThrottle:
    """Wrong passwords per source in a sliding window; too many and the source waits."""

    _sources: OrderedDict = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._sources)

    def blocked_until(self, limits: PasswordLimits, source: str, now: float) -> float | None:
        """When ``source`` may log in again, or None if it may now."""
        entry = self._sources.get(source)
        if not limits.max_failures or entry is None or entry.paused_until is None:
            return None
        if now < entry.paused_until:
            return entry.paused_until
        entry.paused_until = None
        return None

    def failed(self, limits: PasswordLimits, source: str, now: float) -> bool:
        """Count a wrong password from ``source``; True when it starts a pause (log it once)."""
        if not limits.max_failures:
            return False
        entry = self._sources.get(source)
        if entry is None or entry.failures.maxlen != limits.max_failures:
            entry = self._sources[source] = _Source(deque(maxlen=limits.max_failures))
            while len(self._sources) > limits.max_sources:
                self._sources.popitem(last=False)
        self._sources.move_to_end(source)
        entry.failures.append(now)
        # the deque holds exactly the newest max_failures failures
        if len(entry.failures) == limits.max_failures \
                and now < entry.failures[0] + limits.window:
            entry.paused_until = now + limits.pause
            entry.failures.clear()  # after the pause, a new one needs max_failures new failures
            return True
        return False


def parse_password_limits(c, value, path: str = "push.password_limits") -> PasswordLimits:
    """``push.password_limits`` from the config (a `pushproxy.checker.Checker` collects problems)."""
    d = PasswordLimits()
    m = c.mapping(value, path, optional=("max_failures", "window", "pause"))
    if m is None:
        return d
    return PasswordLimits(
        max_failures=c.number(m, "max_failures", f"{path}.max_failures", d.max_failures,
                              minimum=0, maximum=100000, integer=True),
        window=c.number(m, "window", f"{path}.window", d.window, minimum=1, maximum=86400),
        pause=c.number(m, "pause", f"{path}.pause", d.pause, minimum=1, maximum=86400))
