"""Opens the approval store that ``approval.database`` names: a SQLite file or a
``postgresql://`` URL. The only place that chooses a backend."""

from __future__ import annotations

from pushproxy.approval.store import SQLiteStore, Store


def is_postgres_url(database: str) -> bool:
    """Whether ``approval.database`` names a PostgreSQL database rather than a file."""
    return database.startswith(("postgresql://", "postgres://"))


def open_store(database: str, *, password: str | None = None,
               timeout: float = 5.0, background_checkpoints: bool = False) -> Store:
    """The store for ``database``; ``timeout`` bounds each wait (SQLite's busy timeout,
    PostgreSQL's statement and lock timeouts). StoreError if it cannot be opened.
    ``background_checkpoints`` (the daemon): a SQLite store's WAL checkpoints run on a
    thread of their own, not inside its commits (`pushproxy.approval.walcheckpoint`)."""
    if is_postgres_url(database):
        # imported here: psycopg (and libpq) are needed only by a PostgreSQL store
        from pushproxy.approval.pgstore import PostgresStore

        return PostgresStore(database, password=password, timeout=timeout)
    return SQLiteStore(database, busy_timeout=timeout,
                       background_checkpoints=background_checkpoints)


def postgres_url_problems(url: str) -> list[str]:
    """What is wrong with a ``postgresql://`` URL in the config (empty: nothing).

    The password never goes in the URL (the config file is read by more people and
    tools than a secret file): it comes from ``approval.database_password_file`` or
    ``_env``. A problem never repeats the URL, which may hold that password."""
    from urllib.parse import parse_qs, urlsplit

    try:
        parts = urlsplit(url)
        has_password = parts.password is not None or "password" in parse_qs(parts.query)
    except ValueError as exc:
        return [f"not a valid URL: {exc}"]
    if has_password:
        return ["the URL contains a password: remove it and set "
                "approval.database_password_file (or _env) instead"]
    try:
        from psycopg.conninfo import conninfo_to_dict
        import psycopg
    except ImportError:
        return ["a postgresql:// database needs the psycopg package (pip install psycopg)"]
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error as exc:
        return [f"not a valid PostgreSQL URL: {str(exc).strip()}"]
    problems = []
    if not info.get("user"):
        problems.append("names no user: write postgresql://USER@HOST:PORT/DBNAME")
    if not info.get("dbname"):
        problems.append("names no database: write postgresql://USER@HOST:PORT/DBNAME")
    if not info.get("host") and not info.get("hostaddr"):
        problems.append("names no host: write postgresql://USER@HOST:PORT/DBNAME")
    problems += _session_attrs_problems(info)
    return problems


# libpq's values (PostgreSQL 14+); the store writes, so only these two fit several hosts
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby",
                        "prefer-standby")
WRITABLE_ATTRS = ("read-write", "primary")


def _session_attrs_problems(info: dict) -> list[str]:
    # libpq checks the value only when it connects: at the first login, not at start
    attrs = info.get("target_session_attrs")
    if attrs is not None and attrs not in TARGET_SESSION_ATTRS:
        return [f"target_session_attrs={attrs} is not one of libpq's values "
                f"({', '.join(TARGET_SESSION_ATTRS)})"]
    hosts = [h for h in str(info.get("host") or info.get("hostaddr") or "").split(",") if h]
    if len(hosts) > 1 and attrs not in WRITABLE_ATTRS:
        # libpq would take the first host that answers: after a failover that can be
        # the old primary come back as a standby, and every write would then fail
        return [f"names {len(hosts)} hosts without target_session_attrs=read-write: add it "
                "(libpq then connects to whichever host accepts writes)"]
    return []


def postgres_tls_warning(url: str) -> str | None:
    """A warning when a remote PostgreSQL connection is not TLS-verified, else None.

    Device keys, TOTP secrets and answers cross that connection: anything short of
    ``sslmode=verify-full`` lets someone on the path read or change them."""
    import ipaddress

    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(url)
    hosts = [h for h in str(info.get("host") or info.get("hostaddr") or "").split(",") if h]
    remote = []
    for host in hosts:
        if host.startswith("/") or host == "localhost":
            continue  # a Unix socket, or this machine
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        remote.append(host)
    if remote and info.get("sslmode") != "verify-full":
        return (f"approval.database connects to {', '.join(remote)} with sslmode="
                f"{info.get('sslmode') or 'prefer (the default)'}: add sslmode=verify-full "
                "(and sslrootcert=...) to the URL, or device keys and answers can be read "
                "on the way")
    return None
