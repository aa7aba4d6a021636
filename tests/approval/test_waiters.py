"""Waiting for a decision (pushproxy.approval.waiters) with a Clock and an in-memory
store: a decision whose event was lost is found at the deadline or on resync; an
expired, cancelled or unknown transaction; what a stored row means for the login."""

from twisted.internet.task import Clock

from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.store import Device, SQLiteStore, Transaction
from pushproxy.approval.waiters import DEADLINE_GRACE, Waiters, result_of
from pushproxy.decision import PushResult, PushStatus

T0 = 1_800_000_000.0


def tx(state="pending", outcome=None, code=None, expires=T0 + 60):
    return Transaction("t1", "alice", "n", {}, T0, expires, state, "dev1" if outcome else None,
                       None, outcome=outcome, code=code)


def test_result_of_each_state():
    assert result_of(tx(), T0) is None
    assert result_of(tx(), T0 + 60).status is PushStatus.TIMEOUT
    assert result_of(tx("approved", "approved", "123456"), T0) == \
        PushResult(PushStatus.APPROVED, "t1", "dev1", code="123456")
    assert result_of(tx("denied", "number_mismatch"), T0).status is PushStatus.NUMBER_MISMATCH
    assert result_of(tx("denied", "denied", "123456"), T0).code is None
    assert result_of(tx("fraud", "some-future-outcome"), T0).status is PushStatus.FRAUD
    assert result_of(tx("expired"), T0).status is PushStatus.TIMEOUT
    assert result_of(tx("cancelled"), T0).status is PushStatus.UNAVAILABLE


def setup():
    clock = Clock()
    clock.advance(T0)
    store = SQLiteStore(":memory:")
    store.create_enrollment("alice", "h", T0, T0 + 900)
    store.redeem_enrollment("h", T0, Device("dev1", "alice", "p", "K", None, T0, None, None))
    store.open_or_join_transaction(tx(), "a/0", None, T0)
    withdrawn = []
    waiters = Waiters(AsyncStore.inline(store), clock, clock.seconds, "a/0", withdrawn.append)
    return clock, store, waiters, withdrawn


def test_a_decision_whose_event_was_lost_is_found_on_resync():
    clock, store, waiters, _ = setup()
    got = []
    waiters.add("t1", T0 + 60).addCallback(got.append)
    store.answer_transaction("t1", "approved", "dev1", T0 + 1, "approved", None)
    assert got == []  # no event came
    waiters.recheck_all()
    assert got[0].status is PushStatus.APPROVED


def test_an_open_transaction_nobody_closed_times_out_at_its_deadline():
    clock, store, waiters, _ = setup()
    got = []
    waiters.add("t1", T0 + 60).addCallback(got.append)
    clock.advance(59)
    assert got == []
    clock.advance(1 + DEADLINE_GRACE)
    assert got[0].status is PushStatus.TIMEOUT


def test_cancelling_the_last_waiter_withdraws_and_an_unknown_txid_is_unavailable():
    clock, store, waiters, withdrawn = setup()
    first, second = waiters.add("t1", T0 + 60), waiters.add("t1", T0 + 60)
    first.addErrback(lambda f: None)
    second.addErrback(lambda f: None)
    first.cancel()
    assert withdrawn == []
    second.cancel()
    assert withdrawn == ["t1"] and len(waiters) == 0
    got = []
    waiters.add("nope", None).addCallback(got.append)
    waiters.recheck("nope")
    assert got[0].status is PushStatus.UNAVAILABLE


def test_giving_up_await_decision_does_not_close_a_push_a_local_login_waits_for():
    """Single process (no cluster): a challenge follow-up stops waiting on a push that
    this process's own login still waits on: the push stays open."""
    from pushproxy.approval.service import ApprovalService
    from pushproxy.metrics import Counters
    from pushproxy.push import ApprovalRequest

    clock = Clock()
    clock.advance(T0)
    store = SQLiteStore(":memory:")
    store.create_enrollment("alice", "h", T0, T0 + 900)
    store.redeem_enrollment("h", T0, Device("dev1", "alice", "p", "K", None, T0, None, None))
    service = ApprovalService(store=AsyncStore.inline(store), reactor=clock, counters=Counters(),
                              vapid_public_key="k")
    login = service.request_approval(ApprovalRequest("t1", "alice", "vpn", None, None, T0,
                                                     T0 + 60))
    got = []  # (.called is True once the login's Deferred waits on the answer's)
    login.addBoth(got.append)
    follow = service.await_decision("t1")
    follow.addErrback(lambda f: None)
    follow.cancel()
    clock.advance(1)
    assert store.transaction("t1").state == "pending" and got == []
