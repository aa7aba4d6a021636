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
import textwrap

import pytest

from tests.integration.harness import SECRET
from tests.integration.served_login import answer, audit, cli, free_port, served_with_phones
from tests.integration.sshd import Sshd, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

PAM_TIMEOUT = 30  # pam_radius's single wait; push.timeout below is shorter
CLIENT = textwrap.dedent("""\
    - name: ssh-host
      address: 127.0.0.1
      secret_file: radius.secret
      require_message_authenticator: false   # pam_radius 2.0 sends none
""")


@pytest.fixture
def stack(slapd, tmp_path):
    """pushproxy serve + sshd; alice and bob have an enrolled CLI authenticator."""
    with served_with_phones(slapd, tmp_path, CLIENT) as (radius_port, phones):
        sshd = Sshd(tmp_path / "sshd", free_port(), f"127.0.0.1:{radius_port}", SECRET,
                    ["alice", "bob"], timeout=PAM_TIMEOUT)
        try:
            sshd.start()
            yield sshd, phones, tmp_path
        finally:
            sshd.stop()


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
