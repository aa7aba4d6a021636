"""Waiting for a transaction's decision, on this node or any other (cluster mode).

`Waiters` keeps, per txid, the Deferreds of everyone on this process who waits for
that transaction: logins that opened or joined it, and `await_decision` callers
(a challenge follow-up at a node that did not start the push). They fire when

- an answer is recorded here (the service settles them at once);
- a ``decided`` event arrives on the bus (another node or worker recorded an
  answer, or expired or cancelled it): the row is read again, and its state,
  outcome and code become the result;
- the bus (re)connects (events may have been lost): every watched row is read again;
- the transaction's deadline passes: read again, TIMEOUT if still pending (its
  owner may have died without closing it).

`ClusterLife` is the rest of a node's part in the cluster: its heartbeat, and at
start retiring only its own stale pending transactions.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Callable

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from pushproxy import logs
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.store import StoreError, Transaction
from pushproxy.decision import PushResult, PushStatus
from pushproxy.timers import TimerWheel

log = logging.getLogger("pushproxy.approval")

HEARTBEAT_EVERY = 5.0  # seconds between a node's heartbeats
LIVE_FOR = 3 * HEARTBEAT_EVERY  # a node unheard of for longer is dead
DEADLINE_GRACE = 0.5  # seconds past a deadline before the row is read a last time
_ANSWERED = {"approved": PushStatus.APPROVED, "denied": PushStatus.DENIED,
             "fraud": PushStatus.FRAUD}


def result_of(tx: Transaction, now: float) -> PushResult | None:
    """The result a waiter gets from the stored row, or None while it is still open.

    The stored ``outcome`` (number_mismatch is stored as state 'denied') and ``code``
    win over what the state alone says. Pending past its deadline is a TIMEOUT;
    expired is TIMEOUT; cancelled (a node retired it) is UNAVAILABLE."""
    if tx.state == "pending":
        return PushResult(PushStatus.TIMEOUT, tx.id) if now >= tx.expires else None
    if tx.state in _ANSWERED:
        status = _ANSWERED[tx.state]
        if tx.outcome is not None:
            try:
                status = PushStatus(tx.outcome)
            except ValueError:
                pass  # a newer node's outcome: the state still says yes or no
        return PushResult(status, tx.id, tx.decided_by,
                          code=tx.code if status is PushStatus.APPROVED else None)
    if tx.state == "expired":
        return PushResult(PushStatus.TIMEOUT, tx.id)
    return PushResult(PushStatus.UNAVAILABLE, tx.id, detail="cancelled")


class Waiters:
    """Deferreds waiting on txids; see the module docstring.

    ``store`` is the `AsyncStore`; ``node`` this process's node id (None: not in
    cluster mode, the row is read but no waiter is recorded in the store);
    ``withdraw(txid)`` is called when the last local waiter of a txid gives up."""

    def __init__(self, store: AsyncStore, reactor, wallclock: Callable[[], float],
                 node: str | None, withdraw: Callable[[str], None]):
        self.store = store
        self.reactor = reactor
        self.wallclock = wallclock
        self.node = node
        self.withdraw = withdraw
        self._by_txid: dict[str, list[Deferred]] = defaultdict(list)
        self._timers: dict[str, object] = {}
        self._wheel = TimerWheel(reactor)  # one reactor timer for every deadline
        self._key: dict[Deferred, str] = {}  # each waiter -> the txid it waits on now

    def __len__(self) -> int:
        return sum(len(waiting) for waiting in self._by_txid.values())

    def __contains__(self, txid: str) -> bool:
        return txid in self._by_txid

    def add(self, txid: str, expires: float | None) -> Deferred:
        """A new waiter on ``txid``; cancelling it withdraws it. With ``expires``, the
        row is read once more just past that deadline (TIMEOUT if still open)."""
        waiter: Deferred = Deferred(self._drop)
        self._by_txid[txid].append(waiter)
        self._key[waiter] = txid
        if expires is not None:
            self.recheck_at(txid, expires)
        return waiter

    def recheck_at(self, txid: str, expires: float) -> None:
        """Read the row of a watched ``txid`` again just past its deadline ``expires``."""
        if txid in self._by_txid and txid not in self._timers:
            delay = max(0.0, expires - self.wallclock()) + DEADLINE_GRACE
            self._timers[txid] = self._wheel.call_later(delay, self.recheck, txid)

    def move(self, old: str, new: str) -> str:
        """The waiters of ``old`` now wait on ``new`` (a joined login's txid -> the
        transaction it joined); returns ``new``. Cancelling them drops them from ``new``."""
        if old == new:
            return new
        for waiter in self._by_txid.get(old, []):
            self._by_txid[new].append(waiter)
            self._key[waiter] = new
        self._forget(old)
        return new

    def _drop(self, waiter: Deferred) -> None:
        txid = self._key.pop(waiter, None)
        waiting = self._by_txid.get(txid)
        if waiting and waiter in waiting:
            waiting.remove(waiter)
            if not waiting:
                self._forget(txid)
                self.withdraw(txid)

    def _forget(self, txid: str) -> None:
        self._by_txid.pop(txid, None)
        timer = self._timers.pop(txid, None)
        if timer is not None and timer.active():
            timer.cancel()

    def settle(self, txid: str, result: PushResult) -> None:
        """Fire every waiter of ``txid`` with ``result``."""
        waiting = self._by_txid.get(txid, [])
        self._forget(txid)
        for waiter in waiting:
            self._key.pop(waiter, None)
            if not waiter.called:
                waiter.callback(result)

    def recheck(self, txid: str) -> Deferred:
        """Read the row of a watched ``txid`` again and settle its waiters if it is final."""
        self._timers.pop(txid, None)
        if txid not in self._by_txid:
            return defer.succeed(None)
        d = self.store.watch_transaction(txid, None)

        def read(tx):
            if txid not in self._by_txid:
                return
            result = (PushResult(PushStatus.UNAVAILABLE, txid, detail="unknown transaction")
                      if tx is None else result_of(tx, self.wallclock()))
            if result is not None:
                self.settle(txid, result)
            else:
                self.recheck_at(txid, tx.expires)

        def failed(failure):
            failure.trap(StoreError)
            logs.event(log, logging.WARNING, "approval.recheck_failed", txid=txid,
                       error=failure.getErrorMessage())
            if txid in self._by_txid and txid not in self._timers:
                # the store is failing: try again soon (the login's own timeout bounds it)
                self._timers[txid] = self._wheel.call_later(1.0, self.recheck, txid)

        return d.addCallback(read).addErrback(failed)

    def recheck_all(self) -> None:
        """Read every watched row again (after a bus (re)connect)."""
        for txid in list(self._by_txid):
            self.recheck(txid)

    def close(self) -> None:
        """Cancel the timers (at shutdown)."""
        self._wheel.stop()
        self._timers.clear()


class ClusterLife:
    """A node's heartbeat, and retiring its own stale work at start."""

    def __init__(self, store: AsyncStore, reactor, wallclock: Callable[[], float],
                 node: str, every: float = HEARTBEAT_EVERY):
        self.store = store
        self.reactor = reactor
        self.wallclock = wallclock
        self.node = node
        self.every = every
        self._loop: task.LoopingCall | None = None

    @defer.inlineCallbacks
    def start(self):
        """Retire this node's stale transactions, then beat every ``every`` seconds."""
        now = self.wallclock()
        retired = yield self.store.retire_stale(self.node, now, now - LIVE_FOR)
        if retired:
            logs.event(log, logging.INFO, "approval.cancelled_stale", count=retired,
                       node=self.node)
        yield self.store.heartbeat(self.node, now)
        self._loop = task.LoopingCall(self.beat)
        self._loop.clock = self.reactor
        self._loop.start(self.every, now=False)
        return retired

    def beat(self) -> Deferred:
        """One heartbeat (a failing store is logged; the next beat tries again)."""
        d = self.store.heartbeat(self.node, self.wallclock())
        return d.addErrback(lambda f: logs.event(log, logging.WARNING, "approval.heartbeat_failed",
                                                 node=self.node, error=f.getErrorMessage()))

    def stop(self) -> None:
        """Stop beating (other nodes see this node dead after LIVE_FOR seconds)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
