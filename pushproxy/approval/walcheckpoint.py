"""WAL checkpoints off the login path: a thread with a connection of its own.

SQLite's automatic checkpoint runs inside whichever commit pushes the WAL past
1,000 pages: that store call then copies the WAL into the database and fsyncs
both, on the daemon's one store thread, with every login's calls queued behind
it. Measured with ``python -m bench.storecap --repeat 3`` on the shared 2-core
machine (docs/benchmarks.md, "Overload (issue 22)"), a checkpoint took about
0.1 s (at worst 0.3 s), and taking them off the store thread halved the p99.9
of the store calls. On a busier disk one such fsync can take seconds, which
the store runner cannot tell from a stuck disk.

So the daemon's connection raises its automatic checkpoint to a safety net
(`SAFETY_NET_PAGES`, only reached if this thread cannot keep up or died), and
this thread runs a PASSIVE checkpoint every `EVERY` seconds from its own
connection. In WAL mode a PASSIVE checkpoint takes no lock a writer needs
(it copies what no reader still uses and never waits), so the store thread's
commits go on meanwhile. Once the WAL is fully copied, the next commit
starts it again from the beginning; under a storm's steady commits that
moment may not come (each commit lands while a checkpoint copies), and the
WAL grows to the safety net, where the store connection's own checkpoint --
with nearly everything already copied by this thread -- completes it and the
WAL starts again: bounded at about `SAFETY_NET_PAGES` pages (40 MB).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

from pushproxy import logs

log = logging.getLogger(__name__)

# Seconds between two checkpoints: the WAL grows by about one second of commits.
EVERY = 1.0
# The store connection's own automatic checkpoint, in pages (4 KiB: 40 MB),
# a bound on the WAL should the checkpoint thread fall behind or die.
SAFETY_NET_PAGES = 10_000
# Checkpoints slower than this are logged (``store.slow_checkpoint``).
SLOW = 1.0


class WALCheckpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on ``path`` every ``every`` seconds on a
    thread of its own until `stop`; errors are logged and the next round tries again."""

    def __init__(self, path: str, *, every: float = EVERY):
        self.path = path
        self.every = every
        self.rounds = 0  # checkpoints run (for tests and bench.storecap)
        self.slowest = 0.0  # seconds the slowest of them took
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-checkpoint", daemon=True)
        self._failing = False

    def start(self) -> WALCheckpointer:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (one last checkpoint first, so the WAL is left small)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _run(self) -> None:
        db = None
        try:
            while True:
                stopping = self._stop.wait(self.every)
                try:
                    if db is None:
                        db = sqlite3.connect(self.path, isolation_level=None,
                                             check_same_thread=True)
                    self.checkpoint(db)
                except sqlite3.Error as exc:
                    if not self._failing:  # one line per failing spell, not one a second
                        logs.event(log, logging.WARNING, "store.checkpoint_failed",
                                   error=str(exc))
                    self._failing = True
                if stopping:
                    return
        finally:
            if db is not None:
                db.close()

    def checkpoint(self, db: sqlite3.Connection) -> None:
        """One PASSIVE checkpoint on ``db``; logs it when slow."""
        started = time.monotonic()
        busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        took = time.monotonic() - started
        self.rounds += 1
        self.slowest = max(self.slowest, took)
        self._failing = False
        if took >= SLOW:
            logs.event(log, logging.INFO, "store.slow_checkpoint", seconds=round(took, 3),
                       wal_frames=frames, copied=copied)
