"""What the approval store's thread can take: ``python -m bench.storecap [LOGINS]``.

Each login costs the store what a push costs it (the fraud-lock check, then
`open_transaction`), submitted all at once from the event loop to the
daemon's own `ThreadRunner` on a fresh SQLite file with a device per user;
then all the transactions are expired in one call, as logins that time out
together are. Prints calls/s and logins/s: the capacity the store bounds of
``daemon.overload`` are derived from (docs/benchmarks.md, "Overload").
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from twisted.internet import defer, reactor

from bench.pushproxyd import new_device_key, seed_devices
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.runner import ThreadRunner
from pushproxy.approval.store import SQLiteStore, Transaction


@defer.inlineCallbacks
def measure(runner, users: list[str]):
    """Submit every login's calls at once; print what the store thread did."""
    yield runner.start()
    store = AsyncStore(runner)
    started = time.monotonic()
    calls = []
    for i, user in enumerate(users):
        calls.append(store.user_lock(user))
        calls.append(store.open_transaction(Transaction(
            id=f"tx{i}", username=user, nonce="n", context={}, created=0.0, expires=1e12,
            state="pending", decided_by=None, decided_at=None)))
    results = yield defer.DeferredList(calls, consumeErrors=True)
    elapsed = time.monotonic() - started
    failed = sum(1 for ok, _ in results if not ok)
    print(f"{len(calls)} calls for {len(users)} logins in {elapsed:.2f} s: "
          f"{len(calls) / elapsed:.0f} calls/s, {len(users) / elapsed:.0f} logins/s, "
          f"{failed} failed")
    started = time.monotonic()
    yield store.expire_transactions([f"tx{i}" for i in range(len(users))], 1.0)
    print(f"expire_transactions of {len(users)} in one call: "
          f"{time.monotonic() - started:.2f} s")


def main(argv=None) -> int:
    count = int((argv or sys.argv[1:] or ["5000"])[0])
    path = os.path.join(tempfile.mkdtemp(prefix="pushproxy-storecap-"), "store.db")
    users = [f"u{i:05d}" for i in range(count)]
    seed_devices(path, users, new_device_key()[0])
    runner = ThreadRunner(reactor, lambda: SQLiteStore(path, busy_timeout=1.0))

    def run():
        d = measure(runner, users)
        d.addErrback(lambda f: print(f.getTraceback()))
        d.addBoth(lambda _: (runner.stop(), reactor.stop()))

    reactor.callWhenRunning(run)
    reactor.run()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
