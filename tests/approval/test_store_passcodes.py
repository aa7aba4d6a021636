"""Store version 2: TOTP secrets and steps, bypass codes, fraud locks; the v1 -> v2 migration;
enrollment handing the TOTP secret to the device."""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import pytest_twisted
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, threads

from pushproxy import passcodes
from pushproxy.approval import crypto
from pushproxy.approval import authenticator as auth
from pushproxy.approval import authenticator_cli as auth_cli
from pushproxy.approval import store as store_module
from pushproxy.approval.api import build_site
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.service import ApprovalService, new_enrollment
from pushproxy.approval.store import Device, Lock, SQLiteStore
from pushproxy.approval.webpush import VapidKeys
from pushproxy.metrics import Counters

T0 = 1_796_000_000.0
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def device(id="dev1", username="alice", secret=SECRET):
    return Device(id=id, username=username, name="phone", public_key="BKey" + id,
                  push_subscription=None, created=T0, last_seen=None, revoked=None,
                  totp_secret=secret)


def enrolled(store, dev=None, token=None):
    dev = dev or device()
    token = token or "h-" + dev.id
    store.create_enrollment(dev.username, token, T0 - 10, T0 + 900)
    assert store.redeem_enrollment(token, T0, dev) == dev
    return dev


def user_version(path):
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


@pytest.fixture
def store(backend):
    """An empty store, on SQLite and on PostgreSQL (tests/conftest.py)."""
    s = SQLiteStore(":memory:") if backend.name == "sqlite" else backend.open()
    yield s
    s.close()


@pytest.fixture
def dbpath(tmp_path):
    return str(tmp_path / "approval.sqlite")


# -- the migration


def make_v1(path):
    """A database as pushproxy with only migration 0001 left it, with one of everything."""
    version, sql = store_module._load_migrations()[0]
    assert version == 1
    db = sqlite3.connect(path)
    db.executescript(sql)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO devices VALUES ('old', 'alice', 'phone', 'BKeyold', NULL, ?, NULL, "
               "NULL)", (T0,))
    db.execute("INSERT INTO enrollments VALUES ('h', 'alice', ?, ?, ?, 'old')",
               (T0 - 10, T0 + 900, T0))
    db.execute("INSERT INTO transactions VALUES ('tx1', 'alice', 'n', '{\"nas\": \"gw1\"}', ?, "
               "?, 'approved', 'old', ?)", (T0, T0 + 60, T0 + 5))
    db.execute("INSERT INTO settings VALUES ('vapid', 'PEM')")
    db.commit()
    db.close()


def test_packaged_migrations_now_reach_version_3():
    assert [v for v, _ in store_module._load_migrations()][:3] == [1, 2, 3]


def test_version_1_database_is_migrated_and_keeps_its_data(dbpath):
    make_v1(dbpath)
    assert user_version(dbpath) == 1
    s = SQLiteStore(dbpath)
    try:
        old = s.device("old")
        assert old is not None and old.username == "alice" and old.totp_secret is None
        assert s.enrollment("h").device_id == "old"
        assert s.transaction("tx1").state == "approved"
        assert s.transaction("tx1").context == {"nas": "gw1"}
        assert s.setting("vapid") == "PEM"
        assert s.use_totp_step("old", 5) is False  # no secret: no codes
        new = enrolled(s, device("new"))
        assert s.device("new") == new and s.devices("alice") == [new, old]  # by created, id
        assert s.lock_user("alice", T0, "fraud", "tx1") is True
    finally:
        s.close()
    assert user_version(dbpath) == len(store_module._load_migrations())  # the newest
    s = SQLiteStore(dbpath)  # reopening does not run 0002 again (ALTER TABLE would fail)
    assert s.user_lock("alice") is not None
    s.close()


def test_fresh_database_is_at_the_newest_version(dbpath):
    SQLiteStore(dbpath).close()
    assert user_version(dbpath) == len(store_module._load_migrations()) >= 3


# -- devices and TOTP steps


def test_totp_secret_round_trips_and_stays_out_of_repr(store):
    dev = enrolled(store)
    assert store.device("dev1").totp_secret == SECRET
    assert store.devices("alice")[0].totp_secret == SECRET
    for shown in (repr(dev), str(dev), repr(store.device("dev1"))):
        assert SECRET not in shown and "totp" not in shown


def test_device_without_secret_still_constructs_positionally():
    dev = Device("d", "bob", "n", "pk", None, T0, None, None)
    assert dev.totp_secret is None


def test_totp_step_is_accepted_once_and_never_older(store):
    enrolled(store)
    assert store.use_totp_step("dev1", 100) is True
    assert store.use_totp_step("dev1", 100) is False  # the same code again
    assert store.use_totp_step("dev1", 99) is False  # an older code after a newer one
    assert store.use_totp_step("dev1", 101) is True
    assert store.use_totp_step("nobody", 200) is False


def test_totp_steps_are_per_device(store):
    enrolled(store, device("a"))
    enrolled(store, device("b"))
    assert store.use_totp_step("a", 100) is True
    assert store.use_totp_step("b", 100) is True


def test_revoked_device_accepts_no_totp_step(store):
    enrolled(store)
    store.revoke_device("dev1", T0 + 1)
    assert store.use_totp_step("dev1", 100) is False


def test_racing_threads_claim_a_step_once(backend):
    s = backend.open()
    enrolled(s)
    s.close()
    wins = []
    barrier = threading.Barrier(8)

    def claim():
        own = backend.open()  # a connection per thread, as per process
        barrier.wait()
        wins.append(own.use_totp_step("dev1", 42))
        own.close()

    workers = [threading.Thread(target=claim) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(wins) == [False] * 7 + [True]


# -- bypass codes


def test_bypass_codes_are_single_use(store):
    store.add_bypass_codes("alice", ["h1", "h2"], T0, T0 + 3600)
    candidates = store.bypass_candidates("alice", T0 + 1)
    assert [h for _, h in candidates] == ["h1", "h2"]
    first = candidates[0][0]
    assert store.consume_bypass_code(first, T0 + 2) is True
    assert store.consume_bypass_code(first, T0 + 3) is False
    assert [h for _, h in store.bypass_candidates("alice", T0 + 4)] == ["h2"]
    assert store.bypass_candidates("bob", T0 + 4) == []


def test_bypass_codes_expire(store):
    store.add_bypass_codes("alice", ["h1"], T0, T0 + 60)
    (code_id, _), = store.bypass_candidates("alice", T0 + 59)
    assert store.bypass_candidates("alice", T0 + 60) == []
    assert store.consume_bypass_code(code_id, T0 + 60) is False  # exactly at expiry: gone
    assert store.consume_bypass_code(code_id, T0 + 59.9) is True


def test_replace_and_delete_bypass_codes(store):
    store.add_bypass_codes("alice", ["h1", "h2"], T0, T0 + 60)
    store.add_bypass_codes("bob", ["b1"], T0, T0 + 60)
    store.add_bypass_codes("alice", ["h3"], T0, T0 + 60, replace=True)
    assert [h for _, h in store.bypass_candidates("alice", T0)] == ["h3"]
    assert store.delete_bypass_codes("alice") == 1
    assert store.delete_bypass_codes("alice") == 0
    assert [h for _, h in store.bypass_candidates("bob", T0)] == ["b1"]


def test_purge_drops_old_spent_and_expired_bypass_codes(store):
    store.add_bypass_codes("alice", ["spent", "expired", "fresh"], T0, T0 + 60)
    store.add_bypass_codes("alice", ["long"], T0, T0 + 90 * 86400)
    spent = store.bypass_candidates("alice", T0)[0][0]
    store.consume_bypass_code(spent, T0 + 1)
    assert store.purge(T0 + 31 * 86400) == 3
    assert [h for _, h in store.bypass_candidates("alice", T0 + 31 * 86400)] == ["long"]


# -- fraud locks


def test_lock_unlock_cycle(store):
    assert store.user_lock("alice") is None
    assert store.lock_user("alice", T0, "fraud report", "tx1") is True
    assert store.lock_user("alice", T0 + 5, "again", "tx2") is False  # the first is kept
    assert store.user_lock("alice") == Lock("alice", T0, "fraud report", "tx1")
    store.lock_user("bob", T0 - 1, "fraud report", None)
    assert [lock.username for lock in store.locked_users()] == ["bob", "alice"]
    assert store.unlock_user("alice") is True
    assert store.unlock_user("alice") is False
    assert store.user_lock("alice") is None
    assert store.locked_users() == [Lock("bob", T0 - 1, "fraud report", None)]


def test_lock_is_seen_by_another_connection(backend):
    a, b = backend.open(), backend.open()
    try:
        a.lock_user("alice", T0, "fraud", "tx1")
        assert b.user_lock("alice").txid == "tx1"
        assert b.unlock_user("alice") is True
        assert a.user_lock("alice") is None
    finally:
        a.close()
        b.close()


# -- enrollment hands out the secret, once


class Server:
    """A real service, store and site on 127.0.0.1."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.store = SQLiteStore(":memory:")
        self.service = ApprovalService(store=AsyncStore.inline(self.store), reactor=reactor,
                                       counters=Counters(),
                                       vapid_public_key=VapidKeys.generate().public_key_b64url)
        self.port = reactor.listenTCP(0, build_site(self.service, max_body=16384,
                                                    reactor=reactor), interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    def link(self, username="alice"):
        return new_enrollment(self.store, username, self.base, 900, self.reactor.seconds())


@pytest.fixture
def server():
    from twisted.internet import reactor

    s = Server(reactor)
    yield s
    pytest_twisted.blockon(defer.maybeDeferred(s.port.stopListening))
    s.store.close()


@pytest_twisted.ensureDeferred
async def test_enroll_answer_carries_the_secret_and_otpauth_uri(server):
    base, token = auth.parse_enrollment_url(server.link())
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = crypto.public_key_text(key.public_key())
    body = {"token": token, "public_key": public_key, "name": "raw", "push_subscription": None,
            "signature": crypto.sign(key, crypto.enroll_text(token, public_key, "raw"))}
    response = await threads.deferToThread(requests.post, base + "/v1/enroll", json=body,
                                           timeout=10)
    assert response.status_code == 201
    answer = response.json()
    dev = server.store.device(answer["device_id"])
    assert answer["totp_secret"] == dev.totp_secret
    assert answer["otpauth_uri"] == passcodes.otpauth_uri(dev.totp_secret, "alice")
    assert set(answer) == {"device_id", "username", "vapid_public_key", "totp_secret",
                           "otpauth_uri"}


@pytest_twisted.ensureDeferred
async def test_enrollment_stores_a_secret_and_the_authenticator_keeps_it(server, tmp_path):
    state_dir = str(tmp_path / "state")
    state = await threads.deferToThread(auth.enroll, server.link(), state_dir, "cli")
    dev = server.store.device(state["device_id"])
    assert dev.totp_secret and state["totp_secret"] == dev.totp_secret
    assert len(passcodes._secret_bytes(dev.totp_secret)) == 20
    loaded, _ = auth.load_state(state_dir)
    assert loaded.totp_secret == dev.totp_secret
    assert dev.totp_secret not in repr(loaded)
    code, left = auth.current_code(state_dir, now=T0)
    assert code == passcodes.totp(dev.totp_secret, passcodes.totp_step(T0))
    assert 1 <= left <= 30
    assert passcodes.totp_matches(dev.totp_secret, code, T0) == passcodes.totp_step(T0)
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "authenticator", "code",
                          "--state", state_dir], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = out.stdout.split()[0]
    assert passcodes.totp_matches(dev.totp_secret, shown, time.time()) is not None


def test_code_command_without_a_secret_explains(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    (state_dir / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(state_dir / "key.pem", 0o600)
    (state_dir / "device.json").write_text(json.dumps({
        "base_url": "http://x", "device_id": "d", "username": "alice", "name": "old",
        "public_key": crypto.public_key_text(key.public_key())}))
    assert auth_cli.cmd_code(type("Args", (), {"state": str(state_dir)})()) == 1
    with pytest.raises(auth.AuthenticatorError, match="enroll it again"):
        auth.current_code(str(state_dir))
