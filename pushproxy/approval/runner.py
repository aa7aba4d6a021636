"""Runs store calls: on one dedicated thread in the daemon, inline in tests.

SQLite calls block. On the reactor thread a CLI holding the write lock could
stall every login for up to the busy timeout, so the daemon gives the store a
thread of its own; the store object is created on that thread too, since an
sqlite3 connection belongs to the thread that opened it.

One thread means one blocked call (another process holding the write lock)
holds up every call behind it, and a login burst makes a long queue of calls
that are each quick. The two must never be confused: a busy store is not a
broken one (issue 22: a burst was decided by ``push.failmode``). So a caller
gets a StoreError (the service turns it into ProviderUnavailable, and
``push.failmode`` decides the login) only for a fault:

- a call failed with a database error within the last ``timeout`` seconds
  (the store is failing: another process's lock makes SQLite give up after
  its busy timeout, 1 s in the daemon) and this call is ``timeout`` seconds
  old;
- its own call has been *running* for ``stall`` seconds (2 x ``timeout``;
  time spent queued does not count), or it is still queued and the call at
  the head has been running that long: the store hangs without an error (a
  frozen disk). Not ``timeout``: under a storm on a busy machine one call
  was seen to take over 2 s of wall time (the store thread waiting for the
  interpreter lock), and that is load, not a fault;
- it has been queued ``max_queued`` seconds (a last bound; admission control,
  `pushproxy.overload`, keeps the queue far shorter than that).

A call found past ``stall`` is failed only once the event loop has run
``confirm`` seconds (0.25 s) after that finding and the call is still not
finished: the store thread stamps a call finished only when it runs Python
again, so after the whole process stood still (a long garbage collection on
either thread, the process starved of CPU by the machine) the watchdog can
wake before the store thread, seeing a call that SQLite answered long ago as
running for seconds. The loop running is what lets the store thread take the
interpreter lock, so a call still unfinished after ``confirm`` of it is truly
stuck; a frozen disk still fails, ``confirm`` later. Store calls over 0.5 s are
logged (``store.slow_call``, at most one line a second) with the store
thread's CPU time, the process's, and the garbage collector's time during the
call, which tell working, waiting for the disk, and waiting for the
interpreter lock apart.

A call whose caller gave up is skipped when the thread reaches it, so the
backlog drains at once when the lock goes away instead of replaying every
stale call. Results come back to the reactor in batches (one wake-up for
every call finished meanwhile), and each call is counted by method with the
commits it made (``store_calls``, ``store_commits`` in /metrics).

Three calls end a login that waits for its reply: an answer's compare-and-set
(``decide_transaction``; in cluster mode ``answer_transaction``, or
``claim_and_answer`` with the request's nonce claim: `PROMPT`). An
idle store thread is woken for them at once, not at the end of the reactor's
turn, and their results are delivered first among those finished together:
the Accept waits for nothing else (issue 16). The store thread still takes
calls in the order they came: an answer never overtakes a write submitted
before it (the batch that closes withdrawn transactions, say).

A call is a bound method of the open store (`store`), never a method name:
`pushproxy.approval.asyncstore.AsyncStore` submits one per operation, so the
calls are type-checked against `pushproxy.approval.storeapi.StoreAPI`.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, ParamSpec, TypeVar

from twisted.internet import defer
from twisted.python import failure as tfailure

from pushproxy import logs
from pushproxy.approval.store import StoreError

if TYPE_CHECKING:
    from pushproxy.approval.storeapi import StoreAPI

P = ParamSpec("P")
R = TypeVar("R")

# Seconds a call may wait behind a failing store before its caller gets a
# StoreError. A push makes two calls (lock check, then the transaction)
# before it waits for the phone: 2 x 2 s stays under the smallest
# push.timeout (5 s), so with a locked store the login ends on push.failmode,
# not on the push timeout. (A store that hangs without any error is given
# 2 x this; such a login may end on the push timeout, a Reject.)
CALL_TIMEOUT = 2.0
# Seconds a call may wait in the queue while the store makes progress.
MAX_QUEUED = 30.0
# Seconds the event loop must run after finding a call past the stall bound
# before it fails the call (see the module docstring).
CONFIRM = 0.25
# Store calls running longer than this are logged (``store.slow_call``).
SLOW_CALL = 0.5
# Seconds between two readings of the store's data_version by the store thread (after
# a call; see `ThreadRunner.data_version`): each reading is a statement of its own
# (two steps of SQLite, each letting go of the interpreter lock), and reading it
# after every call doubled the steps of a device read (issue 16).
VERSION_EVERY = 0.1
# Calls whose result releases a login waiting for its reply (the answer's
# compare-and-set): woken for at once and delivered first (module docstring).
PROMPT = frozenset({"decide_transaction", "answer_transaction", "claim_and_answer"})

log = logging.getLogger(__name__)


class _GCClock:
    """Seconds spent in garbage collection by the whole process (any thread), from
    `gc.callbacks`; read by the store thread to explain a slow call."""

    def __init__(self):
        self.total = 0.0
        self._began: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self._began is not None:
            self.total += time.perf_counter() - self._began
            self._began = None


class InlineRunner:
    """Calls the store directly (tests with a Clock, the admin CLI); with ``counters``,
    counts calls and commits by method like `ThreadRunner`."""

    def __init__(self, store: StoreAPI, counters=None):
        self.store = store
        self.counters = counters

    def submit(self, method: Callable[P, R], /, *args: P.args,
               **kwargs: P.kwargs) -> defer.Deferred[R]:
        """``method(*args, **kwargs)`` (a bound method of `store`) as a Deferred."""
        if self.counters is None:
            return defer.maybeDeferred(method, *args, **kwargs)
        before = getattr(self.store, "commits", 0)
        d = defer.maybeDeferred(method, *args, **kwargs)
        name = method.__name__
        self.counters.inc("store_calls", method=name)
        commits = getattr(self.store, "commits", 0) - before
        if commits:
            self.counters.inc("store_commits", commits, method=name)
        return d

    def data_version(self, max_age: float) -> int | None:
        """The store's ``data_version`` now (see `ThreadRunner.data_version`); None
        for a store without one."""
        probe = getattr(self.store, "data_version", None)
        return probe() if probe is not None else None

    def start(self) -> defer.Deferred:
        """Nothing to start."""
        return defer.succeed(None)

    def stop(self) -> None:
        """Close the store."""
        self.store.close()


class _Call:
    """One queued store call; ``started`` is set by the store thread."""

    __slots__ = ("function", "method", "args", "kwargs", "deferred", "submitted", "started",
                 "finished", "abandoned", "timer", "commits", "suspect", "prompt")

    def __init__(self, function: Callable[..., Any], args: tuple, kwargs: dict,
                 submitted: float):
        self.function = function  # a bound method of the store
        self.method = function.__name__  # its name, for counters and messages
        self.args = args
        self.kwargs = kwargs
        self.deferred: defer.Deferred = defer.Deferred()
        self.submitted = submitted
        self.started: float | None = None
        self.finished: float | None = None  # done on the store thread, maybe not delivered
        self.abandoned = False
        self.timer = None
        self.commits = 0
        # when the watchdog first found it past the stall bound (not yet failed)
        self.suspect: float | None = None
        self.prompt = self.method in PROMPT  # a waiting login's reply depends on it


def _not_prompt(item: tuple[_Call, bool, Any]) -> bool:
    return not item[0].prompt


class ThreadRunner:
    """Calls the store on one dedicated thread, which also opens it."""

    def __init__(self, reactor, factory: Callable[[], StoreAPI], *,
                 timeout: float = CALL_TIMEOUT, max_queued: float = MAX_QUEUED,
                 stall: float | None = None, confirm: float = CONFIRM, counters=None,
                 monotonic: Callable[[], float] = time.monotonic):
        self.reactor = reactor
        self.factory = factory
        self.timeout = timeout
        self.stall = 2 * timeout if stall is None else stall
        self.confirm = confirm
        self.max_queued = max_queued
        self.counters = counters
        self.monotonic = monotonic
        self._store: StoreAPI | None = None
        self._queue: collections.deque[_Call] = collections.deque()
        self._wake = threading.Condition()
        self._running: _Call | None = None  # the call on the store thread now
        self._done: list[tuple[_Call, bool, Any]] = []
        self._last_fault: float | None = None  # monotonic time of the last database error
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._gc = _GCClock()
        self._slow_logged = float("-inf")  # when the last store.slow_call line was written
        self._slow_unlogged = 0  # slow calls since, not logged
        # (PRAGMA data_version, monotonic time it was read), by the store thread
        # after a call, at most every VERSION_EVERY seconds: see data_version
        self._version: tuple[int, float] | None = None
        # Wake-ups of an idle store thread, at most one per turn of the event loop
        # (`_submit`): both under ``_wake``.
        self._sleeping = False  # the store thread waits for work
        self._kick_due = False  # a wake-up is scheduled for the end of this turn
        # The watchdog (reactor thread only): bounded calls not yet finished nor past
        # their first deadline, in the order submitted (so by deadline: every call
        # gets the same ``timeout``), and the one DelayedCall for the first of them.
        # One timer for all, not a DelayedCall (and its cancellation) per call
        # (issue 16); a call past its deadline gets a timer of its own (`_check`).
        self._watched: collections.deque[_Call] = collections.deque()
        self._patrol_call = None

    # -- what admission control and /metrics read (any thread) --

    def depth(self) -> int:
        """Calls queued or running now."""
        return len(self._queue) + (1 if self._running is not None else 0)

    def age(self) -> float:
        """Seconds the oldest unfinished call has waited or run (0 when idle)."""
        oldest = self._running
        if oldest is None:
            try:
                oldest = self._queue[0]
            except IndexError:  # emptied meanwhile by the store thread
                return 0.0
        return max(0.0, self.monotonic() - oldest.submitted)

    def running_for(self) -> float:
        """Seconds the call on the store thread has been running (0 when idle)."""
        call = self._running
        started = call.started if call is not None else None
        return 0.0 if started is None else max(0.0, self.monotonic() - started)

    def data_version(self, max_age: float) -> int | None:
        """The store's ``data_version`` (SQLite: changes when another process commits)
        as the store thread last read it (after a call, at most every
        `VERSION_EVERY` seconds while calls come), if that was at most ``max_age``
        seconds ago; None when older, or for a store without one.

        Lets the approval service serve a device it read before while nothing else
        wrote to the file, without a round trip (issue 16, `ClusterSide._device`).
        """
        sample = self._version
        if sample is None or self.monotonic() - sample[1] > max_age:
            return None
        return sample[0]

    def faulty(self) -> bool:
        """Whether the store is failing now: the running call is past ``stall``, or a
        call failed with a database error within the last ``timeout`` seconds."""
        now = self.monotonic()
        fault = self._last_fault
        return self.running_for() >= self.stall or (
            fault is not None and now - fault < self.timeout)

    # -- the reactor side --

    @property
    def store(self) -> StoreAPI:
        """The store, opened on the store thread by `start`; its methods are what
        `submit` takes (binding one does not touch the connection: any thread may)."""
        if self._store is None:
            raise StoreError("the approval store is not open (the runner was not started)")
        return self._store

    def submit(self, method: Callable[P, R], /, *args: P.args,
               **kwargs: P.kwargs) -> defer.Deferred[R]:
        """``method(*args, **kwargs)`` (a bound method of `store`) on the store thread,
        as a Deferred; StoreError on a fault (see the module docstring), never for time
        spent behind busy calls."""
        return self._submit(method, args, kwargs, bounded=True)

    def _submit(self, method: Callable[..., Any], args: tuple, kwargs: dict, *,
                bounded: bool) -> defer.Deferred:
        call = _Call(method, args, kwargs, self.monotonic())
        if bounded:
            self._watched.append(call)
            if self._patrol_call is None:
                self._patrol_call = self.reactor.callLater(self.timeout, self._patrol)
        with self._wake:
            self._queue.append(call)
            if call.prompt and self._sleeping:
                # A login's reply waits on this one: wake the thread now. It runs
                # the call beside the rest of this turn (SQLite lets go of the
                # interpreter lock), instead of after it (issue 16).
                self._sleeping = False
                self._wake.notify()
                return call.deferred
            # Wake an idle store thread once per turn of the event loop, after the
            # turn, not once per call in it: each wake-up is a switch of threads
            # (and of the interpreter lock) in the middle of the reactor's work, and
            # was the largest own cost in the push path's profile (issue 16). A
            # busy store thread takes the call when it looks at the queue again.
            kick = self._sleeping and not self._kick_due
            if kick:
                self._kick_due = True
        if kick:
            self.reactor.callLater(0, self._kick)
        return call.deferred

    def _kick(self) -> None:
        """On the reactor, at the end of a turn: wake the idle store thread."""
        with self._wake:
            self._kick_due = False
            self._wake.notify()

    def _patrol(self) -> None:
        """The watchdog's round: every watched call at its deadline is checked (`_check`,
        which gives one still unfinished a timer of its own); then the next round is
        set for the next call's deadline."""
        self._patrol_call = None
        watched, now = self._watched, self.monotonic()
        while watched:
            call = watched[0]
            if call.finished is not None or call.deferred.called:
                watched.popleft()  # answered (its delivery may still wait for the loop)
                continue
            left = call.submitted + self.timeout - now
            if left > 0:
                self._patrol_call = self.reactor.callLater(max(left, 0.01), self._patrol)
                return
            watched.popleft()
            self._check(call)

    def _check(self, call: _Call) -> None:
        """The watchdog of one call: fail it on a fault, else look again later."""
        call.timer = None
        if call.deferred.called or call.finished is not None:
            # Answered in time; only its delivery waits for this (late) event loop.
            return
        now = self.monotonic()
        failing = self._last_fault is not None and now - self._last_fault < self.timeout
        if call.started is not None:
            if self._stuck(call, now):
                return self._give_up(call, f"the store did not answer {call.method} within "
                                           f"{self.stall:g} s (disk or database stuck?)")
            if call.suspect is not None:  # past the bound: give the store thread its turn
                return self._recheck(call, call.suspect + self.confirm - now)
            return self._recheck(call, call.started + self.stall - now)
        head = self._running
        stuck = head is not None and self._stuck(head, now)
        if stuck or failing:
            why = "stuck on a call" if stuck else "failing"
            return self._give_up(call, f"the store is {why}: {call.method} not started "
                                       f"within {self.timeout:g} s")
        if now - call.submitted >= self.max_queued:
            return self._give_up(call, f"{call.method} queued for {self.max_queued:g} s")
        # Busy, not broken: the store answers, this call just waits its turn.
        self._recheck(call, self.timeout / 4)

    def _stuck(self, call: _Call, now: float) -> bool:
        """Whether a running call is stuck: past ``stall``, and still unfinished
        ``confirm`` seconds of a running event loop after that was first seen."""
        if call.started is None or call.finished is not None or now - call.started < self.stall:
            return False
        if call.suspect is None:
            call.suspect = now
        return now - call.suspect >= self.confirm

    def _recheck(self, call: _Call, delay: float) -> None:
        call.timer = self.reactor.callLater(max(delay, 0.01), self._check, call)

    def _give_up(self, call: _Call, why: str) -> None:
        call.abandoned = True
        if self.counters is not None:
            self.counters.inc("store_call_timeouts", method=call.method)
        call.deferred.errback(StoreError(why))

    def _deliver(self) -> None:
        """On the reactor: fire every call finished since the last delivery."""
        with self._wake:
            done, self._done = self._done, []
        if len(done) > 1:
            # A login's reply first (stable: the rest keep their order).
            done.sort(key=_not_prompt)
        watched = self._watched
        for call, ok, result in done:
            if call.timer is not None:
                if call.timer.active():
                    call.timer.cancel()
                call.timer = None
            if self.counters is not None:
                self.counters.inc("store_calls", method=call.method)
                if call.commits:
                    self.counters.inc("store_commits", call.commits, method=call.method)
            if call.deferred.called:
                continue  # its caller gave up meanwhile
            if ok:
                call.deferred.callback(result)
            else:
                call.deferred.errback(result)
        # The store thread finishes calls in the order they came: the delivered ones
        # are at the head of the watch.
        while watched and watched[0].finished is not None:
            watched.popleft()

    # -- the store thread --

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._sleeping = True
                    self._wake.wait()
                self._sleeping = False
                if not self._queue:
                    break
                call = self._queue.popleft()
                self._running = call
            call.started = self.monotonic()
            cpu, process, gc_before = time.thread_time(), time.process_time(), self._gc.total
            ok, result = self._execute(call)
            call.finished = self.monotonic()
            if call.finished - call.started >= SLOW_CALL:
                self._slow(call, time.thread_time() - cpu, time.process_time() - process,
                           self._gc.total - gc_before)
            with self._wake:
                self._running = None
                first = not self._done
                self._done.append((call, ok, result))
            if first:
                self.reactor.callFromThread(self._deliver)
            # after the result is on its way, so it is not late for this
            sample = self._version
            if sample is None or call.finished - sample[1] >= VERSION_EVERY:
                self._sample_version(call.finished)
        if self._store is not None:
            self._store.close()

    def _sample_version(self, at: float) -> None:
        """On the store thread, after a call: read the store's data_version (a few
        microseconds), stamped with a time before the read."""
        probe = getattr(self._store, "data_version", None)
        if probe is None:
            return
        try:
            self._version = (probe(), at)
        except Exception:  # noqa: BLE001 -- a failing store: serve nothing from memory
            self._version = None

    def _slow(self, call: _Call, cpu: float, process: float, collecting: float) -> None:
        """On the store thread: log a slow call, at most one line a second. Little
        thread CPU with much process CPU: the thread waited for the interpreter lock
        (or the disk while the rest worked); little of both: the disk, or the process
        had no CPU; ``gc_s`` near ``seconds``: a garbage collection held everything."""
        if call.finished - self._slow_logged < 1.0:
            self._slow_unlogged += 1
            return
        logs.event(log, logging.INFO, "store.slow_call", method=call.method,
                   seconds=round(call.finished - call.started, 3),
                   thread_cpu_s=round(cpu, 3), process_cpu_s=round(process, 3),
                   gc_s=round(collecting, 3), not_logged_since=self._slow_unlogged)
        self._slow_logged = call.finished
        self._slow_unlogged = 0

    def _execute(self, call: _Call) -> tuple[bool, Any]:
        if call.abandoned:
            return False, tfailure.Failure(
                StoreError(f"{call.method}: skipped, its caller gave up"))
        try:
            before = getattr(self._store, "commits", 0)
            result = call.function(*call.args, **call.kwargs)
            call.commits = getattr(self._store, "commits", 0) - before
            return True, result
        except StoreError as exc:
            self._last_fault = self.monotonic()
            return False, tfailure.Failure(exc)
        except BaseException:  # a bug: the caller sees it, the thread lives on
            return False, tfailure.Failure()

    def start(self) -> defer.Deferred:
        """Start the thread and open the store (errors surface here, at start-up)."""
        if self._gc not in gc.callbacks:
            gc.callbacks.append(self._gc)
        self._thread = threading.Thread(target=self._work, name="store", daemon=True)
        self._thread.start()
        # Not bounded like a login's calls: opening may migrate the schema, and
        # the store's own busy timeout still bounds any wait for a lock.
        return self._submit(self._open, (), {}, bounded=False)

    def _open(self) -> None:
        """On the store thread: open the store (an sqlite3 connection belongs to the
        thread that opened it); a failure leaves it closed, and `start` fails."""
        if self._store is None:
            self._store = self.factory()

    def stop(self) -> None:
        """Stop the thread once the queued calls are done; it closes the store."""
        if self._patrol_call is not None and self._patrol_call.active():
            self._patrol_call.cancel()
        self._patrol_call = None
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(10)
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
