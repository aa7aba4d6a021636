"""The store methods of cluster mode (pushproxy.approval.clusterstore), on SQLite and on
PostgreSQL alike: open-or-join, answers with outcome and code, waiters and heartbeats,
retiring only a node's own stale work, device-request nonces."""

import threading

import psycopg
import pytest

from pushproxy.approval.store import Device, SQLiteStore, Transaction
from tests.pg import PASSWORD

T0 = 1_796_000_000.0
LIVE = T0 - 15  # heartbeats at or after this are alive


def device(id="dev1", username="alice"):
    return Device(id, username, "phone", "BKey" + id, None, T0, None, None, "SECRET")


def tx(id="tx1", username="alice", expires=T0 + 60):
    return Transaction(id, username, "n-" + id, {"nas": "gw1"}, T0, expires, "pending",
                       None, None)


def enrolled(store, dev=None):
    dev = dev or device()
    store.create_enrollment(dev.username, "h-" + dev.id, T0 - 10, T0 + 900)
    assert store.redeem_enrollment("h-" + dev.id, T0, dev) == dev
    return dev


@pytest.fixture
def store(backend):
    s = backend.open()
    yield s
    s.close()


def test_open_records_the_owner_and_a_second_login_with_the_key_joins(store):
    dev = enrolled(store)
    store.heartbeat("a/0", T0)
    first = store.open_or_join_transaction(tx("t1"), "a/0", "K", T0)
    assert (first.tx.id, first.devices, first.joined) == ("t1", [dev], False)
    second = store.open_or_join_transaction(tx("t2"), "b/0", "K", T0 + 1)
    assert (second.tx.id, second.joined) == ("t1", True)
    assert second.tx.owner == "a/0" and second.tx.join_key == "K"
    assert store.transaction("t2") is None  # no second push
    # the joined login's own txid (its challenge names it) finds the push it joined
    assert store.watch_transaction("t2", None).id == "t1"
    assert store.watch_transaction("t1", None).id == "t1"
    assert [t.id for t in store.pending_transactions("alice", T0)] == ["t1"]


def test_no_join_key_never_joins_and_another_key_opens_its_own(store):
    enrolled(store)
    assert not store.open_or_join_transaction(tx("t1"), "a/0", None, T0).joined
    assert not store.open_or_join_transaction(tx("t2"), "a/0", None, T0).joined
    assert not store.open_or_join_transaction(tx("t3"), "a/0", "K1", T0).joined
    assert not store.open_or_join_transaction(tx("t4"), "a/0", "K2", T0).joined
    assert len(store.pending_transactions("alice", T0)) == 4


def test_no_device_records_nothing(store):
    opened = store.open_or_join_transaction(tx("t1"), "a/0", "K", T0)
    assert (opened.devices, opened.joined) == ([], False)
    assert store.transaction("t1") is None


def test_a_decided_or_expired_transaction_is_not_joined(store):
    enrolled(store)
    store.open_or_join_transaction(tx("t1"), "a/0", "K", T0)
    assert store.answer_transaction("t1", "denied", "dev1", T0 + 1, "denied", None)
    assert not store.open_or_join_transaction(tx("t2"), "b/0", "K", T0 + 2).joined
    # t2 is left pending past its expiry (its owner died): a new login does not join it
    opened = store.open_or_join_transaction(tx("t3", expires=T0 + 200), "b/0", "K", T0 + 61)
    assert (opened.tx.id, opened.joined) == ("t3", False)
    assert store.transaction("t2").state == "expired"


def test_racing_opens_with_one_key_make_one_transaction(backend, store):
    """Eight openers on eight connections at once: one opens, seven join it."""
    enrolled(store)
    results, barrier = [], threading.Barrier(8)

    def open_one(i):
        s = backend.open()
        try:
            barrier.wait()
            results.append(s.open_or_join_transaction(tx(f"t{i}"), f"n{i}/0", "K", T0))
        finally:
            s.close()

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert len({r.tx.id for r in results}) == 1
    assert sorted(r.joined for r in results) == [False] + [True] * 7


def test_answer_stores_outcome_and_code_and_first_answer_wins(store):
    enrolled(store)
    store.open_or_join_transaction(tx("t1"), "a/0", None, T0)
    assert store.answer_transaction("t1", "approved", "dev1", T0 + 1, "approved", "123456")
    assert not store.answer_transaction("t1", "denied", "dev1", T0 + 2, "denied", None)
    seen = store.watch_transaction("t1", None)
    assert (seen.state, seen.outcome, seen.code, seen.decided_by) == \
        ("approved", "approved", "123456", "dev1")
    assert "123456" not in repr(seen)
    store.open_or_join_transaction(tx("t2"), "a/0", None, T0)
    assert not store.answer_transaction("t2", "approved", "dev1", T0 + 60, "approved", None)
    with pytest.raises(ValueError):
        store.answer_transaction("t2", "expired", "dev1", T0, "timeout", None)


def test_watch_notes_a_waiter_only_while_pending(store):
    enrolled(store)
    store.heartbeat("a/0", T0)
    store.heartbeat("b/0", T0)
    store.open_or_join_transaction(tx("t1"), "a/0", None, T0)
    assert store.watch_transaction("t1", "b/0").state == "pending"
    # a leaves: b still waits, so the transaction stays open
    assert store.release_transactions(["t1"], "a/0", T0 + 1, LIVE) == 0
    assert store.transaction("t1").state == "pending"
    assert store.release_transactions(["t1"], "b/0", T0 + 2, LIVE) == 1
    assert store.transaction("t1").state == "expired"
    assert store.watch_transaction("nope", "b/0") is None


def test_waiting_transactions_need_a_live_waiter(store):
    enrolled(store)
    store.heartbeat("a/0", T0)
    store.heartbeat("dead/0", T0 - 100)
    store.open_or_join_transaction(tx("t1"), "a/0", None, T0)
    store.open_or_join_transaction(tx("t2"), "dead/0", None, T0)
    assert [t.id for t in store.waiting_transactions("alice", T0 + 1, LIVE)] == ["t1"]
    assert store.waiting_transactions("alice", T0 + 61, LIVE) == []
    assert store.live_nodes(LIVE) == ["a/0"]


def test_retire_stale_cancels_only_own_work_nobody_else_waits_on(store):
    enrolled(store)
    for node in ("a/0", "b/0"):
        store.heartbeat(node, T0)
    store.open_or_join_transaction(tx("mine"), "a/0", None, T0)
    store.open_or_join_transaction(tx("joined"), "a/0", "K", T0)
    store.open_or_join_transaction(tx("join2"), "b/0", "K", T0)  # b waits on "joined"
    store.open_or_join_transaction(tx("theirs"), "b/0", None, T0)
    assert store.retire_stale("a/0", T0 + 5, LIVE) == 1
    states = {t: store.transaction(t).state for t in ("mine", "joined", "theirs")}
    assert states == {"mine": "cancelled", "joined": "pending", "theirs": "pending"}


def test_device_nonce_is_claimed_once_and_forgotten_after_expiry(backend, store):
    assert store.claim_device_nonce("dev1", "N" * 22, T0 + 120)
    assert not store.claim_device_nonce("dev1", "N" * 22, T0 + 120)
    other = backend.open()  # another node's connection sees it too
    try:
        assert not other.claim_device_nonce("dev1", "N" * 22, T0 + 120)
        assert other.claim_device_nonce("dev2", "N" * 22, T0 + 120)
    finally:
        other.close()
    store.heartbeat("a/0", T0 + 121)  # the heartbeat forgets expired nonces
    assert store.claim_device_nonce("dev1", "N" * 22, T0 + 300)


def test_heartbeat_upserts(store):
    store.heartbeat("a/0", T0 - 100)
    assert store.live_nodes(LIVE) == []
    store.heartbeat("a/0", T0)
    assert store.live_nodes(LIVE) == ["a/0"]


def test_postgres_changes_are_announced_after_commit(backend, store):
    """On PostgreSQL, opening and answering notify the channel, in the same transaction."""
    if backend.name != "postgresql":
        pytest.skip("SQLite has no notifications in the store")
    enrolled(store)
    listener = psycopg.connect(backend.target, password=PASSWORD, autocommit=True)
    try:
        listener.execute("LISTEN pushproxy")
        store.open_or_join_transaction(tx("t1"), "a/0", None, T0)
        store.answer_transaction("t1", "approved", "dev1", T0 + 1, "approved", None)
        got = [n.payload for n in listener.notifies(timeout=2, stop_after=3)]
    finally:
        listener.close()
    assert got == ["created alice", "decided t1", "closed alice"]


def test_postgres_announces_only_an_answer_that_decides(backend, store):
    """An answer is one statement on PostgreSQL: a replayed answer and one that finds
    the transaction decided change nothing, and announce nothing."""
    if backend.name != "postgresql":
        pytest.skip("SQLite has no notifications in the store")
    from pushproxy.approval.clusterstore import Answer

    enrolled(store)
    store.open_or_join_transaction(tx("t1"), "a/0", None, T0)
    listener = psycopg.connect(backend.target, password=PASSWORD, autocommit=True)
    try:
        listener.execute("LISTEN pushproxy")
        answer = ("t1", "approved", T0 + 1, "approved", None)
        assert store.claim_and_answer("dev1", "n1", T0 + 300, *answer) is Answer.WON
        assert store.claim_and_answer("dev1", "n1", T0 + 300, *answer) is Answer.REPLAYED
        assert store.claim_and_answer("dev1", "n2", T0 + 300, *answer) is Answer.LOST
        assert not store.answer_transaction("t1", "denied", "dev1", T0 + 2, "denied", None)
        store.open_or_join_transaction(tx("t2"), "a/0", None, T0)  # the last event
        got = [n.payload for n in listener.notifies(timeout=2, stop_after=3)]
    finally:
        listener.close()
    assert got == ["decided t1", "closed alice", "created alice"]
    assert store.transaction("t1").state == "approved"


def test_sqlite_migrates_an_old_store_to_version_4(tmp_path):
    path = str(tmp_path / "a.db")
    SQLiteStore(path).close()
    s = SQLiteStore(path)
    try:
        assert s._one("PRAGMA user_version")[0] >= 4
    finally:
        s.close()
