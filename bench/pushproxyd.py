"""pushproxy under test: its config, its enrolled devices, and the daemon as a process.

The daemon runs exactly as an admin runs it, ``python -m pushproxy.cli serve
--config FILE``, in a process of its own (so the load generator and the
device process never share its CPU time slices), with the built-in approval
service and ``daemon.metrics_listen`` for its own histograms.

Enrolling 25,000 devices through the HTTP API would take longer than the
benchmark itself, so `seed_devices` writes them straight into a fresh SQLite
store (created and migrated by `SQLiteStore`, then one transaction of
INSERTs into its ``devices`` table). They look like devices that enrolled
and were heard from just now (``last_seen`` = now), i.e. phones in use.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import astuple
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushproxy.approval import crypto
from pushproxy.approval.store import Device, SQLiteStore

REPO = Path(__file__).resolve().parent.parent


class PortTaken(RuntimeError):
    """The daemon could not bind a port that was free when it was chosen."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback TCP ports that were free a moment ago
    (worker I serves /metrics on the configured port + I)."""
    while True:
        first = free_port()
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()


def new_device_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The key every benchmark device signs with, and its PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode("ascii")
    return key, pem


def seed_devices(path: Path, users: list[str], key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """A fresh store at ``path`` with one device per user; returns {user: device id}."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    SQLiteStore(str(path)).close()  # creates the file (mode 0600) and runs the migrations
    public = crypto.public_key_text(key.public_key())
    now = time.time()
    ids = {user: secrets.token_hex(9) for user in users}
    rows = [astuple(Device(id=ids[user], username=user.casefold(), name="bench-phone",
                           public_key=public, push_subscription=None, created=now,
                           last_seen=now, revoked=None, totp_secret=None))
            for user in users]
    db = sqlite3.connect(str(path), isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO devices (id, username, name, public_key, push_subscription,"
                       " created, last_seen, revoked, totp_secret)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
    finally:
        db.close()
    return ids


def write_config(folder: Path, slapd, secret: str, *, push_timeout: float = 60,
                 allow_all: bool = False, ldap_pool: int = 8, failmode: str = "secure",
                 overload: dict | None = None, workers: int = 1,
                 database: str = "pushproxy.db", database_password: str | None = None) -> dict:
    """The daemon's config.yaml in ``folder``; returns its ports and paths.

    ``overload``: keys of ``daemon.overload`` (default: the shipped bounds).
    ``workers``: daemon.workers; ``database``: a SQLite file or a postgresql://
    URL (then ``database_password`` goes to a password file)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "radius.secret").write_text(secret + "\n")
    (folder / "ldap.secret").write_text(slapd.service_password + "\n")
    (folder / "radius.secret").chmod(0o600)
    (folder / "ldap.secret").chmod(0o600)
    ports = {"radius": free_port(socket.SOCK_DGRAM), "approval": free_port(),
             "metrics": free_ports(workers)}
    policy = textwrap.dedent("""\
        policy:
          rules:
            - name: all
              action: allow
        """) if allow_all else ""
    text = textwrap.dedent(f"""\
        # Written by the pushproxy benchmark (bench/pushproxyd.py).
        radius:
          listen: ["127.0.0.1:{ports['radius']}"]
          clients:
            - name: bench
              address: 127.0.0.1
              secret_file: radius.secret
        ldap:
          servers: ["{slapd.url}"]
          bind_dn: "{slapd.service_dn}"
          bind_password_file: ldap.secret
          user_base: "{slapd.people_dn}"
          user_filter: "(&(objectClass=inetOrgPerson)(uid={{username}}))"
          required_groups: ["{slapd.group_dn('vpn-users')}"]
          pool_size: {ldap_pool}
          # the pending scenario queues 20,000 logins for the directory at once
          max_queue: 100000
        push:
          timeout: {push_timeout:g}
          failmode: {failmode}
          # each benchmark user logs in about once per daemon run: the fatigue
          # limits stay on but can never refuse a push here
          limits:
            max_pending: 1
            max_pushes: 1000
            window: 1
        audit:
          path: audit.jsonl
        log:
          level: info
        daemon:
          stop_grace: 0
          metrics_listen: "127.0.0.1:{ports['metrics']}"
          overload: {json.dumps(overload or {})}
          workers: {workers}
        approval:
          listen: "127.0.0.1:{ports['approval']}"
          public_url: "http://127.0.0.1:{ports['approval']}"
          database: "{database}"
        """) + policy
    if database_password is not None:
        (folder / "db.secret").write_text(database_password + "\n")
        (folder / "db.secret").chmod(0o600)
        text = text.replace(f'  database: "{database}"\n',
                            f'  database: "{database}"\n  database_password_file: db.secret\n')
    (folder / "config.yaml").write_text(text)
    return {"config": folder / "config.yaml", "database": folder / "pushproxy.db",
            "workers": workers, **ports}


class Daemon:
    """``python -m pushproxy.cli serve --config FILE`` as a child process."""

    def __init__(self, config: dict, folder: Path, *, switch_interval: float | None = None,
                 source: Path | None = None):
        self.config = config
        # Where its code comes from: this tree, or another revision's (a before/after run).
        self.source = source or REPO
        # An experiment knob, off by default: the daemon as shipped runs with
        # Python's default GIL switch interval (5 ms).
        self.switch_interval = switch_interval
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.log_path = folder / "daemon.log"

    @property
    def pid(self) -> int:
        """The daemon's process id (the Python interpreter itself)."""
        return self.proc.pid

    @property
    def radius_port(self) -> int:
        return self.config["radius"]

    @property
    def approval_port(self) -> int:
        return self.config["approval"]

    def start(self, timeout: float = 30.0) -> "Daemon":
        """Start it and wait for ``daemon.ready`` in its log."""
        env = dict(os.environ,
                   PYTHONPATH=str(self.source) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._log = open(self.log_path, "ab")
        self._offset = self._log.tell()
        command = [sys.executable, "-m", "pushproxy.cli"]
        if self.switch_interval is not None:
            command = [sys.executable, "-c",
                       f"import sys; sys.setswitchinterval({self.switch_interval!r}); "
                       "from pushproxy.cli import main; sys.exit(main(sys.argv[1:]))"]
        self.proc = subprocess.Popen(
            command + ["serve", "--config", str(self.config["config"])],
            cwd=str(self.folder), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=self._log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                kind = PortTaken if "Address already in use" in tail else RuntimeError
                raise kind(f"pushproxy exited ({self.proc.returncode}):\n" + tail)
            # several workers: their supervisor says when all of them are ready
            if (b"workers.ready" if self.config.get("workers", 1) > 1 else b"daemon.ready") \
                    in self._read_log():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("pushproxy did not get ready:\n" + self.log_tail())

    def _read_log(self) -> bytes:
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            return f.read()

    def log_tail(self, limit: int = 3000) -> str:
        return self._read_log()[-limit:].decode("utf-8", "replace")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (the daemon answers what is pending and exits), SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS of /proc/PID/status)."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the daemon used so far."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pids(self) -> list[int]:
        """The daemon's process ids: with several workers, the supervisor and its workers."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children", encoding="ascii") as f:
                return [self.pid] + [int(p) for p in f.read().split()]
        except OSError:
            return [self.pid]

    def metrics(self) -> "Metrics":
        """The daemon's /metrics now (every worker's, summed by `Metrics.value`); the
        slowest scrape so far is in ``slowest_scrape``."""
        started = time.monotonic()
        text = ""
        for index in range(self.config.get("workers", 1)):  # worker I: the port + I
            url = f"http://127.0.0.1:{self.config['metrics'] + index}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text += response.read().decode("utf-8") + "\n"
        took = time.monotonic() - started
        self.slowest_scrape = max(getattr(self, "slowest_scrape", 0.0), took)
        self.scrapes = getattr(self, "scrapes", 0) + 1
        return Metrics(text)

    def failmode_decisions(self) -> dict[str, int]:
        """Decisions by push.failmode or an internal error, by reason: never expected."""
        found: dict[str, int] = {}
        metrics = self.metrics()
        for name, labels, value in metrics.samples:
            reason = labels.get("reason", "")
            if name == "pushproxy_decisions_total" and value and (
                    reason.startswith("push_unavailable") or reason == "internal_error"):
                found[reason] = found.get(reason, 0) + int(value)
        errors = metrics.value("pushproxy_internal_errors_total")
        if errors:
            found["internal_errors_total"] = int(errors)
        return found


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


class Metrics:
    """A parsed Prometheus text exposition (just what the benchmark reads)."""

    def __init__(self, text: str):
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if not match:
                continue
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            self.samples.append((match.group(1), labels, float(match.group(3))))

    def value(self, name: str, **labels: str) -> float:
        """The sum of every sample of ``name`` whose labels include ``labels``."""
        return sum(v for n, lbl, v in self.samples
                   if n == name and all(lbl.get(k) == x for k, x in labels.items()))

    def histogram(self, name: str, **labels: str) -> tuple[float, float]:
        """(count, sum) of a histogram."""
        return self.value(f"{name}_count", **labels), self.value(f"{name}_sum", **labels)


def device_job(path: Path, *, users: list[str], ids: dict[str, str], key_pem: str, port: int,
               window: int, decision: str = "approve", wait: float = 30,
               deadline: float = 600, per_user_timeout: float = 120) -> Path:
    """Write a job file for `bench.devices`."""
    path.write_text(json.dumps({
        "users": users, "device_ids": {u: ids[u] for u in users}, "key_pem": key_pem,
        "host": "127.0.0.1", "port": port, "window": window, "decision": decision,
        "wait": wait, "deadline": deadline, "per_user_timeout": per_user_timeout}))
    return path
