"""approval.database as a postgresql:// URL: validated with path-named problems, the
password only from database_password_file/_env, never inside the URL."""

import subprocess
import sys

from pushproxy.filemodes import database_files
from tests.test_config import ENV, GOOD, ROOT, parse, problems

URL = "postgresql://pushproxy@db1.example.com:5432/pushproxy"


def with_database(value, extra=""):
    return GOOD.replace('  database: ":memory:"\n', f'  database: "{value}"\n{extra}')


def test_postgres_url_with_password_file_is_accepted_and_kept_out_of_repr(tmp_path):
    (tmp_path / "db.pw").write_text("s3cret-db-pw\n")
    config = parse(with_database(URL + "?sslmode=verify-full",
                                 "  database_password_file: db.pw\n"), tmp_path, ENV)
    assert config.approval.database == URL + "?sslmode=verify-full"  # not a path
    assert config.approval.database_password == "s3cret-db-pw"
    assert "s3cret-db-pw" not in repr(config.approval)
    assert ("approval.database_password_file", str(tmp_path / "db.pw"), "secret") \
        in config.sensitive_files


def test_password_from_the_environment(tmp_path):
    config = parse(with_database(URL, "  database_password_env: DB_PW\n"), tmp_path,
                   dict(ENV, DB_PW="from-env"))
    assert config.approval.database_password == "from-env"


def test_url_with_a_password_is_refused_without_echoing_it(tmp_path):
    for url in ("postgresql://pushproxy:hunter2-xyz@db1:5432/pushproxy",
                "postgresql://pushproxy@db1/pushproxy?password=hunter2-xyz"):
        found = problems(with_database(url), tmp_path, ENV)
        assert any(p.startswith("approval.database: the URL contains a password")
                   for p in found), found
        assert not any("hunter2-xyz" in p for p in found)


def test_inline_database_password_is_refused(tmp_path):
    found = problems(with_database(URL, "  database_password: x\n"), tmp_path, ENV)
    assert any(p.startswith("approval.database_password: inline secrets are not accepted")
               for p in found), found


def test_incomplete_or_invalid_urls_are_named(tmp_path):
    cases = {
        "postgresql://db1:5432/pushproxy": "names no user",
        "postgresql://pushproxy@db1:5432": "names no database",
        "postgresql://pushproxy@/pushproxy": "names no host",
        "postgresql://pushproxy@db1/pushproxy?sslmode=verify-full&nosuch=1": "not a valid",
    }
    for url, expected in cases.items():
        found = problems(with_database(url), tmp_path, ENV)
        assert any(p.startswith(f"approval.database: {expected}") for p in found), (url, found)


def test_database_password_needs_a_postgres_database(tmp_path):
    found = problems(GOOD.replace('  database: ":memory:"\n',
                                  '  database: ":memory:"\n  database_password_env: DB_PW\n'),
                     tmp_path, dict(ENV, DB_PW="x"))
    assert any(p.startswith("approval.database_password: only for a postgresql:// database")
               for p in found), found


def test_a_postgres_database_has_no_files_to_check():
    assert database_files(URL) == []
    assert database_files("/var/lib/pushproxy/approval.db")[0] == "/var/lib/pushproxy/approval.db"


def test_check_config_names_the_problem_via_the_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(with_database("postgresql://u:pw-in-url@db1/pushproxy"))
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "check-config", str(path)],
                         capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "GW_SECRET": ENV["GW_SECRET"],
                              "LDAP_PW": "pw", "PYTHONPATH": str(ROOT)})
    assert out.returncode != 0
    assert "approval.database" in out.stdout + out.stderr
    assert "pw-in-url" not in out.stdout + out.stderr


def test_check_config_warns_about_a_remote_database_without_verified_tls(tmp_path):
    from pushproxy.cli import exposure_warnings

    def warned(url):
        config = parse(with_database(url, "  database_password_env: DB_PW\n"), tmp_path,
                       dict(ENV, DB_PW="x"))
        return [w for w in exposure_warnings(config) if w.startswith("approval.database")]

    assert "sslmode=prefer (the default)" in warned(URL)[0]
    assert "sslmode=require" in warned(URL + "?sslmode=require")[0]
    assert warned(URL + "?sslmode=verify-full&sslrootcert=/etc/ca.crt") == []
    assert warned("postgresql://pushproxy@127.0.0.1:5432/pushproxy") == []
    assert warned("postgresql://pushproxy@localhost/pushproxy") == []


MULTI = ("postgresql://pushproxy@db1.example.com:5432,db2.example.com:5433/pushproxy"
         "?target_session_attrs=read-write&connect_timeout=2&sslmode=verify-full")


def test_a_multi_host_url_with_read_write_is_accepted_with_its_password(tmp_path):
    """libpq's multi-host URL (the failover set-up of docs/cluster.md) passes validation,
    and the password still comes from the _file / _env key, never the URL."""
    (tmp_path / "db.pw").write_text("s3cret-db-pw\n")
    config = parse(with_database(MULTI, "  database_password_file: db.pw\n"), tmp_path, ENV)
    assert config.approval.database == MULTI
    assert config.approval.database_password == "s3cret-db-pw"
    config = parse(with_database(MULTI, "  database_password_env: DB_PW\n"), tmp_path,
                   dict(ENV, DB_PW="from-env"))
    assert config.approval.database_password == "from-env"
    found = problems(with_database(MULTI.replace("pushproxy@", "pushproxy:hunter2-xyz@")),
                     tmp_path, ENV)
    assert any("contains a password" in p for p in found) and \
        not any("hunter2-xyz" in p for p in found)


def test_several_hosts_without_read_write_or_a_bad_session_attr_are_named(tmp_path):
    """Without target_session_attrs=read-write libpq takes the first host that answers,
    a standby after a failover; a misspelt value would fail only at the first login."""
    cases = {
        MULTI.replace("target_session_attrs=read-write&", ""): "names 2 hosts without "
                                                             "target_session_attrs=read-write",
        MULTI.replace("read-write", "any"): "names 2 hosts without",
        MULTI.replace("read-write", "readwrite"): "target_session_attrs=readwrite is not",
    }
    for url, expected in cases.items():
        found = problems(with_database(url), tmp_path, ENV)
        assert any(p.startswith(f"approval.database: {expected}") for p in found), (url, found)
    for fine in (MULTI.replace("read-write", "primary"), URL + "?target_session_attrs=any"):
        assert parse(with_database(fine), tmp_path, ENV).approval.database == fine
