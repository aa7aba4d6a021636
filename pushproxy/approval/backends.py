"""Opens the approval store that ``approval.database`` names: a SQLite file or a
``postgresql://`` URL. The only place that chooses a backend."""

from __future__ import annotations

from pushproxy.approval.store import SQLiteStore, Store


def is_postgres_url(database: str) -> bool:
    """Whether ``approval.database`` names a PostgreSQL database rather than a file."""
    return database.startswith(("postgresql://", "postgres://"))


def open_store(database: str, *, password: str | None = None,
               timeout: float = 5.0) -> Store:
    """The store for ``database``; ``timeout`` bounds each wait (SQLite's busy timeout,
    PostgreSQL's statement and lock timeouts). StoreError if it cannot be opened."""
    if is_postgres_url(database):
        # imported here: psycopg (and libpq) are needed only by a PostgreSQL store
        from pushproxy.approval.pgstore import PostgresStore

        return PostgresStore(database, password=password, timeout=timeout)
    return SQLiteStore(database, busy_timeout=timeout)
