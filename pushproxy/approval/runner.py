"""Runs store calls: on one dedicated thread in the daemon, inline in tests.

SQLite calls block. On the reactor thread a CLI holding the write lock could
stall every login for up to the busy timeout, so the daemon gives the store a
thread of its own; the store object is created on that thread too, since an
sqlite3 connection belongs to the thread that opened it.

One thread means one blocked call (another process holding the write lock)
holds up every call behind it. So each call is bounded: a caller that has no
answer within ``timeout`` seconds gets a StoreError (the service turns it into
ProviderUnavailable, and ``push.failmode`` decides the login), and a call whose
caller gave up is skipped when the thread reaches it, so the backlog drains at
once when the lock goes away instead of replaying every stale call.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from pushproxy.approval.store import StoreError

# Seconds a caller waits for one store call in the daemon. A push makes two
# calls (devices, create_transaction) before it waits for the phone: 2 x 2 s
# stays under the smallest push.timeout (5 s), so with a locked store the
# login ends on push.failmode, not on the push timeout.
CALL_TIMEOUT = 2.0


class InlineRunner:
    """Calls the store directly (tests with a Clock, the admin CLI)."""

    def __init__(self, store):
        self.store = store

    def __call__(self, method: str, *args) -> defer.Deferred:
        """``store.method(*args)`` as a Deferred."""
        return defer.maybeDeferred(getattr(self.store, method), *args)

    def start(self) -> defer.Deferred:
        """Nothing to start."""
        return defer.succeed(None)

    def stop(self) -> None:
        """Close the store."""
        self.store.close()


class ThreadRunner:
    """Calls the store on one dedicated thread, which also opens it."""

    def __init__(self, reactor, factory: Callable[[], object], *,
                 timeout: float = CALL_TIMEOUT):
        self.reactor = reactor
        self.factory = factory
        self.timeout = timeout
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="store")
        self._store = None

    def _call(self, method: str, args: tuple, abandoned: list):
        if abandoned:
            raise StoreError(f"{method}: skipped, its caller gave up")
        if self._store is None:
            self._store = self.factory()
        return getattr(self._store, method)(*args)

    def __call__(self, method: str, *args) -> defer.Deferred:
        """``store.method(*args)`` on the store thread, as a Deferred; StoreError after
        ``timeout`` seconds without an answer."""
        return self._submit(method, args, self.timeout)

    def _submit(self, method: str, args: tuple, timeout: float | None) -> defer.Deferred:
        abandoned: list = []  # non-empty once the caller gave up (read on the store thread)
        d = threads.deferToThreadPool(self.reactor, self.pool, self._call, method, args,
                                      abandoned)
        if timeout is None:
            return d
        d.addTimeout(timeout, self.reactor)

        def late(failure):
            failure.trap(defer.TimeoutError)
            abandoned.append(True)
            raise StoreError(f"the store did not answer {method} within {timeout:g} s "
                             "(database locked?)")

        return d.addErrback(late)

    def start(self) -> defer.Deferred:
        """Start the thread and open the store (errors surface here, at start-up)."""
        self.pool.start()
        # Not bounded like a login's calls: opening may migrate the schema, and
        # the store's own busy timeout still bounds any wait for a lock.
        return self._submit("setting", ("schema-check",), None)

    def stop(self) -> None:
        """Close the store on its thread, then stop the thread (queued calls finish first)."""
        self.pool.callInThread(lambda: self._store.close() if self._store else None)
        self.pool.stop()
