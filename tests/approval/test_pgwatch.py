"""The store's watchdog shuts down the socket of an overrunning call, and only that."""

import socket
import time

from pushproxy.approval.pgwatch import Watchdog


def test_an_overrunning_call_has_its_socket_shut_down_and_a_disarmed_one_not():
    dog = Watchdog(0.05)
    ours, theirs = socket.socketpair()
    try:
        # A limit long enough that a busy machine cannot overrun it between the
        # two calls; the sleep then outlasts it, so only disarm keeps the socket.
        dog.arm(ours.fileno(), limit=0.5)
        dog.disarm()  # ended in time
        time.sleep(0.8)
        assert dog.fired == 0
        theirs.sendall(b"x")
        assert ours.recv(1) == b"x"  # still open
        dog.arm(ours.fileno())
        ours.settimeout(10)
        assert ours.recv(1) == b""  # a blocked read returns: the socket was shut down
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
