"""A private PostgreSQL server for the tests: initdb + pg_ctl in a temporary folder.

PostgreSQL refuses to run as root, and the tests run as root here: the server then
runs as ``nobody`` in a folder chowned to it (outside pytest's root-only basetemp).
It listens on 127.0.0.1 on a free port, with fsync off (a test database need not
survive a power cut), password authentication (scram-sha-256) over TCP so the
store's password path is exercised, and is stopped at the end of the session.

`PostgresServer.standby` makes a streaming standby of a running server
(pg_basebackup -R, with a physical replication slot), for the failover drill:
`promote` turns it into the new primary, and `multi_host_url` names both as
libpq does (``postgresql://u@h1:p1,h2:p2/db?target_session_attrs=read-write``).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "postgres"
PASSWORD = "test-only-password"
RUN_AS = "nobody"


def pg_bindir() -> str | None:
    """The folder of initdb/pg_ctl (newest PostgreSQL installed), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in its own folder; ``url(db)`` names a database in it."""

    # -c settings of every server; ``settings`` adds to or overrides them
    DEFAULTS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                "max_connections": "60"}

    def __init__(self, bindir: str | None = None, *, settings: dict | None = None):
        self.settings = dict(self.DEFAULTS, **(settings or {}))
        self.bindir = bindir or pg_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.root = tempfile.mkdtemp(prefix="pushproxy-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self._names = itertools.count(1)
        self._shared = False
        self._as_user = os.geteuid() == 0
        if self._as_user:
            entry = pwd.getpwnam(RUN_AS)
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
            os.chown(self.root, self._uid, self._gid)
        os.chmod(self.root, 0o700)

    def _run(self, *args: str, timeout: float = 120,
             env: dict | None = None) -> subprocess.CompletedProcess:
        kwargs = {}
        if self._as_user:
            kwargs = {"user": self._uid, "group": self._gid, "extra_groups": []}
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": self.root, **(env or {})}
        done = subprocess.run([os.path.join(self.bindir, args[0]), *args[1:]], env=env,
                              cwd=self.root, capture_output=True, text=True, timeout=timeout,
                              **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}")
        return done

    def init(self) -> None:
        """initdb: a superuser with a password, scram-sha-256 over TCP."""
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as fh:
            fh.write(PASSWORD + "\n")
        if self._as_user:
            os.chown(pwfile, self._uid, self._gid)
        self._run("initdb", "-D", self.data, "-U", SUPERUSER, f"--pwfile={pwfile}",
                  "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        os.unlink(pwfile)

    def start(self) -> None:
        """pg_ctl start and wait until it accepts connections."""
        settings = dict(self.settings, listen_addresses="127.0.0.1", port=str(self.port),
                        unix_socket_directories=self.root)
        options = " ".join(f"-c {key}={value}" for key, value in settings.items())
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", self.data,
                  "-l", os.path.join(self.root, "server.log"), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop (``fast``: disconnects every client at once)."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-D", self.data, "-m", mode)

    def running(self) -> bool:
        """Whether the server runs (pg_ctl status)."""
        try:
            self._run("pg_ctl", "status", "-D", self.data, timeout=30)
        except RuntimeError:
            return False
        return True

    def standby(self, name: str = "standby1", *, settings: dict | None = None,
                slot: bool = True) -> PostgresServer:
        """A streaming standby of this (running) server, started: pg_basebackup -R
        (recovery settings written, the password in its primary_conninfo) over
        loopback, with a physical replication slot of ``name`` unless ``slot`` is
        False. Its ``cluster_name`` is ``name``: that is the application_name the
        primary's ``synchronous_standby_names`` refers to."""
        replica = PostgresServer(self.bindir, settings=dict(
            {k: v for k, v in self.settings.items() if k != "synchronous_standby_names"},
            cluster_name=name, **(settings or {})))
        args = ["pg_basebackup", "-D", replica.data, "-h", "127.0.0.1", "-p", str(self.port),
                "-U", SUPERUSER, "-R", "-X", "stream", "--no-sync"]
        if slot:
            args += ["-C", "-S", name]
        replica._run(*args, env={"PGPASSWORD": PASSWORD})
        replica.start()
        return replica

    def promote(self) -> None:
        """pg_ctl promote: this standby becomes a primary (waits until it is one)."""
        self._run("pg_ctl", "promote", "-w", "-t", "60", "-D", self.data)

    def in_recovery(self) -> bool:
        """Whether this server is a standby (pg_is_in_recovery())."""
        import psycopg

        with psycopg.connect(self.url(), password=PASSWORD, autocommit=True,
                             connect_timeout=10) as conn:
            return conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]

    def cleanup(self) -> None:
        """Stop if running and remove the folder."""
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """The URL of ``dbname`` (the password goes separately, as in the config)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def multi_host_url(self, other: PostgresServer, dbname: str = "postgres",
                       user: str = SUPERUSER, query: str = "") -> str:
        """One URL naming this server and ``other``, as libpq's multi-host syntax does;
        libpq takes the first that accepts writes (``target_session_attrs``)."""
        extra = f"&{query}" if query else ""
        return (f"postgresql://{user}@127.0.0.1:{self.port},127.0.0.1:{other.port}/{dbname}"
                f"?target_session_attrs=read-write{extra}")

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        """Run ``sql`` as the superuser (autocommit: CREATE DATABASE works)."""
        import psycopg

        with psycopg.connect(self.url(dbname), password=PASSWORD, autocommit=True,
                             connect_timeout=10) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        """A fresh, empty database; its URL. (A schema of its own in one shared
        database: CREATE SCHEMA takes milliseconds, CREATE DATABASE a quarter second.)"""
        if not self._shared:
            self.admin('CREATE DATABASE "stores" TEMPLATE template0')
            self._shared = True
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f'CREATE SCHEMA "{name}"', "stores")
        return f"{self.url('stores')}?options=-csearch_path%3D{name}"
