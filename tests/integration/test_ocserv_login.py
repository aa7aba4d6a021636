"""Acceptance (issue 17): an OpenConnect VPN login through ocserv ends as the phone decides.

ocserv (radcli, with the RADIUS timeout docs/gateways/ocserv.md gives) and
the openconnect client run in two private network namespaces joined by a veth
pair (tests/integration/ocserv_ns.py); `pushproxy serve` runs on the host's
loopback against the session slapd, and the CLI authenticator is the phone.
approve -> the tunnel comes up and carries a ping; deny -> openconnect reports
the failed login and no tunnel appears.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.integration.harness import SECRET
from tests.integration.served_login import (answer, assert_tunnel_after_approval, audit,
                                             served_with_phones)
from tests.integration.ocserv_ns import OcservPair, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

CLIENT = textwrap.dedent("""\
    - name: ocserv-gw
      address: 127.0.0.1
      secret_file: radius.secret
      require_message_authenticator: false   # radcli 1.2 (Debian 12) sends none with PAP
""")


@pytest.fixture
def vpn(slapd, tmp_path):
    with served_with_phones(slapd, tmp_path, CLIENT) as (radius_port, phones):
        pair = OcservPair(("127.0.0.1", radius_port), SECRET)
        try:
            pair.start()
            yield pair, phones, tmp_path
        finally:
            pair.close()


def test_openconnect_login_approved_on_the_phone_brings_up_a_tunnel_that_carries_a_ping(vpn):
    pair, phones, tmp_path = vpn
    client = pair.connect("alice", "alice-pw")
    assert_tunnel_after_approval(pair, client, phones["alice"], tmp_path, "alice")


def test_openconnect_login_denied_on_the_phone_fails_without_a_tunnel(vpn):
    pair, phones, tmp_path = vpn
    client = pair.connect("bob", "bob-pw")
    denied = answer(phones["bob"], "deny")
    assert denied.returncode == 0, denied.stdout + denied.stderr
    output, _ = client.communicate(timeout=60)
    assert client.returncode != 0, output
    # ocserv shows pushproxy's Reply-Message, asks again; openconnect gives up
    assert "Login denied" in output and "Failed to complete authentication" in output, output
    assert not pair.client_has_tunnel()
    (event,) = audit(tmp_path)
    assert (event["user"], event["outcome"]) == ("bob", "reject")
