"""``pushproxy store migrate``: a SQLite store copied into PostgreSQL keeps every device,
link, code, lock and setting working as before; a non-empty target is refused."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pushproxy.approval.migrate import MigrateError, migrate
from pushproxy.approval.pgstore import PostgresStore
from pushproxy.approval.store import Device, SQLiteStore, Transaction
from tests.pg import PASSWORD

REPO = Path(__file__).resolve().parents[2]
T0 = 1_796_000_000.0
SUB = {"endpoint": "https://push.example/x", "keys": {"p256dh": "BP", "auth": "au"}}


def device(id, username="alice", secret="JBSWY3DPEHPK3PXP"):
    return Device(id, username, "phone " + id, "BKey" + id, SUB, T0, T0 + 5, None, secret)


def tx(id, state="pending"):
    return Transaction(id, "alice", "n-" + id, {"nas": "gw1", "x": [1]}, T0, T0 + 60, state,
                       None, None)


@pytest.fixture
def source(tmp_path):
    """A SQLite store with one of everything."""
    path = str(tmp_path / "approval.db")
    s = SQLiteStore(path)
    for dev in (device("d1"), device("d2", "bob")):
        s.create_enrollment(dev.username, "h-" + dev.id, T0 - 10, T0 + 900)
        s.redeem_enrollment("h-" + dev.id, T0, dev)
    s.create_enrollment("carol", "unused", T0, T0 + 10**9)
    s.revoke_device("d2", T0 + 20)
    assert s.use_totp_step("d1", 1000) is True
    s.add_bypass_codes("alice", ["c1", "c2", "c3"], T0, T0 + 10**9)
    s.consume_bypass_code(s.bypass_candidates("alice", T0)[0][0], T0 + 1)
    s.lock_user("bob", T0 + 2, "fraud report", "t-old")
    s.setting_or_create("vapid_private_pem", lambda: "-----PEM-----")
    for i, state in enumerate(["approved", "denied", "pending"]):
        s.create_transaction(tx(f"t{i}"))
        if state != "pending":
            s.decide_transaction(f"t{i}", state, "d1", T0 + 3)
    s.close()
    return path


@pytest.fixture
def target(postgres):
    return postgres.new_database()


def test_everything_but_pending_transactions_is_copied_and_keeps_working(source, target):
    report = {c.table: c for c in migrate(source, target, password=PASSWORD)}
    assert report["devices"].rows == 2 and report["enrollments"].rows == 3
    assert (report["transactions"].rows, report["transactions"].skipped) == (2, 1)
    assert report["bypass_codes"].rows == 3 and report["user_locks"].rows == 1
    assert report["settings"].rows == 1
    old, new = SQLiteStore(source), PostgresStore(target, password=PASSWORD)
    try:
        assert new.devices(include_revoked=True) == old.devices(include_revoked=True)
        assert new.device("d1").totp_secret == "JBSWY3DPEHPK3PXP"
        for token in ("h-d1", "h-d2", "unused"):
            assert new.enrollment(token) == old.enrollment(token)
        assert new.transaction("t0") == old.transaction("t0")
        assert new.transaction("t2") is None  # pending: its login died with the old daemon
        assert new.setting("vapid_private_pem") == "-----PEM-----"
        assert new.locked_users() == old.locked_users()
        assert new.bypass_candidates("alice", T0) == old.bypass_candidates("alice", T0)
        # the rules still hold on the copy
        assert new.use_totp_step("d1", 1000) is False  # a used code stays used
        assert new.use_totp_step("d1", 1001) is True
        assert new.redeem_enrollment("h-d1", T0 + 1, device("d9")) is None
        assert new.redeem_enrollment("unused", T0 + 1, device("d3", "carol")) is not None
        spent = old.bypass_candidates("alice", T0)  # the first one was consumed
        assert [h for _, h in spent] == ["c2", "c3"]
        new.add_bypass_codes("alice", ["c4"], T0, T0 + 10**9)  # ids do not collide
        assert [h for _, h in new.bypass_candidates("alice", T0)] == ["c2", "c3", "c4"]
    finally:
        old.close()
        new.close()


def test_a_target_with_data_is_refused_unless_forced(source, target):
    s = PostgresStore(target, password=PASSWORD)
    s.setting_or_create("vapid_private_pem", lambda: "OTHER")
    s.close()
    with pytest.raises(MigrateError, match="not empty"):
        migrate(source, target, password=PASSWORD)
    s = PostgresStore(target, password=PASSWORD)
    assert s.setting("vapid_private_pem") == "OTHER" and s.devices() == []
    s.close()
    migrate(source, target, password=PASSWORD, force=True)
    s = PostgresStore(target, password=PASSWORD)
    assert s.setting("vapid_private_pem") == "-----PEM-----"
    assert len(s.devices(include_revoked=True)) == 2
    s.close()


def test_a_missing_source_is_refused_and_not_created(tmp_path, target):
    with pytest.raises(MigrateError, match="no SQLite store"):
        migrate(str(tmp_path / "nope.db"), target, password=PASSWORD)
    assert not (tmp_path / "nope.db").exists()


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", "store", "migrate", *args],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


def test_cli_reports_counts_and_refuses_a_password_in_the_url(source, target, tmp_path):
    out = run_cli("--from", source, "--to", target, "--password-env", "DBPW",
                  env={"DBPW": PASSWORD})
    assert out.returncode == 0, out.stderr
    assert "devices: 2 copied" in out.stdout
    assert "transactions: 2 copied (1 pending left behind)" in out.stdout
    again = run_cli("--from", source, "--to", target, "--password-env", "DBPW",
                    env={"DBPW": PASSWORD})
    assert again.returncode == 1 and "not empty" in again.stderr
    secret = run_cli("--from", source, "--to", "postgresql://u:pw-xyz@127.0.0.1/db")
    assert secret.returncode == 2 and "contains a password" in secret.stderr
    assert "pw-xyz" not in secret.stderr
