"""The worker supervisor's decisions (restart, backoff, giving up, reload, stop, watchdog),
driven by a task.Clock and a recording fake for the worker processes."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from twisted.internet import task

from pushproxy import reuseport
from pushproxy.config import ConfigError, parse_config
from pushproxy.workers import RestartPolicy, Supervisor, WorkerProcess, worker_env


class FakeProcess:
    """Records the signals a worker got."""

    def __init__(self, index: int):
        self.index = index
        self.pid = 1000 + index
        self.signals: list[int] = []

    def signalProcess(self, sig):
        self.signals.append(sig)


class Harness:
    def __init__(self, count=2, **kwargs):
        self.clock = task.Clock()
        self.spawned: list[FakeProcess] = []
        self.notes: list[str] = []
        self.sup = Supervisor(self.clock, count, self.spawn, self.notes.append, **kwargs)

    def spawn(self, index, supervisor):
        process = FakeProcess(index)
        self.spawned.append(process)
        return process

    def ready_all(self):
        for slot in self.sup.slots:
            self.sup.message(slot.index, "READY=1\nSTATUS=serving")


def test_ready_is_announced_only_once_every_worker_is_ready():
    h = Harness(3)
    h.sup.start()
    assert [p.index for p in h.spawned] == [0, 1, 2]
    h.sup.message(0, "READY=1")
    h.sup.message(2, "READY=1")
    assert h.notes == []
    h.sup.message(1, "READY=1")
    assert h.notes == ["READY=1\nSTATUS=serving with 3 workers"]


def test_a_dead_worker_is_restarted_after_a_backoff_that_doubles_while_it_dies_young():
    h = Harness(2)
    h.sup.start()
    h.ready_all()
    h.clock.advance(100)
    h.sup.exited(1, None, signal.SIGKILL)  # ran long: first delay
    assert len(h.spawned) == 2
    h.clock.advance(0.49)
    assert len(h.spawned) == 2
    h.clock.advance(0.01)
    assert [p.index for p in h.spawned] == [0, 1, 1]
    delays = []
    for _ in range(3):  # ready, then dies within `stable` seconds: 1 s, 2 s, 4 s
        h.sup.message(1, "READY=1")
        h.clock.advance(1)
        h.sup.exited(1, 1, None)
        delays.append(h.sup.slots[1].pending_restart.getTime() - h.clock.seconds())
        h.clock.advance(delays[-1])
    assert delays == [1.0, 2.0, 4.0]
    assert h.sup.slots[1].restarts == 4
    h.sup.message(1, "READY=1")
    h.clock.advance(31)  # stable again: the backoff starts over
    h.sup.exited(1, None, signal.SIGKILL)
    assert h.sup.slots[1].pending_restart.getTime() - h.clock.seconds() == 0.5
    assert not h.sup.done.called


def test_the_backoff_is_capped():
    policy = RestartPolicy(first_delay=0.5, max_delay=30)
    assert [policy.delay(n) for n in (1, 2, 3, 7, 8, 50)] == [0.5, 1, 2, 30, 30, 30]


def test_workers_that_keep_dying_before_ready_make_the_supervisor_give_up_with_exit_1():
    h = Harness(2, policy=RestartPolicy(max_start_failures=3))
    h.sup.start()
    h.sup.message(0, "READY=1")
    for _ in range(2):
        h.sup.exited(1, 1, None)
        h.clock.advance(60)
    assert not h.sup.stopping
    h.sup.exited(1, 1, None)  # third death before READY in a row
    assert h.sup.stopping and h.spawned[0].signals == [signal.SIGTERM]
    assert h.sup.slots[1].pending_restart is None  # no restart after giving up
    h.sup.exited(0, 0, None)
    assert h.sup.done.called and h.sup.exit_code == 1
    assert "STOPPING=1" in h.notes


def test_a_death_after_ready_resets_the_start_failures():
    h = Harness(1, policy=RestartPolicy(max_start_failures=2))
    h.sup.start()
    h.sup.exited(0, 1, None)  # one start failure
    h.clock.advance(1)
    h.sup.message(0, "READY=1")
    h.sup.exited(0, None, signal.SIGKILL)  # died after being ready: not a start failure
    h.clock.advance(10)
    assert not h.sup.stopping and len(h.spawned) == 3


def test_sigterm_stops_every_worker_and_cancels_a_pending_restart_exit_0():
    h = Harness(2)
    h.sup.start()
    h.ready_all()
    h.sup.exited(1, None, signal.SIGKILL)
    done = h.sup.stop()
    assert h.spawned[0].signals == [signal.SIGTERM]
    h.clock.advance(10)
    assert len(h.spawned) == 2  # the pending restart was cancelled
    h.sup.exited(0, 0, None)
    assert done.called and h.sup.exit_code == 0
    assert h.notes[-1] == "STOPPING=1"


def test_a_worker_that_does_not_stop_in_time_is_killed_and_the_exit_code_says_so():
    h = Harness(1, stop_timeout=20)
    h.sup.start()
    h.ready_all()
    h.sup.stop()
    h.clock.advance(20)
    assert h.spawned[0].signals == [signal.SIGTERM, signal.SIGKILL]
    h.sup.exited(0, None, signal.SIGKILL)
    assert h.sup.done.called and h.sup.exit_code == 1


def test_reload_forwards_sighup_and_says_ready_once_every_worker_reloaded():
    h = Harness(2)
    h.sup.start()
    h.ready_all()
    h.notes.clear()
    h.sup.reload()
    assert h.notes[0].startswith("RELOADING=1")
    assert [p.signals for p in h.spawned] == [[signal.SIGHUP], [signal.SIGHUP]]
    h.sup.message(0, "READY=1")
    assert len(h.notes) == 1
    h.sup.message(1, "READY=1")
    assert h.notes[1].startswith("READY=1")


def test_reload_leaves_a_worker_that_is_still_starting_alone():
    h = Harness(2)
    h.sup.start()
    h.sup.message(0, "READY=1")  # worker 1 still starting: SIGHUP would kill it
    h.sup.reload()
    assert [p.signals for p in h.spawned] == [[signal.SIGHUP], []]
    h.sup.message(0, "READY=1")
    assert not any(n.startswith("READY=1") for n in h.notes)  # worker 1 is not ready yet
    h.sup.message(1, "READY=1")
    assert h.notes[-1].startswith("READY=1")


def test_the_watchdog_pings_only_while_every_worker_is_alive_and_pinging():
    h = Harness(2, watchdog=5, policy=RestartPolicy(first_delay=7))
    h.sup.start()
    h.ready_all()

    def tick(pinging=(0, 1)):
        for index in pinging:
            h.sup.message(index, "WATCHDOG=1")
        h.clock.advance(5)
        return h.notes.count("WATCHDOG=1")

    assert [tick(), tick(), tick()] == [1, 2, 3]
    h.sup.exited(1, None, signal.SIGKILL)  # at t=15; restarted when the clock passes 22
    assert tick(pinging=(0,)) == 3  # t=20: worker 1 is dead
    # t=25, 30, 35: worker 1 (re)started at most 10 s ago; then it never pings (wedged)
    assert [tick(pinging=(0,)) for _ in range(3)] == [4, 5, 6]
    assert [tick(pinging=(0,)) for _ in range(2)] == [6, 6]
    assert tick() == 7  # it pings again


def test_channel_messages_are_split_on_blank_lines_whatever_the_chunks():
    h = Harness(1)
    h.sup.start()
    proto = WorkerProcess(0, h.sup)
    for chunk in (b"READY=1\nSTA", b"TUS=serving\n", b"\nWATCHDOG=1\n\n"):
        proto.childDataReceived(3, chunk)
    proto.childDataReceived(1, b"READY=1\n\n")  # not the channel: ignored
    assert h.sup.slots[0].ready
    assert h.notes == ["READY=1\nSTATUS=serving with 1 workers"]


def test_workers_never_get_the_notify_socket_or_the_watchdog_pid():
    env = worker_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_PID": "1", "WATCHDOG_USEC": "3",
                      "PATH": "/bin"})
    assert env == {"WATCHDOG_USEC": "3", "PATH": "/bin", "PYTHONUNBUFFERED": "1",
                   "PUSHPROXY_SUPERVISOR_PID": str(os.getpid())}


def test_reuseport_sockets_share_a_udp_port_while_a_plain_bind_is_refused():
    first = reuseport.bound_socket("127.0.0.1", 0, socket.SOCK_DGRAM)
    port = first.getsockname()[1]
    second = reuseport.bound_socket("127.0.0.1", port, socket.SOCK_DGRAM)
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    finally:
        for s in (first, second, plain):
            s.close()


BASE = """\
radius:
  listen: ["127.0.0.1:{radius}"]
  clients: [{{name: nas, address: 127.0.0.1, secret_env: NAS_SECRET}}]
ldap:
  servers: ["ldap://127.0.0.1:389"]
  bind_template: "uid={{{{username}}}},ou=people,dc=example,dc=com"
  user_base: "ou=people,dc=example,dc=com"
approval:
  listen: "127.0.0.1:{http}"
  public_url: "https://mfa.example.com"
  database: {database}
daemon:
  workers: {workers}
  metrics_listen: "127.0.0.1:{metrics}"
"""


def config(workers=2, radius=1812, http=8443, metrics=9812, database="pushproxy.db"):
    text = BASE.format(workers=workers, radius=radius, http=http, metrics=metrics,
                       database=database)
    return parse_config(text, base_dir=".", env={"NAS_SECRET": "0123456789abcdef"},
                        source="test.yaml")


def problems(**kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(**kwargs)
    return info.value.problems


def test_workers_config_is_validated():
    assert config().daemon.workers == 2
    assert config(workers=1, radius=0, database='":memory:"').daemon.workers == 1
    assert any("daemon.workers: must be at most 64" in p for p in problems(workers=65))
    assert any("daemon.workers: must be at least 1" in p for p in problems(workers=0))
    assert any("daemon.workers: must be a whole number" in p for p in problems(workers=1.5))
    found = problems(radius=0, http=0, metrics=0)
    for path in ("radius.listen", "approval.listen", "daemon.metrics_listen"):
        assert any(p.startswith(path) and "port 0" in p for p in found), found
    assert any("above 65535" in p for p in problems(metrics=65535))
    assert any(":memory:" in p for p in problems(database='":memory:"'))
