"""The approval service's store: devices, enrollment links, push transactions, settings,
bypass codes and fraud locks.

`Store` is the core of the store interface (the whole of it, with the login-state and
cluster parts, is `pushproxy.approval.storeapi.StoreAPI`); `SQLiteStore` implements
it, as `PostgresStore` does. Time never comes from a clock in here: every call that
needs "now" takes it, so expiry is decided by the caller and tests are deterministic.

The daemon and the command line (``pushproxy enroll``, ``devices``, ``revoke``)
open the same file from different processes, so every guarantee that matters --
a link works once, the first valid answer wins -- is made by SQLite itself, in
one statement or one ``BEGIN IMMEDIATE`` transaction, never by in-process state.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field
from importlib import resources
from typing import Callable, Iterator, Protocol

from pushproxy.approval.baselinestore import SQLiteBaselineMethods
from pushproxy.approval.loginstore import SQLiteLoginState
from pushproxy.approval.clusterstore import SQLiteClusterMethods
from pushproxy.approval.rolloutstore import SQLiteRolloutMethods
from pushproxy.approval.passkeystore import SQLitePasskeyMethods

STATES = ("pending", "approved", "denied", "fraud", "expired", "cancelled")
ANSWERS = ("approved", "denied", "fraud")  # states a device's answer sets; they name it


class StoreError(Exception):
    """The database failed: locked past busy_timeout, unreadable, or of an unknown schema."""


@dataclass(frozen=True)
class Device:
    """An enrolled authenticator of one user."""

    id: str  # random, e.g. secrets.token_hex(9)
    username: str
    name: str
    public_key: str  # b64u uncompressed P-256 point
    push_subscription: dict | None  # {"endpoint": ..., "keys": {"p256dh": ..., "auth": ...}}
    created: float
    last_seen: float | None
    revoked: float | None
    # base32 TOTP secret (None: enrolled before passcodes existed); never in repr,
    # so a logged or printed Device does not hand out its codes
    totp_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Enrollment:
    """A one-time enrollment link, known only by the SHA-256 of its token."""

    token_hash: str
    username: str
    created: float
    expires: float
    used: float | None
    device_id: str | None  # the device it enrolled, once used


@dataclass(frozen=True, slots=True)
class Transaction:
    """One request to approve a login, and its outcome (slotted: this process keeps
    one for every pending login, `pushproxy.approval.opentx`)."""

    id: str
    username: str
    nonce: str
    context: dict
    created: float
    expires: float
    state: str  # one of STATES
    decided_by: str | None  # device id
    decided_at: float | None
    # cluster mode (read by the clusterstore methods only; None elsewhere)
    owner: str | None = None  # the node that opened it
    join_key: str | None = None  # logins with the same key share it
    outcome: str | None = None  # what the answer means (a PushStatus value)
    code: str | None = field(default=None, repr=False)  # code-to-login: what the user types


@dataclass(frozen=True)
class Lock:
    """A user whose pushes are locked after a fraud report, until an admin unlocks."""

    username: str
    locked_at: float
    reason: str
    txid: str | None  # the reported transaction, if any


@dataclass(frozen=True)
class PasscodeAttempt:
    """A passcode attempt counted (pessimistically, as a failure) before its code is checked.

    ``lock`` is the user's lock when there is one (then nothing was counted and
    ``id`` is None); the times are the failures before this one, of the user
    and of the source, since the ``since`` asked for.
    """

    id: int | None
    lock: Lock | None
    user_times: tuple[float, ...]
    source_times: tuple[float, ...]


class Store(Protocol):
    """What the approval service needs from its storage. Time is always passed in as ``now``."""

    def create_enrollment(self, username: str, token_hash: str, now: float,
                          expires: float) -> Enrollment:
        """Record a new, unused enrollment link valid until ``expires``."""

    def enrollment(self, token_hash: str) -> Enrollment | None:
        """The enrollment link with this token hash, used or not, or None."""

    def redeem_enrollment(self, token_hash: str, now: float, device: Device) -> Device | None:
        """Mark the link used by ``device`` and insert it, atomically; None if the link is
        unknown, used, expired (``now >= expires``) or for another user. One redeem wins."""

    def devices(self, username: str | None = None,
                include_revoked: bool = False) -> list[Device]:
        """Devices, of one user or of all, oldest first; revoked ones only if asked."""

    def device(self, device_id: str) -> Device | None:
        """The device with this id, revoked or not (the caller checks .revoked), or None."""

    def revoke_device(self, device_id: str, now: float) -> bool:
        """Revoke a device; False if it is unknown or already revoked."""

    def touch_device(self, device_id: str, now: float) -> None:
        """Note that the device was heard from at ``now`` (last_seen)."""

    def set_subscription(self, device_id: str, subscription: dict | None) -> bool:
        """Replace the device's Web Push subscription; False if unknown or revoked."""

    def create_transaction(self, tx: Transaction) -> None:
        """Record a new transaction (normally in state 'pending')."""

    def open_transaction(self, tx: Transaction) -> list[Device]:
        """The user's active devices and, if there is one, ``tx`` recorded: one call and one
        commit for what a push needs (the devices, then the transaction)."""

    def transaction(self, txid: str) -> Transaction | None:
        """The transaction with this id, in whatever state, or None."""

    def pending_transactions(self, username: str, now: float) -> list[Transaction]:
        """The user's transactions still open at ``now`` (expires > now), oldest first."""

    def decide_transaction(self, txid: str, state: str, device_id: str | None,
                           now: float) -> bool:
        """Compare-and-set 'pending' to a final ``state``; whether this call changed it.

        An answer (ANSWERS) needs device_id and counts only while ``now < expires``;
        'expired'/'cancelled' need neither (a login ends at or past its deadline)."""

    def expire_transactions(self, txids: list[str], now: float) -> int:
        """'expired' for each of ``txids`` still pending, in one transaction; how many."""

    def cancel_pending(self, now: float) -> int:
        """At daemon start, cancel every pending transaction (its login died with the
        previous process: waiting logins live in memory); return how many."""

    def purge(self, now: float, keep: float = 30 * 86400) -> int:
        """Delete decided transactions, used or expired links, used or expired bypass
        codes and passcode failures older than ``now - keep``."""

    def use_totp_step(self, device_id: str, step: int) -> bool:
        """Claim TOTP ``step`` for the device: compare-and-set that succeeds only if
        ``step`` is greater than every step accepted before (so each code works once,
        and no older code after a newer one) and the device is active with a secret."""

    def add_bypass_codes(self, username: str, hashes: list[str], now: float,
                         expires: float, *, replace: bool = False,
                         selectors: list[str] | None = None) -> None:
        """Store bypass codes (their hashes) valid until ``expires``, in one transaction;
        with ``replace``, the user's earlier codes are deleted in the same transaction.
        ``selectors`` (one per hash) name the codes; StoreError if one is in use."""

    def bypass_candidates(self, username: str, now: float) -> list[tuple[int, str]]:
        """(id, stored hash) of the user's unused codes still valid at ``now``, oldest first."""

    def consume_bypass_code(self, code_id: int, now: float) -> bool:
        """Compare-and-set: mark the code used, only if unused and ``now < expires``;
        whether this call spent it (of racing logins, exactly one wins)."""

    def delete_bypass_codes(self, username: str) -> int:
        """Delete all of the user's bypass codes, used or not; how many."""

    def bypass_code_for(self, username: str, selector: str, now: float) -> tuple[int, str] | None:
        """(id, stored hash) of the user's unused code with this selector valid at ``now``."""

    def legacy_bypass_candidates(self, username: str, now: float) -> list[tuple[int, str]]:
        """Like bypass_candidates, only codes issued without a selector (before version 3)."""

    def bypass_selectors(self, username: str) -> set[str]:
        """Selectors of the user's unused codes (expired or not): a new code needs another."""

    def claim_passcode_attempt(self, username: str, source: str, now: float,
                               since: float) -> PasscodeAttempt:
        """In one transaction: the user's lock, else the failures of the user and of the
        source since ``since``, and this attempt recorded as one more failure at ``now``.
        Failures older than ``since`` are deleted (no limit can need them)."""

    def forget_passcode_attempt(self, attempt_id: int) -> None:
        """The attempt's code was right: it is not a failure after all."""

    def clear_passcode_failures(self, username: str) -> int:
        """Forget the user's passcode failures (an admin unlocked the user); how many."""

    def lock_user(self, username: str, now: float, reason: str, txid: str | None) -> bool:
        """Lock the user's pushes; False if already locked (the first lock is kept)."""

    def user_lock(self, username: str) -> Lock | None:
        """The user's lock, or None if the user is not locked."""

    def unlock_user(self, username: str) -> bool:
        """Remove the user's lock; False if there was none."""

    def locked_users(self) -> list[Lock]:
        """Every lock, oldest first."""

    def setting(self, key: str) -> str | None:
        """The stored value of ``key``, or None."""

    def setting_or_create(self, key: str, make: Callable[[], str]) -> str:
        """The value of ``key``, storing ``make()`` first if absent; racing processes agree."""

    def check_writable(self) -> None:
        """Take the write lock and let it go (StoreError if another process holds it)."""

    def close(self) -> None:
        """Release the database; the store is unusable afterwards."""


_DEVICE = ("id, username, name, public_key, push_subscription, created, last_seen, revoked, "
           "totp_secret")
_ENROLLMENT = "token_hash, username, created, expires, used, device_id"
_TRANSACTION = "id, username, nonce, context, created, expires, state, decided_by, decided_at"
_LOCK = "username, locked_at, reason, txid"
_MIGRATION_FILE = re.compile(r"^(\d{4})_\w+\.sql$")


def _device(row: tuple) -> Device:
    sub = None if row[4] is None else json.loads(row[4])
    return Device(row[0], row[1], row[2], row[3], sub, *row[5:])


def _json(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value)


def _transaction(row: tuple) -> Transaction:
    return Transaction(row[0], row[1], row[2], json.loads(row[3]), *row[4:])


def _load_migrations(folder: str = "migrations") -> list[tuple[int, str]]:
    """The packaged migrations as (version, sql) in order; versions must run 1..N.

    ``folder``: "migrations" (SQLite) or "migrations_pg" (PostgreSQL)."""
    found: dict[int, str] = {}
    for entry in resources.files("pushproxy.approval").joinpath(folder).iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            version = int(match.group(1))
            if version in found:
                raise StoreError(f"two migrations numbered {version}")
            found[version] = entry.read_text(encoding="utf-8")
    if sorted(found) != list(range(1, len(found) + 1)):
        raise StoreError(f"migrations are not numbered 1..N: {sorted(found)}")
    return sorted(found.items())


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements, each ending at the end of a line.

    (executescript() would COMMIT first, taking the migration out of our transaction.)"""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    leftover = [ln for ln in pending.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if leftover:
        raise StoreError(f"migration ends in an incomplete statement: {leftover[0]!r}")


def _create_private(path: str) -> None:
    """Create the file mode 0600 unless it exists: it holds enrollment hashes and device
    keys, and SQLite would make it (and, following it, -wal and -shm) 0644."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)  # an empty file is a valid empty database


class SQLiteStore(SQLiteLoginState, SQLiteClusterMethods, SQLiteRolloutMethods,
                  SQLiteBaselineMethods, SQLitePasskeyMethods, Store):
    """The Store on one SQLite file (or ``:memory:``, for tests); method contracts are on Store.

    One connection per instance, used only from the thread that created it
    (sqlite3's default check, kept on purpose): the daemon creates and uses
    its store on one dedicated thread, the CLI in its own process. Processes
    coordinate through SQLite's locks, waiting up to ``busy_timeout`` seconds.
    """

    def __init__(self, path: str, *, busy_timeout: float = 5.0,
                 background_checkpoints: bool = False) -> None:
        memory = path in (":memory:", "")
        self._checkpointer = None
        try:
            if not memory:
                _create_private(path)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so the
            # module never opens a weaker deferred transaction behind our back
            self._db = sqlite3.connect(path, isolation_level=None)
            self.commits = 0  # transactions committed by this connection (for /metrics)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open approval store {path!r}: {exc}") from exc
        try:
            with self._guard():
                self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                self._db.execute("PRAGMA foreign_keys = ON")
                self._db.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL
                if not memory:
                    self._wal(busy_timeout)
                self._migrate()
                if background_checkpoints and not memory:
                    # the daemon: checkpoints (and their fsyncs) off the store thread,
                    # see pushproxy/approval/walcheckpoint.py
                    from pushproxy.approval import walcheckpoint

                    self._db.execute(
                        f"PRAGMA wal_autocheckpoint = {walcheckpoint.SAFETY_NET_PAGES}")
                    self._checkpointer = walcheckpoint.WALCheckpointer(path).start()
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _guard(self) -> Iterator[None]:
        # database failures become StoreError; misuse (ProgrammingError) stays a bug
        try:
            yield
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"approval store: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock before the first read, so two
        # processes doing the same check-then-write serialize (the second
        # waits under busy_timeout) instead of both passing the check
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
                self.commits += 1
            except BaseException:
                if self._db.in_transaction:
                    self._db.rollback()
                raise

    def _wal(self, timeout: float) -> None:
        # WAL, so the CLI's reads never block the daemon's writes. Converting
        # a fresh file takes a lock SQLite does not wait for under busy_timeout,
        # and two processes creating the store at once would fail: so retry.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY \
                        or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def _migrate(self) -> None:
        migrations = _load_migrations()
        known = migrations[-1][0] if migrations else 0

        def check(current: int) -> int:
            if current > known:
                raise StoreError(f"the approval store has schema version {current}, this "
                                 f"pushproxy knows up to {known}: a newer pushproxy wrote it")
            return current

        if check(self._db.execute("PRAGMA user_version").fetchone()[0]) == known:
            return
        with self._write() as db:
            # read again under the lock: another process may have migrated meanwhile
            current = check(db.execute("PRAGMA user_version").fetchone()[0])
            for version, sql in migrations:
                if version > current:
                    for statement in _statements(sql):
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {known}")  # transactional, like the DDL

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        with self._guard():
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._guard():
            return self._db.execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple = ()) -> int:
        # one statement is atomic by itself: no explicit transaction needed
        with self._guard():
            changed = self._db.execute(sql, args).rowcount
            self.commits += 1  # autocommit: each statement commits by itself
            return changed

    def create_enrollment(self, username: str, token_hash: str, now: float,
                          expires: float) -> Enrollment:
        enrollment = Enrollment(token_hash, username, now, expires, None, None)
        self._change(f"INSERT INTO enrollments ({_ENROLLMENT}) VALUES (?, ?, ?, ?, ?, ?)",
                     astuple(enrollment))
        return enrollment

    def enrollment(self, token_hash: str) -> Enrollment | None:
        row = self._one(f"SELECT {_ENROLLMENT} FROM enrollments WHERE token_hash = ?",
                        (token_hash,))
        return None if row is None else Enrollment(*row)

    def redeem_enrollment(self, token_hash: str, now: float, device: Device) -> Device | None:
        with self._write() as db:
            row = db.execute("SELECT username, expires, used FROM enrollments "
                             "WHERE token_hash = ?", (token_hash,)).fetchone()
            if row is None or row[0] != device.username or not now < row[1] \
                    or row[2] is not None:
                return None
            # the device first: the enrollment's foreign key points at it
            db.execute(f"INSERT INTO devices ({_DEVICE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (device.id, device.username, device.name, device.public_key,
                        _json(device.push_subscription), device.created, device.last_seen,
                        device.revoked, device.totp_secret))
            db.execute("UPDATE enrollments SET used = ?, device_id = ? WHERE token_hash = ?",
                       (now, device.id, token_hash))
        return device

    def devices(self, username: str | None = None,
                include_revoked: bool = False) -> list[Device]:
        # Two statements: "(? IS NULL OR username = ?)" would keep SQLite from
        # using devices_by_user, and this runs for every push.
        where = "WHERE username = ? AND" if username is not None else "WHERE"
        args = (username, include_revoked) if username is not None else (include_revoked,)
        rows = self._all(f"SELECT {_DEVICE} FROM devices {where} (? OR revoked IS NULL) "
                         "ORDER BY created, id", args)
        return [_device(row) for row in rows]

    def device(self, device_id: str) -> Device | None:
        row = self._one(f"SELECT {_DEVICE} FROM devices WHERE id = ?", (device_id,))
        return None if row is None else _device(row)

    def revoke_device(self, device_id: str, now: float) -> bool:
        return self._change("UPDATE devices SET revoked = ? WHERE id = ? AND revoked IS NULL",
                            (now, device_id)) == 1

    def touch_device(self, device_id: str, now: float) -> None:
        self._change("UPDATE devices SET last_seen = ? WHERE id = ?", (now, device_id))

    def set_subscription(self, device_id: str, subscription: dict | None) -> bool:
        # a revoked device can no longer authenticate, so nothing may change it
        return self._change("UPDATE devices SET push_subscription = ? WHERE id = ? "
                            "AND revoked IS NULL", (_json(subscription), device_id)) == 1

    def create_transaction(self, tx: Transaction) -> None:
        if tx.state not in STATES:
            raise ValueError(f"not a transaction state: {tx.state!r}")
        self._change(f"INSERT INTO transactions ({_TRANSACTION}) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (tx.id, tx.username, tx.nonce, json.dumps(tx.context), tx.created,
                      tx.expires, tx.state, tx.decided_by, tx.decided_at))

    def open_transaction(self, tx: Transaction) -> list[Device]:
        if tx.state not in STATES:
            raise ValueError(f"not a transaction state: {tx.state!r}")
        # The devices are read under the write lock the insert takes anyway: one
        # round trip to the store thread per push, not two (issue 22).
        with self._write() as db:
            devices = [_device(row) for row in db.execute(
                f"SELECT {_DEVICE} FROM devices WHERE username = ? AND revoked IS NULL "
                "ORDER BY created, id", (tx.username,)).fetchall()]
            if devices:
                db.execute(f"INSERT INTO transactions ({_TRANSACTION}) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (tx.id, tx.username, tx.nonce, json.dumps(tx.context), tx.created,
                            tx.expires, tx.state, tx.decided_by, tx.decided_at))
        return devices

    def transaction(self, txid: str) -> Transaction | None:
        row = self._one(f"SELECT {_TRANSACTION} FROM transactions WHERE id = ?", (txid,))
        return None if row is None else _transaction(row)

    def pending_transactions(self, username: str, now: float) -> list[Transaction]:
        rows = self._all(f"SELECT {_TRANSACTION} FROM transactions WHERE username = ? "
                         "AND state = 'pending' AND expires > ? ORDER BY created, id",
                         (username, now))
        return [_transaction(row) for row in rows]

    def decide_transaction(self, txid: str, state: str, device_id: str | None,
                           now: float) -> bool:
        if state not in STATES or state == "pending":
            raise ValueError(f"not a final transaction state: {state!r}")
        if state in ANSWERS and not device_id:
            raise ValueError(f"state {state!r} needs the deciding device")
        # one conditional UPDATE is the compare-and-set: of racing answers,
        # from any process, exactly one finds the row still pending; an answer
        # also needs its device still active (revoked by `pushproxy devices
        # revoke` after the request was authenticated: refused here, in the store)
        deadline = (" AND expires > ? AND NOT EXISTS (SELECT 1 FROM devices WHERE id = ? "
                    "AND revoked IS NOT NULL)") if state in ANSWERS else ""
        args = (state, device_id, now, txid) + ((now, device_id) if deadline else ())
        return self._change("UPDATE transactions SET state = ?, decided_by = ?, decided_at = ? "
                            "WHERE id = ? AND state = 'pending'" + deadline, args) == 1

    def expire_transactions(self, txids: list[str], now: float) -> int:
        # Logins that timed out together (a storm's pushes end together): one
        # commit for all, not one per login.
        with self._write() as db:
            return sum(db.execute("UPDATE transactions SET state = 'expired', decided_by = NULL, "
                                  "decided_at = ? WHERE id = ? AND state = 'pending'",
                                  (now, txid)).rowcount for txid in txids)

    def cancel_pending(self, now: float) -> int:
        return self._change("UPDATE transactions SET state = 'cancelled', decided_by = NULL, "
                            "decided_at = ? WHERE state = 'pending'", (now,))

    def purge(self, now: float, keep: float = 30 * 86400) -> int:
        # Pending transactions long past their deadline go too: nothing can
        # answer them. Devices stay: revocation keeps their record for audit.
        cutoff = now - keep
        with self._write() as db:
            gone = db.execute("DELETE FROM transactions WHERE (state != 'pending' AND "
                              "COALESCE(decided_at, expires) < ?) OR (state = 'pending' "
                              "AND expires < ?)", (cutoff, cutoff)).rowcount
            gone += db.execute("DELETE FROM enrollments WHERE used < ? OR "
                               "(used IS NULL AND expires < ?)", (cutoff, cutoff)).rowcount
            gone += db.execute("DELETE FROM bypass_codes WHERE COALESCE(used, expires) < ?",
                               (cutoff,)).rowcount
            gone += db.execute("DELETE FROM passcode_failures WHERE at < ?", (cutoff,)).rowcount
            gone += db.execute("DELETE FROM device_nonces WHERE expires < ?", (now,)).rowcount
        return gone + self.purge_login_state(now)

    def use_totp_step(self, device_id: str, step: int) -> bool:
        # one conditional UPDATE: of two logins racing with the same code, from
        # any process, exactly one moves totp_last_step
        return self._change("UPDATE devices SET totp_last_step = ? WHERE id = ? "
                            "AND revoked IS NULL AND totp_secret IS NOT NULL "
                            "AND (totp_last_step IS NULL OR totp_last_step < ?)",
                            (step, device_id, step)) == 1

    def add_bypass_codes(self, username: str, hashes: list[str], now: float,
                         expires: float, *, replace: bool = False,
                         selectors: list[str] | None = None) -> None:
        selectors = selectors if selectors is not None else [None] * len(hashes)
        if len(selectors) != len(hashes):
            raise ValueError("one selector per hash")
        with self._write() as db:
            if replace:
                db.execute("DELETE FROM bypass_codes WHERE username = ?", (username,))
            db.executemany("INSERT INTO bypass_codes (username, code_hash, created, expires, "
                           "selector) VALUES (?, ?, ?, ?, ?)",
                           [(username, h, now, expires, sel) for h, sel in zip(hashes, selectors)])

    def bypass_candidates(self, username: str, now: float) -> list[tuple[int, str]]:
        rows = self._all("SELECT id, code_hash FROM bypass_codes WHERE username = ? "
                         "AND used IS NULL AND expires > ? ORDER BY id", (username, now))
        return [(row[0], row[1]) for row in rows]

    def consume_bypass_code(self, code_id: int, now: float) -> bool:
        return self._change("UPDATE bypass_codes SET used = ? WHERE id = ? AND used IS NULL "
                            "AND expires > ?", (now, code_id, now)) == 1

    def delete_bypass_codes(self, username: str) -> int:
        return self._change("DELETE FROM bypass_codes WHERE username = ?", (username,))

    def bypass_code_for(self, username: str, selector: str, now: float) -> tuple[int, str] | None:
        row = self._one("SELECT id, code_hash FROM bypass_codes WHERE username = ? "
                        "AND selector = ? AND used IS NULL AND expires > ?",
                        (username, selector, now))
        return None if row is None else (row[0], row[1])

    def legacy_bypass_candidates(self, username: str, now: float) -> list[tuple[int, str]]:
        rows = self._all("SELECT id, code_hash FROM bypass_codes WHERE username = ? "
                         "AND selector IS NULL AND used IS NULL AND expires > ? ORDER BY id",
                         (username, now))
        return [(row[0], row[1]) for row in rows]

    def bypass_selectors(self, username: str) -> set[str]:
        rows = self._all("SELECT selector FROM bypass_codes WHERE username = ? "
                         "AND used IS NULL AND selector IS NOT NULL", (username,))
        return {row[0] for row in rows}

    def claim_passcode_attempt(self, username: str, source: str, now: float,
                               since: float) -> PasscodeAttempt:
        # BEGIN IMMEDIATE: of concurrent guesses, from any process, each sees
        # every earlier one, so they cannot all pass the limit together.
        with self._write() as db:
            db.execute("DELETE FROM passcode_failures WHERE at < ?", (since,))
            row = db.execute(f"SELECT {_LOCK} FROM user_locks WHERE username = ?",
                             (username,)).fetchone()
            if row is not None:
                return PasscodeAttempt(None, Lock(*row), (), ())
            user = db.execute("SELECT at FROM passcode_failures WHERE username = ? "
                              "AND at >= ? ORDER BY at", (username, since)).fetchall()
            source_rows = db.execute("SELECT at FROM passcode_failures WHERE source = ? "
                                     "AND at >= ? ORDER BY at", (source, since)).fetchall()
            attempt = db.execute("INSERT INTO passcode_failures (username, source, at) "
                                 "VALUES (?, ?, ?)", (username, source, now)).lastrowid
        return PasscodeAttempt(attempt, None, tuple(r[0] for r in user),
                               tuple(r[0] for r in source_rows))

    def forget_passcode_attempt(self, attempt_id: int) -> None:
        self._change("DELETE FROM passcode_failures WHERE id = ?", (attempt_id,))

    def clear_passcode_failures(self, username: str) -> int:
        return self._change("DELETE FROM passcode_failures WHERE username = ?", (username,))

    def lock_user(self, username: str, now: float, reason: str, txid: str | None) -> bool:
        # the first report is kept: it is the one that names the attack
        return self._change(f"INSERT OR IGNORE INTO user_locks ({_LOCK}) VALUES (?, ?, ?, ?)",
                            (username, now, reason, txid)) == 1

    def user_lock(self, username: str) -> Lock | None:
        row = self._one(f"SELECT {_LOCK} FROM user_locks WHERE username = ?", (username,))
        return None if row is None else Lock(*row)

    def unlock_user(self, username: str) -> bool:
        return self._change("DELETE FROM user_locks WHERE username = ?", (username,)) == 1

    def locked_users(self) -> list[Lock]:
        return [Lock(*row) for row in
                self._all(f"SELECT {_LOCK} FROM user_locks ORDER BY locked_at, username")]

    def setting(self, key: str) -> str | None:
        row = self._one("SELECT value FROM settings WHERE key = ?", (key,))
        return None if row is None else row[0]

    def check_writable(self) -> None:
        # A read passes while another process holds the write lock, but every
        # login's push needs a write: health must see what logins would see.
        with self._write():
            pass

    def setting_or_create(self, key: str, make: Callable[[], str]) -> str:
        value = self.setting(key)
        if value is not None:
            return value
        candidate = make()  # outside the lock: making a key may be slow
        with self._write() as db:
            # insert-if-absent then read back: whoever got in first, all agree
            db.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)",
                       (key, candidate))
            return db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0]

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes whenever another connection (another
        process: ``pushproxy devices revoke``, a worker) committed to the file since
        this connection last looked; never for this connection's own commits. The
        store thread reads it after a call, at most every 0.1 s
        (`ThreadRunner.data_version`), so a
        device read from here may be served again while nothing else wrote."""
        with self._guard():
            return self._db.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._db.close()
