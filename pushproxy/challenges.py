"""RADIUS Access-Challenge state and the remembered-login table (pure, time passed in).

A verified push takes two RADIUS round trips: the first request gets an
Access-Challenge carrying a State attribute while the push goes out; the
gateway's follow-up request returns that State with the user's input. The
State is 16 random octets (unguessable), bound to the client and user that
started it, single use, and it expires with the push.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class Challenge:
    """One open challenge: who started it, what the push must show, and its result."""

    state: bytes
    client: str
    username: str  # casefolded: the account the first factor proved
    mode: str  # "number_match" | "code_to_login"
    expires: float
    number: str | None = None  # number_match: what the login screen shows
    txid: str | None = None  # the push behind it
    rule: str | None = None  # the policy rule that asked for it
    request: object = None  # the first request (LoginRequest), for the final decision
    waiters: list = field(default_factory=list)  # Deferreds of the follow-up requests
    result: object = None  # the push's PushResult once known
    settled: bool = False
    attributes: tuple = ()  # the first factor's reply attributes, for the final Accept
    groups: frozenset = frozenset()  # the user's groups, for group-mapped reply attributes
    sent: str | None = None  # casefolded: the User-Name the first request carried
    remote: bool = False  # read from the store: its push runs on another node


class ChallengeError(Exception):
    """A follow-up request whose State is unknown, expired, used or not its own."""


class ChallengeTable:
    """Open challenges by State; bounded, expiring in creation order."""

    def __init__(self, max_open: int = 100_000):
        self.max_open = max_open
        self._open: OrderedDict[bytes, Challenge] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def open(self, client: str, username: str, mode: str, now: float, ttl: float,
             sent: str | None = None) -> Challenge:
        """Start a challenge for account ``username`` (``sent``: the name typed).

        number_match gets a two-digit number to show.
        """
        self.expire(now)
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)
        number = f"{secrets.randbelow(90) + 10}" if mode == "number_match" else None
        challenge = Challenge(state=secrets.token_bytes(16), client=client,
                              username=username.casefold(), mode=mode, expires=now + ttl,
                              number=number, sent=(sent or username).casefold())
        self._open[challenge.state] = challenge
        return challenge

    def find(self, state: bytes, client: str, username: str | None, now: float) -> Challenge:
        """The open challenge for a follow-up request (``close`` it once decided)."""
        self.expire(now)
        # A hash lookup leaks nothing usable about 128 random bits.
        challenge = self._open.get(state)
        if challenge is None:
            raise ChallengeError("unknown or expired State")
        check_owner(challenge, client, username)
        return challenge

    def get(self, state: bytes) -> Challenge | None:
        """The open challenge with this State, unchecked (``find`` checks the owner)."""
        return self._open.get(state)

    def close(self, state: bytes) -> None:
        """The challenge is decided: its State can never be used again."""
        self._open.pop(state, None)

    def expire(self, now: float) -> None:
        """Forget challenges past their expiry (creation order = expiry order per ttl)."""
        while self._open:
            state, challenge = next(iter(self._open.items()))
            if challenge.expires > now:
                break
            del self._open[state]


def check_owner(challenge: Challenge, client: str, username: str | None) -> None:
    """Raise ChallengeError unless the follow-up comes from the challenge's client and user."""
    if challenge.client != client:
        raise ChallengeError("State belongs to another client")
    # The follow-up must name the challenged user: without a User-Name the
    # answer would be decided (and audited) for nobody.
    if username is None:
        raise ChallengeError("follow-up without User-Name")
    if username.casefold() not in (challenge.username, challenge.sent):
        raise ChallengeError("State belongs to another user")


class RememberedLogins:
    """Users who approved a push from a calling station recently may skip the next one."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._until: OrderedDict[tuple, float] = OrderedDict()

    def remember(self, key: tuple, until: float) -> None:
        """Remember an approved login until ``until``."""
        self._until.pop(key, None)
        self._until[key] = until
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)

    def active(self, key: tuple, now: float) -> bool:
        """Whether ``key`` approved a push and the memory has not run out."""
        until = self._until.get(key)
        if until is None:
            return False
        if until <= now:
            del self._until[key]
            return False
        return True

    def forget_user(self, username: str) -> None:
        """Drop every remembered login of a user (a denial or fraud report)."""
        for key in [k for k in self._until if k[1] == username.casefold()]:
            del self._until[key]
