"""Admission control (issue 22): while a queue is over its bound new RADIUS requests are
shed (not answered, not remembered), admitted again once it drains, and a store that is
failing rather than busy is never a reason to shed (push.failmode must decide those)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from pushproxy.decision import PushStatus
from pushproxy.overload import (Admission, Load, LoopLag, OverloadLimits, ShedReason,
                                shed_reason)
from tests.test_config import ENV, GOOD, parse, problems
from tests.test_radius_server import NAS, make, request, verify

LIMITS = OverloadLimits(max_pending=100, store_queue=50, store_age=0.5, ldap_queue=20,
                        loop_lag=0.5)


class FakeRunner:
    """What admission reads of the store runner; the test sets the figures."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.queued: list[float] = []  # submission times of unfinished calls
        self.head_started: float | None = None
        self.fault = False

    def depth(self) -> int:
        return len(self.queued)

    def age(self) -> float:
        return self.clock.seconds() - self.queued[0] if self.queued else 0.0

    def running_for(self) -> float:
        return 0.0 if self.head_started is None else self.clock.seconds() - self.head_started

    def faulty(self) -> bool:
        return self.fault


def test_shed_reason_names_each_bound_and_admits_below_them():
    assert shed_reason(Load(), LIMITS) is None
    assert shed_reason(Load(pending=100), LIMITS) is ShedReason.MAX_PENDING
    assert shed_reason(Load(store_queue=50), LIMITS) is ShedReason.STORE_QUEUE
    assert shed_reason(Load(store_age=0.5), LIMITS) is ShedReason.STORE_AGE
    assert shed_reason(Load(ldap_queue=20), LIMITS) is ShedReason.LDAP_QUEUE
    assert shed_reason(Load(loop_lag=0.6), LIMITS) is ShedReason.LOOP_LAG
    assert shed_reason(Load(pending=99, store_queue=49, store_age=0.49, ldap_queue=19,
                            loop_lag=0.49), LIMITS) is None


def test_a_failing_or_stuck_store_is_not_load():
    """A long store queue behind a stuck or failing store is a fault: no shedding,
    so those logins reach the runner's bound and push.failmode."""
    assert shed_reason(Load(store_queue=500, store_age=3.0, store_faulty=True), LIMITS) is None
    assert shed_reason(Load(store_queue=500, store_age=3.0, store_running=0.6), LIMITS) is None
    # ...but other queues still count
    assert shed_reason(Load(store_faulty=True, ldap_queue=20), LIMITS) is ShedReason.LDAP_QUEUE


def test_admission_sheds_while_the_store_queue_is_old_and_admits_again_after():
    clock = Clock()
    runner = FakeRunner(clock)
    admission = Admission(LIMITS, pending=lambda: 0, store=runner)
    runner.queued = [clock.seconds()]
    runner.head_started = clock.seconds()
    assert admission.check() is None
    clock.advance(0.3)
    runner.head_started = clock.seconds()  # quick calls keep finishing: progress
    clock.advance(0.3)
    assert admission.check() is ShedReason.STORE_AGE
    runner.queued = []
    runner.head_started = None
    assert admission.check() is None


def test_admission_sheds_on_store_depth_and_ldap_queue():
    clock = Clock()
    runner = FakeRunner(clock)
    ldap = [0]
    admission = Admission(LIMITS, pending=lambda: 0, store=runner, ldap_queue=lambda: ldap[0])
    runner.queued = [clock.seconds()] * 50
    assert admission.check() is ShedReason.STORE_QUEUE
    runner.fault = True
    assert admission.check() is None
    runner.queued, runner.fault = [], False
    ldap[0] = 25
    assert admission.check() is ShedReason.LDAP_QUEUE
    ldap[0] = 3
    assert admission.check() is None


def test_a_request_shed_long_ago_is_served_before_newcomers_and_no_bound_is_exceeded():
    """Fairness under a long storm: a resend of a request first shed at least
    ELDER_AFTER s ago may fill the queue to its bound; a newcomer only to
    NEWCOMER_SHARE of it. Without this, which request got in was luck, and some
    logins were shed for over a minute while newer ones got in."""
    clock = Clock()
    ldap = [0]
    admission = Admission(LIMITS, pending=lambda: 0, ldap_queue=lambda: ldap[0])
    old, new = ("10.0.0.1", 1812, 7, b"a" * 16), ("10.0.0.1", 1812, 8, b"b" * 16)
    ldap[0] = 20  # at the bound: everybody is shed
    assert admission.admit(old, clock.seconds()) is ShedReason.LDAP_QUEUE
    assert admission.waiting == 1
    clock.advance(Admission.ELDER_AFTER)
    ldap[0] = 17  # between 80 % and 100 % of the bound
    assert admission.admit(new, clock.seconds()) is ShedReason.LDAP_QUEUE  # newcomer
    assert admission.admit(old, clock.seconds()) is None  # the elder's resend gets in
    assert admission.waiting == 1  # admitted: forgotten (the newcomer is remembered)
    ldap[0] = 20
    clock.advance(Admission.ELDER_AFTER)
    assert admission.admit(new, clock.seconds()) is ShedReason.LDAP_QUEUE  # the bound holds
    ldap[0] = 3
    other = ("10.0.0.2", 1812, 1, b"c" * 16)
    assert admission.admit(other, clock.seconds()) is None  # quiet: everyone gets in


def test_shed_requests_are_remembered_bounded_in_number_and_time():
    clock = Clock()
    admission = Admission(LIMITS, pending=lambda: 0, ldap_queue=lambda: 99)
    admission.REMEMBER_MAX = 3
    for i in range(5):
        admission.admit(("10.0.0.1", 1, i, b"x"), clock.seconds())
    assert admission.waiting == 3
    clock.advance(Admission.REMEMBER)
    admission.admit(("10.0.0.1", 1, 99, b"x"), clock.seconds())
    assert admission.waiting == 1  # the expired ones went with the next shed


def test_loop_lag_sheds_on_sustained_lag_not_on_one_stall():
    clock = Clock()
    lag = LoopLag(clock, every=0.1)
    lag.start()
    clock.advance(0.1)
    assert lag.lag() == 0.0
    admission = Admission(LIMITS, pending=lambda: 0, lag=lag)
    clock.advance(0.9)  # one stall: the tick due at 0.2 runs at 1.0
    assert lag.last == pytest.approx(0.8)
    assert admission.check() is None
    for _ in range(10):  # the loop keeps running every timer 0.9 s late
        clock.advance(1.0)
    assert admission.check() is ShedReason.LOOP_LAG
    for _ in range(30):  # on time again
        clock.advance(0.1)
    assert lag.lag() < 0.05 and admission.check() is None
    lag.stop()


def test_one_long_stall_on_an_idle_daemon_sheds_nothing():
    """A 3 s blocking call makes one tick 3 s late: not a saturated loop (seen in CI:
    a moving average shed the next request on a daemon with nothing pending)."""
    clock = Clock()
    lag = LoopLag(clock, every=0.1)
    lag.start()
    admission = Admission(LIMITS, pending=lambda: 0, lag=lag)
    for _ in range(10):
        clock.advance(0.1)
    clock.advance(3.0)
    assert lag.last == pytest.approx(2.9)
    assert admission.check() is None
    for _ in range(3):  # the ticks right after it are on time
        clock.advance(0.1)
        assert admission.check() is None
    lag.stop()


def test_daemon_overload_config_is_validated_with_every_problem_named(tmp_path):
    base = GOOD + "daemon:\n  overload:\n"
    config = parse(base + "    store_age: 0.25\n    ldap_queue: 300\n", tmp_path, ENV)
    assert config.daemon.overload == OverloadLimits(store_age=0.25, ldap_queue=300)
    assert parse(GOOD, tmp_path, ENV).daemon.overload == OverloadLimits()
    found = "\n".join(problems(base + "    store_queue: 0\n    loop_lag: x\n    nope: 1\n",
                                tmp_path, ENV))
    for path in ("daemon.overload.store_queue", "daemon.overload.loop_lag", "nope"):
        assert path in found


def test_a_shed_request_is_not_answered_nor_remembered_and_its_retransmit_is_served():
    """Shed while busy: no reply, counted by reason; the NAS's retransmit (same id and
    authenticator) after the queue drained is a new request and gets its answer."""
    proto, clock = make()
    runner = FakeRunner(clock)
    proto.admission = Admission(LIMITS, pending=lambda: proto.engine.pending, store=runner)
    runner.queued = [clock.seconds()] * 60
    pkt, raw = request()
    proto.datagramReceived(raw, NAS)
    assert proto.transport.sent == []
    assert proto.counters.get("radius_overloaded", reason="store_queue") == 1
    assert proto.counters.get("radius_drops", reason="overloaded") == 1
    assert proto.engine.pending == 0  # nothing started
    clock.advance(3)
    runner.queued = []
    proto.datagramReceived(raw, NAS)  # the NAS retransmits
    assert proto.engine.pending == 1
    proto.engine.provider.answer(status=PushStatus.APPROVED)
    (data, _), = proto.transport.sent
    assert verify(pkt, data).code == 2  # Access-Accept
    assert proto.counters.get("radius_overloaded", reason="store_queue") == 1


def test_logins_already_admitted_finish_while_new_ones_are_shed():
    proto, clock = make()
    runner = FakeRunner(clock)
    proto.admission = Admission(LIMITS, pending=lambda: proto.engine.pending, store=runner)
    first, raw1 = request(ident=1)
    proto.datagramReceived(raw1, NAS)
    runner.queued = [clock.seconds()] * 60
    _, raw2 = request(user="bob", password="bob-pw", ident=2)
    proto.datagramReceived(raw2, NAS)
    assert proto.engine.pending == 1
    proto.engine.provider.answer(status=PushStatus.APPROVED)
    (data, _), = proto.transport.sent
    assert verify(first, data).code == 2
