"""The typed store interface: both backends implement every `StoreAPI` method with the
same signature, the daemon's `AsyncStore` offers each of them, and calls reach the
store as bound methods, counted by name, through the runner."""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest
from twisted.internet.defer import Deferred

from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.pgstore import PostgresStore
from pushproxy.approval.store import SQLiteStore, StoreError, Transaction
from pushproxy.approval.storeapi import StoreAPI, store_methods
from pushproxy.metrics import Counters

# Public methods a backend may have beyond the interface (not used by the daemon):
# PostgreSQL's schema version for test-connection, and bulk work for store migrate;
# the data_version the store thread reads itself (not a submitted call).
EXTRAS = {SQLiteStore: {"data_version"},
          PostgresStore: {"schema_version", "write_transaction", "data_version"}}


def public_methods(cls) -> set[str]:
    return {name for name, value in inspect.getmembers(cls, callable)
            if not name.startswith("_")}


def shape(signature: inspect.Signature) -> list[tuple]:
    """Parameter names, kinds, defaults and annotations (as written)."""
    return [(p.name, p.kind, p.default, str(p.annotation))
            for p in signature.parameters.values()]


def test_the_interface_lists_the_methods_of_all_three_parts():
    names = store_methods()
    # one of each part: Store, LoginStateStore, ClusterStore
    assert {"open_transaction", "fatigue_admit", "open_or_join_transaction"} <= set(names)
    assert len(names) == len(set(names)) >= 50


@pytest.mark.parametrize("backend", [SQLiteStore, PostgresStore], ids=["sqlite", "postgresql"])
def test_each_backend_has_exactly_the_interface_with_its_signatures(backend):
    """A method added to one backend and not to the interface (or the other backend),
    or a signature that drifts from the interface, fails here."""
    names = set(store_methods())
    assert public_methods(backend) - EXTRAS[backend] == names
    for name in sorted(names):
        want = inspect.signature(getattr(StoreAPI, name))
        got = inspect.signature(getattr(backend, name))
        assert shape(got) == shape(want), name
        assert str(got.return_annotation) == str(want.return_annotation), name


def test_both_backends_have_the_same_signatures():
    for name in store_methods():
        assert inspect.signature(getattr(SQLiteStore, name)) == \
            inspect.signature(getattr(PostgresStore, name)), name


def test_the_async_store_offers_every_method_with_the_same_arguments():
    for name in store_methods():
        if name == "close":  # the runner closes the store it opened
            continue
        want = inspect.signature(getattr(StoreAPI, name))
        got = inspect.signature(getattr(AsyncStore, name))
        assert shape(got) == shape(want), name
        assert str(got.return_annotation) == f"Deferred[{want.return_annotation}]", name


def test_a_call_reaches_the_store_as_a_bound_method_counted_by_its_name():
    store = SQLiteStore(":memory:")
    counters = Counters()
    async_store = AsyncStore.inline(store, counters)
    tx = Transaction("t1", "alice", "n", {}, 1.0, 100.0, "pending", None, None)
    d = async_store.create_transaction(tx)
    assert isinstance(d, Deferred) and d.result is None
    assert async_store.transaction("t1").result == tx
    assert async_store.add_bypass_codes("alice", ["h"], 1.0, 9.0, selectors=["s1"]).result \
        is None
    assert async_store.bypass_selectors("alice").result == {"s1"}
    assert counters.get("store_calls", method="create_transaction") == 1
    assert counters.get("store_commits", method="create_transaction") == 1
    assert counters.get("store_calls", method="transaction") == 1
    assert counters.get("store_commits", method="transaction") == 0
    failed = async_store.decide_transaction("t1", "approved", None, 2.0)
    with pytest.raises(ValueError):
        failed.result.raiseException()
    failed.addErrback(lambda _: None)
    store.close()


def test_a_thread_runner_not_started_has_no_store():
    from twisted.internet.task import Clock

    from pushproxy.approval.runner import ThreadRunner

    runner = ThreadRunner(Clock(), lambda: SQLiteStore(":memory:"))
    with pytest.raises(StoreError, match="not open"):
        AsyncStore(runner).device("d1")


def test_no_store_call_by_method_name_is_left_in_the_daemon():
    """The runner takes bound methods only: a call by name string would not type-check
    (and ThreadRunner has no way to take one)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    by_name = re.compile(r"""\b(run|runner|_run)\(\s*["']""")
    found = [f"{path.relative_to(root)}:{number}"
             for folder in ("pushproxy", "bench", "fuzz")
             for path in sorted((root / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if by_name.search(line)]
    assert found == []
