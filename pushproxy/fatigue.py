"""MFA-fatigue defenses: limits on how many pushes one user can be sent.

Push spam works by wearing the user down until one tap approves the attacker
(the 2022 Uber breach). `FatigueGuard` refuses a push when the user already has
one waiting, when too many were sent recently, or while pushes are paused
after repeated denials. Pure and in memory: time is passed in as ``now`` and
nothing here does I/O. The fraud lock ("This wasn't me") is not here: it must
survive restarts and be lifted by an admin, so it lives in the store.

Windows slide: an event at ``t`` counts while ``now < t + window``; a pause
that ends at ``until`` is over when ``now >= until``.
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FatigueLimits:
    """How much pushing one user tolerates. Seconds for every duration."""

    max_pending: int = 1  # pushes waiting for an answer per user at once
    max_pushes: int = 5  # pushes per user ...
    window: float = 600.0  # ... in this many seconds
    max_denials: int = 3  # denials per user ...
    denial_window: float = 900.0  # ... in this many seconds pause pushes ...
    pause: float = 900.0  # ... for this long
    max_users: int = 10_000  # users tracked at once; beyond it the least recent is forgotten

    def __post_init__(self) -> None:
        for name in ("max_pending", "max_pushes", "max_denials", "max_users"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a whole number >= 1")
        for name in ("window", "denial_window", "pause"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")


class BlockReason(enum.Enum):
    """Why a push was refused (for the audit trail)."""

    PAUSED = "push_paused_after_denials"
    TOO_MANY_PENDING = "push_already_pending"
    RATE_LIMITED = "push_rate_limited"
    # in the store only (cluster mode): `fatigue_admit` checks the user's lock too
    LOCKED = "user_locked_after_fraud_report"
    LOCKED_GUESSING = "user_locked_after_passcode_guessing"


@dataclass(frozen=True)
class Block:
    """A refused push: why, and until when (None: until a pending push ends)."""

    reason: BlockReason
    until: float | None = None


def block_for(limits: FatigueLimits, now: float, *, pending: int, pushes,
              paused_until: float | None) -> Block | None:
    """The pure rule: why a push must not be sent at ``now``, or None if it may.

    ``pending``: the user's pushes waiting for an answer; ``pushes``: times of
    pushes sent (older ones than the window are ignored); ``paused_until``: the
    end of a pause after denials, or None. Used by `FatigueGuard` (in memory)
    and by the store (`pushproxy.approval.loginstore`) alike.
    """
    if paused_until is not None and now < paused_until:
        return Block(BlockReason.PAUSED, paused_until)
    if pending >= limits.max_pending:
        return Block(BlockReason.TOO_MANY_PENDING)
    recent = sorted(t for t in pushes if now < t + limits.window)[-limits.max_pushes:]
    if len(recent) >= limits.max_pushes:
        # the oldest of the newest max_pushes frees a slot
        return Block(BlockReason.RATE_LIMITED, recent[0] + limits.window)
    return None


def denials_pause(limits: FatigueLimits, now: float, denials) -> bool:
    """The pure rule: whether ``denials`` (times, this one included) pause pushes at ``now``."""
    return sum(1 for t in denials if now < t + limits.denial_window) >= limits.max_denials


@dataclass(slots=True)
class _User:
    """What is remembered about one user; the lists only keep what a limit can need.

    Small lists, not deques: a deque allocates a 64-slot block (~600 bytes)
    even for the one push a pending login has made (issue 16)."""

    pushes: list
    denials: list
    pending: int = 0
    paused_until: float | None = None

    def idle(self, limits: FatigueLimits, now: float) -> bool:
        """Whether forgetting this user changes no future answer."""
        return (self.pending == 0
                and (self.paused_until is None or now >= self.paused_until)
                and not any(now < t + limits.window for t in self.pushes)
                and not any(now < t + limits.denial_window for t in self.denials))


@dataclass
class FatigueGuard:
    """Per-user push limits. Single-threaded: call it from the reactor thread only."""

    limits: FatigueLimits = field(default_factory=FatigueLimits)

    def __post_init__(self) -> None:
        # least recently used first, so idle users are found (and evicted) at the front
        self._users: OrderedDict[str, _User] = OrderedDict()

    @property
    def tracked(self) -> int:
        """How many users are remembered (for tests and metrics)."""
        return len(self._users)

    def _get(self, username: str, now: float) -> _User:
        self._sweep(now)
        user = self._users.get(username)
        if user is None:
            # Only the newest max_pushes pushes (max_denials denials) can decide
            # a limit, so the lists never grow beyond that.
            user = _User([], [])
            self._users[username] = user
            self._evict(username)
        self._users.move_to_end(username)
        self._expire(user, now)
        return user

    def _evict(self, keep: str, scan: int = 64) -> None:
        """Over max_users: forget the least recent users that have no push waiting.

        A user with a push on the phone is never forgotten, or a flood of other
        users would lift that user's max_pending limit. When the oldest ``scan``
        users all have pushes waiting, the table grows instead: the engine's
        pending limit bounds it.
        """
        while len(self._users) > self.limits.max_users:
            victim = next((name for name, user in itertools.islice(self._users.items(), scan)
                           if user.pending == 0 and name != keep), None)
            if victim is None:
                return
            del self._users[victim]

    def _expire(self, user: _User, now: float) -> None:
        while user.pushes and now >= user.pushes[0] + self.limits.window:
            del user.pushes[0]
        while user.denials and now >= user.denials[0] + self.limits.denial_window:
            del user.denials[0]
        if user.paused_until is not None and now >= user.paused_until:
            user.paused_until = None

    def _sweep(self, now: float, budget: int = 8) -> None:
        # Prune on use: drop idle users from the least recent end, a few per
        # call, so memory follows the users active in the last window.
        for _ in range(budget):
            if not self._users:
                return
            name, user = next(iter(self._users.items()))
            if not user.idle(self.limits, now):
                return
            del self._users[name]

    def check(self, username: str, now: float) -> Block | None:
        """Why a push to ``username`` must not be sent at ``now``, or None if it may."""
        user = self._users.get(username)
        if user is None:
            self._sweep(now)
            return None
        user = self._get(username, now)
        return block_for(self.limits, now, pending=user.pending, pushes=user.pushes,
                         paused_until=user.paused_until)

    def push_started(self, username: str, now: float) -> None:
        """A push to ``username`` was sent at ``now``; call push_finished when it ends."""
        user = self._get(username, now)
        user.pending += 1
        user.pushes.append(now)
        if len(user.pushes) > self.limits.max_pushes:
            del user.pushes[0]

    def admit(self, username: str, now: float) -> Block | None:
        """check() and, if allowed, push_started() in one step (no await in between)."""
        block = self.check(username, now)
        if block is None:
            self.push_started(username, now)
        return block

    def push_finished(self, username: str) -> None:
        """A push to ``username`` ended (answered, timed out, cancelled): no longer pending."""
        user = self._users.get(username)
        if user is not None and user.pending > 0:
            user.pending -= 1

    def record_denial(self, username: str, now: float) -> bool:
        """Note a denial; True when it crossed the threshold and pushes are now paused.

        True once per pause, so the caller raises one alert. Denials during a
        pause (answers to pushes sent before it) neither extend it nor alert.
        """
        user = self._get(username, now)
        if user.paused_until is not None:
            return False
        user.denials.append(now)
        if len(user.denials) > self.limits.max_denials:
            del user.denials[0]
        if not denials_pause(self.limits, now, user.denials):
            return False
        user.paused_until = now + self.limits.pause
        user.denials.clear()  # after the pause, a new pause needs max_denials new denials
        return True

    def paused_until(self, username: str, now: float) -> float | None:
        """When the denial pause of ``username`` ends, or None if not paused at ``now``."""
        user = self._users.get(username)
        if user is None or user.paused_until is None or now >= user.paused_until:
            return None
        return user.paused_until

    def clear(self, username: str) -> None:
        """Forget the user's pushes, denials and pause (an admin unlocked the user).

        Pushes still pending stay counted: they are still on the phone.
        """
        user = self._users.get(username)
        if user is None:
            return
        user.pushes.clear()
        user.denials.clear()
        user.paused_until = None
        if user.pending == 0:
            del self._users[username]
