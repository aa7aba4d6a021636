"""The store methods of cluster mode, for both backends (mixed into SQLiteStore and
PostgresStore; their contracts are on `ClusterMethods`).

Several nodes (or worker processes) share one store. What they must agree on is
decided here, in one transaction each: one pending transaction per join key
(a login that fails over to another node joins the push already on the phone),
the first answer (with its outcome and code, which a waiter on any node reads
back), which node waits on which transaction, which nodes are alive (a
heartbeat row), and which device-request nonces were seen (a replay to another
node is refused).

On PostgreSQL every change that another node must hear of is announced with
``pg_notify`` inside the same transaction, so a notification never precedes its
commit (`pushproxy.approval.notify`). On SQLite the service publishes on its
bus after the call returns, i.e. after the commit.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pushproxy.approval.store import Device, Transaction

CHANNEL = "pushproxy"  # the LISTEN/NOTIFY channel
# Final states and the PushStatus value an answer means, when no outcome is stored.
_FULL = ("id, username, nonce, context, created, expires, state, decided_by, decided_at, "
         "owner, join_key, outcome, code")
_INSERT = ("id, username, nonce, context, created, expires, state, decided_by, decided_at, "
           "owner, join_key")


@dataclass(frozen=True)
class Opened:
    """What `open_or_join_transaction` did: ``tx`` is the transaction this login waits
    on (the given one, or the pending one it joined), ``devices`` the user's active
    devices (empty: nothing was recorded), ``joined`` whether it joined another's."""

    tx: Transaction
    devices: list[Device]
    joined: bool


class Answer(enum.Enum):
    """What `claim_and_answer` did with a device's answer."""

    REPLAYED = "replayed"  # the request's nonce was seen before: nothing was changed
    WON = "won"  # the nonce was new and this answer decided the transaction
    LOST = "lost"  # the nonce was new; the transaction was not pending (or the device revoked)


def _full(row: tuple):
    from pushproxy.approval.store import Transaction

    return Transaction(row[0], row[1], row[2], json.loads(row[3]), *row[4:])


def _insert_args(tx, owner: str, join_key: str | None) -> tuple:
    return (tx.id, tx.username, tx.nonce, json.dumps(tx.context), tx.created, tx.expires,
            tx.state, tx.decided_by, tx.decided_at, owner, join_key)


class ClusterMethods:
    """The cluster-mode store methods; ``P`` is the backend's placeholder."""

    P = "?"

    # hooks the backends fill in
    def _notify(self, db, kind: str, key: str) -> None:
        """Announce ``kind key`` to the other nodes within the open transaction."""

    def _devices_of(self, db, username: str) -> list:
        from pushproxy.approval.store import _DEVICE, _device

        p = self.P
        return [_device(r) for r in db.execute(
            f"SELECT {_DEVICE} FROM devices WHERE username = {p} AND revoked IS NULL "
            "ORDER BY created, id", (username,)).fetchall()]

    def _waiter(self, db, txid: str, node: str) -> None:
        raise NotImplementedError

    def _alias(self, db, alias: str, txid: str) -> None:
        raise NotImplementedError

    def open_or_join_transaction(self, tx: Transaction, owner: str, join_key: str | None,
                                 now: float) -> Opened:
        """Atomically: the user's active devices and, if there are any, either the pending
        transaction with ``join_key`` (still open at ``now``: joined, ``owner`` noted as
        a waiter) or ``tx`` recorded as pending, owned by ``owner`` (its waiter).
        ``join_key`` None never joins. A pending row with the key that is past its
        expiry is marked expired first (its owner died before closing it)."""
        from pushproxy.approval.store import STATES, StoreError

        if tx.state not in STATES:
            raise ValueError(f"not a transaction state: {tx.state!r}")
        p = self.P
        with self._write() as db:
            devices = self._devices_of(db, tx.username)
            if not devices:
                return Opened(tx, [], False)
            if join_key is not None:
                stale = db.execute(
                    "UPDATE transactions SET state = 'expired', decided_by = NULL, "
                    f"decided_at = {p} WHERE join_key = {p} AND state = 'pending' "
                    f"AND expires <= {p} RETURNING id", (now, join_key, now)).fetchall()
                for (txid,) in stale:
                    self._notify(db, "decided", txid)
            # Insert unless a pending one holds the key; if one does (another node's
            # insert may have committed since our read: PostgreSQL's READ COMMITTED
            # sees it in the next statement), join it. Two rounds cover a row that
            # was decided between the insert's conflict and the read (a third is a fault).
            for _ in range(3):
                if join_key is not None:
                    row = db.execute(f"SELECT {_FULL} FROM transactions WHERE join_key = {p} "
                                     "AND state = 'pending'", (join_key,)).fetchall()
                    if row and row[0][1] == tx.username:
                        self._waiter(db, row[0][0], owner)
                        if tx.id != row[0][0]:
                            self._alias(db, tx.id, row[0][0])
                        return Opened(_full(row[0]), devices, True)
                    if row:
                        join_key = None  # another user's key (cannot happen with keyed hashes)
                inserted = db.execute(
                    f"INSERT INTO transactions ({_INSERT}) VALUES ({', '.join([p] * 11)}) "
                    "ON CONFLICT (join_key) WHERE state = 'pending' AND join_key IS NOT NULL "
                    "DO NOTHING RETURNING id", _insert_args(tx, owner, join_key)).fetchall()
                if inserted:
                    self._waiter(db, tx.id, owner)
                    self._notify(db, "created", tx.username)
                    return Opened(tx, devices, False)
            raise StoreError("open_or_join_transaction: the join key kept changing hands")

    def watch_transaction(self, txid: str, node: str | None) -> Transaction | None:
        """The transaction with its owner, join key, outcome and code, or None; while it
        is pending, ``node`` (unless None) is recorded as waiting on it. ``txid`` may
        also be the txid of a login that joined it (the row's id is then another)."""
        p = self.P
        # the txid itself, or the transaction a login with this txid joined
        sql = (f"SELECT {_FULL} FROM transactions WHERE id = {p} OR id = "
               f"(SELECT txid FROM transaction_aliases WHERE alias = {p}) ORDER BY id = {p} "
               "DESC LIMIT 1")
        if node is None:  # a read only: no write lock
            row = self._one(sql, (txid, txid, txid))
            return None if row is None else _full(row)
        with self._write() as db:
            row = db.execute(sql, (txid, txid, txid)).fetchone()
            if row is not None and row[6] == "pending":
                self._waiter(db, row[0], node)
        return None if row is None else _full(row)

    def answer_transaction(self, txid: str, state: str, device_id: str, now: float,
                           outcome: str, code: str | None) -> bool:
        """`decide_transaction` for a device's answer, storing what it means (``outcome``,
        a PushStatus value) and the code of an approved code-to-login request; whether
        this call decided it. Announced as ``decided txid`` and ``closed username``.
        A revoked device's answer never counts (a node may have authenticated it from
        its device cache just before the revocation reached it). The push's fatigue
        row (`fatigue_admit`) ends in the same transaction: its pending slot is free
        when the answer commits, with no `fatigue_push_ended` call."""
        self._check_answer(state, device_id)
        with self._write() as db:
            return self._answer(db, txid, state, device_id, now, outcome, code)

    def claim_and_answer(self, device_id: str, nonce: str, expires: float, txid: str,
                         state: str, now: float, outcome: str, code: str | None) -> Answer:
        """`claim_device_nonce` and, if the nonce was new, `answer_transaction`, in one
        transaction: a request replayed to any node changes nothing (REPLAYED); else
        the nonce is kept whether or not the answer decided (WON, LOST)."""
        self._check_answer(state, device_id)
        with self._write() as db:
            if not self._claim(db, device_id, nonce, expires):
                return Answer.REPLAYED
            won = self._answer(db, txid, state, device_id, now, outcome, code)
        return Answer.WON if won else Answer.LOST

    @staticmethod
    def _check_answer(state: str, device_id: str) -> None:
        from pushproxy.approval.store import ANSWERS

        if state not in ANSWERS or not device_id:
            raise ValueError(f"not an answer: {state!r} by {device_id!r}")

    def _answer(self, db, txid: str, state: str, device_id: str, now: float, outcome: str,
                code: str | None) -> bool:
        p = self.P
        row = db.execute(
            f"UPDATE transactions SET state = {p}, decided_by = {p}, decided_at = {p}, "
            f"outcome = {p}, code = {p} WHERE id = {p} AND state = 'pending' "
            f"AND expires > {p} AND NOT EXISTS (SELECT 1 FROM devices WHERE id = {p} "
            "AND revoked IS NOT NULL) RETURNING username",
            (state, device_id, now, outcome, code, txid, now, device_id)).fetchall()
        row = row[0] if row else None
        if row is None:
            return False
        # the push is no longer pending for the fatigue limits (its row has the
        # transaction's id: the login that opened it; a joined login has none)
        db.execute(f"UPDATE fatigue_events SET ends = {p} WHERE kind = 'push' AND txid = {p} "
                   f"AND ends > {p}", (now, txid, now))
        self._notify(db, "decided", txid)
        self._notify(db, "closed", row[0])
        return True

    def release_transactions(self, txids: list[str], node: str, now: float,
                             live_since: float) -> int:
        """``node`` stops waiting on ``txids``; each one that no live node (heartbeat at or
        after ``live_since``) still waits on is expired. How many were expired."""
        p = self.P
        closed = 0
        with self._write() as db:
            for txid in txids:
                db.execute(f"DELETE FROM transaction_waiters WHERE txid = {p} AND node = {p}",
                           (txid, node))
                row = db.execute(
                    "UPDATE transactions SET state = 'expired', decided_by = NULL, "
                    f"decided_at = {p} WHERE id = {p} AND state = 'pending' AND NOT EXISTS "
                    "(SELECT 1 FROM transaction_waiters w JOIN nodes n ON n.id = w.node "
                    f"WHERE w.txid = transactions.id AND n.seen >= {p}) RETURNING username",
                    (now, txid, live_since)).fetchall()
                row = row[0] if row else None
                if row is not None:
                    closed += 1
                    self._notify(db, "decided", txid)
                    self._notify(db, "closed", row[0])
        return closed

    def retire_stale(self, node: str, now: float, live_since: float) -> int:
        """At start: ``node`` waits on nothing any more; cancel the pending transactions it
        owns that no other live node waits on (a joined login elsewhere keeps its push
        answerable). Other nodes' transactions are left alone. How many were cancelled."""
        p = self.P
        with self._write() as db:
            db.execute(f"DELETE FROM transaction_waiters WHERE node = {p}", (node,))
            rows = db.execute(
                f"UPDATE transactions SET state = 'cancelled', decided_by = NULL, "
                f"decided_at = {p} WHERE owner = {p} AND state = 'pending' AND NOT EXISTS "
                "(SELECT 1 FROM transaction_waiters w JOIN nodes n ON n.id = w.node "
                f"WHERE w.txid = transactions.id AND n.seen >= {p}) RETURNING id, username",
                (now, node, live_since)).fetchall()
            for txid, username in rows:
                self._notify(db, "decided", txid)
                self._notify(db, "closed", username)
        return len(rows)

    def heartbeat(self, node: str, now: float) -> None:
        """``node`` is alive at ``now``; also forgets device nonces past their expiry."""
        p = self.P
        with self._write() as db:
            db.execute(f"INSERT INTO nodes (id, started, seen) VALUES ({p}, {p}, {p}) "
                       "ON CONFLICT (id) DO UPDATE SET seen = excluded.seen", (node, now, now))
            db.execute(f"DELETE FROM device_nonces WHERE expires < {p}", (now,))

    def live_nodes(self, live_since: float) -> list[str]:
        """Ids of the nodes whose heartbeat is at or after ``live_since``, sorted."""
        return [r[0] for r in self._all(
            f"SELECT id FROM nodes WHERE seen >= {self.P} ORDER BY id", (live_since,))]

    def waiting_transactions(self, username: str, now: float,
                             live_since: float) -> list[Transaction]:
        """The user's pending transactions open at ``now`` that a live node waits on
        (what a device should show), oldest first."""
        return [_full(r) for r in self._all(self._waiting_sql(),
                                            (username, now, live_since))]

    def claim_device_nonce(self, device_id: str, nonce: str, expires: float) -> bool:
        """Record a device request's nonce until ``expires``; False if it was seen before
        (a replay, sent to any node)."""
        p = self.P
        return self._change(f"INSERT INTO device_nonces (device_id, nonce, expires) "
                            f"VALUES ({p}, {p}, {p}) ON CONFLICT DO NOTHING",
                            (device_id, nonce, expires)) == 1

    def claim_and_list_waiting(self, device_id: str, nonce: str, expires: float,
                               username: str, now: float,
                               live_since: float) -> list[Transaction] | None:
        """`claim_device_nonce` and, if the nonce was new, `waiting_transactions`, in one
        transaction; None (nothing read) if the nonce was seen before."""
        with self._write() as db:
            if not self._claim(db, device_id, nonce, expires):
                return None
            return [_full(r) for r in db.execute(
                self._waiting_sql(), (username, now, live_since)).fetchall()]

    def _claim(self, db, device_id: str, nonce: str, expires: float) -> bool:
        p = self.P
        return db.execute(f"INSERT INTO device_nonces (device_id, nonce, expires) "
                          f"VALUES ({p}, {p}, {p}) ON CONFLICT DO NOTHING",
                          (device_id, nonce, expires)).rowcount == 1

    def _waiting_sql(self) -> str:
        p = self.P
        return (f"SELECT {_FULL} FROM transactions WHERE username = {p} AND state = 'pending' "
                f"AND expires > {p} AND EXISTS (SELECT 1 FROM transaction_waiters w JOIN nodes n "
                f"ON n.id = w.node WHERE w.txid = transactions.id AND n.seen >= {p}) "
                "ORDER BY created, id")


class SQLiteClusterMethods(ClusterMethods):
    """The cluster methods on SQLite (3.35+ for RETURNING): no notifications in the
    store; the service publishes on its bus after the commit."""

    P = "?"

    def _alias(self, db, alias: str, txid: str) -> None:
        db.execute("INSERT OR IGNORE INTO transaction_aliases (alias, txid) VALUES (?, ?)",
                   (alias, txid))

    def _waiter(self, db, txid: str, node: str) -> None:
        db.execute("INSERT OR IGNORE INTO transaction_waiters (txid, node) VALUES (?, ?)",
                   (txid, node))


class PgClusterMethods(ClusterMethods):
    """The cluster methods on PostgreSQL: changes are announced with pg_notify in the
    transaction that makes them."""

    P = "%s"

    def _notify(self, db, kind: str, key: str) -> None:
        db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{kind} {key}"))

    def _waiter(self, db, txid: str, node: str) -> None:
        db.execute("INSERT INTO transaction_waiters (txid, node) VALUES (%s, %s) "
                   "ON CONFLICT DO NOTHING", (txid, node))

    def _alias(self, db, alias: str, txid: str) -> None:
        db.execute("INSERT INTO transaction_aliases (alias, txid) VALUES (%s, %s) "
                   "ON CONFLICT DO NOTHING", (alias, txid))

    def open_or_join_transaction(self, tx: Transaction, owner: str, join_key: str | None,
                                 now: float) -> Opened:
        # The same contract in two statements in the common case, each its own
        # transaction (autocommit, no BEGIN and COMMIT round trips): the devices with
        # the pending transaction holding the key, then the insert with its waiter
        # and announcement, or the join (waiter and alias). Every write is one
        # statement, so each is atomic on its own; READ COMMITTED gave the devices
        # read no more protection inside a transaction (nothing is locked by it).
        from pushproxy.approval.store import _DEVICE, STATES, StoreError, _device

        if tx.state not in STATES:
            raise ValueError(f"not a transaction state: {tx.state!r}")
        width = len(_DEVICE.split(","))
        with self._guard():
            db = self._conn()
            rows = db.execute(
                f"SELECT d.*, j.* FROM (SELECT {_DEVICE} FROM devices WHERE username = %s "
                "AND revoked IS NULL) d LEFT JOIN LATERAL (SELECT "
                f"{_FULL} FROM transactions WHERE join_key = %s AND state = 'pending') j "
                "ON true ORDER BY d.created, d.id", (tx.username, join_key)).fetchall()
            if not rows:
                return Opened(tx, [], False)
            devices = [_device(r[:width]) for r in rows]
            found = rows[0][width:] if rows[0][width] is not None else None
            # Two rounds cover a row that was decided between the insert's conflict
            # and the read (a third is a fault), as in `ClusterMethods`.
            for _ in range(3):
                if found is not None and join_key is not None:
                    if found[5] <= now:
                        # past its expiry: its owner died before closing it
                        db.execute("WITH s AS (UPDATE transactions SET state = 'expired', "
                                   "decided_by = NULL, decided_at = %s WHERE join_key = %s "
                                   "AND state = 'pending' AND expires <= %s RETURNING id) "
                                   "SELECT pg_notify(%s, 'decided ' || id) FROM s",
                                   (now, join_key, now, CHANNEL)).fetchall()
                        self.commits += 1
                    elif found[1] == tx.username:
                        joined = found[0]
                        if tx.id != joined:
                            db.execute("WITH w AS (INSERT INTO transaction_waiters (txid, node) "
                                       "VALUES (%s, %s) ON CONFLICT DO NOTHING) "
                                       "INSERT INTO transaction_aliases (alias, txid) "
                                       "VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                       (joined, owner, tx.id, joined))
                        else:
                            self._waiter(db, joined, owner)
                        self.commits += 1
                        return Opened(_full(found), devices, True)
                    else:
                        join_key = None  # another user's key (cannot happen with keyed hashes)
                inserted = db.execute(
                    f"WITH i AS (INSERT INTO transactions ({_INSERT}) VALUES "
                    f"({', '.join(['%s'] * 11)}) ON CONFLICT (join_key) WHERE "
                    "state = 'pending' AND join_key IS NOT NULL DO NOTHING RETURNING id), "
                    "w AS (INSERT INTO transaction_waiters (txid, node) SELECT id, %s FROM i "
                    "ON CONFLICT DO NOTHING) SELECT id, pg_notify(%s, %s) FROM i",
                    _insert_args(tx, owner, join_key)
                    + (owner, CHANNEL, f"created {tx.username}")).fetchall()
                self.commits += 1
                if inserted:
                    return Opened(tx, devices, False)
                # another node's push holds the key now (its insert committed since
                # our read): the next statement sees it
                found = db.execute(f"SELECT {_FULL} FROM transactions WHERE join_key = %s "
                                   "AND state = 'pending'", (join_key,)).fetchone()
            raise StoreError("open_or_join_transaction: the join key kept changing hands")

    # The answer in one statement (autocommit: one statement is one transaction, with
    # no BEGIN and COMMIT round trips): the nonce's claim when there is one, the
    # compare-and-set, the push's fatigue row and both announcements, each part
    # running only when the one before it counted. Data-modifying CTEs all run to
    # completion in the statement's one snapshot, and commit or fail together.
    _ANSWER_SQL = (
        "{claim}answered AS (UPDATE transactions SET state = %s, decided_by = %s, "
        "decided_at = %s, outcome = %s, code = %s WHERE id = %s AND state = 'pending' "
        "AND expires > %s AND NOT EXISTS (SELECT 1 FROM devices WHERE id = %s "
        "AND revoked IS NOT NULL){claimed} RETURNING username), "
        "ended AS (UPDATE fatigue_events SET ends = %s WHERE kind = 'push' AND txid = %s "
        "AND ends > %s AND EXISTS (SELECT 1 FROM answered)) "
        # CASE: the announcements only for an answer that decided (pg_notify is
        # volatile: evaluated per row, only where the branch is taken)
        "SELECT c.n, a.username, "
        "CASE WHEN a.username IS NOT NULL THEN pg_notify(%s, %s) END, "
        "CASE WHEN a.username IS NOT NULL THEN pg_notify(%s, 'closed ' || a.username) END "
        "FROM (SELECT {count} AS n) c LEFT JOIN answered a ON true")
    _CLAIM_SQL = ("claimed AS (INSERT INTO device_nonces (device_id, nonce, expires) "
                  "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1), ")

    def _answer_once(self, claim: tuple | None, txid: str, state: str, device_id: str,
                     now: float, outcome: str, code: str | None) -> tuple[int, str | None]:
        """(nonce claimed: 1 or 0, the deciding username or None), in one statement."""
        sql = "WITH " + self._ANSWER_SQL.format(
            claim=self._CLAIM_SQL if claim else "",
            claimed=" AND EXISTS (SELECT 1 FROM claimed)" if claim else "",
            count="(SELECT count(*) FROM claimed)" if claim else "1")
        args = (claim or ()) + (state, device_id, now, outcome, code, txid, now, device_id,
                                now, txid, now, CHANNEL, f"decided {txid}", CHANNEL)
        with self._guard():
            row = self._conn().execute(sql, args).fetchone()
            self.commits += 1
        return row[0], row[1]

    def answer_transaction(self, txid: str, state: str, device_id: str, now: float,
                           outcome: str, code: str | None) -> bool:
        self._check_answer(state, device_id)
        return self._answer_once(None, txid, state, device_id, now, outcome,
                                 code)[1] is not None

    def claim_and_answer(self, device_id: str, nonce: str, expires: float, txid: str,
                         state: str, now: float, outcome: str, code: str | None) -> Answer:
        self._check_answer(state, device_id)
        claimed, username = self._answer_once((device_id, nonce, expires), txid, state,
                                              device_id, now, outcome, code)
        if claimed != 1:
            return Answer.REPLAYED
        return Answer.WON if username is not None else Answer.LOST

    def claim_and_list_waiting(self, device_id: str, nonce: str, expires: float,
                               username: str, now: float,
                               live_since: float) -> list[Transaction] | None:
        # One statement (autocommit: no BEGIN and COMMIT round trips). The claim's
        # count comes on every row; the transactions are read only when it is 1.
        sql = ("WITH claimed AS (INSERT INTO device_nonces (device_id, nonce, expires) "
               "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1) "
               "SELECT c.n, t.* FROM (SELECT count(*) AS n FROM claimed) c "
               f"LEFT JOIN LATERAL ({self._waiting_sql()}) t ON c.n = 1 "
               "ORDER BY t.created, t.id")
        with self._guard():
            rows = self._conn().execute(sql, (device_id, nonce, expires, username, now,
                                              live_since)).fetchall()
            self.commits += 1
        if not rows or rows[0][0] != 1:
            return None
        return [_full(r[1:]) for r in rows if r[1] is not None]
