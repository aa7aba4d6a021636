"""``pushproxy test-connection`` on a PostgreSQL store: connect, schema version, a
rolled-back write; each failure named with its likely cause. Against the test server."""

from __future__ import annotations

import io

import psycopg

from pushproxy.approval.pgstore import PostgresStore, pg_migrations
from pushproxy.connectivity.approvalcheck import check_store
from pushproxy.connectivity.report import Report
from tests.pg import PASSWORD, free_port
from tests.test_config import ENV, GOOD, parse


def checked(tmp_path, url, password=PASSWORD):
    text = GOOD.replace('  database: ":memory:"\n',
                        f'  database: "{url}"\n  database_password_env: DB_PW\n')
    config = parse(text, tmp_path, dict(ENV, DB_PW=password))
    out = io.StringIO()
    report = Report(out)
    check_store(report, config)
    return report, out.getvalue()


def test_an_empty_database_is_a_warning_then_current_and_writable(postgres, tmp_path):
    url = postgres.new_database()
    report, text = checked(tmp_path, url)
    assert report.failures == [] and "WARN  schema      empty" in text
    assert "OK    connect     as postgres to database stores" in text
    PostgresStore(url, password=PASSWORD).close()
    report, text = checked(tmp_path, url)
    assert report.failures == [], text
    assert f"schema version {pg_migrations()[-1][0]} (current)" in text
    assert "OK    writable" in text
    with psycopg.connect(url, password=PASSWORD) as conn:  # the test write left nothing
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1


def test_a_read_only_session_fails_the_write_check(postgres, tmp_path):
    url = postgres.new_database()
    PostgresStore(url, password=PASSWORD).close()
    report, text = checked(tmp_path, url + "%20-cdefault_transaction_read_only%3Don")
    assert any("writable: a test write failed" in f and "read-only" in f
               for f in report.failures), text


def test_a_newer_schema_fails(postgres, tmp_path):
    url = postgres.new_database()
    PostgresStore(url, password=PASSWORD).close()
    with psycopg.connect(url, password=PASSWORD, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    report, text = checked(tmp_path, url)
    assert any("schema version 99" in f and "upgrade pushproxy" in f
               for f in report.failures), text


def test_wrong_password_and_refused_port_are_explained(postgres, tmp_path):
    url = postgres.new_database()
    report, text = checked(tmp_path, url, password="wrong-pw-123")
    assert any("wrong or missing password" in f for f in report.failures), text
    assert "wrong-pw-123" not in text
    report, text = checked(tmp_path, f"postgresql://pushproxy@127.0.0.1:{free_port()}/x")
    assert any("is PostgreSQL running" in f for f in report.failures), text
