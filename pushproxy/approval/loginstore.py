"""The login decision state in the store (cluster mode): fatigue, challenges, remembered logins.

A single process keeps this state in memory (`pushproxy.fatigue`,
`pushproxy.challenges`); the nodes and workers of a cluster share it here
(`pushproxy.loginstate.StoreState` calls these methods through the store runner).
One implementation serves both backends: `SQLiteLoginState` and
`PostgresLoginState` differ only in their placeholders and in how a check-then-
write is serialized (SQLite's write lock; a per-user advisory lock on PostgreSQL).

The fatigue rules are the pure ones of `pushproxy.fatigue` (`block_for`,
`denials_pause`), fed with rows of ``fatigue_events`` instead of deques. A
push is admitted and recorded in one transaction, so two nodes admitting
pushes for one user at once cannot both slip under ``max_pending``.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Protocol

from pushproxy.fatigue import Block, BlockReason, FatigueLimits, block_for, denials_pause
from pushproxy.passcode_limits import LOCK_REASON

# pg_advisory_xact_lock(key, user hash): serializes one user's fatigue writes ("fatg")
FATIGUE_LOCK = 0x66617467


@dataclass(frozen=True)
class ChallengeRow:
    """An open challenge as stored: keyed by the SHA-256 (hex) of its State."""

    state_hash: str
    client: str
    username: str
    sent: str
    mode: str
    number: str | None
    txid: str | None
    rule: str | None
    expires: float
    data: dict  # JSON-able: request details, groups, reply attributes


_CHALLENGE = "state_hash, client, username, sent, mode, number, txid, rule, expires, data"


class LoginStateStore(Protocol):
    """The store methods behind `pushproxy.loginstate.StoreState`. Time is passed in."""

    def fatigue_admit(self, username: str, now: float, limits: FatigueLimits, txid: str,
                      expires: float, join_key: str | None) -> Block | None:
        """Why a push must not be sent now, else record push ``txid`` (pending until
        ``expires`` or `fatigue_push_ended`) and return None; in one transaction.
        A pending push with the same ``join_key`` (the same login, failed over from
        another node) admits without counting: the provider joins that push.
        A locked user (`Store.user_lock`) is refused first (LOCKED, or LOCKED_GUESSING
        after passcode guessing), recorded as `fatigue_locked` records it: a cluster
        node asks no separate lock check before a push. A user whose lock was lifted
        since a login saw it locked is cleared first."""

    def fatigue_push_ended(self, txid: str, now: float) -> None:
        """Push ``txid`` ended (timed out, withdrawn, failed): no longer pending. An answer
        needs no call: `answer_transaction` ends its push in its own transaction."""

    def fatigue_denial(self, username: str, now: float, limits: FatigueLimits,
                       txid: str | None) -> bool:
        """Count a denial (once per ``txid``); True when it paused the user's pushes."""

    def fatigue_locked(self, username: str, now: float) -> None:
        """A login saw the user locked: once unlocked, the denials behind the lock go."""

    def fatigue_clear(self, username: str, now: float) -> None:
        """Forget the user's pushes, denials and pause; pushes still pending stay."""

    def open_challenge(self, row: ChallengeRow) -> None:
        """Record an open challenge."""

    def challenge(self, state_hash: str, now: float) -> ChallengeRow | None:
        """The open, unexpired challenge with this State hash, or None."""

    def close_challenge(self, state_hash: str) -> bool:
        """Delete the challenge (single use); True if it was still there."""

    def remember_login(self, key_hash: str, username: str, until: float) -> None:
        """Remember an approved login until ``until``."""

    def remembered_login(self, key_hash: str, now: float) -> bool:
        """Whether the login is remembered at ``now``."""

    def forget_logins(self, username: str) -> int:
        """Drop every remembered login of a user (a denial or fraud report)."""

    def purge_login_state(self, now: float, keep: float = 86400.0) -> int:
        """Delete expired challenges and remembered logins, and fatigue events older than
        ``keep`` seconds that have ended (longer than every window of the limits)."""


def _user_key(username: str) -> int:
    # a stable 31-bit hash for the advisory lock's second key
    return zlib.crc32(username.encode("utf-8")) & 0x7FFFFFFF


class _LoginStateSQL:
    """The shared implementation; subclasses set the dialect (``_q``, ``_serialize``)."""

    def _q(self, sql: str) -> str:
        return sql

    def _serialize(self, db, username: str) -> None:
        """Serialize check-then-write for ``username`` inside the open transaction."""

    def _exec(self, db, sql: str, args: tuple = ()):
        return db.execute(self._q(sql), args)

    def _clear_events(self, db, username: str, now: float) -> None:
        self._exec(db, "DELETE FROM fatigue_events WHERE username = ? AND (kind != 'push' "
                       "OR ends <= ?)", (username, now))

    def _admission_reads(self, db, username: str, now: float, limits: FatigueLimits,
                         join_key: str | None) -> tuple:
        """What `fatigue_admit` decides on, read in its transaction: (the user's lock
        reason or None, whether the "seen locked" marker is there, whether a push with
        ``join_key`` is pending, the pause's end or None, the pending pushes, the
        times of the recent pushes, newest first)."""
        lock = self._exec(db, "SELECT reason FROM user_locks WHERE username = ?",
                          (username,)).fetchone()
        marker = self._exec(db, "SELECT 1 FROM fatigue_events WHERE username = ? "
                                "AND kind = 'locked'", (username,)).fetchone()
        joinable = join_key is not None and self._exec(
            db, "SELECT 1 FROM fatigue_events WHERE username = ? AND kind = 'push' "
                "AND join_key = ? AND ends > ?", (username, join_key, now)).fetchone()
        paused = self._exec(db, "SELECT MAX(ends) FROM fatigue_events WHERE username = ? "
                                "AND kind = 'pause' AND ends > ?", (username, now)).fetchone()
        # a push whose transaction was decided is over even if its row was not
        # ended (an answer recorded by an older node, a lost fatigue_push_ended)
        pending = self._exec(db, "SELECT COUNT(*) FROM fatigue_events f WHERE username = ? "
                                 "AND kind = 'push' AND ends > ? AND NOT EXISTS (SELECT 1 "
                                 "FROM transactions t WHERE t.id = f.txid "
                                 "AND t.state != 'pending')", (username, now)).fetchone()
        # a second of slack: the pure rule decides the window's edge exactly
        pushes = self._exec(db, "SELECT at FROM fatigue_events WHERE username = ? "
                                "AND kind = 'push' AND at > ? ORDER BY at DESC LIMIT ?",
                            (username, now - limits.window - 1, limits.max_pushes)).fetchall()
        return (None if lock is None else lock[0], marker is not None, bool(joinable),
                paused[0], pending[0], [r[0] for r in pushes])

    def fatigue_admit(self, username: str, now: float, limits: FatigueLimits, txid: str,
                      expires: float, join_key: str | None) -> Block | None:
        with self._write() as db:
            self._serialize(db, username)
            lock, marker, joinable, paused, pending, pushes = self._admission_reads(
                db, username, now, limits, join_key)
            # The lock first, before a join: a user locked on any node (fraud report,
            # passcode guessing) gets no push and joins none.
            if lock is not None:
                if not marker:  # what `fatigue_locked` records, in this transaction
                    self._exec(db, "INSERT INTO fatigue_events (username, kind, at, ends, "
                                   "txid) VALUES (?, 'locked', ?, NULL, NULL)", (username, now))
                return Block(BlockReason.LOCKED_GUESSING if lock == LOCK_REASON
                             else BlockReason.LOCKED)
            if joinable:
                return None
            if marker:
                # an admin ran `pushproxy unlock`: the denials behind the lock go too,
                # and what was read before is read again without them
                self._clear_events(db, username, now)
                _, _, _, paused, pending, pushes = self._admission_reads(
                    db, username, now, limits, None)
            block = block_for(limits, now, pending=pending, pushes=pushes,
                              paused_until=paused)
            if block is None:
                self._exec(db, "INSERT INTO fatigue_events (username, kind, at, ends, txid, "
                               "join_key) VALUES (?, 'push', ?, ?, ?, ?)",
                           (username, now, expires, txid, join_key))
            return block

    def fatigue_push_ended(self, txid: str, now: float) -> None:
        self._change(self._q("UPDATE fatigue_events SET ends = ? WHERE kind = 'push' "
                             "AND txid = ? AND ends > ?"), (now, txid, now))

    def fatigue_denial(self, username: str, now: float, limits: FatigueLimits,
                       txid: str | None) -> bool:
        with self._write() as db:
            self._serialize(db, username)
            if self._exec(db, "SELECT 1 FROM fatigue_events WHERE username = ? AND "
                              "kind = 'pause' AND ends > ?", (username, now)).fetchone():
                return False  # answers to pushes sent before the pause neither extend it
            if self._exec(db, "INSERT INTO fatigue_events (username, kind, at, ends, txid) "
                              "VALUES (?, 'denial', ?, NULL, ?) ON CONFLICT DO NOTHING",
                          (username, now, txid)).rowcount != 1:
                return False  # this transaction's denial was counted by another node
            times = self._exec(db, "SELECT at FROM fatigue_events WHERE username = ? AND "
                                   "kind = 'denial' AND at > ?",
                               (username, now - limits.denial_window - 1)).fetchall()
            if not denials_pause(limits, now, [r[0] for r in times]):
                return False
            self._exec(db, "INSERT INTO fatigue_events (username, kind, at, ends, txid) "
                           "VALUES (?, 'pause', ?, ?, NULL)", (username, now, now + limits.pause))
            # after the pause, a new pause needs max_denials new denials
            self._exec(db, "DELETE FROM fatigue_events WHERE username = ? AND kind = 'denial'",
                       (username,))
            return True

    def fatigue_locked(self, username: str, now: float) -> None:
        with self._write() as db:
            self._serialize(db, username)
            if self._exec(db, "SELECT 1 FROM fatigue_events WHERE username = ? "
                              "AND kind = 'locked'", (username,)).fetchone() is None:
                self._exec(db, "INSERT INTO fatigue_events (username, kind, at, ends, txid) "
                               "VALUES (?, 'locked', ?, NULL, NULL)", (username, now))

    def fatigue_clear(self, username: str, now: float) -> None:
        with self._write() as db:
            self._serialize(db, username)
            self._clear_events(db, username, now)

    def open_challenge(self, row: ChallengeRow) -> None:
        self._change(self._q(f"INSERT INTO challenges ({_CHALLENGE}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                     (row.state_hash, row.client, row.username, row.sent, row.mode, row.number,
                      row.txid, row.rule, row.expires, json.dumps(row.data)))

    def challenge(self, state_hash: str, now: float) -> ChallengeRow | None:
        row = self._one(self._q(f"SELECT {_CHALLENGE} FROM challenges WHERE state_hash = ? "
                                "AND expires > ?"), (state_hash, now))
        return None if row is None else ChallengeRow(*row[:9], json.loads(row[9]))

    def close_challenge(self, state_hash: str) -> bool:
        return self._change(self._q("DELETE FROM challenges WHERE state_hash = ?"),
                            (state_hash,)) == 1

    def remember_login(self, key_hash: str, username: str, until: float) -> None:
        self._change(self._q("INSERT INTO remembered_logins (key_hash, username, ends) "
                             "VALUES (?, ?, ?) ON CONFLICT (key_hash) DO UPDATE SET "
                             "ends = excluded.ends, username = excluded.username"),
                     (key_hash, username, until))

    def remembered_login(self, key_hash: str, now: float) -> bool:
        return self._one(self._q("SELECT 1 FROM remembered_logins WHERE key_hash = ? "
                                 "AND ends > ?"), (key_hash, now)) is not None

    def forget_logins(self, username: str) -> int:
        return self._change(self._q("DELETE FROM remembered_logins WHERE username = ?"),
                            (username,))

    def purge_login_state(self, now: float, keep: float = 86400.0) -> int:
        # A pending push or a pause (ends in the future) and a lock marker stay.
        with self._write() as db:
            gone = self._exec(db, "DELETE FROM challenges WHERE expires <= ?", (now,)).rowcount
            gone += self._exec(db, "DELETE FROM remembered_logins WHERE ends <= ?",
                               (now,)).rowcount
            gone += self._exec(db, "DELETE FROM fatigue_events WHERE kind != 'locked' AND "
                                   "at < ? AND COALESCE(ends, at) < ?",
                               (now - keep, now)).rowcount
        return gone


class SQLiteLoginState(_LoginStateSQL):
    """The login state on SQLite: BEGIN IMMEDIATE (`_write`) serializes every writer."""


class PostgresLoginState(_LoginStateSQL):
    """The login state on PostgreSQL: a per-user advisory lock serializes check-then-write."""

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _serialize(self, db, username: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (FATIGUE_LOCK, _user_key(username)))

    def _admission_reads(self, db, username: str, now: float, limits: FatigueLimits,
                         join_key: str | None) -> tuple:
        # The same reads in one statement: one round trip instead of six. Its one
        # snapshot is taken after the advisory lock (an earlier statement), so it
        # sees every admission of this user committed before.
        row = db.execute(
            "SELECT (SELECT reason FROM user_locks WHERE username = %(u)s), "
            "EXISTS (SELECT 1 FROM fatigue_events WHERE username = %(u)s "
            "AND kind = 'locked'), "
            "%(k)s::text IS NOT NULL AND EXISTS (SELECT 1 FROM fatigue_events "
            "WHERE username = %(u)s AND kind = 'push' AND join_key = %(k)s::text "
            "AND ends > %(now)s), "
            "(SELECT MAX(ends) FROM fatigue_events WHERE username = %(u)s "
            "AND kind = 'pause' AND ends > %(now)s), "
            "(SELECT COUNT(*) FROM fatigue_events f WHERE username = %(u)s "
            "AND kind = 'push' AND ends > %(now)s AND NOT EXISTS (SELECT 1 "
            "FROM transactions t WHERE t.id = f.txid AND t.state != 'pending')), "
            "ARRAY(SELECT at FROM fatigue_events WHERE username = %(u)s "
            "AND kind = 'push' AND at > %(since)s ORDER BY at DESC LIMIT %(n)s)",
            {"u": username, "k": join_key, "now": now,
             "since": now - limits.window - 1, "n": limits.max_pushes}).fetchone()
        return row[0], row[1], row[2], row[3], row[4], list(row[5])
