"""Acceptance (issue 17): an ssh login through OpenSSH's sshd and pam_radius ends as the phone decides.

Everything is real and on loopback: `pushproxy serve` (a process) against the
session slapd, sshd with a PAM stack of pam_radius (tests/integration/sshd.py:
private mount namespace, the host's PAM untouched), the ssh client with
sshpass at the keyboard-interactive prompt, and the CLI authenticator as the
phone. approve -> the shell runs the command; deny -> "Permission denied".
pam_radius's timeout is set as docs/gateways/linux-pam.md says (above the push).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.integration.harness import SECRET, ServeProcess, write_config
from tests.integration.sshd import Sshd, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

PAM_TIMEOUT = 30  # pam_radius's single wait; push.timeout below is shorter
CLIENT = textwrap.dedent("""\
    - name: ssh-host
      address: 127.0.0.1
      secret_file: radius.secret
      require_message_authenticator: false   # pam_radius 2.0 sends none
""")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def stack(slapd, tmp_path):
    """pushproxy serve + sshd; alice and bob have an enrolled CLI authenticator."""
    http_port, radius_port = free_port(), free_port(socket.SOCK_DGRAM)
    config = write_config(tmp_path, slapd, clients=CLIENT, push="timeout: 20",
                          approval=textwrap.dedent(f"""\
        approval:
          listen: "127.0.0.1:{http_port}"
          public_url: "http://127.0.0.1:{http_port}"
          database: pushproxy.db
        """))
    config.write_text(config.read_text().replace('listen: ["127.0.0.1:0"]',
                                                 f'listen: ["127.0.0.1:{radius_port}"]'))
    serve = ServeProcess(config)
    sshd = Sshd(tmp_path / "sshd", free_port(), f"127.0.0.1:{radius_port}", SECRET,
                ["alice", "bob"], timeout=PAM_TIMEOUT)
    try:
        serve.wait_for("daemon.ready", deadline=30)
        phones = {}
        for user in ("alice", "bob"):
            link = cli("enroll", user, "--no-qr", "--config", str(config))
            assert link.returncode == 0, link.stderr
            phones[user] = str(tmp_path / f"{user}-phone")
            made = cli("authenticator", "enroll", link.stdout.strip().splitlines()[-1],
                       "--state", phones[user], "--name", f"{user}-phone")
            assert made.returncode == 0, made.stdout + made.stderr
        sshd.start()
        yield sshd, phones, tmp_path
    finally:
        sshd.stop()
        serve.close()


def answer(phone: str, decision: str) -> subprocess.CompletedProcess:
    return cli("authenticator", "watch", "--state", phone, "--auto", decision, "--count", "1",
               timeout=60)


def audit(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_ssh_login_approved_on_the_phone_runs_the_command(stack):
    sshd, phones, tmp_path = stack
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        login = pool.submit(sshd.ssh, "alice", "alice-pw", "echo shell-as-$(id -un)")
        approved = answer(phones["alice"], "approve")
        result = login.result(90)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert result.code == 0, (result.stderr, sshd.log.read_text()[-2000:])
    assert result.stdout.strip() == "shell-as-alice"
    (event,) = audit(tmp_path)
    assert (event["user"], event["outcome"], event["reason"]) == \
        ("alice", "accept", "push_approved")
    assert event["client"] == "ssh-host"


def test_ssh_login_denied_on_the_phone_is_permission_denied(stack):
    sshd, phones, tmp_path = stack
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        login = pool.submit(sshd.ssh, "bob", "bob-pw", "echo should-not-run")
        denied = answer(phones["bob"], "deny")
        result = login.result(90)
    assert denied.returncode == 0, denied.stdout + denied.stderr
    assert result.code == 255 and "should-not-run" not in result.stdout
    assert "Permission denied" in result.stderr, result.stderr
    (event,) = audit(tmp_path)
    assert (event["user"], event["outcome"]) == ("bob", "reject")


def test_ssh_login_with_a_wrong_password_asks_no_phone(stack):
    sshd, phones, tmp_path = stack
    result = sshd.ssh("alice", "wrong-password", "echo should-not-run")
    assert result.code == 255 and "Permission denied" in result.stderr
    (event,) = audit(tmp_path)
    assert event["reason"] == "bad_credentials"
    pending = cli("authenticator", "pending", "--state", phones["alice"])
    assert pending.returncode == 0 and pending.stdout.strip() == "no pending requests"
