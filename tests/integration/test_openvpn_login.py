"""Acceptance (issue 17): an OpenVPN 2.6 login through radiusplugin ends as the phone decides.

The OpenVPN server with Debian's openvpn-auth-radius (settings as
docs/gateways/openvpn.md gives them) and the OpenVPN client run in two private
network namespaces (tests/integration/openvpn_ns.py); `pushproxy serve` runs
on the host's loopback against the session slapd, and the CLI authenticator is
the phone. approve -> the tunnel comes up and carries a ping; deny -> the
client gets AUTH_FAILED and no tunnel appears.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.integration.harness import SECRET, ServeProcess, write_config
from tests.integration.openvpn_ns import OpenvpnPair, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

CLIENT = textwrap.dedent("""\
    - name: openvpn-gw
      address: 127.0.0.1
      secret_file: radius.secret
      require_message_authenticator: false   # radiusplugin 2.1 sends none
""")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def vpn(slapd, tmp_path):
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
    pair = OpenvpnPair(("127.0.0.1", radius_port), SECRET)
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
        pair.start()
        yield pair, phones, tmp_path
    finally:
        pair.close()
        serve.close()


def answer(phone: str, decision: str) -> subprocess.CompletedProcess:
    return cli("authenticator", "watch", "--state", phone, "--auto", decision, "--count", "1",
               timeout=60)


def audit(tmp_path) -> list[dict]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_openvpn_login_approved_on_the_phone_brings_up_a_tunnel_that_carries_a_ping(vpn):
    pair, phones, tmp_path = vpn
    client = pair.connect("alice", "alice-pw")
    approved = answer(phones["alice"], "approve")
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
        ("alice", "accept", "push_approved")


def test_openvpn_login_denied_on_the_phone_fails_without_a_tunnel(vpn):
    pair, phones, tmp_path = vpn
    client = pair.connect("bob", "bob-pw")
    denied = answer(phones["bob"], "deny")
    assert denied.returncode == 0, denied.stdout + denied.stderr
    # The client exits on AUTH_FAILED (with status 0: OpenVPN ends by a soft SIGTERM).
    output, _ = client.communicate(timeout=60)
    assert "AUTH: Received control message: AUTH_FAILED" in output, output
    assert "Initialization Sequence Completed" not in output
    assert not pair.client_has_tunnel()
    (event,) = audit(tmp_path)
    assert (event["user"], event["outcome"]) == ("bob", "reject")
