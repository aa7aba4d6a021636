"""``pushproxy store migrate``: copy a SQLite approval store into an empty PostgreSQL one.

Everything that decides a login moves: devices (with their keys, TOTP secrets and the
last TOTP step used, so no code works twice), enrollment links (a used one stays
used), bypass codes (ids kept, used ones stay used), fraud locks, passcode failures,
settings (the VAPID key: phones' push subscriptions are bound to it) and the history
of decided transactions. Pending transactions are left behind: their logins live in
the memory of the daemon that made them. The copy is one PostgreSQL transaction:
all of it or nothing. Stop the daemon first, so nothing changes during the copy.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from dataclasses import dataclass

from pushproxy.approval.backends import is_postgres_url, postgres_url_problems
from pushproxy.approval.store import SQLiteStore, StoreError

# In foreign-key order (enrollments name devices). A table missing on either side
# (an older schema) is skipped and reported.
TABLES = ("devices", "enrollments", "transactions", "settings", "bypass_codes", "user_locks",
          "passcode_failures", "enrollment_mails", "baseline_users", "baseline_items",
          "passkeys")
# Tables whose ids PostgreSQL hands out: its sequence must move past the copied ids.
IDENTITY = ("bypass_codes", "passcode_failures", "enrollment_mails")
# What is not copied (see the module docstring), per table.
SKIP = {"transactions": "state = 'pending'"}


class MigrateError(Exception):
    """The copy was refused or failed; nothing was written."""


@dataclass(frozen=True)
class Copied:
    """How many rows of one table were copied, and how many left behind."""

    table: str
    rows: int
    skipped: int = 0
    missing: bool = False  # the table does not exist on one side


def _sqlite_columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def migrate(source: str, target: str, *, password: str | None = None,
            force: bool = False) -> list[Copied]:
    """Copy the SQLite store at ``source`` into the PostgreSQL store at ``target``.

    MigrateError if the source is missing, the target already holds data (unless
    ``force``, which replaces it) or a source column has no place in the target."""
    from pushproxy.approval.pgstore import PostgresStore

    if not os.path.isfile(source):
        raise MigrateError(f"no SQLite store at {source}")
    # Opening through SQLiteStore brings an older file up to date first (as the
    # daemon would), so both sides have the newest schema.
    SQLiteStore(source).close()
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = PostgresStore(target, password=password, timeout=60.0)
    try:
        with dst.write_transaction() as db:
            present = {row[0] for row in db.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()")}
            tables = [t for t in TABLES if t in present and _sqlite_columns(src, t)]
            held = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
            if any(held.values()) and not force:
                listed = ", ".join(f"{t}: {n}" for t, n in held.items() if n)
                raise MigrateError(f"the target is not empty ({listed}); "
                                   "use --force to replace what it holds")
            if force:
                # children first: enrollments point at devices
                for table in reversed(tables):
                    db.execute(f"DELETE FROM {table}")
            report = []
            for table in TABLES:
                if table not in tables:
                    report.append(Copied(table, 0, missing=True))
                    continue
                report.append(_copy(src, db, table))
            for table in IDENTITY:
                if table in tables:
                    db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT COALESCE(max(id), 0) + 1 FROM {table}), false)")
        return report
    except sqlite3.Error as exc:
        raise MigrateError(f"reading {source}: {exc}") from exc
    except StoreError as exc:
        raise MigrateError(str(exc)) from exc
    finally:
        src.close()
        dst.close()


def _copy(src: sqlite3.Connection, db, table: str) -> Copied:
    columns = _sqlite_columns(src, table)
    known = {row[0] for row in db.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = %s", (table,))}
    extra = [c for c in columns if c not in known]
    if extra:
        raise MigrateError(f"{table}: the target has no column {', '.join(extra)} "
                           "(is the PostgreSQL schema older than the SQLite one?)")
    names = ", ".join(columns)
    where = SKIP.get(table)
    skipped = 0
    if where:
        skipped = src.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]
    rows = src.execute(f"SELECT {names} FROM {table}"
                       + (f" WHERE NOT ({where})" if where else "") + " ORDER BY rowid")
    count = 0
    with db.cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return Copied(table, count, skipped)


def _password(args) -> str | None:
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise MigrateError(f"environment variable {args.password_env} is not set")
        return value
    return None  # libpq's own PGPASSWORD / ~/.pgpass still apply


def cmd_migrate(args) -> int:
    """Copy the SQLite store (--from, or the config's) into the PostgreSQL one (--to)."""
    if not is_postgres_url(args.to):
        print("--to: expected a postgresql:// URL", file=sys.stderr)
        return 2
    problems = postgres_url_problems(args.to)
    if problems:
        for problem in problems:
            print(f"--to: {problem}", file=sys.stderr)
        return 2
    source = args.source
    if source is None:
        from pushproxy.config import load_config_or_report

        config = load_config_or_report(args.config)
        if config is None:
            return 1
        source = config.approval.database
        if is_postgres_url(source) or source in ("", ":memory:"):
            print(f"{args.config}: approval.database is not a SQLite file; give --from",
                  file=sys.stderr)
            return 2
    try:
        report = migrate(source, args.to, password=_password(args), force=args.force)
    except (MigrateError, OSError) as exc:
        print(f"store migrate: {exc}; nothing was copied", file=sys.stderr)
        return 1
    for item in report:
        if item.missing:
            print(f"  {item.table}: not in both schemas, skipped")
        else:
            left = f" ({item.skipped} pending left behind)" if item.skipped else ""
            print(f"  {item.table}: {item.rows} copied{left}")
    print(f"copied {source} to PostgreSQL; now set approval.database to the URL and "
          "start the daemon")
    return 0


def add_parser(sub) -> None:
    """Register ``pushproxy store migrate``."""
    store = sub.add_parser("store", help="approval store maintenance")
    commands = store.add_subparsers(dest="store_command", required=True)
    p = commands.add_parser(
        "migrate", help="copy a SQLite approval store into an empty PostgreSQL database",
        description="Copy devices, enrollment links, bypass codes, locks, settings (the "
                    "VAPID key) and decided transactions from a SQLite store into an "
                    "empty PostgreSQL store, in one transaction. Stop the daemon first.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--to", required=True, metavar="URL",
                   help="postgresql://USER@HOST:PORT/DBNAME (no password in it)")
    p.add_argument("--from", dest="source", metavar="PATH",
                   help="the SQLite file (default: approval.database of --config)")
    p.add_argument("--config", "-c", default="/etc/pushproxy/config.yaml",
                   help="config whose approval.database is the source")
    p.add_argument("--password-file", help="file holding the PostgreSQL password")
    p.add_argument("--password-env", help="environment variable holding the password")
    p.add_argument("--force", action="store_true",
                   help="replace what the target already holds")
    p.set_defaults(func=cmd_migrate)
