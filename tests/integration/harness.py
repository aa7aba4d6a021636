"""Runs a real pushproxy Daemon in the test's reactor against the test slapd."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

from twisted.internet import defer, reactor

from pushproxy.config import parse_config
from pushproxy.service import Daemon

SECRET = "integration-secret-0123"


def write_config(tmp: Path, slapd, *, servers=None, push="timeout: 5", ldap_extra="", clients=None,
                 approval=None, stop_grace=1,
                 user_filter="(&(objectClass=inetOrgPerson)(uid={username}))") -> Path:
    """A config.yaml for a daemon on 127.0.0.1 (free port) using the test slapd.

    ``slapd``: anything with its ``url``, ``service_dn``, ``service_password``,
    ``people_dn`` and ``group_dn(name)`` (the Samba AD DC's tests pass an adapter)."""
    (tmp / "radius.secret").write_text(SECRET + "\n")
    (tmp / "ldap.secret").write_text(slapd.service_password + "\n")
    for name in ("radius.secret", "ldap.secret"):  # serve refuses secrets others can read
        (tmp / name).chmod(0o600)
    servers = servers or [slapd.url]
    approval = approval or textwrap.dedent("""\
        approval:
          listen: "127.0.0.1:0"
          public_url: "http://127.0.0.1"
          database: ":memory:"
    """)
    clients = clients or textwrap.dedent("""\
        - name: test-nas
          address: 127.0.0.1
          secret_file: radius.secret
    """)
    text = textwrap.dedent("""\
        radius:
          listen: ["127.0.0.1:0"]
          clients:
        {clients}
        ldap:
          servers: {servers}
          bind_dn: "{bind_dn}"
          bind_password_file: ldap.secret
          user_base: "{people}"
          user_filter: "{user_filter}"
          required_groups: ["{group}"]
          connect_timeout: 2
          response_timeout: 2
        {ldap_extra}
        push:
        {push}
        audit:
          path: audit.jsonl
        daemon:
          stop_grace: {stop_grace}
        {approval}
    """).format(clients=textwrap.indent(clients, "    "),
                servers="[" + ", ".join(f'"{s}"' for s in servers) + "]",
                bind_dn=slapd.service_dn, people=slapd.people_dn, user_filter=user_filter,
                group=slapd.group_dn("vpn-users"),
                ldap_extra=textwrap.indent(textwrap.dedent(ldap_extra), "  "),
                push=textwrap.indent(textwrap.dedent(push), "  "),
                approval=textwrap.dedent(approval), stop_grace=stop_grace)
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


def load(path: Path):
    """Parse a config file written by write_config."""
    return parse_config(path.read_text(), base_dir=path.parent, env={}, source=str(path))


@defer.inlineCallbacks
def start_daemon(config, provider, **kwargs):
    """Start a Daemon on the global reactor; returns (daemon, "127.0.0.1:port")."""
    daemon = Daemon(config, reactor, provider, **kwargs)
    yield daemon.start()
    port = daemon.ports[0].getHost().port
    return daemon, f"127.0.0.1:{port}"


def closed_port() -> int:
    """A loopback TCP port with nothing listening (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class SilentServer:
    """A TCP listener that accepts connections and never answers (a hung directory)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


class ServeProcess:
    """`pushproxy serve` as a child process; its stderr is drained by a thread.

    The daemon logs to stderr: a pipe nobody reads fills (64 KiB) and then
    blocks the daemon's next log line, freezing it mid-test. A reader thread
    keeps the pipe empty whatever the test does meanwhile.
    """

    def __init__(self, config_path: Path, env: dict | None = None, preexec_fn=None):
        import os
        import subprocess
        import sys
        import threading

        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._ended = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pushproxy.cli", "serve", "--config", str(config_path)],
            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
            preexec_fn=preexec_fn)  # e.g. a low RLIMIT_NOFILE for the daemon alone
        threading.Thread(target=self._drain, name="serve-stderr", daemon=True).start()

    def _drain(self) -> None:
        import os

        buffer = b""
        fd = self.proc.stderr.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            with self._seen:
                self.lines.extend(line.decode("utf-8", "replace") for line in complete)
                self._seen.notify_all()
        with self._seen:
            if buffer:
                self.lines.append(buffer.decode("utf-8", "replace"))
            self._ended = True
            self._seen.notify_all()

    def wait_for(self, needle: str, deadline: float = 15.0, start: int = 0) -> str:
        """Wait until a log line (from index ``start`` on) contains ``needle``; return it."""
        import time

        end = time.monotonic() + deadline
        with self._seen:
            while True:
                for line in self.lines[start:]:
                    if needle in line:
                        return line
                remaining = end - time.monotonic()
                if remaining <= 0 or self._ended:
                    break
                self._seen.wait(min(remaining, 0.5))
            got = "\n".join(self.lines)
        raise AssertionError(f"{needle!r} not logged; got:\n" + got)

    def wait_count(self, pattern: str, count: int, deadline: float = 15.0,
                   start: int = 0) -> list[str]:
        """Wait until at least ``count`` log lines (from index ``start`` on) match the
        regular expression ``pattern``; return the matching lines.

        A line the daemon wrote before it answered may not have been read from the
        pipe yet when the answer arrives (the reader is a thread): wait for it."""
        import re
        import time

        compiled = re.compile(pattern)
        end = time.monotonic() + deadline
        with self._seen:
            while True:
                found = [line for line in self.lines[start:] if compiled.search(line)]
                remaining = end - time.monotonic()
                if len(found) >= count or remaining <= 0 or self._ended:
                    break
                self._seen.wait(min(remaining, 0.5))
            if len(found) >= count:
                return found
            got = "\n".join(self.lines)
        raise AssertionError(f"{count} lines matching {pattern!r} not logged "
                             f"({len(found)} were); got:\n" + got)

    def output(self) -> str:
        """Everything logged so far: all of it once the process has exited (the reader
        is waited for, bounded), else what the reader has taken from the pipe by now
        (after a moment for what is on its way: say `wait_for` or `wait_count` for a
        line that must be there)."""
        import time

        if self.proc.poll() is not None:
            end = time.monotonic() + 10
            with self._seen:
                while not self._ended and time.monotonic() < end:
                    self._seen.wait(0.5)
                return "\n".join(self.lines)
        time.sleep(0.05)
        with self._seen:
            return "\n".join(self.lines)

    def close(self) -> None:
        """Kill the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
