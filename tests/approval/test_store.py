"""The approval store: round trips, one-time enrollment, first answer wins, across threads and
processes; on SQLite and on PostgreSQL alike (the ``backend`` fixture, tests/conftest.py)."""

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pushproxy.approval import store as store_module
from pushproxy.approval.store import (
    Device,
    Enrollment,
    SQLiteStore,
    StoreError,
    Transaction,
)

T0 = 1_796_000_000.0
SUB = {"endpoint": "https://push.example/abc", "keys": {"p256dh": "BPk", "auth": "au"}}


def device(id="dev1", username="alice", created=T0, subscription=None, name="Alice's phone"):
    return Device(id=id, username=username, name=name, public_key="BKey" + id,
                  push_subscription=subscription, created=created, last_seen=None, revoked=None)


def tx(id="tx1", username="alice", created=T0, expires=T0 + 60, state="pending"):
    return Transaction(id=id, username=username, nonce="n-" + id,
                       context={"application": "vpn-gw-1", "client_ip": "198.51.100.7",
                                "nas": "gw1", "extra": [1, {"a": None}]},
                       created=created, expires=expires, state=state,
                       decided_by=None, decided_at=None)


def user_version(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def enrolled(store, dev=None, token="h1"):
    """A device added the normal way, through a link."""
    dev = dev or device()
    store.create_enrollment(dev.username, token, T0 - 10, T0 + 900)
    assert store.redeem_enrollment(token, T0, dev) == dev
    return dev


@pytest.fixture
def store(backend):
    s = SQLiteStore(":memory:") if backend.name == "sqlite" else backend.open()
    yield s
    s.close()


@pytest.fixture
def dbpath(tmp_path):
    return str(tmp_path / "approval.db")


# -- round trips

def test_enrollment_round_trip(store):
    made = store.create_enrollment("alice", "hash", T0, T0 + 900)
    assert made == Enrollment("hash", "alice", T0, T0 + 900, None, None)
    assert store.enrollment("hash") == made
    assert store.enrollment("other") is None


def test_device_round_trip_including_subscription_json(store):
    dev = enrolled(store, device(subscription=SUB))
    assert store.device("dev1") == dev
    assert store.device("dev1").push_subscription == SUB
    assert store.device("nope") is None


def test_transaction_round_trip_including_context_json(store):
    t = tx()
    store.create_transaction(t)
    assert store.transaction("tx1") == t
    assert store.transaction("nope") is None


def test_setting_round_trip(store):
    assert store.setting("vapid") is None
    assert store.setting_or_create("vapid", lambda: "PEM") == "PEM"
    assert store.setting("vapid") == "PEM"


def test_setting_or_create_does_not_call_make_when_present(store):
    store.setting_or_create("k", lambda: "first")
    assert store.setting_or_create("k", lambda: pytest.fail("make called")) == "first"


# -- enrollment

def test_redeem_unknown_token_refused(store):
    assert store.redeem_enrollment("nope", T0, device()) is None
    assert store.devices() == []


def test_redeem_expired_token_refused_at_and_after_expiry(store):
    store.create_enrollment("alice", "h", T0 - 900, T0)
    assert store.redeem_enrollment("h", T0, device()) is None
    assert store.redeem_enrollment("h", T0 + 1, device()) is None
    assert store.enrollment("h").used is None
    assert store.devices() == []


def test_redeem_used_token_refused(store):
    enrolled(store)
    assert store.redeem_enrollment("h1", T0 + 1, device(id="dev2")) is None
    assert store.device("dev2") is None
    assert store.enrollment("h1").device_id == "dev1"


def test_redeem_username_mismatch_refused_and_leaves_link_usable(store):
    store.create_enrollment("alice", "h", T0, T0 + 900)
    assert store.redeem_enrollment("h", T0 + 1, device(username="mallory")) is None
    assert store.enrollment("h").used is None
    assert store.devices(include_revoked=True) == []
    assert store.redeem_enrollment("h", T0 + 2, device()) is not None


def test_redeem_success_marks_used_and_adds_device(store):
    store.create_enrollment("alice", "h", T0, T0 + 900)
    dev = device()
    assert store.redeem_enrollment("h", T0 + 5, dev) == dev
    assert store.enrollment("h") == Enrollment("h", "alice", T0, T0 + 900, T0 + 5, "dev1")
    assert store.devices("alice") == [dev]


def test_redeem_with_duplicate_device_id_fails_whole_and_keeps_link_unused(store):
    enrolled(store)
    store.create_enrollment("alice", "h2", T0, T0 + 900)
    with pytest.raises(StoreError):
        store.redeem_enrollment("h2", T0 + 1, device(id="dev1"))
    assert store.enrollment("h2").used is None


def test_concurrent_redeem_from_two_threads_exactly_one_wins(backend):
    """Two store instances on one database, each on its own thread, race for the same links."""
    setup = backend.open()
    tokens = [f"h{i}" for i in range(40)]
    for t in tokens:
        setup.create_enrollment("alice", t, T0, T0 + 900)
    setup.close()
    barrier = threading.Barrier(2)
    wins, errors = {}, []

    def run(name):
        try:
            s = backend.open()  # opened on the thread that uses it
            barrier.wait()
            wins[name] = [t for i, t in enumerate(tokens)
                          if s.redeem_enrollment(t, T0 + 1, device(id=f"{name}-{i}"))]
            s.close()
        except Exception as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert sorted(wins["a"] + wins["b"]) == sorted(tokens)  # every link used exactly once
    check = backend.open()
    assert len(check.devices()) == len(tokens)
    check.close()


CHILD = r"""
import os, sys
from pushproxy.approval.backends import open_store
from pushproxy.approval.store import Device
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = open_store(path, password=os.environ.get("PUSHPROXY_TEST_DB_PASSWORD"))
print("ready", flush=True)
sys.stdin.readline()
won = []
for i in range(n):
    dev = Device(f"{name}-{i}", "alice", name, "BKey", None, 1.0, None, None)
    if store.redeem_enrollment(f"h{i}", 2.0, dev) is not None:
        won.append(str(i))
store.close()
print(" ".join(won), flush=True)
"""


def test_concurrent_redeem_from_two_processes_exactly_one_wins(backend):
    """Two processes, started together on one database, race for the same links."""
    n = 40
    setup = backend.open()
    for i in range(n):
        setup.create_enrollment("alice", f"h{i}", 1.0, 900.0)
    setup.close()
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, backend.target, name, str(n)],
                              env=backend.env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for name in ("p", "q")]
    for p in procs:  # both have the database open before either starts
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    won = [set(p.communicate(timeout=60)[0].split()) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert won[0].isdisjoint(won[1])
    assert won[0] | won[1] == {str(i) for i in range(n)}
    check = backend.open()
    for i in range(n):
        e = check.enrollment(f"h{i}")
        winner = "p" if str(i) in won[0] else "q"
        assert e.device_id == f"{winner}-{i}" and check.device(e.device_id) is not None
    assert len(check.devices()) == n
    check.close()


# -- devices

def test_devices_ordered_by_created_and_filtered_by_user(store):
    b = enrolled(store, device(id="b", created=T0 + 2), token="t1")
    a = enrolled(store, device(id="a", created=T0 + 1), token="t2")
    c = enrolled(store, device(id="c", username="bob", created=T0), token="t3")
    assert store.devices() == [c, a, b]
    assert store.devices("alice") == [a, b]
    assert store.devices("nobody") == []


def test_revoked_devices_excluded_from_devices_by_default(store):
    enrolled(store)
    assert store.revoke_device("dev1", T0 + 10) is True
    assert store.devices() == [] and store.devices("alice") == []
    assert [d.revoked for d in store.devices("alice", include_revoked=True)] == [T0 + 10]
    assert store.device("dev1").revoked == T0 + 10  # still found, caller checks .revoked


def test_revoke_unknown_or_already_revoked_returns_false(store):
    enrolled(store)
    assert store.revoke_device("nope", T0) is False
    assert store.revoke_device("dev1", T0 + 1) is True
    assert store.revoke_device("dev1", T0 + 2) is False
    assert store.device("dev1").revoked == T0 + 1  # the first revocation time stays


def test_open_transaction_returns_active_devices_and_records_the_transaction(store):
    """One call, one commit: the user's devices (revoked ones left out) and the
    transaction; a user without an active device gets [] and no transaction."""
    a = enrolled(store, device(id="a", created=T0 + 1), token="t1")
    enrolled(store, device(id="r", created=T0 + 2), token="t2")
    store.revoke_device("r", T0 + 5)
    before = store.commits
    assert store.open_transaction(tx()) == [a]
    assert store.commits == before + 1
    assert store.transaction("tx1") == tx()
    assert store.open_transaction(tx(id="tx2", username="bob")) == []
    assert store.transaction("tx2") is None


def test_expire_transactions_closes_only_pending_ones_in_one_commit(store):
    for i in (1, 2, 3):
        store.create_transaction(tx(id=f"tx{i}"))
    assert store.decide_transaction("tx2", "approved", "dev1", T0 + 1) is True
    before = store.commits
    assert store.expire_transactions(["tx1", "tx2", "tx3", "nope"], T0 + 60) == 2
    assert store.commits == before + 1
    assert [store.transaction(f"tx{i}").state for i in (1, 2, 3)] == [
        "expired", "approved", "expired"]


def test_touch_device_sets_last_seen(store):
    enrolled(store)
    store.touch_device("dev1", T0 + 30)
    assert store.device("dev1").last_seen == T0 + 30
    store.touch_device("nope", T0)  # no error for an unknown device


def test_set_subscription_replaces_and_clears_but_not_for_unknown_or_revoked(store):
    enrolled(store)
    assert store.set_subscription("dev1", SUB) is True
    assert store.device("dev1").push_subscription == SUB
    assert store.set_subscription("dev1", None) is True
    assert store.device("dev1").push_subscription is None
    assert store.set_subscription("nope", SUB) is False
    store.revoke_device("dev1", T0)
    assert store.set_subscription("dev1", SUB) is False


# -- transactions

def test_pending_transactions_only_open_ones_of_the_user_oldest_first(store):
    store.create_transaction(tx("late", created=T0 + 5))
    store.create_transaction(tx("early", created=T0))
    store.create_transaction(tx("bobs", username="bob"))
    store.create_transaction(tx("gone", expires=T0 + 10))
    store.create_transaction(tx("done"))
    store.decide_transaction("done", "denied", "dev1", T0 + 1)
    assert [t.id for t in store.pending_transactions("alice", T0 + 20)] == ["early", "late"]
    assert [t.id for t in store.pending_transactions("alice", T0 + 60)] == []  # expires > now


def test_decide_transaction_second_answer_loses(store):
    store.create_transaction(tx())
    assert store.decide_transaction("tx1", "approved", "dev1", T0 + 1) is True
    assert store.decide_transaction("tx1", "denied", "dev2", T0 + 2) is False
    assert store.decide_transaction("tx1", "cancelled", None, T0 + 3) is False
    t = store.transaction("tx1")
    assert (t.state, t.decided_by, t.decided_at) == ("approved", "dev1", T0 + 1)


def test_decide_transaction_after_expiry_loses(store):
    store.create_transaction(tx(expires=T0 + 60))
    assert store.decide_transaction("tx1", "approved", "dev1", T0 + 60) is False
    assert store.decide_transaction("tx1", "fraud", "dev1", T0 + 61) is False
    assert store.transaction("tx1").state == "pending"


def test_expired_transaction_cannot_become_approved(store):
    store.create_transaction(tx(expires=T0 + 60))
    assert store.decide_transaction("tx1", "expired", None, T0 + 60) is True  # at the deadline
    assert store.decide_transaction("tx1", "approved", "dev1", T0 + 1) is False
    t = store.transaction("tx1")
    assert (t.state, t.decided_by, t.decided_at) == ("expired", None, T0 + 60)


def test_decide_unknown_transaction_returns_false(store):
    assert store.decide_transaction("nope", "approved", "dev1", T0) is False


def test_decide_transaction_rejects_bad_arguments(store):
    store.create_transaction(tx())
    with pytest.raises(ValueError):
        store.decide_transaction("tx1", "approved", None, T0)  # an answer names its device
    with pytest.raises(ValueError):
        store.decide_transaction("tx1", "pending", None, T0)
    with pytest.raises(ValueError):
        store.decide_transaction("tx1", "maybe", "dev1", T0)
    assert store.transaction("tx1").state == "pending"


def test_decide_transaction_concurrent_answers_from_two_instances_one_wins(backend):
    a, b = backend.open(), backend.open()
    a.create_transaction(tx())
    assert b.decide_transaction("tx1", "approved", "devB", T0 + 1) is True
    assert a.decide_transaction("tx1", "denied", "devA", T0 + 1) is False
    assert a.transaction("tx1").decided_by == "devB"
    a.close()
    b.close()


def test_cancel_pending_at_start_cancels_only_pending(store):
    store.create_transaction(tx("p1"))
    store.create_transaction(tx("p2", expires=T0 - 5))  # pending and past deadline: also dead
    store.create_transaction(tx("d1"))
    store.decide_transaction("d1", "approved", "dev1", T0 + 1)
    assert store.cancel_pending(T0 + 100) == 2
    assert [store.transaction(i).state for i in ("p1", "p2", "d1")] == \
        ["cancelled", "cancelled", "approved"]
    assert store.transaction("p1").decided_at == T0 + 100
    assert store.cancel_pending(T0 + 200) == 0


# -- purge

def test_purge_deletes_old_history_only(store):
    day = 86400
    enrolled(store, token="old-used")  # used at T0
    store.create_enrollment("alice", "old-expired", T0 - 2 * day, T0 - day)
    store.create_enrollment("alice", "fresh", T0 + 40 * day, T0 + 41 * day)
    store.create_transaction(tx("old"))
    store.decide_transaction("old", "approved", "dev1", T0 + 1)
    store.create_transaction(tx("stale-pending", expires=T0 + 60))
    store.create_transaction(tx("recent", created=T0 + 35 * day, expires=T0 + 35 * day + 60))
    store.decide_transaction("recent", "denied", "dev1", T0 + 35 * day + 1)
    assert store.purge(T0 + 40 * day, keep=30 * day) == 4
    assert store.enrollment("old-used") is None and store.enrollment("old-expired") is None
    assert store.enrollment("fresh") is not None
    assert store.transaction("old") is None and store.transaction("stale-pending") is None
    assert store.transaction("recent") is not None
    assert store.device("dev1") is not None  # devices are never purged


# -- the file

def test_devices_survive_restart(backend):
    s = backend.open()
    dev = enrolled(s, device(subscription=SUB))
    s.create_transaction(tx())
    s.setting_or_create("vapid", lambda: "PEM")
    s.close()
    s = backend.open()
    assert s.devices() == [dev]
    assert s.transaction("tx1") == tx()
    assert s.setting("vapid") == "PEM"
    s.close()


def test_migrations_run_once_and_set_user_version(dbpath, monkeypatch):
    s = SQLiteStore(dbpath)
    enrolled(s)
    s.close()
    real = store_module._load_migrations()
    latest = real[-1][0]
    assert user_version(dbpath) == latest
    extra = (latest + 1,
             "-- counts its runs\nINSERT INTO settings (key, value) VALUES ('m2', 'ran');\n")
    monkeypatch.setattr(store_module, "_load_migrations", lambda: real + [extra])
    for _ in range(3):  # an INSERT of a fixed key fails if the migration ran twice
        s = SQLiteStore(dbpath)
        assert s.setting("m2") == "ran"
        assert s.device("dev1") is not None  # 0001 did not run again over the data
        s.close()
    assert user_version(dbpath) == latest + 1


def test_failed_migration_leaves_database_untouched(dbpath, monkeypatch):
    real = store_module._load_migrations()
    broken = (real[-1][0] + 1, "CREATE TABLE half (x);\nINSERT INTO no_such_table VALUES (1);\n")
    monkeypatch.setattr(store_module, "_load_migrations", lambda: real + [broken])
    with pytest.raises(StoreError):
        SQLiteStore(dbpath)
    assert user_version(dbpath) == 0
    db = sqlite3.connect(dbpath)
    assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0  # no half table
    db.close()


def test_packaged_migrations_are_numbered_from_one():
    versions = [v for v, _ in store_module._load_migrations()]
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 8


def test_database_from_the_future_is_refused(dbpath):
    SQLiteStore(dbpath).close()
    db = sqlite3.connect(dbpath)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer pushproxy"):
        SQLiteStore(dbpath)


def test_database_file_mode_is_0600(dbpath):
    s = SQLiteStore(dbpath)
    enrolled(s)  # a write, so the -wal file exists too
    for path in (dbpath, dbpath + "-wal"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    s.close()


def test_wal_mode_is_used_for_files(dbpath):
    s = SQLiteStore(dbpath)
    assert s._one("PRAGMA journal_mode")[0] == "wal"
    assert s._one("PRAGMA foreign_keys")[0] == 1
    assert s._one("PRAGMA busy_timeout")[0] == 5000
    s.close()


def test_setting_or_create_agrees_across_two_instances(backend):
    a, b = backend.open(), backend.open()
    first = a.setting_or_create("vapid", lambda: "A")
    second = b.setting_or_create("vapid", lambda: "B")
    assert first == second == "A"
    a.close()
    b.close()


def test_setting_or_create_race_between_threads_agrees(backend):
    """Both threads miss the key and both make one: only one value is ever stored and returned."""
    backend.open().close()
    barrier = threading.Barrier(2)
    got = {}

    def run(name):
        s = backend.open()

        def make():
            barrier.wait()  # both have seen "absent" before either inserts
            return name
        got[name] = s.setting_or_create("vapid", make)
        s.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert got["a"] == got["b"] in ("a", "b")


OPENER = r"""
import os, sys
from pushproxy.approval.backends import open_store
print("ready", flush=True)
sys.stdin.readline()
store = open_store(sys.argv[1], password=os.environ.get("PUSHPROXY_TEST_DB_PASSWORD"))
print(store.setting_or_create("vapid", lambda: sys.argv[2]), flush=True)
store.close()
"""


def test_processes_creating_the_store_together_all_open_it_and_agree(backend, tmp_path):
    """Processes opening a not-yet-created store at once: none fails, one value wins.

    (SQLite: converting a fresh file to WAL is not covered by busy_timeout; the store
    retries. PostgreSQL: the migrations run under an advisory lock, once.)
    """
    for round in range(3):
        fresh = backend.fresh(tmp_path, f"fresh{round}")
        path = fresh.target
        procs = [subprocess.Popen([sys.executable, "-c", OPENER, path, f"v{i}"],
                                  env=fresh.env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(4)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [err for _, err in results]
        assert len({out.strip() for out, _ in results}) == 1
        if fresh.name == "sqlite":
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_locked_database_raises_store_error(dbpath):
    s = SQLiteStore(dbpath, busy_timeout=0)
    other = sqlite3.connect(dbpath, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(StoreError, match="locked"):
        s.create_enrollment("alice", "h", T0, T0 + 900)
    other.execute("ROLLBACK")
    s.create_enrollment("alice", "h", T0, T0 + 900)  # and the store still works after
    other.close()
    s.close()


def test_not_a_database_raises_store_error(dbpath):
    Path(dbpath).write_bytes(b"this is not an sqlite database, it is far too long text" * 20)
    with pytest.raises(StoreError):
        SQLiteStore(dbpath)


def test_missing_directory_raises_store_error(tmp_path):
    with pytest.raises(StoreError):
        SQLiteStore(str(tmp_path / "no" / "such.db"))
