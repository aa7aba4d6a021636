"""Admission control: while the daemon is busy, new logins are shed at intake.

Busy and broken are different conditions and must never be confused (issue
22). A login storm makes queues long -- the store thread's calls, the LDAP
pool's binds, the event loop itself -- and a login admitted into a long
queue would wait past its bounds and be decided as if the push layer were
down (``push.failmode``: with ``safe``, an Accept without a second factor).
So when a queue is over its bound, a *new* RADIUS request is not answered at
all (the NAS retransmits, or fails over to another server), and the logins
already admitted finish. A retransmit of a shed request is a new request
again, served once there is room.

A store that is failing (a call stuck on another process's lock, database
errors) is not "busy": its queue is not a reason to shed, so those logins
reach the store, fail within the runner's bound and ``push.failmode``
decides them, as it must for a fault (see `pushproxy.approval.runner`).

`shed_reason` is the pure decision; `Admission` reads the live figures and
`LoopLag` measures how late the event loop runs its timers.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass, fields
from typing import Callable, Hashable

from pushproxy.checker import Checker


class ShedReason(enum.Enum):
    """Why a new request was shed (the ``reason`` label of ``radius_overloaded``)."""

    MAX_PENDING = "max_pending"  # logins waiting for a decision
    STORE_QUEUE = "store_queue"  # store calls queued
    STORE_AGE = "store_age"  # the oldest queued store call waited this long
    LDAP_QUEUE = "ldap_queue"  # LDAP conversations queued or running
    LOOP_LAG = "loop_lag"  # the event loop runs its timers this late


@dataclass(frozen=True)
class OverloadLimits:
    """The bounds (config ``daemon.overload``); see docs/benchmarks.md for how they
    were derived from the measured capacity of a 2-core machine."""

    max_pending: int = 100_000
    store_queue: int = 1000
    store_age: float = 0.5
    ldap_queue: int = 1000
    loop_lag: float = 0.5


@dataclass(frozen=True)
class Load:
    """The daemon's queues at one moment."""

    pending: int = 0
    store_queue: int = 0
    store_age: float = 0.0  # seconds the oldest unfinished store call has waited
    store_running: float = 0.0  # seconds the call on the store thread has run
    store_faulty: bool = False  # a call failed or stuck recently: a fault, not load
    ldap_queue: int = 0
    loop_lag: float = 0.0


def shed_reason(load: Load, limits: OverloadLimits, share: float = 1.0) -> ShedReason | None:
    """Why a new login must be shed now, or None to admit it. ``share``: the part of
    each queue bound this request may fill (newcomers get less than resends of
    requests shed long ago, see `Admission.admit`); ``max_pending`` is never shared."""
    if load.pending >= limits.max_pending:
        return ShedReason.MAX_PENDING
    if load.loop_lag >= limits.loop_lag * share:
        return ShedReason.LOOP_LAG
    # A slow head call is a lock, not load: leave it to the runner's bound
    # (and push.failmode), or a locked store would turn into silence.
    store_progressing = not load.store_faulty and load.store_running < limits.store_age
    if store_progressing and load.store_queue >= limits.store_queue * share:
        return ShedReason.STORE_QUEUE
    if store_progressing and load.store_age >= limits.store_age * share:
        return ShedReason.STORE_AGE
    if load.ldap_queue >= limits.ldap_queue * share:
        return ShedReason.LDAP_QUEUE
    return None


class LoopLag:
    """How late the event loop runs a timer that should fire every ``every`` seconds,
    as the *least* lateness of the last ``window`` ticks: only a loop that is late at
    every tick is saturated. One stall -- a GC pause, a busy neighbour on the
    machine, a blocking call -- makes one tick late however long it lasts (a moving
    average let a single 3 s stall shed requests on an idle daemon), and the
    requests that queued in the socket during it must not all be shed for it."""

    def __init__(self, clock, every: float = 0.1, window: int = 5):
        self.clock = clock
        self.every = every
        self.last = 0.0  # the lag measured at the last tick
        self._recent: deque[float] = deque(maxlen=window)
        self._due: float | None = None
        self._call = None

    def start(self) -> None:
        """Start ticking."""
        self._schedule()

    def stop(self) -> None:
        """Stop ticking."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._due = None

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + self.every
        self._call = self.clock.callLater(self.every, self._tick)

    def _tick(self) -> None:
        self.last = max(0.0, self.clock.seconds() - self._due)
        self._recent.append(self.last)
        self._schedule()

    def lag(self) -> float:
        """Seconds of lag sustained over the last ticks (the least of them)."""
        return min(self._recent) if len(self._recent) == self._recent.maxlen else 0.0


class Admission:
    """Reads the live figures; `check` says whether the daemon is busy, `admit` whether
    to shed one new request.

    Shedding alone is not fair: which request gets in depends on when its
    datagram happens to arrive, and a NAS resends an old request less often
    than a new one (backoff), so under a long storm some logins were shed again
    and again for over a minute while newer ones got in (the 20,000-login
    pending run: 141 logins never admitted within 60 s). So a request that was
    shed is remembered (its RADIUS key, bounded in number and time), and once
    it has waited ``elder_after`` seconds a resend of it may fill the queues up
    to their bounds, while a newcomer is shed at ``newcomer_share`` of them:
    the oldest are served first, and no bound is ever exceeded."""

    #: seconds after its first shed from which a resend is served before newcomers
    ELDER_AFTER = 5.0
    #: the part of each queue bound a newcomer may fill
    NEWCOMER_SHARE = 0.8
    #: at most this many shed requests remembered, each for at most REMEMBER seconds
    REMEMBER_MAX = 100_000
    REMEMBER = 300.0

    def __init__(self, limits: OverloadLimits, *, pending: Callable[[], int],
                 store=None, ldap_queue: Callable[[], int] | None = None,
                 lag: LoopLag | None = None):
        self.limits = limits
        self.pending = pending
        self.store = store  # depth(), age(), running_for(), faulty() (ThreadRunner)
        self.ldap_queue = ldap_queue
        self.lag = lag
        self._shed_at: OrderedDict[Hashable, float] = OrderedDict()  # key -> first shed

    @property
    def waiting(self) -> int:
        """Shed requests remembered (their NAS presumably still resending)."""
        return len(self._shed_at)

    def admit(self, key: Hashable, now: float) -> ShedReason | None:
        """Why to shed the new request ``key`` now (remembering it), or None to admit it."""
        first = self._shed_at.get(key)
        elder = first is not None and now - first >= self.ELDER_AFTER
        reason = shed_reason(self.load(), self.limits,
                             1.0 if elder else self.NEWCOMER_SHARE)
        if reason is None:
            if first is not None:
                del self._shed_at[key]
        elif first is None:
            self._shed_at[key] = now
            self._forget(now)
        return reason

    def _forget(self, now: float) -> None:
        # Oldest first in insertion order: drop the expired and the excess.
        while self._shed_at:
            oldest_key, oldest = next(iter(self._shed_at.items()))
            if now - oldest < self.REMEMBER and len(self._shed_at) <= self.REMEMBER_MAX:
                break
            del self._shed_at[oldest_key]

    def load(self) -> Load:
        """The figures now (cheap: no store call, no I/O)."""
        store = self.store
        has_store = store is not None and hasattr(store, "depth")
        return Load(
            pending=self.pending(),
            store_queue=store.depth() if has_store else 0,
            store_age=store.age() if has_store else 0.0,
            store_running=store.running_for() if has_store else 0.0,
            store_faulty=store.faulty() if has_store else False,
            ldap_queue=self.ldap_queue() if self.ldap_queue is not None else 0,
            loop_lag=self.lag.lag() if self.lag is not None else 0.0)

    def check(self) -> ShedReason | None:
        """Why a newcomer (a new login, an LDAP front-end bind) is shed now, or None:
        the daemon is busy while this is not None (/healthz, gauge ``overloaded``)."""
        return shed_reason(self.load(), self.limits, self.NEWCOMER_SHARE)


def parse_limits(c: Checker, value, path: str = "daemon.overload") -> OverloadLimits:
    """The ``daemon.overload`` section (every key optional)."""
    names = tuple(f.name for f in fields(OverloadLimits))
    m = c.mapping(value, path, optional=names)
    d = OverloadLimits()
    if m is None:
        return d
    return OverloadLimits(
        max_pending=c.number(m, "max_pending", f"{path}.max_pending", d.max_pending,
                             minimum=1, maximum=10_000_000, integer=True),
        store_queue=c.number(m, "store_queue", f"{path}.store_queue", d.store_queue,
                             minimum=1, maximum=10_000_000, integer=True),
        store_age=c.number(m, "store_age", f"{path}.store_age", d.store_age,
                           minimum=0.01, maximum=60),
        ldap_queue=c.number(m, "ldap_queue", f"{path}.ldap_queue", d.ldap_queue,
                            minimum=1, maximum=10_000_000, integer=True),
        loop_lag=c.number(m, "loop_lag", f"{path}.loop_lag", d.loop_lag,
                          minimum=0.01, maximum=60))
