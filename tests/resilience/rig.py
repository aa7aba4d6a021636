"""Helpers for the fault tests: a daemon stack, bursts of logins, processes to break things.

`stack` builds on the end-to-end `Stack` of test_approval_e2e (the daemon as
`pushproxy serve` builds it, the built-in approval service on an SQLite file,
devices enrolled with the command-line authenticator). `burst` sends many
logins at once with the benchmark's asyncio RADIUS client, in a thread, so
the daemon keeps the test's reactor; each result has its outcome (None: no
answer within the client's timeout) and its latency.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from twisted.internet import threads

from bench.radload import RadiusClient
from tests.integration.harness import SECRET, load
from tests.integration.test_approval_e2e import Stack

# many logins of one user at once (from different stations) are the point here
LIMITS = "limits: {max_pending: 100, max_pushes: 1000, window: 1}"
ALLOW_ALL = "policy:\n  rules:\n    - name: all\n      action: allow\n"


def make_stack(tmp_path, slapd, *, timeout=5, failmode="secure", extra="", edit=None,
               **kw) -> Stack:
    """A Stack (not started); ``edit`` may rewrite the config text before it is loaded."""
    stack = Stack(tmp_path, slapd, timeout=timeout,
                  push_extra=f"failmode: {failmode}\n{LIMITS}", extra=extra, **kw)
    if edit is not None:
        stack.config_path.write_text(edit(stack.config_path.read_text()))
        stack.config = load(stack.config_path)
    return stack


async def _burst(address: str, logins, timeout: float, spacing: float):
    host, port = address.rsplit(":", 1)
    client = await RadiusClient(host, int(port), SECRET, sockets=2, nas="faults").open()
    try:
        tasks = []
        for user, password, station in logins:
            tasks.append(asyncio.ensure_future(
                client.login(user, password, station=station, timeout=timeout)))
            if spacing:
                await asyncio.sleep(spacing)
        return await asyncio.gather(*tasks)
    finally:
        client.close()


def burst(address: str, logins, *, timeout: float = 15.0, spacing: float = 0.0):
    """Deferred list of LoginResult: ``logins`` = [(user, password, station)], all at once
    (or ``spacing`` seconds apart), no retransmission."""
    return threads.deferToThread(asyncio.run, _burst(address, logins, timeout, spacing))


def burst_sync(address: str, logins, *, timeout: float = 15.0, spacing: float = 0.0):
    """`burst` for a test without a reactor."""
    return asyncio.run(_burst(address, logins, timeout, spacing))


def outcomes(results) -> dict:
    """{outcome: count}; None (no answer) shows as "none"."""
    counted: dict = {}
    for r in results:
        key = r.outcome or "none"
        counted[key] = counted.get(key, 0) + 1
    return counted


def slowest(results) -> float:
    """The longest answered latency, seconds."""
    return max((r.rtt for r in results if r.rtt is not None), default=0.0)


def audit_reasons(path) -> dict:
    """{reason: count} in an audit file."""
    counted: dict = {}
    for line in open(path).read().splitlines():
        reason = json.loads(line)["reason"]
        counted[reason] = counted.get(reason, 0) + 1
    return counted


class SqliteLocker:
    """Another process holding the store's write lock (``BEGIN EXCLUSIVE``) until released."""

    SCRIPT = ("import sqlite3, sys\n"
              "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n"
              "db.execute('BEGIN EXCLUSIVE')\n"
              "db.execute(\"UPDATE settings SET value = value WHERE key = 'vapid_private_pem'\")\n"
              "print('locked', flush=True)\n"
              "sys.stdin.read()\n"
              "db.execute('COMMIT')\n")

    def __init__(self, path: str):
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT, path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            self.proc.kill()
            raise RuntimeError("the locker process could not lock the database")
        self.locked_at = time.monotonic()

    def release(self) -> None:
        """Commit and exit."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


def with_metrics(port: int):
    """A config edit: the admin listener (/metrics, /healthz) on ``port``."""
    return lambda text: text.replace("daemon:\n", f'daemon:\n  metrics_listen: "127.0.0.1:{port}"\n', 1)


def healthz(port: int) -> tuple[int, dict]:
    """GET /healthz: (status, body)."""
    import requests

    response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    return response.status_code, response.json()


def logged(caplog, level=30) -> dict:
    """{event: count} of the structured log events at ``level`` or above so far."""
    counted: dict = {}
    for record in caplog.records:
        name = getattr(record, "event", None)
        if name and record.levelno >= level:
            counted[name] = counted.get(name, 0) + 1
    return counted


def sleep(seconds: float):
    """A Deferred that fires after ``seconds`` on the global reactor."""
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)


def requests_get(url: str) -> str:
    """The body of GET ``url`` (blocking)."""
    import requests

    return requests.get(url, timeout=10).text


class Serve:
    """`pushproxy serve` as a child process logging to a file (a pipe could fill up
    under load and stall it). With ``namespace=(script, folder)`` it runs inside a
    private mount namespace: ``sh -c script sh folder python ...``; ``inside`` is
    then ``folder`` as the daemon sees it (through /proc/PID/root)."""

    def __init__(self, config, log, *, namespace=None):
        import os
        from pathlib import Path

        self.log = Path(log)
        command = [sys.executable, "-m", "pushproxy.cli", "serve", "--config", str(config)]
        if namespace is not None:
            script, folder = namespace
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                       "sh", str(folder)] + command
        with open(self.log, "ab") as out:
            self.offset = out.tell()
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if namespace is not None:
            self.inside = Path(f"/proc/{self.proc.pid}/root") / Path(namespace[1]).relative_to("/")
        deadline = time.monotonic() + 20
        while "daemon.ready" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError("serve did not start:\n" + self.text())
            time.sleep(0.05)

    def text(self) -> str:
        """This run's log so far."""
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")

    def count(self, needle: str) -> int:
        """How many times ``needle`` was logged in this run."""
        return self.text().count(needle)

    def close(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
