"""Per-user login baselines in the store, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest


@pytest.fixture
def store(backend):
    s = backend.open()
    yield s
    s.close()


def test_an_unknown_user_has_an_empty_baseline(store):
    b = store.user_baseline("alice")
    assert (b.approved, b.first_at, b.countries, b.hours) == (0, None, frozenset(), frozenset())


def test_approved_logins_accumulate_per_kind(store):
    store.learn_login("alice", 100.0, [("hour", "8"), ("country", "DE"), ("asn", "64500"),
                                       ("network", "192.0.2.0/24")], (52.5, 13.4, "DE"), 64)
    store.learn_login("alice", 200.0, [("hour", "9"), ("country", "DE")], None, 64)
    store.learn_login("bob", 150.0, [("country", "JP")], (35.7, 139.7, "JP"), 64)
    b = store.user_baseline("alice")
    assert (b.approved, b.first_at, b.last_at) == (2, 100.0, 200.0)
    assert b.countries == {"DE"} and b.asns == {"64500"} and b.hours == {8, 9}
    assert b.networks == {"192.0.2.0/24"}
    # the login without coordinates leaves the last located one for impossible travel
    assert (b.located_at, b.latitude, b.longitude, b.located_country) == (100.0, 52.5, 13.4, "DE")
    assert store.user_baseline("bob").countries == {"JP"}


def test_each_kind_keeps_only_its_most_recently_seen_values(store):
    for i in range(10):
        store.learn_login("alice", float(i), [("network", f"198.51.100.{i}/32")], None, 3)
    assert store.user_baseline("alice").networks == {f"198.51.100.{i}/32" for i in (7, 8, 9)}


def test_unknown_kinds_are_refused_and_forget_drops_everything(store):
    with pytest.raises(ValueError):
        store.learn_login("alice", 1.0, [("planet", "mars")], None, 8)
    store.learn_login("alice", 1.0, [("country", "DE")], None, 8)
    assert store.forget_baseline("alice") == 2
    assert store.user_baseline("alice").approved == 0


def test_a_second_connection_sees_what_another_learned(backend, store):
    """Shared in a cluster: another node (connection) reads the same baseline."""
    store.learn_login("alice", 5.0, [("country", "PT")], (38.7, -9.1, "PT"), 8)
    other = backend.open()
    try:
        assert other.user_baseline("alice").countries == {"PT"}
    finally:
        other.close()


def test_store_migrate_copies_baselines_to_postgresql(tmp_path, postgres):
    from pushproxy.approval.migrate import migrate
    from pushproxy.approval.pgstore import PostgresStore
    from pushproxy.approval.store import SQLiteStore
    from tests.pg import PASSWORD

    source = str(tmp_path / "approval.db")
    s = SQLiteStore(source)
    s.learn_login("alice", 10.0, [("country", "DE"), ("hour", "8")], (52.5, 13.4, "DE"), 8)
    want = s.user_baseline("alice")
    s.close()
    target = postgres.new_database()
    report = {c.table: c.rows for c in migrate(source, target, password=PASSWORD)}
    assert report["baseline_users"] == 1 and report["baseline_items"] == 2
    pg = PostgresStore(target, password=PASSWORD)
    try:
        assert pg.user_baseline("alice") == want
    finally:
        pg.close()
