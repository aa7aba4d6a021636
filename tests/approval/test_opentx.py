"""OpenTransactions: what a single process answers long-polls and answers from, without a
store read, must be exactly its own pending logins' transactions."""

from __future__ import annotations

from pushproxy.approval.opentx import OpenTransactions
from pushproxy.approval.store import Transaction


def tx(txid: str, user: str = "alice", created: float = 1.0, expires: float = 100.0):
    return Transaction(txid, user, "n", {}, created, expires, "pending", None, None)


def test_a_users_open_transactions_oldest_first_and_only_unexpired():
    open_txs = OpenTransactions()
    open_txs.add(tx("b", created=2.0))
    open_txs.add(tx("a", created=2.0))
    open_txs.add(tx("old", created=1.0, expires=50.0))
    open_txs.add(tx("x", user="bob"))
    assert [t.id for t in open_txs.of_user("alice", 10.0)] == ["old", "a", "b"]
    assert [t.id for t in open_txs.of_user("alice", 50.0)] == ["a", "b"]  # expires > now
    assert open_txs.of_user("carol", 10.0) == []


def test_discarded_transactions_are_gone_and_the_user_index_does_not_grow():
    open_txs = OpenTransactions()
    open_txs.add(tx("a"))
    open_txs.discard("a")
    open_txs.discard("a")  # twice: no error
    open_txs.discard("never")
    assert open_txs.get("a") is None and open_txs.of_user("alice", 1.0) == []
    assert len(open_txs) == 0 and open_txs._by_user == {}


def test_get_takes_any_json_value_from_a_request():
    open_txs = OpenTransactions()
    open_txs.add(tx("a"))
    assert open_txs.get("a").id == "a"
    assert open_txs.get(["a"]) is None and open_txs.get(7) is None and open_txs.get(None) is None
