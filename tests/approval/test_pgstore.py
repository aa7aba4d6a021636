"""What only the PostgreSQL store has to show: bounded failures (server gone, row locked,
read-only), reconnecting by itself, schema versions and migrations, and the methods
that other store changes added and whose tests do not run on both backends yet."""

import inspect
import os
import signal
import threading
import time

import psycopg
import pytest

from pushproxy.approval import pgstore
from pushproxy.approval import store as store_module
from pushproxy.approval.pgstore import PostgresStore
from pushproxy.approval.store import Device, SQLiteStore, Store, StoreError, Transaction
from tests.pg import PASSWORD, free_port

T0 = 1_796_000_000.0


def device(id="dev1", username="alice", created=T0):
    return Device(id, username, "phone", "BKey" + id, None, created, None, None, "SECRET")


def tx(id="tx1", username="alice", expires=T0 + 60):
    return Transaction(id, username, "n-" + id, {"nas": "gw1"}, T0, expires, "pending",
                       None, None)


@pytest.fixture
def url(postgres):
    return postgres.new_database()


@pytest.fixture
def store(url):
    s = PostgresStore(url, password=PASSWORD, timeout=1.0)
    yield s
    s.close()


def enrolled(store, dev=None):
    dev = dev or device()
    store.create_enrollment(dev.username, "h-" + dev.id, T0 - 10, T0 + 900)
    assert store.redeem_enrollment("h-" + dev.id, T0, dev) == dev
    return dev


def version(url):
    with psycopg.connect(url, password=PASSWORD) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchall()


def test_every_store_method_exists_on_postgresql_with_the_same_signature():
    """A method added to the SQLite store (or the interface) without its PostgreSQL twin
    fails here, not on a cluster in production."""
    def public(cls):
        return {name: inspect.signature(member) for name, member in vars(cls).items()
                if callable(member) and not name.startswith("_")}

    sqlite, postgres = public(SQLiteStore), public(PostgresStore)
    for name, signature in {**public(Store), **sqlite}.items():
        assert name in postgres, f"PostgresStore lacks {name}"
        assert list(postgres[name].parameters) == list(signature.parameters), name


# -- failures are StoreErrors, in bounded time


def test_server_stopped_mid_use_fails_fast_then_the_same_object_reconnects(postgres, store):
    """The server goes away under an open store: the next call is a StoreError within a
    few seconds (not a hang), and once the server is back the same object works again."""
    enrolled(store)
    postgres.stop("fast")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError):
            store.devices("alice")
        with pytest.raises(StoreError):  # refused while down, still bounded
            store.devices("alice")
        assert time.monotonic() - started < 10
    finally:
        postgres.start()
    assert [d.id for d in store.devices("alice")] == ["dev1"]
    assert store.use_totp_step("dev1", 7) is True


def test_an_idle_connection_the_server_closed_is_replaced_before_the_next_call(postgres,
                                                                             store):
    """A restart (or a failover) while the store sits idle: the next call reconnects
    first instead of failing on the dead connection (that login would get failmode)."""
    enrolled(store)
    postgres.stop("fast")
    postgres.start()
    assert [d.id for d in store.devices("alice")] == ["dev1"]
    assert store.reconnects == 1
    assert [d.id for d in store.devices("alice")] == ["dev1"]  # a live one is kept
    assert store.reconnects == 1


def test_a_server_that_stops_answering_is_cut_off_by_the_watchdog(store):
    """The connection's server process is frozen (SIGSTOP): statement_timeout cannot fire
    and TCP still looks alive, yet the call ends in StoreError within the watchdog's bound,
    and the next call works on a new connection once the server runs again."""
    enrolled(store)
    frozen = store._one("SELECT pg_backend_pid()")[0]
    os.kill(frozen, signal.SIGSTOP)
    outcome = []

    def call():
        try:
            outcome.append(store.devices("alice"))
        except StoreError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    try:
        caller.start()
        caller.join(15)  # the bound is 3 s here; generous for a loaded machine
        hung = caller.is_alive()
    finally:
        os.kill(frozen, signal.SIGCONT)
        caller.join(15)
    assert not hung, "the call waited on a frozen server past every bound"
    assert len(outcome) == 1 and isinstance(outcome[0], StoreError)
    assert store._watchdog.fired == 1
    assert [d.id for d in store.devices("alice")] == ["dev1"]
    assert store._one("SELECT pg_backend_pid()")[0] != frozen


def test_connection_refused_at_open_is_a_store_error():
    started = time.monotonic()
    with pytest.raises(StoreError, match="approval store"):
        PostgresStore(f"postgresql://pushproxy@127.0.0.1:{free_port()}/pushproxy",
                      password="x", timeout=1.0)
    assert time.monotonic() - started < 10


def test_wrong_password_is_a_store_error_without_the_password(url):
    with pytest.raises(StoreError) as caught:
        PostgresStore(url, password="not-the-password-4711", timeout=1.0)
    assert "not-the-password-4711" not in str(caught.value)


def test_a_row_locked_elsewhere_ends_in_store_error_after_the_timeout(url, store):
    """Another session holds the link's row: redeeming waits at most lock_timeout."""
    store.create_enrollment("alice", "h", T0, T0 + 900)
    other = psycopg.connect(url, password=PASSWORD)
    try:
        other.execute("SELECT * FROM enrollments WHERE token_hash = 'h' FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(StoreError, match="lock"):
            store.redeem_enrollment("h", T0 + 1, device())
        assert time.monotonic() - started < 10
    finally:
        other.rollback()
        other.close()
    assert store.redeem_enrollment("h", T0 + 2, device()) is not None  # and it still works


def test_check_writable_fails_on_a_read_only_session(url, store):
    """A standby after a failover is read-only: health must see that logins cannot write."""
    store.check_writable()
    read_only = PostgresStore(url + "%20-cdefault_transaction_read_only%3Don",
                              password=PASSWORD, timeout=1.0)
    try:
        with pytest.raises(StoreError, match="read-only"):
            read_only.check_writable()
    finally:
        read_only.close()
    assert store.commits >= 0 and store.schema_version() == pgstore.pg_migrations()[-1][0]


# -- schema versions


def test_fresh_database_gets_every_migration_and_one_version_row(url, store):
    assert version(url) == [(pgstore.pg_migrations()[-1][0],)]


def test_database_from_the_future_is_refused(url, store):
    store.close()
    with psycopg.connect(url, password=PASSWORD, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="newer pushproxy"):
        PostgresStore(url, password=PASSWORD)


def test_migrations_run_once_and_a_failed_one_changes_nothing(url, store, monkeypatch):
    enrolled(store)
    store.close()
    real = pgstore.pg_migrations()
    latest = real[-1][0]
    broken = (latest + 1, "CREATE TABLE half (x int);\nINSERT INTO no_such_table VALUES (1);\n")
    monkeypatch.setattr(pgstore, "pg_migrations", lambda: real + [broken])
    with pytest.raises(StoreError):
        PostgresStore(url, password=PASSWORD)
    assert version(url) == [(latest,)]
    with psycopg.connect(url, password=PASSWORD) as conn:  # DDL is transactional here
        assert conn.execute("SELECT to_regclass('half')").fetchone()[0] is None
    extra = (latest + 1, "INSERT INTO settings (key, value) VALUES ('m', 'ran');\n")
    monkeypatch.setattr(pgstore, "pg_migrations", lambda: real + [extra])
    for _ in range(3):  # a second run of the INSERT would violate the primary key
        s = PostgresStore(url, password=PASSWORD)
        assert s.setting("m") == "ran" and s.device("dev1") is not None
        s.close()
    assert version(url) == [(latest + 1,)]


def test_postgresql_migrations_mirror_the_sqlite_ones():
    """Each SQLite migration has a PostgreSQL one of the same number and name."""
    def names(folder):
        from importlib import resources

        return sorted(e.name for e in resources.files("pushproxy.approval").joinpath(
            folder).iterdir() if e.name.endswith(".sql"))

    sqlite, pg = names("migrations"), names("migrations_pg")
    assert sqlite and set(sqlite) <= set(pg)
    assert [v for v, _ in pgstore.pg_migrations()] == list(range(1, len(pg) + 1))
    assert len(store_module._load_migrations()) == len(sqlite)


# -- ordering and collation


def test_ids_sort_bytewise_as_in_sqlite(store):
    """Upper case before lower case, whatever the database's locale."""
    for i, dev_id in enumerate(["b", "B", "a", "_"]):
        enrolled(store, device(id=dev_id))
    assert [d.id for d in store.devices("alice")] == ["B", "_", "a", "b"]


# -- methods added next to this backend (one call per push, batched expiry)


def test_open_transaction_reads_devices_and_records_in_one_commit(store):
    a = enrolled(store, device("a", created=T0 + 1))
    enrolled(store, device("r", created=T0 + 2))
    store.revoke_device("r", T0 + 5)
    before = store.commits
    assert store.open_transaction(tx()) == [a]
    assert store.commits == before + 1
    assert store.transaction("tx1") == tx()
    assert store.open_transaction(tx("tx2", username="bob")) == []
    assert store.transaction("tx2") is None


def test_expire_transactions_closes_only_pending_ones_in_one_commit(store):
    for i in (1, 2, 3):
        store.create_transaction(tx(f"tx{i}"))
    assert store.decide_transaction("tx2", "approved", "dev1", T0 + 1) is True
    before = store.commits
    assert store.expire_transactions(["tx1", "tx2", "tx3", "nope"], T0 + 60) == 2
    assert store.commits == before + 1
    assert [store.transaction(f"tx{i}").state for i in (1, 2, 3)] == [
        "expired", "approved", "expired"]


def test_concurrent_passcode_attempts_each_see_every_earlier_one(url):
    """Eight connections guess at once: the counts they see are 0..7, each once."""
    barrier = threading.Barrier(8)
    seen, errors = [], []

    def guess(i):
        try:
            own = PostgresStore(url, password=PASSWORD)
            barrier.wait()
            seen.append(len(own.claim_passcode_attempt("alice", f"s{i}", T0 + i, T0 - 60)
                            .user_times))
            own.close()
        except Exception as exc:
            errors.append(exc)

    workers = [threading.Thread(target=guess, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == [] and sorted(seen) == list(range(8))
