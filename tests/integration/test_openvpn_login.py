"""Acceptance (issue 17): an OpenVPN 2.6 login through radiusplugin ends as the phone decides.

The OpenVPN server with Debian's openvpn-auth-radius (settings as
docs/gateways/openvpn.md gives them) and the OpenVPN client run in two private
network namespaces (tests/integration/openvpn_ns.py); `pushproxy serve` runs
on the host's loopback against the session slapd, and the CLI authenticator is
the phone. approve -> the tunnel comes up and carries a ping, and pushproxy's
accounting listener answers radiusplugin's Accounting-Request; deny -> the
client gets AUTH_FAILED and no tunnel appears.
"""

from __future__ import annotations

import socket
import textwrap

import pytest

from tests.integration.harness import SECRET
from tests.integration.served_login import (answer, assert_tunnel_after_approval, audit,
                                             free_port, served_with_phones)
from tests.integration.openvpn_ns import OpenvpnPair, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

CLIENT = textwrap.dedent("""\
    - name: openvpn-gw
      address: 127.0.0.1
      secret_file: radius.secret
      require_message_authenticator: false   # radiusplugin 2.1 sends none
""")


@pytest.fixture
def vpn(slapd, tmp_path):
    acct_port, served = free_port(socket.SOCK_DGRAM), []
    with served_with_phones(slapd, tmp_path, CLIENT, accounting_port=acct_port,
                            served=served) as (radius_port, phones):
        pair = OpenvpnPair(("127.0.0.1", radius_port), SECRET,
                           accounting=("127.0.0.1", acct_port))
        try:
            pair.start()
            yield pair, phones, tmp_path, served[0]
        finally:
            pair.close()


def test_openvpn_login_approved_on_the_phone_brings_up_a_tunnel_that_carries_a_ping(vpn):
    """... and radiusplugin's Accounting-Request (start) is answered by pushproxy itself."""
    pair, phones, tmp_path, serve = vpn
    client = pair.connect("alice", "alice-pw")
    assert_tunnel_after_approval(pair, client, phones["alice"], tmp_path, "alice")
    line = serve.wait_for("radius.accounting ", deadline=20)
    assert "status=start" in line and "user=alice" in line and "client=openvpn-gw" in line
    assert "Accounting failed" not in pair.log.read_text()


def test_openvpn_login_denied_on_the_phone_fails_without_a_tunnel(vpn):
    pair, phones, tmp_path, _ = vpn
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
