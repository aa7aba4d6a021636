"""A client-side bound on every PostgreSQL call of the store.

``statement_timeout`` is enforced by the server: a server that stops answering
without closing the connection (a frozen process, a hung disk, a VM paused by its
host) never sends the cancel, and on a live host the kernel still acknowledges
our packets, so neither TCP keepalives nor ``tcp_user_timeout`` notice. Without a
bound of our own the store thread would wait forever and every later login would
queue behind it. The watchdog shuts the connection's socket down when one call
runs past its limit: libpq's read fails at once, the call raises, the store turns
that into a StoreError and opens a new connection on its next call.

`hung_up` is the other side: before a call, whether the server already closed an
idle connection (a restart, a failover), so it is replaced rather than failing.
"""

from __future__ import annotations

import math
import select
import socket
import threading
import time


class Watchdog:
    """Shuts down the socket of a call that runs past ``limit`` seconds.

    One per store; ``arm`` when a call starts, ``disarm`` when it ends (both from
    the store's thread). The watching thread starts at the first ``arm`` and
    sleeps on a condition, so an idle store costs nothing. ``arm`` wakes it only
    when it would otherwise wake too late: idle, or asleep until a later deadline
    than the new one. A busy store (calls back to back, each armed with the same
    limit) thus wakes it about once per ``limit``, not once per call: every wake-up
    was a switch of threads and of the interpreter lock beside the store thread's
    work (issue 16)."""

    def __init__(self, limit: float, clock=time.monotonic):
        self.limit = limit
        self.clock = clock
        self.fired = 0  # how many calls were cut off (for tests and logs)
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        # the deadline the watching thread sleeps until (inf: until notified)
        self._wakes_at = math.inf

    def arm(self, fd: int, limit: float | None = None) -> None:
        """Watch the socket ``fd`` for ``limit`` seconds (default: the watchdog's)."""
        with self._cond:
            self._fd = fd
            self._deadline = self.clock() + (self.limit if limit is None else limit)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="store-watchdog",
                                                daemon=True)
                self._thread.start()
            elif self._deadline < self._wakes_at:
                self._cond.notify()

    def disarm(self) -> None:
        """The call ended in time: stop watching."""
        with self._cond:
            self._deadline = None
            self._fd = None

    def close(self) -> None:
        """Stop the watching thread."""
        with self._cond:
            self._closed = True
            self._deadline = None
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._wakes_at = math.inf
                    self._cond.wait()
                    continue
                left = self._deadline - self.clock()
                if left > 0:
                    self._wakes_at = self._deadline
                    self._cond.wait(left)
                    continue
                # Under the lock: disarm cannot run meanwhile, so the socket is
                # still the one of the call that overran (the store thread
                # closes a connection only after disarming).
                self._shutdown(self._fd)
                self.fired += 1
                self._deadline = None
                self._fd = None

    @staticmethod
    def _shutdown(fd: int | None) -> None:
        if fd is None or fd < 0:
            return
        try:
            # a socket object over a duplicate of the descriptor: shutdown acts
            # on the connection itself, closing the duplicate leaves libpq's fd
            sock = socket.socket(fileno=socket.dup(fd))
        except OSError:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()


def hung_up(db) -> bool:
    """Whether the server has hung up on the idle connection ``db`` (psycopg).

    Between calls the server sends nothing on it (the store never LISTENs), so
    anything to read -- end of file, a reset, a FATAL "terminating connection" --
    means it is gone; a rare stray message (a parameter change after a reload)
    only costs a reconnect. One non-blocking poll: no round trip."""
    try:
        ready, _, _ = select.select([db.fileno()], [], [], 0)
    except Exception:  # a closed descriptor (OSError, ValueError), or psycopg's error
        return True
    return bool(ready)
