"""File permissions (issue 14, finding 8): secrets, keys and the database are private.

Real files with real modes. The suite runs as root, for whom ``access()`` allows
everything, so the rule is on the permission bits (and these tests set them).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pushproxy import filemodes
from pushproxy.approval.store import SQLiteStore
from pushproxy.audit import AuditEvent, AuditLog, utc_stamp
from pushproxy.config import load_config
from pushproxy.metrics import Counters

ROOT = Path(__file__).resolve().parent.parent
UID, GID = os.geteuid(), os.getegid()


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o606, 0o620, 0o660, 0o666, 0o777,
                                  0o624])
def test_files_others_can_read_or_change_are_refused(tmp_path, mode):
    secret = tmp_path / "x.secret"
    secret.write_text("s\n")
    secret.chmod(mode)
    finding = filemodes.check_file("radius.clients[0].secret_file", str(secret), "secret")
    assert finding is not None and finding.refuse
    assert finding.message.startswith("radius.clients[0].secret_file: secret file ")
    assert f"mode {mode:04o}" in finding.message and f"chmod 600 {secret}" in finding.message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700, 0o500, 0o611])
def test_private_files_pass(tmp_path, mode):
    secret = tmp_path / "x.secret"
    secret.write_text("s\n")
    secret.chmod(mode)
    assert filemodes.check_file("p", str(secret), "secret") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other owners needs root")
def test_group_readable_is_only_a_warning_when_the_group_is_the_daemons_own(tmp_path):
    """root:pushproxy 0640 (as docs/systemd.md sets the config file): warn, not refuse."""
    secret = tmp_path / "x.secret"
    secret.write_text("s\n")
    secret.chmod(0o640)
    os.chown(secret, 0, 4242)
    own = filemodes.check_file("p", str(secret), "secret", uid=999, gid=4242)
    assert own is not None and not own.refuse and "tolerated" in own.message
    other = filemodes.check_file("p", str(secret), "secret", uid=999, gid=4343)
    assert other is not None and other.refuse
    os.chown(secret, 1234, 4242)  # owned by some other user: refused
    assert filemodes.check_file("p", str(secret), "secret", uid=999, gid=4242).refuse


def test_absent_files_are_not_findings(tmp_path):
    assert filemodes.check_file("approval.database", str(tmp_path / "nope.db"), "database") \
        is None


def write_config(folder: Path, *, database="pushproxy.db", extra="") -> Path:
    for name in ("gw.secret", "up.secret", "ldap.secret"):
        (folder / name).write_text("a-long-enough-secret\n")
        (folder / name).chmod(0o600)
    # real PEM files: the config loads them as serve would (pushproxy.tlsfiles)
    from tests.test_config_tls_files import key_and_cert

    key, cert = key_and_cert()
    (folder / "tls.crt").write_bytes(cert)
    (folder / "tls.key").write_bytes(key)
    (folder / "tls.key").chmod(0o600)
    path = folder / "config.yaml"
    path.write_text(textwrap.dedent(f"""\
        radius:
          listen: ["127.0.0.1:0"]
          clients:
            - {{name: gw, address: 127.0.0.1, secret_file: gw.secret}}
            - name: relay
              address: 10.0.0.0/8
              secret_file: gw.secret
              primary: radius
              upstream: [{{address: "127.0.0.1:1", secret_file: up.secret}}]
        ldap:
          servers: ["ldap://127.0.0.1:9"]
          user_base: "dc=x"
          bind_dn: "cn=svc,dc=x"
          bind_password_file: ldap.secret
        approval:
          listen: "127.0.0.1:0"
          public_url: "https://mfa.example.net"
          tls_cert: tls.crt
          tls_key: tls.key
          database: {database}
        {extra}"""))
    return path


def test_every_secret_file_key_and_database_file_of_a_config_is_checked(tmp_path):
    path = write_config(tmp_path)
    db = tmp_path / "pushproxy.db"
    for name in ("pushproxy.db", "pushproxy.db-wal", "pushproxy.db-shm"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).chmod(0o600)
    assert filemodes.check_config_files(load_config(path)) == []
    for name in ("gw.secret", "up.secret", "ldap.secret", "tls.key", "pushproxy.db-wal",
                 "pushproxy.db-shm"):
        (tmp_path / name).chmod(0o644)
    db.chmod(0o666)
    (tmp_path / "tls.crt").chmod(0o644)  # a certificate is public
    found = {(f.config_path, Path(f.path).name) for f in
             filemodes.check_config_files(load_config(path))}
    assert found == {
        ("radius.clients[0].secret_file", "gw.secret"),
        ("radius.clients[1].secret_file", "gw.secret"),
        ("radius.clients[1].upstream[0].secret_file", "up.secret"),
        ("ldap.bind_password_file", "ldap.secret"),
        ("approval.tls_key", "tls.key"),
        ("approval.database", "pushproxy.db"),
        ("approval.database", "pushproxy.db-wal"),
        ("approval.database", "pushproxy.db-shm"),
    }


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60)


def test_serve_refuses_a_world_readable_secret_and_names_the_fix(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "ldap.secret").chmod(0o644)
    out = run_cli("serve", "--config", str(path))
    assert out.returncode == 1
    assert "startup.insecure_file" in out.stderr and "ldap.bind_password_file" in out.stderr
    assert f"chmod 600 {tmp_path / 'ldap.secret'}" in out.stderr
    assert "startup.failed" in out.stderr


def test_serve_refuses_a_world_writable_database(tmp_path):
    path = write_config(tmp_path)
    SQLiteStore(str(tmp_path / "pushproxy.db")).close()
    (tmp_path / "pushproxy.db").chmod(0o666)
    out = run_cli("serve", "--config", str(path))
    assert out.returncode == 1
    assert "approval.database" in out.stderr and "mode=0666" in out.stderr


def test_check_config_reports_the_same_files_as_warnings_and_exits_0(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "gw.secret").chmod(0o644)
    out = run_cli("check-config", str(path))
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stdout.splitlines() if "warning:" in line]
    assert len(warnings) == 2  # both clients name the file
    assert all("serve refuses to start" in w and "chmod 600" in w for w in warnings)


def test_example_config_passes_check_config_in_a_fresh_clone(tmp_path):
    """git stores the placeholder secrets as 0644: check-config warns, exits 0."""
    shutil.copy(ROOT / "config.example.yaml", tmp_path / "config.yaml")
    shutil.copytree(ROOT / "secrets", tmp_path / "secrets")
    for item in (tmp_path / "secrets").iterdir():
        item.chmod(0o644)
    out = run_cli("check-config", "config.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "chmod 600" in out.stdout


# -- files the daemon creates


@pytest.fixture
def open_umask():
    """umask 0: without an explicit mode a new file would be 0666 (0644 for SQLite)."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_database_wal_and_shm_are_created_0600_even_with_umask_0(tmp_path, open_umask):
    path = str(tmp_path / "new.db")
    store = SQLiteStore(path)
    store.setting_or_create("k", lambda: "v")  # a write: -wal and -shm exist now
    reader = sqlite3.connect(path)
    reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
    for name in (path, path + "-wal", path + "-shm"):
        assert os.path.exists(name) and mode_of(name) == 0o600, name
    reader.close()
    store.close()


def test_a_new_audit_file_is_created_0600_even_with_umask_0(tmp_path, open_umask):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path), Counters())
    audit.record(AuditEvent(time=utc_stamp(time.time()), protocol="radius", user="alice",
                            client="gw", source="127.0.0.1", calling_station=None, nas=None,
                            outcome="reject", reason="bad_credentials", rule=None,
                            latency_ms=1.0, txid=None, device=None, joined=False))
    audit.close()
    assert path.read_text().count("alice") == 1
    assert mode_of(path) == 0o600
