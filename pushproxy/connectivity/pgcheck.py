"""The PostgreSQL store check of ``pushproxy test-connection``: connect, schema version,
write permission, encryption. Read only, like the SQLite check: nothing is created or
migrated from here (a write is tried inside a transaction that is rolled back)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import psycopg  # this module is imported only for a postgresql:// store

from pushproxy.config import Config
from pushproxy.connectivity.approvalcheck import schema_is_current
from pushproxy.netaddr import is_loopback
from pushproxy.connectivity.report import Report, since

CONNECT_TIMEOUT = 5  # seconds
TABLES = ("devices", "enrollments", "transactions", "settings", "bypass_codes", "user_locks")


def _hint(text: str) -> str:
    lower = text.lower()
    if "refused" in lower:
        return ": is PostgreSQL running and listening on that address (listen_addresses)?"
    if "password authentication failed" in lower or "no password supplied" in lower:
        return (": wrong or missing password (approval.database_password_file / _env) "
                "or user")
    if "no pg_hba.conf entry" in lower:
        return (": pg_hba.conf has no line for this host, user and database (add a hostssl "
                "line with scram-sha-256, then reload PostgreSQL)")
    if "does not exist" in lower:
        return ": create it (see docs/cluster.md)"
    if "timeout" in lower or "timed out" in lower:
        return ": no answer: a firewall drops the connection, or the host is down"
    if "certificate" in lower or "ssl" in lower:
        return ": TLS failed: check sslrootcert and that the server's certificate names the host"
    return ""


def check_postgres_store(report: Report, config: Config) -> None:
    """Connect as the daemon would, then the schema version and a rolled-back write."""
    from pushproxy.approval.pgstore import pg_migrations

    url = config.approval.database
    where = "approval.database"
    extra = {"password": config.approval.database_password} \
        if config.approval.database_password is not None else {}
    started = time.perf_counter()
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                               application_name="pushproxy test-connection", **extra)
    except psycopg.Error as exc:
        text = str(exc).strip()
        report.step("FAIL", "connect", f"{text}{_hint(text)}", since(started), where)
        return
    try:
        with conn:
            conn.execute("SET statement_timeout = 5000")
            info = conn.info
            tls = info.pgconn.ssl_in_use
            report.step("OK", "connect", f"as {info.user} to database {info.dbname} on "
                        f"{info.host}:{info.port}, PostgreSQL {info.server_version // 10000}"
                        f"{', TLS' if tls else ''}", since(started))
            # the host it reached (a multi-host URL names several)
            host = info.host or urlsplit(url).hostname or ""
            if not tls and not host.startswith("/") and not is_loopback(host):
                report.step("WARN", "tls", "the connection is not encrypted: add "
                            "?sslmode=verify-full (and sslrootcert=...) to the URL")
            _schema_and_writes(report, conn, pg_migrations()[-1][0], where)
    except psycopg.Error as exc:
        report.step("FAIL", "database", str(exc).strip(), since(started), where)


def _schema_and_writes(report: Report, conn, known: int, where: str) -> None:
    started = time.perf_counter()
    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        report.step("FAIL", "writable", "this server is a read-only standby: point the URL "
                    "at the primary (or list every node with target_session_attrs=read-write)",
                    since(started), where)
        return
    if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
        if conn.execute("SELECT has_schema_privilege(current_schema(), 'CREATE')"
                        ).fetchone()[0]:
            report.step("WARN", "schema", "empty: the daemon creates the tables at its first "
                        "start (or run pushproxy store migrate to bring a SQLite store)",
                        since(started))
        else:
            report.step("FAIL", "schema", "empty, and this role may not create tables in "
                        "schema " + str(conn.execute("SELECT current_schema()").fetchone()[0])
                        + ": GRANT CREATE ON SCHEMA ... TO it, or let an owner run the "
                        "first start", since(started), where)
        return
    version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
    if schema_is_current(report, "schema", version, known, started, where):
        devices = conn.execute("SELECT count(*), count(DISTINCT username) FROM devices "
                               "WHERE revoked IS NULL").fetchone()
        report.step("OK", "schema", f"schema version {version} (current), {devices[0]} "
                    f"device(s) of {devices[1]} user(s)", since(started))
    elif version > known:
        return
    started = time.perf_counter()
    missing = [f"{table} ({privilege})" for table in TABLES
               for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE")
               if conn.execute("SELECT to_regclass(%s) IS NOT NULL AND "
                               "has_table_privilege(to_regclass(%s), %s)",
                               (table, table, privilege)).fetchone()[0] is False]
    if missing:
        report.step("FAIL", "writable", "this role lacks " + ", ".join(missing),
                    since(started), where)
        return
    try:
        # What every login's push does, undone: a read-only session or a
        # missing grant fails here, not at the first login.
        with conn.transaction(force_rollback=True):
            conn.execute("UPDATE schema_version SET version = version")
    except psycopg.Error as exc:
        report.step("FAIL", "writable", f"a test write failed: {str(exc).strip()}",
                    since(started), where)
        return
    report.step("OK", "writable", "a test write succeeds (rolled back)", since(started))
