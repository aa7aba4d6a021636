"""The notification bus of cluster mode: "something changed, read the store again".

Events are ``(kind, key)`` pairs of text; the store stays the only truth. An event
is a hint to re-read a row (a waiter's transaction, a user's pending list), never
data that decides anything, so a lost, late, duplicated or forged event can make
a login wait until its next event or timeout, never decide it. Kinds:

- ``created``, key a username: a push for the user was opened (wake long-polls);
- ``decided``, key a txid: the transaction reached a final state (answered,
  expired, cancelled): release its waiters;
- ``closed``, key a username: one of the user's pending pushes closed (a
  long-polling device drops it from its list).

Notifications are lost while a bus is disconnected, so every bus calls its
``resync`` callbacks after it (re)connects: subscribers re-read what they wait on.
While it is down, its ``on_state`` callbacks have been told (``False``), so a
subscriber can poll the store instead (the approval service does,
`pushproxy.approval.clusterside`); ``True`` when it is back. Each transition is
one log line (``bus.disconnected``, ``bus.reconnected``), not one per retry.

Three buses, one interface (`Bus`):

- `PostgresBus`: ``LISTEN pushproxy`` on a dedicated connection watched by a
  thread, events handed to the reactor with ``callFromThread``; it reconnects
  with backoff. The store publishes with ``pg_notify`` inside the transaction
  that makes the change (`pushproxy.approval.clusterstore`), so a notification
  never precedes its commit: ``store_notifies`` is True and `publish` does nothing.
- `UnixBus`: worker processes of one node over one SQLite file; one UNIX
  datagram socket per worker in the database's folder (mode 0600); publish
  sends to every other worker's socket after the commit.
- `LocalBus`: one process; events go to its own subscribers on the next turn
  of the reactor.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import threading
import time
from typing import Callable, Protocol

from pushproxy import logs

log = logging.getLogger("pushproxy.approval.notify")

CHANNEL = "pushproxy"  # the LISTEN/NOTIFY channel (clusterstore.CHANNEL)
KINDS = ("created", "decided", "closed", "device")  # device <id>: revoked, drop it from caches
MAX_EVENT = 1024  # bytes of one event; longer ones are dropped (keys are ids and usernames)
BACKOFF_FIRST = 0.2  # seconds before the first reconnect attempt
BACKOFF_MAX = 5.0

Callback = Callable[[str, str], None]


def encode(kind: str, key: str) -> str:
    """The wire form of an event: "kind key" (the key may hold spaces)."""
    return f"{kind} {key}"


def decode(payload: str) -> tuple[str, str] | None:
    """``(kind, key)`` from the wire form, or None if it is not an event of a known kind."""
    kind, sep, key = payload.partition(" ")
    if not sep or kind not in KINDS or not key:
        return None
    return kind, key


class Bus(Protocol):
    """What the approval service needs of a bus."""

    store_notifies: bool  # the store announces its own changes (no publish needed)

    def publish(self, kind: str, key: str) -> None:
        """Tell the other processes (after the change was committed)."""

    def subscribe(self, callback: Callback) -> None:
        """Call ``callback(kind, key)`` on the reactor thread for every event received."""

    def on_resync(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every (re)connect: events may have been lost."""

    def start(self) -> None:
        """Begin receiving."""

    def stop(self) -> None:
        """Stop receiving and release what the bus holds."""


class _Subscribers:
    """Subscriber lists shared by the buses; a failing callback is logged, not fatal."""

    store_notifies = False

    connected = True  # LocalBus, UnixBus: nothing to lose (PostgresBus tracks it)
    reconnects = 0

    def __init__(self, counters=None):
        self._callbacks: list[Callback] = []
        self._resyncs: list[Callable[[], None]] = []
        self._states: list[Callable[[bool], None]] = []
        self.counters = counters
        self.received = 0
        self.resyncs = 0

    def on_state(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(connected)`` on the reactor thread when the bus goes down
        (False) or comes back (True)."""
        self._states.append(callback)

    def _state(self, connected: bool) -> None:
        for callback in list(self._states):
            try:
                callback(connected)
            except Exception:
                log.exception("bus.state_callback_failed")

    def subscribe(self, callback: Callback) -> None:
        """Call ``callback(kind, key)`` for every event received."""
        self._callbacks.append(callback)

    def on_resync(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every (re)connect."""
        self._resyncs.append(callback)

    def _deliver(self, payload: str) -> None:
        event = decode(payload)
        if event is None:
            self._count("dropped")
            logs.event(log, logging.WARNING, "bus.bad_event", size=len(payload))
            return
        self.received += 1
        self._count("received")
        for callback in list(self._callbacks):
            try:
                callback(*event)
            except Exception:  # a bug in one subscriber must not silence the others
                log.exception("bus.subscriber_failed")

    def _resync(self) -> None:
        self.resyncs += 1
        for callback in list(self._resyncs):
            try:
                callback()
            except Exception:
                log.exception("bus.resync_failed")

    def _count(self, outcome: str) -> None:
        if self.counters is not None:
            self.counters.inc("bus_events", outcome=outcome)


class LocalBus(_Subscribers):
    """One process: events go to this process's subscribers on the next reactor turn."""

    def __init__(self, reactor, counters=None):
        super().__init__(counters)
        self.reactor = reactor

    def publish(self, kind: str, key: str) -> None:
        """Deliver to the subscribers, later (never inside the publisher's call)."""
        self.reactor.callLater(0, self._deliver, encode(kind, key))

    def start(self) -> None:
        """Nothing to connect; subscribers resync once, like after a connect."""
        self.reactor.callLater(0, self._resync)

    def stop(self) -> None:
        """Nothing to release."""


class PostgresBus(_Subscribers):
    """LISTEN on a dedicated PostgreSQL connection, watched by a thread of its own."""

    store_notifies = True

    def __init__(self, url: str, reactor, *, password: str | None = None,
                 connect_timeout: float = 2.0, counters=None):
        super().__init__(counters)
        self.url = url
        self.password = password
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = None
        self.connected = False  # LISTENing now (read by /healthz and /metrics)
        self.reconnects = 0  # times it came back after being lost
        self._lost_at: float | None = None  # monotonic time it was lost (thread only)

    def publish(self, kind: str, key: str) -> None:
        """Nothing: the store announced the change in its own transaction."""

    def start(self) -> None:
        """Start the listening thread (it connects, LISTENs, then resyncs)."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="pushproxy-bus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (it waits for notifications a second at a time) and close
        the connection."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _connect(self):
        import psycopg

        extra = {"password": self.password} if self.password is not None else {}
        ms = max(2000, int(self.connect_timeout * 1000))
        return psycopg.connect(
            self.url, autocommit=True, application_name="pushproxy-bus",
            connect_timeout=max(2, math.ceil(self.connect_timeout)),
            # a silent network is noticed within seconds (no notifications would come)
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
            tcp_user_timeout=ms, **extra)

    def _run(self) -> None:
        import psycopg

        delay = BACKOFF_FIRST
        while not self._stopping.is_set():
            try:
                self._conn = self._connect()
                self._conn.execute(f"LISTEN {CHANNEL}")
                self.connected = True
                delay = BACKOFF_FIRST
                if self._lost_at is None:
                    logs.event(log, logging.INFO, "bus.listening", channel=CHANNEL)
                else:
                    down = time.monotonic() - self._lost_at
                    self._lost_at = None
                    self.reactor.callFromThread(self._back, down, self._server())
                # after LISTEN: whatever changed before it is found by re-reading
                self.reactor.callFromThread(self._resync)
                while not self._stopping.is_set():
                    for note in self._conn.notifies(timeout=1.0):
                        if len(note.payload) <= MAX_EVENT:
                            self.reactor.callFromThread(self._deliver, note.payload)
                        if self._stopping.is_set():
                            break
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    break
                first = self._lost_at is None
                if first:
                    self._lost_at = time.monotonic()
                self.connected = False  # before the callback: /healthz reads it
                self.reactor.callFromThread(self._lost, _one_line(exc), delay, first)
                self._stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            finally:
                self.connected = False
                conn, self._conn = self._conn, None
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass

    def _server(self) -> str:
        # which server it reached (after a failover: the new primary), for the log
        try:
            return f"{self._conn.info.host}:{self._conn.info.port}"
        except Exception:
            return "?"

    def _lost(self, error: str, delay: float, first: bool) -> None:
        # one warning per transition; each failed retry is only counted
        self._count("disconnected" if first else "retry_failed")
        if first:
            logs.event(log, logging.WARNING, "bus.disconnected", error=error, retry_s=delay)
            self._state(False)
        else:
            logs.event(log, logging.DEBUG, "bus.retry_failed", error=error, retry_s=delay)

    def _back(self, down: float, server: str) -> None:
        self.reconnects += 1
        if self.counters is not None:
            self.counters.inc("bus_reconnects")
        logs.event(log, logging.INFO, "bus.reconnected", channel=CHANNEL, server=server,
                   down_s=round(down, 3))
        self._state(True)


def _one_line(exc: Exception) -> str:
    # libpq's message may span lines (one per host of a multi-host URL)
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text[:300]


def _socket_path(folder: str, index: int) -> str:
    return os.path.join(folder, f".pushproxy-bus-{index}.sock")


class UnixBus(_Subscribers):
    """Worker processes of one node: one UNIX datagram socket per worker, mode 0600.

    ``folder`` is the SQLite database's folder (only the daemon's user may write
    there); worker ``index`` of ``count`` listens on its own socket and publishes
    to every other worker's. A worker that is down misses events: it resyncs
    when it starts."""

    def __init__(self, folder: str, index: int, count: int, reactor, counters=None):
        super().__init__(counters)
        self.folder = folder
        self.index = index
        self.count = count
        self.reactor = reactor
        self.path = _socket_path(folder, index)
        self._port = None
        self._sender: socket.socket | None = None

    def start(self) -> None:
        """Bind this worker's socket (replacing a dead predecessor's), then resync."""
        from twisted.internet.protocol import DatagramProtocol

        bus = self

        class Receiver(DatagramProtocol):
            def datagramReceived(self, data, addr):
                if len(data) > MAX_EVENT:
                    bus._count("dropped")
                    return
                bus._deliver(data.decode("utf-8", "replace"))

        try:
            os.unlink(self.path)  # a crashed worker's socket: nobody listens on it
        except FileNotFoundError:
            pass
        self._port = self.reactor.listenUNIXDatagram(self.path, Receiver(), mode=0o600)
        os.chmod(self.path, 0o600)
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self.reactor.callLater(0, self._resync)

    def publish(self, kind: str, key: str) -> None:
        """Send the event to every other worker's socket (a dead or busy worker misses
        it: it resyncs when it starts, and every event is only a hint)."""
        data = encode(kind, key).encode("utf-8")
        if len(data) > MAX_EVENT or self._sender is None:
            self._count("dropped")
            return
        for other in range(self.count):
            if other == self.index:
                continue
            try:
                self._sender.sendto(data, _socket_path(self.folder, other))
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN,
                                     errno.ENOBUFS):
                    logs.event(log, logging.WARNING, "bus.send_failed", worker=other,
                               error=str(exc))
                self._count("unsent")

    def stop(self) -> None:
        """Close both sockets and remove this worker's socket file."""
        if self._port is not None:
            self._port.stopListening()
            self._port = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self._sender is not None:
            self._sender.close()
            self._sender = None
