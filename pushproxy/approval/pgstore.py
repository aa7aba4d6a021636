"""The approval store on PostgreSQL (psycopg 3): the cluster backend.

Same contract as ``SQLiteStore`` (read the method docstrings on ``Store``), the same
dataclasses, the same row mapping, migrations in ``migrations_pg/`` numbered like the
SQLite ones. Every guarantee that several processes or nodes rely on is made by
PostgreSQL in one statement or one transaction:

- a compare-and-set is one conditional UPDATE (``... WHERE state = 'pending'``),
  and rowcount says who won;
- a check-then-write (redeeming a link) locks its row first (``SELECT ... FOR UPDATE``);
- insert-if-absent is ``INSERT ... ON CONFLICT DO NOTHING`` and then a read;
- what SQLite serializes with its one write lock (counting passcode guesses, the
  migrations) takes a transaction-scoped advisory lock.

Nothing may hang a login: the connection carries ``statement_timeout`` and
``lock_timeout``, a bounded ``connect_timeout`` and TCP keepalives with
``tcp_user_timeout`` (a silent network), a watchdog cuts off a call that runs far
past those bounds (a server that stopped answering: see pgwatch), and every
database failure is a ``StoreError``. A lost connection is reopened on the next call, so the store object
outlives a PostgreSQL restart or failover.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import astuple
from typing import Callable, Iterator

import psycopg

from pushproxy.approval.baselinestore import PostgresBaselineMethods
from pushproxy.approval.loginstore import PostgresLoginState
from pushproxy.approval.clusterstore import CHANNEL, PgClusterMethods
from pushproxy.approval.pgwatch import Watchdog, hung_up
from pushproxy.approval.rolloutstore import PostgresRolloutMethods
from pushproxy.approval.passkeystore import PostgresPasskeyMethods
from pushproxy.approval.store import (
    _DEVICE,
    _ENROLLMENT,
    _LOCK,
    _TRANSACTION,
    ANSWERS,
    STATES,
    Device,
    Enrollment,
    Lock,
    PasscodeAttempt,
    Store,
    StoreError,
    Transaction,
    _device,
    _json,
    _load_migrations,
    _transaction,
)

# pg_advisory_xact_lock keys ("push" and "pass" in ASCII): the migrations, and the
# passcode-failure count, each serialized across every process on the database.
MIGRATION_LOCK = 0x70757368
PASSCODE_LOCK = 0x70617373
# A migration may rewrite a table: more time than a login's statement gets.
MIGRATION_TIMEOUT_MS = 120_000


def pg_migrations() -> list[tuple[int, str]]:
    """The packaged PostgreSQL migrations as (version, sql), 1..N."""
    return _load_migrations("migrations_pg")


def _brief(exc: psycopg.Error) -> str:
    # libpq's message on one line (it may span several), for one log line; it never
    # holds the conninfo, so never the password
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return (text or type(exc).__name__)[:500]


class PostgresStore(PostgresLoginState, PgClusterMethods, PostgresRolloutMethods,
                    PostgresBaselineMethods, PostgresPasskeyMethods, Store):
    """The Store on one PostgreSQL database; method contracts are on Store.

    One connection per instance, in autocommit mode (a single statement is its
    own transaction; several run in an explicit one). Used from one thread at a
    time, like SQLiteStore: the daemon's store thread, or a CLI process.
    ``timeout`` bounds every statement and every wait for a row lock; connecting
    is bounded by ``max(2, timeout)`` seconds (libpq's smallest connect_timeout).
    """

    def __init__(self, url: str, *, password: str | None = None,
                 timeout: float = 5.0) -> None:
        self._url = url
        self._password = password
        self._timeout = timeout
        self._db: psycopg.Connection | None = None
        self.commits = 0  # transactions committed by this store (for /metrics)
        self.reconnects = 0  # idle connections found closed by the server and replaced
        # a call (or a transaction of several statements, each bounded by the
        # server) that runs this long means the server stopped answering
        self._watchdog = Watchdog(max(3 * timeout, timeout + 2))
        try:
            with self._guard():
                self._migrate()
        except BaseException:
            self.close()
            raise

    # -- the connection

    def _connect(self) -> psycopg.Connection:
        ms = max(1, int(self._timeout * 1000))
        extra = {"password": self._password} if self._password is not None else {}
        db = psycopg.connect(
            self._url, autocommit=True, application_name="pushproxy",
            connect_timeout=max(2, math.ceil(self._timeout)),
            # a silent network: unacknowledged data and idle connections are
            # given up on after a few seconds, not after TCP's ~15 minutes
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
            tcp_user_timeout=max(ms * 2, 2000), **extra)
        self._watchdog.arm(db.fileno())  # connect_timeout bounded the rest
        try:
            # every statement and row-lock wait is bounded on the server (set
            # here, not with the "options" parameter, so a URL's own options stay)
            db.execute("SELECT set_config('statement_timeout', %s, false), "
                       "set_config('lock_timeout', %s, false), "
                       "set_config('idle_in_transaction_session_timeout', %s, false)",
                       (str(ms), str(ms), str(max(ms * 10, 10_000))))
        except BaseException:
            db.close()
            raise
        return db

    def _conn(self, limit: float | None = None) -> psycopg.Connection:
        # a broken connection (server restarted, failover, network) is replaced
        # on the next call: the caller that saw it break already got StoreError.
        # One the server closed while it sat idle is replaced before use: else
        # the first login after a failover would fail on it (and get failmode).
        if self._db is not None and not self._db.closed and hung_up(self._db):
            self.reconnects += 1
            self._db.close()
        if self._db is None or self._db.closed or self._db.broken:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._db = self._connect()
        # watched until the end of the call (_guard disarms)
        self._watchdog.arm(self._db.fileno(), limit)
        return self._db

    @contextmanager
    def _guard(self) -> Iterator[None]:
        # every database failure, from refused connection to statement timeout,
        # is a StoreError: the service turns it into push.failmode
        try:
            yield
        except psycopg.Error as exc:
            raise StoreError(f"approval store: {_brief(exc)}") from exc
        finally:
            self._watchdog.disarm()

    @contextmanager
    def _write(self, limit: float | None = None) -> Iterator[psycopg.Connection]:
        with self._guard():
            db = self._conn(limit)
            with db.transaction():
                yield db
            self.commits += 1

    @contextmanager
    def write_transaction(self) -> Iterator[psycopg.Connection]:
        """One transaction on the connection, for bulk work (``pushproxy store migrate``):
        committed if the block ends normally, rolled back otherwise."""
        with self._write() as db:
            yield db

    def _version(self, db: psycopg.Connection) -> int:
        if db.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
            return 0
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    def _migrate(self) -> None:
        migrations = pg_migrations()
        known = migrations[-1][0] if migrations else 0

        def check(current: int) -> int:
            if current > known:
                raise StoreError(f"the approval store has schema version {current}, this "
                                 f"pushproxy knows up to {known}: a newer pushproxy wrote it")
            return current

        if check(self._version(self._conn())) == known:
            return
        with self._write(limit=MIGRATION_TIMEOUT_MS / 1000 + 10) as db:
            db.execute(f"SET LOCAL statement_timeout = {MIGRATION_TIMEOUT_MS}")
            db.execute(f"SET LOCAL lock_timeout = {MIGRATION_TIMEOUT_MS}")
            # one migrator at a time; read again under the lock: another process
            # (another node) may have migrated meanwhile
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = check(self._version(db))
            for version, sql in migrations:
                if version > current:
                    db.execute(sql)  # no parameters: several statements in one go
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (%s)", (known,))

    def schema_version(self) -> int:
        """The database's schema version (for ``pushproxy test-connection``)."""
        with self._guard():
            return self._version(self._conn())

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        with self._guard():
            return self._conn().execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._guard():
            return self._conn().execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple = ()) -> int:
        # autocommit: one statement is one transaction
        with self._guard():
            changed = self._conn().execute(sql, args).rowcount
            self.commits += 1
            return changed

    # -- devices and enrollment links

    def create_enrollment(self, username: str, token_hash: str, now: float,
                          expires: float) -> Enrollment:
        enrollment = Enrollment(token_hash, username, now, expires, None, None)
        self._change(f"INSERT INTO enrollments ({_ENROLLMENT}) VALUES (%s, %s, %s, %s, %s, %s)",
                     astuple(enrollment))
        return enrollment

    def enrollment(self, token_hash: str) -> Enrollment | None:
        row = self._one(f"SELECT {_ENROLLMENT} FROM enrollments WHERE token_hash = %s",
                        (token_hash,))
        return None if row is None else Enrollment(*row)

    def redeem_enrollment(self, token_hash: str, now: float, device: Device) -> Device | None:
        with self._write() as db:
            # FOR UPDATE: a second redeem waits here, then reads the link as used
            row = db.execute("SELECT username, expires, used FROM enrollments "
                             "WHERE token_hash = %s FOR UPDATE", (token_hash,)).fetchone()
            if row is None or row[0] != device.username or not now < row[1] \
                    or row[2] is not None:
                return None
            db.execute(f"INSERT INTO devices ({_DEVICE}) "
                       "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                       (device.id, device.username, device.name, device.public_key,
                        _json(device.push_subscription), device.created, device.last_seen,
                        device.revoked, device.totp_secret))
            db.execute("UPDATE enrollments SET used = %s, device_id = %s WHERE token_hash = %s",
                       (now, device.id, token_hash))
        return device

    def devices(self, username: str | None = None,
                include_revoked: bool = False) -> list[Device]:
        where = "WHERE username = %s AND" if username is not None else "WHERE"
        args = (username, include_revoked) if username is not None else (include_revoked,)
        rows = self._all(f"SELECT {_DEVICE} FROM devices {where} (%s OR revoked IS NULL) "
                         "ORDER BY created, id", args)
        return [_device(row) for row in rows]

    def data_version(self) -> int | None:
        """None: PostgreSQL has no counter like SQLite's ``PRAGMA data_version``; a
        node caches devices only through the bus (`pushproxy.approval.devicecache`)."""
        return None

    def device(self, device_id: str) -> Device | None:
        row = self._one(f"SELECT {_DEVICE} FROM devices WHERE id = %s", (device_id,))
        return None if row is None else _device(row)

    def revoke_device(self, device_id: str, now: float) -> bool:
        # one statement: the revocation and its announcement (nodes drop the device
        # from their caches, pushproxy.approval.devicecache) commit together
        return self._change("WITH r AS (UPDATE devices SET revoked = %s WHERE id = %s "
                            "AND revoked IS NULL RETURNING id) "
                            "SELECT pg_notify(%s, 'device ' || id) FROM r",
                            (now, device_id, CHANNEL)) == 1

    def touch_device(self, device_id: str, now: float) -> None:
        self._change("UPDATE devices SET last_seen = %s WHERE id = %s", (now, device_id))

    def set_subscription(self, device_id: str, subscription: dict | None) -> bool:
        return self._change("UPDATE devices SET push_subscription = %s WHERE id = %s "
                            "AND revoked IS NULL", (_json(subscription), device_id)) == 1

    # -- transactions

    @staticmethod
    def _tx_row(tx: Transaction) -> tuple:
        if tx.state not in STATES:
            raise ValueError(f"not a transaction state: {tx.state!r}")
        return (tx.id, tx.username, tx.nonce, json.dumps(tx.context), tx.created,
                tx.expires, tx.state, tx.decided_by, tx.decided_at)

    def create_transaction(self, tx: Transaction) -> None:
        self._change(f"INSERT INTO transactions ({_TRANSACTION}) "
                     "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", self._tx_row(tx))

    def open_transaction(self, tx: Transaction) -> list[Device]:
        """The user's active devices and, if there is one, ``tx`` recorded, in one commit."""
        row = self._tx_row(tx)
        with self._write() as db:
            devices = [_device(r) for r in db.execute(
                f"SELECT {_DEVICE} FROM devices WHERE username = %s AND revoked IS NULL "
                "ORDER BY created, id", (tx.username,)).fetchall()]
            if devices:
                db.execute(f"INSERT INTO transactions ({_TRANSACTION}) "
                           "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
        return devices

    def transaction(self, txid: str) -> Transaction | None:
        row = self._one(f"SELECT {_TRANSACTION} FROM transactions WHERE id = %s", (txid,))
        return None if row is None else _transaction(row)

    def pending_transactions(self, username: str, now: float) -> list[Transaction]:
        rows = self._all(f"SELECT {_TRANSACTION} FROM transactions WHERE username = %s "
                         "AND state = 'pending' AND expires > %s ORDER BY created, id",
                         (username, now))
        return [_transaction(row) for row in rows]

    def decide_transaction(self, txid: str, state: str, device_id: str | None,
                           now: float) -> bool:
        if state not in STATES or state == "pending":
            raise ValueError(f"not a final transaction state: {state!r}")
        if state in ANSWERS and not device_id:
            raise ValueError(f"state {state!r} needs the deciding device")
        # the compare-and-set: of racing answers, from any node, one finds it pending
        deadline = " AND expires > %s" if state in ANSWERS else ""
        args = (state, device_id, now, txid) + ((now,) if deadline else ())
        return self._change("UPDATE transactions SET state = %s, decided_by = %s, "
                            "decided_at = %s WHERE id = %s AND state = 'pending'" + deadline,
                            args) == 1

    def expire_transactions(self, txids: list[str], now: float) -> int:
        """'expired' for each of ``txids`` still pending, in one statement; how many."""
        return self._change("UPDATE transactions SET state = 'expired', decided_by = NULL, "
                            "decided_at = %s WHERE id = ANY(%s) AND state = 'pending'",
                            (now, list(txids)))

    def cancel_pending(self, now: float) -> int:
        return self._change("UPDATE transactions SET state = 'cancelled', decided_by = NULL, "
                            "decided_at = %s WHERE state = 'pending'", (now,))

    def purge(self, now: float, keep: float = 30 * 86400) -> int:
        cutoff = now - keep
        with self._write() as db:
            gone = db.execute("DELETE FROM transactions WHERE (state != 'pending' AND "
                              "COALESCE(decided_at, expires) < %s) OR (state = 'pending' "
                              "AND expires < %s)", (cutoff, cutoff)).rowcount
            gone += db.execute("DELETE FROM enrollments WHERE used < %s OR "
                               "(used IS NULL AND expires < %s)", (cutoff, cutoff)).rowcount
            gone += db.execute("DELETE FROM bypass_codes WHERE COALESCE(used, expires) < %s",
                               (cutoff,)).rowcount
            gone += db.execute("DELETE FROM passcode_failures WHERE at < %s",
                               (cutoff,)).rowcount
            gone += db.execute("DELETE FROM device_nonces WHERE expires < %s",
                               (now,)).rowcount
        return gone + self.purge_login_state(now)

    # -- passcodes

    def use_totp_step(self, device_id: str, step: int) -> bool:
        return self._change("UPDATE devices SET totp_last_step = %s WHERE id = %s "
                            "AND revoked IS NULL AND totp_secret IS NOT NULL "
                            "AND (totp_last_step IS NULL OR totp_last_step < %s)",
                            (step, device_id, step)) == 1

    def add_bypass_codes(self, username: str, hashes: list[str], now: float,
                         expires: float, *, replace: bool = False,
                         selectors: list[str] | None = None) -> None:
        if selectors is not None and len(selectors) != len(hashes):
            raise ValueError("one selector per hash")
        with self._write() as db:
            if replace:
                db.execute("DELETE FROM bypass_codes WHERE username = %s", (username,))
            with db.cursor() as cur:
                if selectors is None:
                    cur.executemany("INSERT INTO bypass_codes (username, code_hash, created, "
                                    "expires) VALUES (%s, %s, %s, %s)",
                                    [(username, h, now, expires) for h in hashes])
                else:
                    cur.executemany("INSERT INTO bypass_codes (username, code_hash, created, "
                                    "expires, selector) VALUES (%s, %s, %s, %s, %s)",
                                    [(username, h, now, expires, sel)
                                     for h, sel in zip(hashes, selectors)])

    def bypass_candidates(self, username: str, now: float) -> list[tuple[int, str]]:
        rows = self._all("SELECT id, code_hash FROM bypass_codes WHERE username = %s "
                         "AND used IS NULL AND expires > %s ORDER BY id", (username, now))
        return [(row[0], row[1]) for row in rows]

    def consume_bypass_code(self, code_id: int, now: float) -> bool:
        return self._change("UPDATE bypass_codes SET used = %s WHERE id = %s AND used IS NULL "
                            "AND expires > %s", (now, code_id, now)) == 1

    def delete_bypass_codes(self, username: str) -> int:
        return self._change("DELETE FROM bypass_codes WHERE username = %s", (username,))

    def bypass_code_for(self, username: str, selector: str, now: float) -> tuple[int, str] | None:
        """(id, stored hash) of the user's unused code with this selector valid at ``now``."""
        row = self._one("SELECT id, code_hash FROM bypass_codes WHERE username = %s "
                        "AND selector = %s AND used IS NULL AND expires > %s",
                        (username, selector, now))
        return None if row is None else (row[0], row[1])

    def legacy_bypass_candidates(self, username: str, now: float) -> list[tuple[int, str]]:
        """Like bypass_candidates, only codes issued without a selector (before version 3)."""
        rows = self._all("SELECT id, code_hash FROM bypass_codes WHERE username = %s "
                         "AND selector IS NULL AND used IS NULL AND expires > %s ORDER BY id",
                         (username, now))
        return [(row[0], row[1]) for row in rows]

    def bypass_selectors(self, username: str) -> set[str]:
        """Selectors of the user's unused codes (expired or not): a new code needs another."""
        rows = self._all("SELECT selector FROM bypass_codes WHERE username = %s "
                         "AND used IS NULL AND selector IS NOT NULL", (username,))
        return {row[0] for row in rows}

    def claim_passcode_attempt(self, username: str, source: str, now: float,
                               since: float) -> PasscodeAttempt:
        """The user's lock, else the failures of the user and of the source since
        ``since`` and this attempt recorded as one more, in one transaction."""
        with self._write() as db:
            # one claim at a time on the whole database, as SQLite's write lock
            # does: concurrent guesses on any node each see every earlier one
            db.execute("SELECT pg_advisory_xact_lock(%s)", (PASSCODE_LOCK,))
            db.execute("DELETE FROM passcode_failures WHERE at < %s", (since,))
            row = db.execute(f"SELECT {_LOCK} FROM user_locks WHERE username = %s",
                             (username,)).fetchone()
            if row is not None:
                return PasscodeAttempt(None, Lock(*row), (), ())
            user = db.execute("SELECT at FROM passcode_failures WHERE username = %s "
                              "AND at >= %s ORDER BY at", (username, since)).fetchall()
            by_source = db.execute("SELECT at FROM passcode_failures WHERE source = %s "
                                   "AND at >= %s ORDER BY at", (source, since)).fetchall()
            attempt = db.execute("INSERT INTO passcode_failures (username, source, at) "
                                 "VALUES (%s, %s, %s) RETURNING id",
                                 (username, source, now)).fetchone()[0]
        return PasscodeAttempt(attempt, None, tuple(r[0] for r in user),
                               tuple(r[0] for r in by_source))

    def forget_passcode_attempt(self, attempt_id: int) -> None:
        """The attempt's code was right: it is not a failure after all."""
        self._change("DELETE FROM passcode_failures WHERE id = %s", (attempt_id,))

    def clear_passcode_failures(self, username: str) -> int:
        """Forget the user's passcode failures (an admin unlocked the user); how many."""
        return self._change("DELETE FROM passcode_failures WHERE username = %s", (username,))

    # -- locks and settings

    def lock_user(self, username: str, now: float, reason: str, txid: str | None) -> bool:
        return self._change(f"INSERT INTO user_locks ({_LOCK}) VALUES (%s, %s, %s, %s) "
                            "ON CONFLICT DO NOTHING", (username, now, reason, txid)) == 1

    def user_lock(self, username: str) -> Lock | None:
        row = self._one(f"SELECT {_LOCK} FROM user_locks WHERE username = %s", (username,))
        return None if row is None else Lock(*row)

    def unlock_user(self, username: str) -> bool:
        return self._change("DELETE FROM user_locks WHERE username = %s", (username,)) == 1

    def locked_users(self) -> list[Lock]:
        return [Lock(*row) for row in
                self._all(f"SELECT {_LOCK} FROM user_locks ORDER BY locked_at, username")]

    def setting(self, key: str) -> str | None:
        row = self._one("SELECT value FROM settings WHERE key = %s", (key,))
        return None if row is None else row[0]

    def setting_or_create(self, key: str, make: Callable[[], str]) -> str:
        value = self.setting(key)
        if value is not None:
            return value
        candidate = make()
        with self._write() as db:
            # insert-if-absent then read back: of racing nodes, all agree
            db.execute("INSERT INTO settings (key, value) VALUES (%s, %s) "
                       "ON CONFLICT DO NOTHING", (key, candidate))
            return db.execute("SELECT value FROM settings WHERE key = %s", (key,)).fetchone()[0]

    def check_writable(self) -> None:
        # A write that changes nothing, committed: fails on a read-only standby
        # (after a failover the URL may point at one), on a role without UPDATE,
        # on a row lock held past lock_timeout -- and on a commit that cannot
        # finish, as when the only synchronous standby is gone: PostgreSQL does
        # not apply statement_timeout to that wait, the watchdog ends it. A
        # rolled-back write would pass there while every login's commit hangs.
        with self._write() as db:
            db.execute("UPDATE schema_version SET version = version")

    def close(self) -> None:
        self._watchdog.close()
        if self._db is not None:
            self._db.close()
            self._db = None
