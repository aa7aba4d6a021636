"""The notification buses (pushproxy.approval.notify): the PostgreSQL bus receives what
another connection notifies and resyncs after its connection is killed; the UNIX-socket
bus carries events between workers (sockets mode 0600); the in-process bus."""

import os
import queue
import stat

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from pushproxy.approval import notify
from tests.pg import PASSWORD


class QueueReactor:
    """Just enough reactor for the PostgreSQL bus: callFromThread lands in a queue."""

    def __init__(self):
        self.calls = queue.Queue()

    def callFromThread(self, f, *args):
        self.calls.put((f, args))

    def run_until(self, predicate, timeout=10.0):
        """Run the queued calls until ``predicate()`` holds (or fail after ``timeout``)."""
        import time

        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            assert remaining > 0, "timed out"
            try:
                f, args = self.calls.get(timeout=remaining)
            except queue.Empty:
                continue
            f(*args)


def test_encode_decode_round_trip_and_junk_is_refused():
    assert notify.decode(notify.encode("decided", "tx 1")) == ("decided", "tx 1")
    for junk in ("", "decided", "decided ", "nope key", " key"):
        assert notify.decode(junk) is None


@pytest.fixture
def pg_url(postgres):
    return postgres.url("postgres")


def test_postgres_bus_receives_another_connections_notify_and_resyncs_after_kill(pg_url):
    fake = QueueReactor()
    bus = notify.PostgresBus(pg_url, fake, password=PASSWORD)
    got, resyncs = [], []
    bus.subscribe(lambda kind, key: got.append((kind, key)))
    bus.on_resync(lambda: resyncs.append(1))
    bus.start()
    try:
        fake.run_until(lambda: resyncs)
        with psycopg.connect(pg_url, password=PASSWORD, autocommit=True) as other:
            with other.transaction():
                other.execute("SELECT pg_notify('pushproxy', 'created alice')")
                other.execute("SELECT pg_notify('pushproxy', 'not-a-kind x')")
                other.execute("SELECT pg_notify('pushproxy', 'decided t1')")
            fake.run_until(lambda: len(got) == 2)
            assert got == [("created", "alice"), ("decided", "t1")]
            # the listener's connection dies: the bus reconnects and resyncs
            killed = other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = 'pushproxy-bus'").fetchall()
            assert killed == [(True,)]
            fake.run_until(lambda: len(resyncs) == 2)
            other.execute("SELECT pg_notify('pushproxy', 'closed alice')")
            fake.run_until(lambda: len(got) == 3)
        assert got[-1] == ("closed", "alice")
        assert bus.store_notifies
    finally:
        bus.stop()


def test_postgres_bus_keeps_retrying_an_unreachable_server(postgres):
    fake = QueueReactor()
    from tests.pg import free_port

    bus = notify.PostgresBus(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", fake,
                             password=PASSWORD, counters=None)
    lost = []
    bus._lost = lambda error, delay, first: lost.append((delay, first))
    bus.start()
    try:
        fake.run_until(lambda: len(lost) >= 3)
        assert lost[:3] == [(0.2, True), (0.4, False), (0.8, False)]  # backoff
        assert not bus.connected
    finally:
        bus.stop()


def test_postgres_bus_reports_each_transition_once_across_a_server_restart(postgres):
    """PostgreSQL stopped: one ``False`` (however many retries fail), ``connected`` off;
    started again: one ``True``, a reconnect counted, and a resync."""
    from pushproxy.metrics import Counters

    fake = QueueReactor()
    counters = Counters()
    bus = notify.PostgresBus(postgres.url("postgres"), fake, password=PASSWORD,
                             counters=counters)
    states, resyncs = [], []
    bus.on_state(states.append)
    bus.on_resync(lambda: resyncs.append(1))
    bus.start()
    try:
        fake.run_until(lambda: resyncs)
        assert bus.connected and states == []
        postgres.stop("fast")
        try:
            fake.run_until(lambda: counters.get("bus_events", outcome="retry_failed") >= 2)
            assert states == [False] and not bus.connected
            assert counters.get("bus_events", outcome="disconnected") == 1
        finally:
            postgres.start()
        fake.run_until(lambda: len(resyncs) == 2, timeout=20)
        assert states == [False, True] and bus.connected
        assert bus.reconnects == 1 and counters.get("bus_reconnects") == 1
    finally:
        bus.stop()


@pytest_twisted.inlineCallbacks
def test_unix_bus_carries_events_between_workers_not_to_the_sender(tmp_path):
    buses = [notify.UnixBus(str(tmp_path), i, 3, reactor) for i in range(3)]
    got = {i: [] for i in range(3)}
    resynced = []
    for i, bus in enumerate(buses):
        bus.subscribe(lambda kind, key, i=i: got[i].append((kind, key)))
        bus.on_resync(lambda i=i: resynced.append(i))
        bus.start()
    try:
        for bus in buses:
            assert stat.S_IMODE(os.stat(bus.path).st_mode) == 0o600
        buses[0].publish("decided", "t1")
        buses[2].publish("created", "bob smith")
        for _ in range(100):
            if len(got[1]) == 2 and got[0] and len(got[2]) == 1:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        assert got[0] == [("created", "bob smith")]
        assert sorted(got[1]) == [("created", "bob smith"), ("decided", "t1")]
        assert got[2] == [("decided", "t1")]
        assert sorted(resynced) == [0, 1, 2]
    finally:
        for bus in buses:
            bus.stop()
    assert not any(os.path.exists(b.path) for b in buses)


@pytest_twisted.inlineCallbacks
def test_unix_bus_publish_to_a_dead_worker_is_not_an_error_and_a_restart_replaces_it(tmp_path):
    alive = notify.UnixBus(str(tmp_path), 0, 2, reactor)
    alive.start()
    try:
        alive.publish("decided", "t1")  # worker 1 is not running: dropped, no error
        # a crashed worker 1 left its socket file behind: the new one replaces it
        (tmp_path / ".pushproxy-bus-1.sock").write_bytes(b"")
        second = notify.UnixBus(str(tmp_path), 1, 2, reactor)
        got = []
        second.subscribe(lambda kind, key: got.append(key))
        second.start()
        try:
            alive.publish("decided", "t2")
            for _ in range(100):
                if got:
                    break
                yield task.deferLater(reactor, 0.01, lambda: None)
            assert got == ["t2"]
        finally:
            second.stop()
    finally:
        alive.stop()


def test_local_bus_delivers_later_and_resyncs_at_start():
    clock = task.Clock()
    bus = notify.LocalBus(clock)
    got, resyncs = [], []
    bus.subscribe(lambda kind, key: got.append((kind, key)))
    bus.on_resync(lambda: resyncs.append(1))
    bus.start()
    bus.publish("created", "alice")
    assert got == [] and resyncs == []  # never inside the publisher's call
    clock.advance(0)
    assert got == [("created", "alice")] and resyncs == [1]


def test_a_failing_subscriber_does_not_silence_the_others():
    clock = task.Clock()
    bus = notify.LocalBus(clock)
    got = []
    bus.subscribe(lambda kind, key: 1 / 0)
    bus.subscribe(lambda kind, key: got.append(key))
    bus.publish("decided", "t1")
    clock.advance(0)
    assert got == ["t1"]
