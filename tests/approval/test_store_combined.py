"""The combined store calls of a cluster node (issue 16, item 2), on SQLite and on
PostgreSQL alike: a device request's nonce claimed with the read or the answer its
request makes anyway, the fraud lock checked with the fatigue admission, and the
push ended for the fatigue limits by the answer's own transaction. Each test names
what the combination must not lose: replay protection across nodes, a lock made on
any node, and the pending count of the fatigue limits."""

from __future__ import annotations

import pytest

from pushproxy.approval.clusterstore import Answer
from pushproxy.fatigue import BlockReason, FatigueLimits
from tests.approval.test_store_cluster import LIVE, T0, enrolled, tx

LIMITS = FatigueLimits(max_pending=1, max_pushes=5, window=600.0)
NONCE = "N" * 30


@pytest.fixture
def nodes(backend):
    """Two store objects (two connections, as two nodes) on one database."""
    a, b = backend.open(), backend.open()
    yield a, b
    a.close()
    b.close()


def test_a_nonce_claimed_with_the_list_is_refused_at_the_other_node_and_reads_nothing(nodes):
    a, b = nodes
    enrolled(a)
    a.heartbeat("a/0", T0)
    a.open_or_join_transaction(tx("t1"), "a/0", None, T0)
    listed = a.claim_and_list_waiting("dev1", NONCE, T0 + 120, "alice", T0 + 1, LIVE)
    assert [t.id for t in listed] == ["t1"]
    # the same request at the other node: refused, nothing listed
    assert b.claim_and_list_waiting("dev1", NONCE, T0 + 120, "alice", T0 + 1, LIVE) is None
    # and by the separate claim (every other device request) on either node
    assert not b.claim_device_nonce("dev1", NONCE, T0 + 120)
    assert not a.claim_device_nonce("dev1", NONCE, T0 + 120)


def test_a_nonce_claimed_alone_refuses_the_combined_list_and_answer(nodes):
    a, b = nodes
    enrolled(a)
    a.heartbeat("a/0", T0)
    a.open_or_join_transaction(tx("t1"), "a/0", None, T0)
    assert a.claim_device_nonce("dev1", NONCE, T0 + 120)
    assert b.claim_and_list_waiting("dev1", NONCE, T0 + 120, "alice", T0 + 1, LIVE) is None
    assert b.claim_and_answer("dev1", NONCE, T0 + 120, "t1", "approved", T0 + 1, "approved",
                              None) is Answer.REPLAYED
    assert b.transaction("t1").state == "pending"  # the replay changed nothing


def test_an_empty_list_still_claims_the_nonce(nodes):
    a, b = nodes
    assert a.claim_and_list_waiting("dev1", NONCE, T0 + 120, "alice", T0, LIVE) == []
    assert b.claim_and_list_waiting("dev1", NONCE, T0 + 120, "alice", T0, LIVE) is None


def test_an_answer_replayed_to_the_other_node_is_refused_before_its_compare_and_set(nodes):
    a, b = nodes
    enrolled(a)
    a.open_or_join_transaction(tx("t1"), "a/0", None, T0)
    a.open_or_join_transaction(tx("t2", expires=T0 + 90), "a/0", None, T0)
    assert a.claim_and_answer("dev1", NONCE, T0 + 120, "t1", "denied", T0 + 1, "denied",
                              None) is Answer.WON
    # the same signed request at node b, even naming another open transaction
    assert b.claim_and_answer("dev1", NONCE, T0 + 120, "t2", "approved", T0 + 2, "approved",
                              None) is Answer.REPLAYED
    assert b.transaction("t2").state == "pending"
    # a new nonce for an answer that loses is still used up
    assert b.claim_and_answer("dev1", "M" * 30, T0 + 120, "t1", "approved", T0 + 3,
                              "approved", None) is Answer.LOST
    assert not a.claim_device_nonce("dev1", "M" * 30, T0 + 120)
    seen = a.watch_transaction("t1", None)
    assert (seen.state, seen.outcome, seen.decided_by) == ("denied", "denied", "dev1")


def test_the_answer_frees_the_pending_slot_in_its_own_transaction(nodes):
    """No fatigue_push_ended after an answer: the next push of the user (max_pending 1)
    is admitted at once, at any node, and the push still counts in the rate window."""
    a, b = nodes
    enrolled(a)
    assert a.fatigue_admit("alice", T0, LIMITS, "t1", T0 + 60, "K") is None
    a.open_or_join_transaction(tx("t1"), "a/0", "K", T0)
    assert b.fatigue_admit("alice", T0 + 1, LIMITS, "t9", T0 + 61, None).reason \
        is BlockReason.TOO_MANY_PENDING
    assert a.claim_and_answer("dev1", NONCE, T0 + 120, "t1", "approved", T0 + 2, "approved",
                              None) is Answer.WON
    assert b.fatigue_admit("alice", T0 + 3, LIMITS, "t2", T0 + 63, None) is None
    # the same through answer_transaction (an answer whose nonce was claimed alone)
    a.open_or_join_transaction(tx("t2"), "a/0", None, T0 + 3)
    assert b.answer_transaction("t2", "denied", "dev1", T0 + 4, "denied", None)
    # t1 and t2 counted: three more fit under max_pushes (5), the sixth does not
    for i, at in enumerate((5, 6, 7)):
        assert a.fatigue_admit("alice", T0 + at, LIMITS, f"u{i}", T0 + at + 0.5, None) is None
        a.fatigue_push_ended(f"u{i}", T0 + at + 0.1)
    assert a.fatigue_admit("alice", T0 + 8, LIMITS, "u9", T0 + 68, None).reason \
        is BlockReason.RATE_LIMITED


def test_a_lost_answer_leaves_the_push_pending_for_the_limits(nodes):
    """Only the answer that decides ends the push: a late one (already decided, or
    from a revoked device) frees nothing it did not hold."""
    a, b = nodes
    enrolled(a)
    assert a.fatigue_admit("alice", T0, LIMITS, "t1", T0 + 60, None) is None
    a.open_or_join_transaction(tx("t1"), "a/0", None, T0)
    a.revoke_device("dev1", T0 + 1)
    assert b.claim_and_answer("dev1", NONCE, T0 + 120, "t1", "approved", T0 + 2, "approved",
                              None) is Answer.LOST
    assert b.fatigue_admit("alice", T0 + 3, LIMITS, "t2", T0 + 63, None).reason \
        is BlockReason.TOO_MANY_PENDING


def test_a_lock_made_at_one_node_refuses_the_next_push_at_the_other(nodes):
    a, b = nodes
    assert a.lock_user("carol", T0, "fraud report", "t0")
    block = b.fatigue_admit("carol", T0 + 1, LIMITS, "t1", T0 + 61, None)
    assert block.reason is BlockReason.LOCKED
    # recorded as `fatigue_locked` records it: the unlock clears what lies behind it
    a.fatigue_denial("carol", T0 + 2, LIMITS, "t0")
    assert a.unlock_user("carol")
    assert b.fatigue_admit("carol", T0 + 3, LIMITS, "t2", T0 + 63, None) is None


def test_a_locked_user_joins_no_pending_push(nodes):
    """The lock comes before the join: a push pending since before the lock is not
    joined by a failed-over login."""
    a, b = nodes
    assert a.fatigue_admit("dave", T0, LIMITS, "t1", T0 + 60, "K") is None
    b.lock_user("dave", T0 + 1, "fraud report", None)
    assert a.fatigue_admit("dave", T0 + 2, LIMITS, "t2", T0 + 62, "K").reason \
        is BlockReason.LOCKED


def test_a_passcode_guessing_lock_is_told_apart(nodes):
    from pushproxy.passcode_limits import LOCK_REASON

    a, b = nodes
    a.lock_user("erin", T0, LOCK_REASON, None)
    assert b.fatigue_admit("erin", T0 + 1, LIMITS, "t1", T0 + 61, None).reason \
        is BlockReason.LOCKED_GUESSING
