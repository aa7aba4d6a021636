"""`pushproxy serve` as a real process: starts, answers radclient, logs, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.integration.harness import SECRET, write_config
from tests.integration.radclient import radclient_sync


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_log(proc, needle: str, deadline: float = 15.0) -> str:
    seen = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} not logged; got:\n{''.join(seen)}")


@pytest.fixture
def served(slapd, tmp_path):
    http_port = free_port()
    radius_port = free_port(socket.SOCK_DGRAM)
    clients = textwrap.dedent("""\
        - name: test-nas
          address: 127.0.0.1
          secret_file: radius.secret
        - name: test-nas-v6
          address: ::1
          secret_file: radius.secret
    """)
    config = write_config(tmp_path, slapd, clients=clients, approval=textwrap.dedent(f"""\
        approval:
          listen: "127.0.0.1:{http_port}"
          public_url: "http://127.0.0.1:{http_port}"
          database: pushproxy.db
        """))
    text = config.read_text().replace('listen: ["127.0.0.1:0"]',
                                      f'listen: ["127.0.0.1:{radius_port}", "[::1]:{radius_port}"]')
    config.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "pushproxy.cli", "serve", "--config",
                             str(config)], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait_for_log(proc, f"radius.listening address=::1 port={radius_port}")
        yield proc, radius_port, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_serve_answers_over_ipv4_and_ipv6_and_stops_cleanly_on_sigterm(served):
    proc, port, tmp_path = served
    # alice has no device: rejected, with the reason in the audit trail.
    for host in ("127.0.0.1", "[::1]"):
        result = radclient_sync(f"{host}:{port}", SECRET,
                                [("User-Name", "alice"), ("User-Password", "alice-pw"),
                                 ("Message-Authenticator", "0x00")], timeout=5)
        assert result.code == "Access-Reject", result.stdout + result.stderr
    audit = (tmp_path / "audit.jsonl").read_text()
    assert audit.count('"reason":"no_enrolled_device"') == 2
    assert '"client":"test-nas-v6"' in audit
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    rest = proc.stderr.read()
    assert "Traceback" not in rest


def test_serve_refuses_a_broken_config_with_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("radius:\n  clients: []\nldap: {}\n")
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "serve", "--config", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "radius.clients: needs at least 1 entry" in out.stderr
    assert "ldap.servers: missing" in out.stderr and "approval: missing" in out.stderr
