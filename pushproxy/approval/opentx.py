"""The transactions a single process is waiting on, kept in memory (issue 16: the store
off the hot path).

Without cluster mode, one process owns every pending transaction it opened: the
store row is pending exactly while a login of this process waits on it (no other
process answers, expires or cancels it; `cancel_pending` runs only at start). So a
device's long-poll is answered from here, and an answer finds the transaction's
nonce and context here, without a store read. What decides a login -- the
compare-and-set of the answer -- still goes to the store, every time.

A transaction is only ever added after the store recorded it, and removed when its
login stops waiting (answered, withdrawn): the same moments the service's waiter
table changes.
"""

from __future__ import annotations

from pushproxy.approval.store import Transaction


class OpenTransactions:
    """Pending transactions of this process by txid and by user (see the module docstring)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Transaction] = {}
        self._by_user: dict[str, dict[str, None]] = {}  # username -> txids, insertion order

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, tx: Transaction) -> None:
        """``tx`` was recorded as pending and a login of this process waits on it."""
        self._by_id[tx.id] = tx
        self._by_user.setdefault(tx.username, {})[tx.id] = None

    def discard(self, txid: str) -> None:
        """The login stopped waiting on ``txid`` (no error if it was not here)."""
        tx = self._by_id.pop(txid, None)
        if tx is None:
            return
        txids = self._by_user.get(tx.username)
        if txids is not None:
            txids.pop(txid, None)
            if not txids:
                del self._by_user[tx.username]

    def get(self, txid: object) -> Transaction | None:
        """The open transaction ``txid`` (any JSON value from a request), or None."""
        return self._by_id.get(txid) if isinstance(txid, str) else None

    def of_user(self, username: str, now: float) -> list[Transaction]:
        """The user's open transactions not expired at ``now``, oldest first (what
        ``pending_transactions`` of the store returns for this process's logins)."""
        txids = self._by_user.get(username, {})
        return sorted((self._by_id[txid] for txid in txids if self._by_id[txid].expires > now),
                      key=lambda tx: (tx.created, tx.id))
