"""A served pushproxy with enrolled phones, for the tests that log in through real
login servers (sshd + pam_radius, ocserv, OpenVPN): the daemon as a process on
loopback against the session slapd, each user with an enrolled CLI authenticator
as the phone, and the helpers those tests share."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import textwrap
import time

from tests.integration.harness import ServeProcess, write_config


def free_port(kind=socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 now (TCP, or UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, timeout=60) -> subprocess.CompletedProcess:
    """``pushproxy ARGS`` as a process, output captured."""
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def served_with_phones(slapd, tmp_path, client: str, users=("alice", "bob"), *,
                       accounting_port: int | None = None, served: list | None = None):
    """``pushproxy serve`` with the RADIUS ``client`` entry; yields (radius_port, phones),
    phones mapping each user to the state folder of an enrolled CLI authenticator.

    ``accounting_port``: also answer Accounting-Requests there (radius.accounting_listen);
    ``served``: a list that gets the ServeProcess (to read its log)."""
    http_port, radius_port = free_port(), free_port(socket.SOCK_DGRAM)
    config = write_config(tmp_path, slapd, clients=client, push="timeout: 20",
                          approval=textwrap.dedent(f"""\
        approval:
          listen: "127.0.0.1:{http_port}"
          public_url: "http://127.0.0.1:{http_port}"
          database: pushproxy.db
        """))
    config.write_text(config.read_text().replace('listen: ["127.0.0.1:0"]',
                                                 f'listen: ["127.0.0.1:{radius_port}"]'))
    if accounting_port is not None:
        config.write_text(config.read_text().replace(
            "radius:\n", f'radius:\n  accounting_listen: ["127.0.0.1:{accounting_port}"]\n', 1))
    serve = ServeProcess(config)
    if served is not None:
        served.append(serve)
    try:
        serve.wait_for("daemon.ready", deadline=30)
        phones = {}
        for user in users:
            link = cli("enroll", user, "--no-qr", "--config", str(config))
            assert link.returncode == 0, link.stderr
            phones[user] = str(tmp_path / f"{user}-phone")
            made = cli("authenticator", "enroll", link.stdout.strip().splitlines()[-1],
                       "--state", phones[user], "--name", f"{user}-phone")
            assert made.returncode == 0, made.stdout + made.stderr
        yield radius_port, phones
    finally:
        serve.close()


def answer(phone: str, decision: str) -> subprocess.CompletedProcess:
    """The phone answers the next request with ``decision`` (approve/deny)."""
    return cli("authenticator", "watch", "--state", phone, "--auto", decision, "--count", "1",
               timeout=60)


def audit(tmp_path) -> list[dict]:
    """The daemon's audit events so far."""
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_tunnel_after_approval(pair, client, phone: str, tmp_path, user: str) -> None:
    """The phone approves ``client``'s login; the VPN tunnel comes up and carries a ping,
    and the audit trail has exactly that approval."""
    approved = answer(phone, "approve")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    deadline = time.monotonic() + 30
    while not pair.client_has_tunnel() and time.monotonic() < deadline:
        assert client.poll() is None, client.stdout.read() + pair.log.read_text()[-3000:]
        time.sleep(0.3)
    assert pair.client_has_tunnel(), pair.log.read_text()[-3000:]
    ping = pair.ping_through_tunnel()
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "2 received" in ping.stdout
    (event,) = audit(tmp_path)
    assert (event["user"], event["outcome"], event["reason"]) == \
        (user, "accept", "push_approved")
