"""Where the engine keeps a login's decision state: in memory, or in the shared store.

The engine asks one interface, `LoginState`, for the fatigue limits, open
challenges (the State of a verified push), remembered logins, the key of its
credential digests and the cross-node join key. Two implementations:

- `LocalState`: today's in-memory classes (`FatigueGuard`, `ChallengeTable`,
  `RememberedLogins`). A single process on SQLite, the default: no store call
  at all, every Deferred has fired when it is returned.
- `StoreState`: the same decisions through the approval store (`AsyncStore`), so every
  node and worker of a cluster (`pushproxy.cluster.cluster_mode`) sees them. A
  State issued by one node is honoured at another; 20 denials spread over three
  nodes pause pushes as they would on one.

Errors: a store that cannot be reached errbacks the calls a decision depends on
(`admit`, `find_challenge`, `open_challenge`) with ProviderUnavailable, so
``push.failmode`` decides as for a push; the bookkeeping calls (a push ended,
a denial, remembering) log, count and carry on: they never fail a login.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred

from pushproxy import logs
from pushproxy.approval.loginstore import ChallengeRow
from pushproxy.approval.store import StoreError
from pushproxy.challenges import (Challenge, ChallengeError, ChallengeTable, RememberedLogins,
                                  check_owner)
from pushproxy.fatigue import Block, FatigueGuard, FatigueLimits
from pushproxy.push import ProviderUnavailable

if TYPE_CHECKING:
    from pushproxy.approval.asyncstore import AsyncStore

T = TypeVar("T")

log = logging.getLogger("pushproxy.loginstate")

# The store setting all nodes derive their shared keys from.
SECRET_SETTING = "login_state_key"


class LoginState(Protocol):
    """The engine's decision state. ``fatigue.limits`` is replaced on reload."""

    fatigue: object
    digest_key: bytes

    def admit(self, user: str, now: float, txid: str, expires: float,
              join_key: str | None = None) -> Deferred[Block | None]:
        """Why a push must not be sent, else None with push ``txid`` counted as started
        (or, in the store, joining the pending push of the same ``join_key``)."""

    def push_ended(self, user: str, txid: str, now: float, answered: bool = False) -> None:
        """Push ``txid`` ended: no longer pending. ``answered``: by a device's answer that
        the provider recorded in the shared store, which ended the push there in the
        answer's transaction (`answer_transaction`): nothing left to write."""

    def denial(self, user: str, now: float, txid: str | None) -> Deferred[bool]:
        """Count a denial (once per ``txid`` in the store); True when it paused pushes."""

    def saw_locked(self, user: str, now: float) -> None:
        """A login found the user locked."""

    def saw_unlocked(self, user: str, now: float) -> None:
        """A login found the user not locked: after an unlock, the denials behind it go."""

    def remember(self, key: tuple, user: str, until: float) -> None:
        """Remember an approved login (key: client, account, calling station)."""

    def remembered(self, key: tuple, now: float) -> Deferred[bool]:
        """Whether the login is remembered."""

    def forget_user(self, user: str) -> None:
        """Drop the user's remembered logins."""

    def open_challenge(self, client: str, user: str, mode: str, now: float, ttl: float,
                       sent: str | None) -> Challenge:
        """A new challenge (kept by this process; `save_challenge` shares it)."""

    def save_challenge(self, challenge: Challenge) -> Deferred[None]:
        """Make the challenge findable by every node (once txid and request are set)."""

    def find_challenge(self, state: bytes, client: str, user: str | None,
                       now: float) -> Deferred[Challenge]:
        """The open challenge for a follow-up; errbacks with ChallengeError."""

    def close_challenge(self, challenge: Challenge) -> None:
        """Single use: the State can never be used again."""

    def join_key(self, key: tuple | None, digest: bytes) -> str | None:
        """The cross-node join key of a session and credential, or None."""


class LocalState:
    """The in-memory state of a single process."""

    def __init__(self, limits: FatigueLimits | None = None):
        self.fatigue = FatigueGuard(limits or FatigueLimits())
        self.challenges = ChallengeTable()
        self.remembered_logins = RememberedLogins()
        # Keyed HMAC so that equal passwords can be recognised without keeping them.
        self.digest_key = secrets.token_bytes(32)
        self._locked_users: set[str] = set()  # seen locked; cleared when an admin unlocks

    def admit(self, user, now, txid, expires, join_key=None):
        return defer.succeed(self.fatigue.admit(user, now))

    def push_ended(self, user, txid, now, answered=False):
        self.fatigue.push_finished(user)

    def denial(self, user, now, txid):
        return defer.succeed(self.fatigue.record_denial(user, now))

    def saw_locked(self, user, now):
        self._locked_users.add(user)

    def saw_unlocked(self, user, now):
        if user in self._locked_users:
            # An admin ran `pushproxy unlock`: the denials behind the lock go too.
            self._locked_users.discard(user)
            self.fatigue.clear(user)

    def remember(self, key, user, until):
        self.remembered_logins.remember(key, until)

    def remembered(self, key, now):
        return defer.succeed(self.remembered_logins.active(key, now))

    def forget_user(self, user):
        self.remembered_logins.forget_user(user)

    def open_challenge(self, client, user, mode, now, ttl, sent):
        return self.challenges.open(client, user, mode, now, ttl=ttl, sent=sent)

    def save_challenge(self, challenge):
        return defer.succeed(None)

    def find_challenge(self, state, client, user, now):
        try:
            return defer.succeed(self.challenges.find(state, client, user, now))
        except ChallengeError as exc:
            return defer.fail(exc)

    def close_challenge(self, challenge):
        self.challenges.close(challenge.state)

    def join_key(self, key, digest):
        return None  # one process: the engine's own join table is the whole truth


@dataclass
class Limits:
    """Holds the fatigue limits of a `StoreState` (replaced on reload)."""

    limits: FatigueLimits


def _state_hash(state: bytes) -> str:
    return hashlib.sha256(state).hexdigest()


class StoreState:
    """The decision state in the approval store, shared by every node of a cluster.

    ``store`` is the `AsyncStore` (pushproxy.approval.asyncstore); `start` reads
    the secret every node derives its digest and join keys from. Challenges
    started here stay in this process too (the push's waiters live here); a
    follow-up that lands on another node finds the row and waits for the push
    through the provider's ``await_decision``.
    """

    # `admit` refuses a locked user (the store's `fatigue_admit` reads the lock in its
    # transaction): the engine asks no separate lock check before a push
    locks_at_admit = True

    def __init__(self, store: AsyncStore, limits: FatigueLimits | None = None,
                 counters=None):
        self.store = store
        self.counters = counters
        self.fatigue = Limits(limits or FatigueLimits())
        self.local = ChallengeTable()
        self.digest_key = b""
        self._join_secret = b""
        self._remember_secret = b""

    @defer.inlineCallbacks
    def start(self):
        """Read (or, first node, create) the shared secret."""
        secret = yield self.store.setting_or_create(SECRET_SETTING,
                                                    lambda: secrets.token_hex(32))
        root = bytes.fromhex(secret)
        self.digest_key = hmac.new(root, b"credential digest", hashlib.sha256).digest()
        self._join_secret = hmac.new(root, b"join key", hashlib.sha256).digest()
        self._remember_secret = hmac.new(root, b"remembered login", hashlib.sha256).digest()

    def purge(self, wallclock) -> None:
        """Delete expired challenges, remembered logins and old fatigue rows (background)."""
        limits = self.fatigue.limits
        self._background(self.store.purge_login_state, wallclock(),
                         max(86400.0, limits.window, limits.denial_window) + 60)

    @staticmethod
    def _call(d: Deferred[T]) -> Deferred[T]:
        """A store call the decision depends on: a store fault is ProviderUnavailable."""
        def failed(failure):
            failure.trap(StoreError)
            raise ProviderUnavailable(f"login state: {failure.value}")
        return d.addErrback(failed)

    def _background(self, method: Callable[..., Deferred], *args) -> None:
        """Bookkeeping (``method`` of the `AsyncStore`): a store fault is logged and
        counted, never a login's failure."""
        method(*args).addErrback(
            lambda failure: self._background_failed(method.__name__, failure))

    def admit(self, user, now, txid, expires, join_key=None):
        return self._call(self.store.fatigue_admit(user, now, self.fatigue.limits, txid,
                                                   expires, join_key))

    def push_ended(self, user, txid, now, answered=False):
        if answered:
            # the answer's transaction ended the push (its fatigue row; a login that
            # joined another's push has none): no call of its own
            return
        self._background(self.store.fatigue_push_ended, txid, now)

    def denial(self, user, now, txid):
        def failed(failure):
            failure.trap(ProviderUnavailable)
            self._background_failed("fatigue_denial", failure)
            return False
        return self._call(self.store.fatigue_denial(user, now, self.fatigue.limits,
                                                    txid)).addErrback(failed)

    def _background_failed(self, method: str, failure):
        if self.counters is not None:
            self.counters.inc("login_state_errors")
        logs.event(log, logging.WARNING, "loginstate.write_failed", call=method,
                   detail=str(failure.value)[:200])

    def saw_locked(self, user, now):
        self._background(self.store.fatigue_locked, user, now)

    def saw_unlocked(self, user, now):
        """Nothing to do here: `fatigue_admit` clears an unlocked user in its transaction."""

    def _remember_hash(self, key: tuple) -> str:
        return hmac.new(self._remember_secret, json.dumps(list(key)).encode("utf-8"),
                        hashlib.sha256).hexdigest()

    def remember(self, key, user, until):
        self._background(self.store.remember_login, self._remember_hash(key), user, until)

    def remembered(self, key, now):
        def failed(failure):
            failure.trap(ProviderUnavailable)
            return False  # not remembered: the login gets its push (or failmode)
        return self._call(self.store.remembered_login(self._remember_hash(key),
                                                      now)).addErrback(failed)

    def forget_user(self, user):
        self._background(self.store.forget_logins, user)

    def open_challenge(self, client, user, mode, now, ttl, sent):
        return self.local.open(client, user, mode, now, ttl=ttl, sent=sent)

    def save_challenge(self, challenge):
        return self._call(self.store.open_challenge(challenge_row(challenge)))

    def find_challenge(self, state, client, user, now):
        # The row is the truth (another node may have used the State); the copy
        # kept here, when this node started the push, carries its waiters.
        def found(row):
            mine = self.local.get(state)
            if row is None:
                if mine is not None:
                    self.local.close(state)
                raise ChallengeError("unknown or expired State")
            challenge = mine if mine is not None else challenge_from_row(row, state)
            check_owner(challenge, client, user)
            return challenge
        self.local.expire(now)
        return self._call(self.store.challenge(_state_hash(state), now)).addCallback(found)

    def close_challenge(self, challenge):
        self.local.close(challenge.state)
        self._background(self.store.close_challenge, _state_hash(challenge.state))

    def join_key(self, key, digest):
        if key is None:
            return None
        return hmac.new(self._join_secret, json.dumps(list(key)).encode("utf-8") + digest,
                        hashlib.sha256).hexdigest()


# -- a challenge as a store row: what a follow-up on another node needs

_REQUEST_FIELDS = ("protocol", "username", "client_name", "source", "calling_station", "nas",
                   "nas_ip", "port", "peer_is_application")


def challenge_row(challenge: Challenge) -> ChallengeRow:
    """The row for ``challenge`` (its txid, rule, request and attributes set)."""
    req = challenge.request
    data = {
        "request": {name: getattr(req, name) for name in _REQUEST_FIELDS},
        "no_device": req.no_device.value,
        "groups": sorted(challenge.groups),
        "attributes": [[a.vendor, a.type, a.value.hex(), a.hiding, a.tag]
                       for a in challenge.attributes],
    }
    return ChallengeRow(_state_hash(challenge.state), challenge.client, challenge.username,
                        challenge.sent or challenge.username, challenge.mode, challenge.number,
                        challenge.txid, challenge.rule, challenge.expires, data)


def challenge_from_row(row: ChallengeRow, state: bytes) -> Challenge:
    """A challenge another node opened, as this node decides its follow-up."""
    from pushproxy.config import NoDeviceMode
    from pushproxy.engine import LoginRequest
    from pushproxy.radius.attributes import Attr

    data = row.data
    request = LoginRequest(password=None, no_device=NoDeviceMode(data["no_device"]),
                           **data["request"])
    attributes = tuple(Attr(vendor, type_, bytes.fromhex(value), hiding, tag)
                       for vendor, type_, value, hiding, tag in data["attributes"])
    return Challenge(state=state, client=row.client, username=row.username, mode=row.mode,
                     expires=row.expires, number=row.number, txid=row.txid, rule=row.rule,
                     request=request, attributes=attributes, groups=frozenset(data["groups"]),
                     sent=row.sent, remote=True)
