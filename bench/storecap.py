"""What the approval store's thread can take: ``python -m bench.storecap [LOGINS]``.

Each login costs the store what a push costs it (the fraud-lock check, then
`open_transaction`), submitted all at once from the event loop to the
daemon's own `ThreadRunner` on a fresh SQLite file with a device per user;
then all the transactions are expired in one call, as logins that time out
together are. Prints calls/s and logins/s: the capacity the store bounds of
``daemon.overload`` are derived from (docs/benchmarks.md, "Overload").

It also prints each call's latency on the store thread (from the thread
picking it up to the result being stamped: what the runner's stall bound
measures), max and p99.9, with the thread's CPU time for the slowest calls:
a slow call with little CPU waited (for the disk, a checkpoint's fsync, or
the interpreter lock), one with much CPU worked. ``--repeat N`` runs the
burst N times on the same file, so the WAL grows and checkpoints happen as
in a long run. ``--checkpointer`` opens the store as the daemon does, with its WAL
checkpoints on a thread of their own (`pushproxy.approval.walcheckpoint`)
instead of inside the commits: the same burst with and without checkpoints
inside the store calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from twisted.internet import defer, reactor

from bench.pushproxyd import new_device_key, seed_devices
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.runner import ThreadRunner
from pushproxy.approval.store import SQLiteStore, Transaction


class TimedRunner(ThreadRunner):
    """The daemon's ThreadRunner, recording each call's wall and thread CPU time on
    the store thread (``timings``: (wall, cpu, method))."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timings: list[tuple[float, float, str]] = []
        self.slow: list[tuple[float, float, str]] = []  # (epoch start, wall, method) over 50 ms

    def _execute(self, call):
        cpu, epoch = time.thread_time(), time.time()
        ok, result = super()._execute(call)
        # call.started was stamped just before; the runner stamps finished next
        wall = self.monotonic() - call.started
        self.timings.append((wall, time.thread_time() - cpu, call.method))
        if wall > 0.05 and os.environ.get("STORECAP_SLOW"):
            self.slow.append((epoch, wall, call.method))
        return ok, result


def report(timings: list[tuple[float, float, str]]) -> None:
    """Print max and p99.9 of the store calls' latency and the slowest calls."""
    if not timings:
        return
    ordered = sorted(timings)
    p999 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.999))][0]
    print(f"store call latency over {len(ordered)} calls: max {ordered[-1][0] * 1000:.1f} ms, "
          f"p99.9 {p999 * 1000:.1f} ms, p50 {ordered[len(ordered) // 2][0] * 1000:.2f} ms")
    for wall, cpu, method in ordered[-5:][::-1]:
        print(f"  {method}: {wall * 1000:.1f} ms wall, {cpu * 1000:.1f} ms thread CPU")


@defer.inlineCallbacks
def measure(runner, users: list[str], repeat: int = 1):
    """Submit every login's calls at once; print what the store thread did."""
    yield runner.start()
    for round in range(repeat):
        yield burst(runner, users, f"r{round}-")
    report(getattr(runner, "timings", []))
    for epoch, wall, method in getattr(runner, "slow", []):
        print(f"slow {method} at {epoch:.6f} for {wall * 1000:.1f} ms")


@defer.inlineCallbacks
def burst(runner, users: list[str], prefix: str):
    """One burst: a lock check and open_transaction per user, then one expiry."""
    store = AsyncStore(runner)
    started = time.monotonic()
    calls = []
    for i, user in enumerate(users):
        calls.append(store.user_lock(user))
        calls.append(store.open_transaction(Transaction(
            id=f"{prefix}tx{i}", username=user, nonce="n", context={}, created=0.0, expires=1e12,
            state="pending", decided_by=None, decided_at=None)))
    results = yield defer.DeferredList(calls, consumeErrors=True)
    elapsed = time.monotonic() - started
    failed = sum(1 for ok, _ in results if not ok)
    print(f"{len(calls)} calls for {len(users)} logins in {elapsed:.2f} s: "
          f"{len(calls) / elapsed:.0f} calls/s, {len(users) / elapsed:.0f} logins/s, "
          f"{failed} failed")
    started = time.monotonic()
    yield store.expire_transactions([f"{prefix}tx{i}" for i in range(len(users))], 1.0)
    print(f"expire_transactions of {len(users)} in one call: "
          f"{time.monotonic() - started:.2f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storecap")
    parser.add_argument("logins", type=int, nargs="?", default=5000)
    parser.add_argument("--repeat", type=int, default=1, help="bursts on the same file")
    parser.add_argument("--checkpointer", action="store_true",
                        help="checkpoints from a thread of their own, not in store calls")
    args = parser.parse_args(argv)
    count = args.logins
    path = os.path.join(tempfile.mkdtemp(prefix="pushproxy-storecap-"), "store.db")
    users = [f"u{i:05d}" for i in range(count)]
    seed_devices(path, users, new_device_key()[0])
    runner = TimedRunner(reactor, lambda: SQLiteStore(
        path, busy_timeout=1.0, background_checkpoints=args.checkpointer))
    checkpointer = []  # the store's, read before the runner closes it

    def run():
        d = measure(runner, users, args.repeat)
        d.addBoth(lambda r: (checkpointer.append(getattr(runner._store, "_checkpointer", None)),
                             r)[1])
        d.addErrback(lambda f: print(f.getTraceback()))
        d.addBoth(lambda _: (runner.stop(), reactor.stop()))

    reactor.callWhenRunning(run)
    reactor.run()
    if checkpointer and checkpointer[0] is not None:
        print(f"{checkpointer[0].rounds} PASSIVE checkpoints off the store thread, "
              f"slowest {checkpointer[0].slowest * 1000:.1f} ms")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    os.rmdir(os.path.dirname(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
