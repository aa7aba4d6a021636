"""The daemon's SQLite store checkpoints its WAL on a thread of its own, never
inside a login's commit (issue 22: a checkpoint's fsync on a busy disk held
the store thread), and the WAL stays bounded."""

from __future__ import annotations

import sqlite3

from pushproxy.approval import walcheckpoint
from pushproxy.approval.store import SQLiteStore, Transaction


def _fill(store: SQLiteStore, count: int) -> None:
    for i in range(count):
        store.create_transaction(Transaction(
            id=f"tx{i}", username="alice", nonce="n" * 200, context={"pad": "x" * 3000},
            created=0.0, expires=1e12, state="pending", decided_by=None, decided_at=None))



def test_the_daemons_commits_do_not_checkpoint_and_the_thread_does(tmp_path):
    path = str(tmp_path / "store.db")
    store = SQLiteStore(path, busy_timeout=1.0, background_checkpoints=True)
    try:
        # the thread is stopped by hand: only the store's commits run meanwhile
        store._checkpointer.stop()
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] \
            == walcheckpoint.SAFETY_NET_PAGES
        # a few pages a commit: past SQLite's default automatic checkpoint (1,000
        # pages), which would have copied the WAL inside one of these commits
        _fill(store, 300)
        db = sqlite3.connect(path, isolation_level=None)
        try:
            checkpointer = walcheckpoint.WALCheckpointer(path)
            busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            # all the frames written since the last checkpoint were still in the WAL
            assert frames > 1000 and copied == frames
            checkpointer.checkpoint(db)  # what the thread runs: nothing left to copy
            assert checkpointer.rounds == 1
        finally:
            db.close()
    finally:
        store.close()


def test_the_checkpoint_thread_runs_and_stops_with_the_store(tmp_path):
    path = str(tmp_path / "store.db")
    store = SQLiteStore(path, busy_timeout=1.0, background_checkpoints=True)
    checkpointer = store._checkpointer
    _fill(store, 50)
    store.close()  # stops the thread after one last checkpoint
    assert checkpointer.rounds >= 1 and not checkpointer._thread.is_alive()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert copied == frames  # everything the store wrote is in the database file
    finally:
        db.close()


def test_other_stores_keep_sqlites_automatic_checkpoint(tmp_path):
    """The admin CLI and tests open the store without a checkpoint thread."""
    store = SQLiteStore(str(tmp_path / "store.db"))
    try:
        assert store._checkpointer is None
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        store.close()
