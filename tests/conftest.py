"""Fixtures shared by every test folder: the approval-store backends.

``backend`` runs a test once on SQLite and once on PostgreSQL (a private server,
started once per session by tests/pg.py; skipped where PostgreSQL is missing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.pg import PASSWORD, PostgresServer, pg_bindir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session (skipped if not installed)."""
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


@dataclass
class Backend:
    """Where a test's store lives: ``target`` is a SQLite path or a PostgreSQL URL."""

    name: str
    target: str
    password: str | None
    server: PostgresServer | None = None

    def open(self, **kwargs):
        """A new store object (a new connection) on the same database."""
        from pushproxy.approval.backends import open_store

        return open_store(self.target, password=self.password, **kwargs)

    def env(self) -> dict:
        """Environment for a child process that opens the store (password included)."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        if self.password is not None:
            env["PUSHPROXY_TEST_DB_PASSWORD"] = self.password
        return env

    def fresh(self, tmp_path, label: str) -> "Backend":
        """Another, empty database of the same kind."""
        if self.name == "sqlite":
            return Backend("sqlite", str(tmp_path / f"{label}.db"), None)
        return Backend(self.name, self.server.new_database(), self.password)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path) -> Backend:
    """An empty store database on each backend in turn."""
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "approval.db"), None)
    server = request.getfixturevalue("postgres")
    return Backend("postgresql", server.new_database(), PASSWORD, server)
