"""Store version 3 (issue 14, finding 1): passcode failures kept in the store, the guessing
lock, and bypass codes checked with one scrypt per guess."""

import sqlite3

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from pushproxy import passcodes
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval import store as store_module
from pushproxy.approval.service import ApprovalService
from pushproxy.approval.store import SQLiteStore, StoreError
from pushproxy.metrics import Counters
from pushproxy.passcode_limits import LOCK_REASON, PasscodeLimits
from pushproxy.push import PasscodeVerdict

T0 = 1_796_000_000.0


@pytest.fixture
def store(backend):
    """An empty store, on SQLite and on PostgreSQL (tests/conftest.py)."""
    s = SQLiteStore(":memory:") if backend.name == "sqlite" else backend.open()
    yield s
    s.close()


def test_an_attempt_is_counted_before_its_code_is_checked(store):
    first = store.claim_passcode_attempt("alice", "vpn|1.2.3.4|-", T0, T0 - 100)
    assert first.lock is None and first.user_times == () and first.source_times == ()
    second = store.claim_passcode_attempt("alice", "vpn|1.2.3.4|-", T0 + 1, T0 - 100)
    assert second.user_times == (T0,) and second.source_times == (T0,)
    # a right code: forgotten
    store.forget_passcode_attempt(second.id)
    third = store.claim_passcode_attempt("bob", "vpn|1.2.3.4|-", T0 + 2, T0 - 100)
    assert third.user_times == () and third.source_times == (T0,)


def test_failures_older_than_the_horizon_are_deleted(store):
    store.claim_passcode_attempt("alice", "s", T0, T0 - 10)
    later = store.claim_passcode_attempt("alice", "s", T0 + 1000, T0 + 500)
    assert later.user_times == ()
    db_rows = store._all("SELECT count(*) FROM passcode_failures")[0][0]
    assert db_rows == 1


def test_purge_deletes_old_failures(store):
    store.claim_passcode_attempt("alice", "s", T0, T0 - 10)
    store.claim_passcode_attempt("alice", "s", T0 + 100, T0 - 10)
    assert store.purge(T0 + 50, keep=10) == 1
    assert store._all("SELECT at FROM passcode_failures") == [(T0 + 100,)]


def test_a_locked_user_is_not_counted_and_the_lock_is_returned(store):
    store.lock_user("alice", T0, LOCK_REASON, None)
    attempt = store.claim_passcode_attempt("alice", "s", T0 + 1, T0 - 10)
    assert attempt.id is None and attempt.lock.reason == LOCK_REASON
    assert store._all("SELECT count(*) FROM passcode_failures")[0][0] == 0


def test_clear_forgets_only_that_users_failures(store):
    for user in ("alice", "alice", "bob"):
        store.claim_passcode_attempt(user, "s", T0, T0 - 10)
    assert store.clear_passcode_failures("alice") == 2
    assert store.claim_passcode_attempt("bob", "s", T0 + 1, T0 - 10).user_times == (T0,)


def test_a_selector_names_one_unused_code_per_user(store):
    store.add_bypass_codes("alice", ["h1", "h2"], T0, T0 + 60, selectors=["001", "002"])
    store.add_bypass_codes("bob", ["hb"], T0, T0 + 60, selectors=["001"])  # other user: fine
    assert store.bypass_code_for("alice", "002", T0)[1] == "h2"
    assert store.bypass_code_for("alice", "003", T0) is None
    assert store.bypass_code_for("alice", "001", T0 + 60) is None  # expired
    assert store.bypass_selectors("alice") == {"001", "002"}
    with pytest.raises(StoreError):
        store.add_bypass_codes("alice", ["h3"], T0, T0 + 60, selectors=["001"])
    code_id, _ = store.bypass_code_for("alice", "001", T0)
    assert store.consume_bypass_code(code_id, T0)
    # a used code frees its selector
    store.add_bypass_codes("alice", ["h4"], T0, T0 + 60, selectors=["001"])
    assert store.bypass_code_for("alice", "001", T0)[1] == "h4"


def test_version_2_bypass_codes_survive_the_migration_as_legacy_codes(tmp_path, monkeypatch):
    path = str(tmp_path / "v2.db")
    real = store_module._load_migrations()
    with monkeypatch.context() as patch:  # a version 3 file, then back to version 2
        patch.setattr(store_module, "_load_migrations", lambda folder="migrations": real[:3])
        SQLiteStore(path).close()
    db = sqlite3.connect(path)  # put the file back to version 2, with an old code in it
    db.execute("DROP TABLE passcode_failures")
    db.execute("DROP INDEX bypass_codes_by_selector")
    db.execute("ALTER TABLE bypass_codes DROP COLUMN selector")
    stored = passcodes.hash_bypass_code("0123456789")
    db.execute("INSERT INTO bypass_codes (username, code_hash, created, expires) "
               "VALUES ('alice', ?, ?, ?)", (stored, T0, T0 + 600))
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    s = SQLiteStore(path)
    try:
        assert s.legacy_bypass_candidates("alice", T0)[0][1] == stored
        service = make_service(s)
        got = []
        service.verify_passcode("alice", "0123456789", T0, source="s").addCallback(got.append)
        assert got == [PasscodeVerdict.BYPASS]
    finally:
        s.close()


# -- the service: one scrypt per guess, pause, lock


def make_service(store, alerts=None):
    class Alerter:
        def user_alert(self, event, username, now, **details):
            (alerts if alerts is not None else []).append((event, username, details))
            return defer.succeed(None)

    clock = Clock()
    clock.advance(T0)
    return ApprovalService(store=AsyncStore.inline(store), reactor=clock, counters=Counters(),
                           vapid_public_key="k", alerter=Alerter(),
                           cpu=lambda f, *args: defer.maybeDeferred(f, *args))


def verdict(service, code, now, user="alice", source="vpn|10.0.0.1|-", limits=None):
    got = []
    service.verify_passcode(user, code, now, source=source, limits=limits).addCallback(got.append)
    return got[0]


def test_a_wrong_bypass_code_costs_one_scrypt_with_ten_codes_stored(store, monkeypatch):
    codes = [f"{i:03d}" + passcodes.new_bypass_code()[3:] for i in range(10)]
    store.add_bypass_codes("alice", [passcodes.hash_bypass_code(c) for c in codes], T0,
                           T0 + 600, selectors=[c[:3] for c in codes])
    calls = []
    real = passcodes._scrypt
    monkeypatch.setattr(passcodes, "_scrypt", lambda *a: calls.append(1) or real(*a))
    service = make_service(store)
    wrong_secret = codes[3][:3] + ("0" * 9 if codes[3][3:] != "0" * 9 else "1" * 9)
    assert verdict(service, wrong_secret, T0 + 1) is PasscodeVerdict.WRONG
    assert len(calls) == 1
    assert verdict(service, "999" + "1" * 9, T0 + 2) is PasscodeVerdict.WRONG  # no such selector
    assert len(calls) == 2  # still one: the answer takes as long
    assert verdict(service, codes[7], T0 + 3) is PasscodeVerdict.BYPASS
    assert len(calls) == 3
    assert verdict(service, codes[7], T0 + 4) is PasscodeVerdict.WRONG  # used up


def test_five_wrong_codes_pause_with_one_alert_then_ten_lock(store):
    alerts = []
    service = make_service(store, alerts)
    got = [verdict(service, "000000", T0 + i) for i in range(12)]
    assert got[:5] == [PasscodeVerdict.WRONG] * 5
    assert got[5:10] == [PasscodeVerdict.USER_PAUSED] * 5
    assert got[10:] == [PasscodeVerdict.LOCKED_GUESSING] * 2
    assert [a[0] for a in alerts] == ["passcodes_paused", "user_locked"]
    assert alerts[1][2]["reason"] == LOCK_REASON
    assert store.user_lock("alice").reason == LOCK_REASON
    assert service.counters.get("passcode_locks") == 1


def test_the_count_survives_a_restart(backend):
    for i in range(4):
        s = backend.open()
        assert verdict(make_service(s), "000000", T0 + i) is PasscodeVerdict.WRONG
        s.close()
    s = backend.open()
    try:
        assert verdict(make_service(s), "000000", T0 + 5) is PasscodeVerdict.WRONG
        assert verdict(make_service(s), "000000", T0 + 6) is PasscodeVerdict.USER_PAUSED
    finally:
        s.close()


def test_one_source_spraying_users_is_paused_across_users(store):
    limits = PasscodeLimits(max_failures=5, lock_after=10, source_max_failures=6)
    got = [verdict(make_service(store), "000000", T0 + i, user=f"u{i}", limits=limits)
           for i in range(8)]
    assert got[:6] == [PasscodeVerdict.WRONG] * 6
    assert got[6:] == [PasscodeVerdict.SOURCE_PAUSED] * 2
    other = verdict(make_service(store), "000000", T0 + 9, user="u9", source="vpn|10.0.0.2|-",
                    limits=limits)
    assert other is PasscodeVerdict.WRONG


def test_concurrent_guesses_cannot_all_slip_under_the_limit(store):
    """Twenty guesses in flight at once (their scrypt still running): each was counted
    before its check, so only the first five are checked at all."""
    store.add_bypass_codes("alice", [passcodes.hash_bypass_code("123" + "4" * 9)], T0, T0 + 600,
                           selectors=["123"])
    held = []
    service = make_service(store)
    service.cpu = lambda f, *args: held.append(defer.Deferred()) or held[-1]
    results = []
    for i in range(20):
        service.verify_passcode("alice", "123" + f"{i:09d}", T0 + i / 100,
                                source=f"s{i}").addCallback(results.append)
    assert len(held) == 5  # five checks started; fifteen refused without one
    # five while paused, and the tenth counted attempt locked alice for the rest
    assert results == [PasscodeVerdict.USER_PAUSED] * 5 + [PasscodeVerdict.LOCKED_GUESSING] * 10
    for d in held:
        d.callback(False)
    assert results[15:] == [PasscodeVerdict.WRONG] * 5
