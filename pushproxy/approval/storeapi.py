"""The approval store's typed interface: every method a store offers, on both backends.

`StoreAPI` is the whole contract that `SQLiteStore` and `PostgresStore` implement
(tests/approval/test_storeapi.py checks that both have every method, with the
same signature, and nothing public that the other lacks). It is composed of

- `Store` (pushproxy.approval.store): devices, enrollment links, transactions,
  passcodes, fraud locks, settings;
- `LoginStateStore` (pushproxy.approval.loginstore): fatigue limits, open
  challenges and remembered logins of cluster mode;
- `ClusterStore` (here): joining pushes across nodes, waiters, heartbeats and
  device-request nonces of cluster mode;
- `RolloutStore` (pushproxy.approval.rolloutstore): who has a device or an open
  link, and the enrollment mails sent;
- `BaselineStore` (pushproxy.approval.baselinestore): per-user login baselines.
- `PasskeyStore` (pushproxy.approval.passkeystore): passkeys bound to devices and
  single-use WebAuthn challenges (presence, docs/presence.md).

Store methods block (SQLite, psycopg). The command line calls them directly; the
daemon never does: it holds an `AsyncStore` (pushproxy.approval.asyncstore), a
method of the same name and arguments per operation, returning a Deferred, that
hands the bound method to a `Runner` (the store thread, or inline in tests).
Time never comes from a clock in a store: every method that needs "now" takes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ParamSpec, Protocol, TypeVar

from pushproxy.approval.baselinestore import BaselineStore
from pushproxy.approval.loginstore import LoginStateStore
from pushproxy.approval.passkeystore import PasskeyStore
from pushproxy.approval.rolloutstore import RolloutStore
from pushproxy.approval.store import Store

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from pushproxy.approval.clusterstore import Answer, Opened
    from pushproxy.approval.store import Transaction

P = ParamSpec("P")
R = TypeVar("R")


class ClusterStore(Protocol):
    """The store methods of cluster mode (several nodes or workers over one store).

    Implemented once for both backends by `pushproxy.approval.clusterstore`; each is
    one transaction, and on PostgreSQL every change another node must hear of is
    announced with ``pg_notify`` inside it (SQLite: the service publishes after)."""

    def open_or_join_transaction(self, tx: Transaction, owner: str, join_key: str | None,
                                 now: float) -> Opened:
        """Atomically: the user's active devices and, if there are any, either the pending
        transaction with ``join_key`` (joined, ``owner`` noted as a waiter) or ``tx``
        recorded as pending, owned by ``owner``. ``join_key`` None never joins."""

    def watch_transaction(self, txid: str, node: str | None) -> Transaction | None:
        """The transaction (with owner, join key, outcome, code) with this id, or the one a
        login with this txid joined, or None; while pending, ``node`` (unless None) is
        recorded as waiting on it."""

    def answer_transaction(self, txid: str, state: str, device_id: str, now: float,
                           outcome: str, code: str | None) -> bool:
        """The compare-and-set of a device's answer, storing its ``outcome`` (a PushStatus
        value) and code-to-login ``code``; whether this call decided it."""

    def release_transactions(self, txids: list[str], node: str, now: float,
                             live_since: float) -> int:
        """``node`` stops waiting on ``txids``; each that no live node (heartbeat at or
        after ``live_since``) waits on is expired. How many were expired."""

    def retire_stale(self, node: str, now: float, live_since: float) -> int:
        """At start: ``node`` waits on nothing; cancel its own pending transactions that no
        other live node waits on. How many were cancelled."""

    def heartbeat(self, node: str, now: float) -> None:
        """``node`` is alive at ``now``; device nonces past their expiry go."""

    def live_nodes(self, live_since: float) -> list[str]:
        """Ids of the nodes heard from at or after ``live_since``, sorted."""

    def waiting_transactions(self, username: str, now: float,
                             live_since: float) -> list[Transaction]:
        """The user's pending transactions open at ``now`` that a live node waits on."""

    def claim_device_nonce(self, device_id: str, nonce: str, expires: float) -> bool:
        """Record a device request's nonce until ``expires``; False if seen before."""

    def claim_and_list_waiting(self, device_id: str, nonce: str, expires: float,
                               username: str, now: float,
                               live_since: float) -> list[Transaction] | None:
        """`claim_device_nonce`, then, if the nonce was new, `waiting_transactions`, in
        one transaction; None (nothing read) if it was seen before."""

    def claim_and_answer(self, device_id: str, nonce: str, expires: float, txid: str,
                         state: str, now: float, outcome: str, code: str | None) -> Answer:
        """`claim_device_nonce`, then, if the nonce was new, `answer_transaction`, in one
        transaction: REPLAYED (nothing changed), WON or LOST."""


class StoreAPI(Store, LoginStateStore, ClusterStore, RolloutStore, BaselineStore, PasskeyStore,
               Protocol):
    """Everything a store backend implements; see the module docstring."""

    commits: int  # transactions committed by this store object (per-method in /metrics)


class Runner(Protocol):
    """Where store methods run: `ThreadRunner` (the daemon's store thread) or
    `InlineRunner` (tests, with a Clock). Both in pushproxy.approval.runner."""

    @property
    def store(self) -> StoreAPI:
        """The open store (StoreError if the runner has not opened it yet)."""

    def submit(self, method: Callable[P, R], /, *args: P.args,
               **kwargs: P.kwargs) -> Deferred[R]:
        """``method(*args, **kwargs)``, a bound method of `store`, where the store runs;
        counted in /metrics under ``method.__name__``."""

    def start(self) -> Deferred[None]:
        """Open the store (errors surface here, at start-up)."""

    def stop(self) -> None:
        """Close the store once the queued calls are done."""


def store_methods() -> list[str]:
    """The names of every `StoreAPI` method, sorted (what the parity tests walk)."""
    names: set[str] = set()
    for cls in StoreAPI.__mro__:
        if cls in (Protocol, object) or not getattr(cls, "_is_protocol", False):
            continue
        names.update(name for name, value in vars(cls).items()
                     if callable(value) and not name.startswith("_"))
    return sorted(names)
