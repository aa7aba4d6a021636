"""`pushproxy policy explain` with a context: section: the location, the user's stored
baseline, the signals and the setting that used them (a real SQLite store, a database
built by mmdb-writer, the real command line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pushproxy.approval.store import SQLiteStore
from tests.geodb import LOOK_UP, write_asn, write_city

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def config(tmp_path: Path, database: Path) -> Path:
    city, asn = write_city(tmp_path / "city.mmdb"), write_asn(tmp_path / "asn.mmdb")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"""\
radius:
  clients:
    - name: vpn-gw-1
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
policy:
  rules:
    - name: staff
      action: push
context:
  geoip:
    city_database: {city}
    asn_database: {asn}
    look_up: [{", ".join(LOOK_UP)}]
  baselines: {{learning_logins: 2, learning_days: 1}}
""")
    return cfg


def explain(cfg: Path, ip: str, at: str) -> str:
    env = {**os.environ, "GW_SECRET": "a-long-enough-secret", "LDAP_PW": "pw",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "policy", "explain",
                          "--config", str(cfg), "--user", "Alice", "--client", "vpn-gw-1",
                          "--ip", ip, "--at", at], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_explain_shows_location_signals_and_the_setting_that_used_them(tmp_path):
    db = tmp_path / "pushproxy.db"
    store = SQLiteStore(str(db))
    try:  # alice: approved logins from Berlin, the last at T0
        for at in (T0 - 3 * 86400, T0):
            store.learn_login("alice", at, [("hour", "8"), ("country", "DE"),
                                            ("asn", "64500"), ("network", "192.0.2.0/24")],
                              (52.52, 13.405, "DE"), 64)
    finally:
        store.close()
    cfg = config(tmp_path, db)
    usual = explain(cfg, "192.0.2.9", "2027-01-16T08:30+00:00")
    assert "Location: 192.0.2.9: Berlin, Germany · AS64500 Example Berlin Net" in usual
    assert "learned from 2 approved logins; countries DE" in usual
    assert "Signals: none" in usual and "Result with signals: unchanged" in usual
    lisbon = explain(cfg, "198.51.100.7", "2027-01-16T08:30+00:00")
    assert "new_country: First login from Portugal -> step_up (context.signals.new_country)" \
        in lisbon
    assert ("Result with signals: push with number_match verification (stepped up by "
            "context.signals.new_country; rule 'staff' asked for none)") in lisbon
    tokyo = explain(cfg, "203.0.113.5", "2027-01-15T08:10+00:00")  # 10 minutes after Berlin
    assert "impossible_travel: Impossible travel: 8,9" in tokyo and "10 minutes ago" in tokyo
    assert "Result with signals: deny and alert (context.signals.impossible_travel; rule " \
           "'staff' would push)" in tokyo


def test_explain_never_creates_a_store_it_only_reads(tmp_path):
    db = tmp_path / "none-yet.db"
    text = explain(config(tmp_path, db), "10.1.2.3", "2027-01-15T08:00+00:00")
    assert "Location: 10.1.2.3: private address" in text
    assert f"no store at {db} yet" in text and not db.exists()


def cli(cfg: Path, *argv: str):
    env = {**os.environ, "GW_SECRET": "a-long-enough-secret", "LDAP_PW": "pw",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *argv, "--config", str(cfg)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def test_baseline_show_and_forget(tmp_path):
    db = tmp_path / "pushproxy.db"
    store = SQLiteStore(str(db))
    store.learn_login("alice", T0, [("hour", "8"), ("country", "DE")], (52.52, 13.405, "DE"), 64)
    store.close()
    cfg = config(tmp_path, db)
    shown = cli(cfg, "baseline", "show", "ALICE")
    assert shown.returncode == 0, shown.stderr
    assert "alice: 1 approved login(s)" in shown.stdout and "learning (2 logins" in shown.stdout
    assert "countries: DE" in shown.stdout and "hours: 8" in shown.stdout
    forgot = cli(cfg, "baseline", "forget", "alice")
    assert forgot.returncode == 0 and "forgot alice's baseline (3 row(s))" in forgot.stdout
    assert "nothing learned yet" in cli(cfg, "baseline", "show", "alice").stdout
