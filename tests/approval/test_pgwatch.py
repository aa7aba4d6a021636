"""The store's watchdog shuts down the socket of an overrunning call, and only that."""

import socket
import time

from pushproxy.approval.pgwatch import Watchdog


class StepClock:
    """The watchdog's clock, moved only by the test: however slow the machine, no
    limit passes between two lines of the test unless the test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_overrunning_call_has_its_socket_shut_down_and_a_disarmed_one_not():
    clock = StepClock()
    dog = Watchdog(0.05, clock=clock)
    ours, theirs = socket.socketpair()
    try:
        dog.arm(ours.fileno(), limit=0.5)
        dog.disarm()  # ended in time
        clock.now = 10.0  # far past that limit: a disarmed call is never cut
        time.sleep(0.8)  # the watching thread looks again meanwhile (past its 0.5 s wait)
        assert dog.fired == 0
        theirs.sendall(b"x")
        assert ours.recv(1) == b"x"  # still open
        dog.arm(ours.fileno())
        clock.now = 20.0  # this call overruns
        ours.settimeout(10)
        assert ours.recv(1) == b""  # a blocked read returns: the socket was shut down
        end = time.monotonic() + 10  # counted just after the shutdown, on its thread
        while dog.fired == 0 and time.monotonic() < end:
            time.sleep(0.01)
        assert dog.fired == 1
    finally:
        dog.close()
        ours.close()
        theirs.close()


def test_a_longer_limit_for_one_call():
    dog = Watchdog(0.01)
    ours, theirs = socket.socketpair()
    try:
        dog.arm(ours.fileno(), limit=30)
        time.sleep(0.2)
        assert dog.fired == 0
        dog.disarm()
    finally:
        dog.close()
        ours.close()
        theirs.close()


def test_a_shorter_limit_after_a_long_one_is_still_kept():
    """``arm`` leaves a sleeping watcher alone only while it would wake in time: a
    call armed with a shorter limit than the one it sleeps for (a migration's long
    limit, then a login's call) wakes it, and an overrun is cut at the new limit."""
    clock = StepClock()
    dog = Watchdog(0.05, clock=clock)
    ours, theirs = socket.socketpair()
    try:
        dog.arm(ours.fileno(), limit=600)
        time.sleep(0.2)  # the watcher sleeps until that deadline
        dog.disarm()
        dog.arm(ours.fileno())  # 0.05 s of the step clock
        clock.now = 20.0
        ours.settimeout(10)  # far less than the 600 s the watcher slept for
        assert ours.recv(1) == b""
    finally:
        dog.close()
        ours.close()
        theirs.close()
