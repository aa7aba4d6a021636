"""The retransmit table: one explicit state machine per request key.

A NAS retransmits every few seconds while the user looks at the phone. pyrad
does no duplicate detection, so this table does: a request is NEW the first
time, IN_FLIGHT until the reply is sent (its retransmits are dropped, never a
second LDAP bind or push), and ANSWERED for ``hold`` seconds afterwards (its
retransmits get the identical cached bytes). Keyed on (source address, source
port, RADIUS id, Request Authenticator) as RFC 5080 section 2.2.2 suggests.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple


class State(enum.Enum):
    """Where a request key stands."""

    NEW = "new"
    IN_FLIGHT = "in_flight"
    ANSWERED = "answered"


class IllegalTransition(Exception):
    """A transition the table does not allow (a bug in the caller)."""


# The whole state machine: (from, event) -> to.
_TRANSITIONS = {
    (State.NEW, "receive"): State.IN_FLIGHT,
    (State.IN_FLIGHT, "answer"): State.ANSWERED,
    (State.IN_FLIGHT, "abandon"): State.NEW,
}


class RequestKey(NamedTuple):
    """Identifies one request and its retransmits.

    A named tuple, not a dataclass: the table hashes a key five or six times per
    login, and a tuple hashes and compares in C (issue 16); it is also smaller
    in every pending login that holds one."""

    host: str
    port: int
    ident: int
    authenticator: bytes


@dataclass(frozen=True)
class Lookup:
    """What to do with a received datagram: ``state`` before it, and a cached reply."""

    state: State
    reply: bytes | None = None


# The answers without a reply, made once (they are immutable).
_NEW = Lookup(State.NEW)
_IN_FLIGHT = Lookup(State.IN_FLIGHT)


class RetransmitTable:
    """Tracks in-flight and recently answered requests; time is passed in as ``now``."""

    def __init__(self, hold: float, max_answered: int = 200_000):
        self.hold = hold
        self.max_answered = max_answered
        self._in_flight: set[RequestKey] = set()
        # Answered keys in answer order; since hold is constant this is also
        # expiry order, so expiring is popping from the front.
        self._answered: OrderedDict[RequestKey, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._in_flight) + len(self._answered)

    def state(self, key: RequestKey, now: float) -> State:
        """The current state of ``key``."""
        self._expire(now)
        if key in self._in_flight:
            return State.IN_FLIGHT
        if key in self._answered:
            return State.ANSWERED
        return State.NEW

    def receive(self, key: RequestKey, now: float) -> Lookup:
        """Record a received request; a NEW one becomes IN_FLIGHT."""
        state = self.state(key, now)
        if state is State.NEW:
            self._move(state, "receive")
            self._in_flight.add(key)
            return _NEW
        if state is State.ANSWERED:
            return Lookup(State.ANSWERED, self._answered[key][1])
        return _IN_FLIGHT

    def answer(self, key: RequestKey, reply: bytes, now: float) -> None:
        """The reply for ``key`` was sent; keep it for retransmits."""
        self._move(State.IN_FLIGHT if key in self._in_flight else State.NEW, "answer")
        self._in_flight.discard(key)
        self._answered[key] = (now + self.hold, reply)
        while len(self._answered) > self.max_answered:
            self._answered.popitem(last=False)

    def abandon(self, key: RequestKey) -> None:
        """No reply will be sent (dropped on purpose); forget the key."""
        self._move(State.IN_FLIGHT if key in self._in_flight else State.NEW, "abandon")
        self._in_flight.discard(key)

    @staticmethod
    def _move(state: State, event: str) -> State:
        try:
            return _TRANSITIONS[(state, event)]
        except KeyError:
            raise IllegalTransition(f"{event} in state {state.value}") from None

    def _expire(self, now: float) -> None:
        while self._answered:
            key, (expires, _) = next(iter(self._answered.items()))
            if expires > now:
                break
            del self._answered[key]
