"""``pushproxy bypass``, ``unlock`` and ``locks``, run as the admin runs them."""

import os
import re
import subprocess
import sys
import time

import pytest

from pushproxy import passcodes
from pushproxy.approval.store import SQLiteStore

CONFIG = """\
radius:
  clients:
    - name: gw
      address: 10.0.0.0/24
      secret_env: GW_SECRET
ldap:
  servers: ["ldaps://dc1.example.com"]
  bind_dn: cn=svc,dc=example,dc=com
  bind_password_env: LDAP_PW
  user_base: ou=people,dc=example,dc=com
approval:
  public_url: https://mfa.example.com
  database: {database}
"""
ENV = dict(os.environ, GW_SECRET="a-long-enough-secret", LDAP_PW="pw")


@pytest.fixture
def setup(tmp_path):
    """(config path, database path)."""
    database = tmp_path / "approval.sqlite"
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(database=database))
    return str(config), str(database)


def cli(config, *args):
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *args, "--config", config],
                          capture_output=True, text=True, env=ENV, timeout=120)


def codes_in(stdout):
    return re.findall(r"^\s+([0-9]{12})$", stdout, re.MULTILINE)


def hashes(database, user):
    store = SQLiteStore(database)
    try:
        return store.bypass_candidates(user, time.time())
    finally:
        store.close()


def test_bypass_prints_codes_once_and_stores_only_hashes(setup):
    config, database = setup
    out = cli(config, "bypass", "alice")
    assert out.returncode == 0, out.stderr
    codes = codes_in(out.stdout)
    assert len(codes) == 5 and len(set(codes)) == 5
    stored = hashes(database, "alice")
    assert len(stored) == 5
    for code, (_, digest) in zip(codes, stored):
        assert digest.startswith("scrypt$") and code not in digest
        assert passcodes.bypass_code_matches(code, digest)
    with open(database, "rb") as f:
        raw = f.read()
    assert not any(code.encode() in raw for code in codes)


def test_bypass_count_ttl_and_replace(setup):
    config, database = setup
    first = codes_in(cli(config, "bypass", "alice", "--count", "2").stdout)
    out = cli(config, "bypass", "alice", "--count", "1", "--ttl", "3600")
    assert out.returncode == 0 and "2 earlier code(s) stay valid" in out.stdout
    assert len(hashes(database, "alice")) == 3
    out = cli(config, "bypass", "alice", "-n", "3", "--replace")
    assert out.returncode == 0, out.stderr
    fresh = codes_in(out.stdout)
    stored = hashes(database, "alice")
    assert len(stored) == 3
    assert not any(passcodes.bypass_code_matches(c, h) for c in first for _, h in stored)
    assert all(any(passcodes.bypass_code_matches(c, h) for _, h in stored) for c in fresh)


def test_bypass_ttl_sets_expiry(setup):
    config, database = setup
    before = time.time()
    cli(config, "bypass", "bob", "--count", "1", "--ttl", "60")
    store = SQLiteStore(database)
    try:
        assert len(store.bypass_candidates("bob", before + 30)) == 1
        assert store.bypass_candidates("bob", time.time() + 61) == []
    finally:
        store.close()


@pytest.mark.parametrize("args", [["--count", "0"], ["--count", "101"], ["--count", "x"],
                                  ["--ttl", "0"], ["--ttl", "-1"]])
def test_bypass_refuses_bad_arguments(setup, args):
    config, database = setup
    out = cli(config, "bypass", "alice", *args)
    assert out.returncode == 2 and not os.path.exists(database)


def test_unlock_and_locks(setup):
    config, database = setup
    out = cli(config, "locks")
    assert out.returncode == 0 and "no locked users" in out.stdout
    store = SQLiteStore(database)
    store.lock_user("alice", time.time(), "fraud report", "tx-42")
    store.close()
    out = cli(config, "locks")
    assert out.returncode == 0
    assert re.search(r"^alice\s+\S+.*tx-42\s+fraud report$", out.stdout, re.MULTILINE)
    out = cli(config, "unlock", "alice")
    assert out.returncode == 0 and "unlocked alice" in out.stdout and "fraud report" in out.stdout
    out = cli(config, "unlock", "alice")
    assert out.returncode == 1 and "not locked" in out.stderr
    assert "no locked users" in cli(config, "locks").stdout


def test_bad_config_is_reported(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("radius: {}\n")
    out = cli(str(config), "bypass", "alice")
    assert out.returncode == 1 and "problem(s)" in out.stderr and "ldap: missing" in out.stderr
