"""RadSec clients with ``primary: radius``: the same keys, parser and upstream wiring as a
UDP client (issue 20). The end-to-end run is in tests/integration/test_radsec_upstream.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from pushproxy.config import ConfigError, parse_config
from pushproxy.service import Daemon
from tests.radsec_pki import TestCA
from tests.support import ScriptedDirectory, ScriptedProvider

UPSTREAM = """\
primary: radius
upstream:
  - address: "10.0.1.5:1812"
    secret_file: nps.secret
    timeout: 4
    retries: 2
pass_attributes: [Class, Filter-Id]
trust_outer_identity: true
"""

BASE = """\
radius:
  clients:
    - name: vpn
      address: 127.0.0.1
      secret_file: s
{udp}
  radsec:
    cert_file: {cert}
    key_file: {key}
    ca_file: {ca}
    psk_listen: ["127.0.0.1:2084"]
    psk_clients:
      - name: psk-gw
        identity: gw1
        key_env: PSK
{psk}
    clients:
      - name: gw
        match: {{dns: gw.example.com}}
{radsec}
ldap:
  servers: ["ldap://127.0.0.1"]
  bind_template: "uid={{username}},dc=x"
  user_base: "dc=x"
{bind_dn}
approval:
  public_url: "https://mfa.example.com"
  database: ":memory:"
"""


def indent(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


def parse(tmp_path: Path, *, udp="", radsec="", psk="", bind_dn=True):
    ca = TestCA(tmp_path)
    server = ca.issue("server", cn="srv", dns=["srv.example.com"], server=True)
    for name, text in (("s", "a-long-shared-secret"), ("nps.secret", "another-long-secret"),
                       ("ldap.secret", "x")):
        (tmp_path / name).write_text(text + "\n")
        (tmp_path / name).chmod(0o600)
    text = BASE.format(cert=server.cert, key=server.key, ca=ca.path,
                       udp=indent(udp, 6), radsec=indent(radsec, 8), psk=indent(psk, 8),
                       bind_dn='  bind_dn: "cn=svc,dc=x"\n  bind_password_file: ldap.secret'
                       if bind_dn else "")
    return parse_config(text, base_dir=tmp_path, env={"PSK": "00" * 32})


def test_a_radsec_client_takes_primary_radius_exactly_as_a_udp_client(tmp_path):
    config = parse(tmp_path, udp=UPSTREAM, radsec=UPSTREAM, psk=UPSTREAM)
    udp = config.radius.clients[0].upstream
    gw = config.radius.radsec.clients[0].client.upstream
    psk = config.radius.radsec.psk_clients[0].client.upstream
    assert udp is not None and gw == udp and psk == udp
    assert gw.servers[0].port == 1812 and gw.servers[0].retries == 2
    assert gw.trust_outer_identity is True and gw.pass_attributes is not None
    # The RadSec side still speaks with the fixed secret; the upstream has its own.
    assert config.radius.radsec.clients[0].client.secret == b"radsec"
    assert gw.servers[0].secret != b"radsec"


def test_radsec_clients_default_to_ldap(tmp_path):
    config = parse(tmp_path)
    assert config.radius.radsec.clients[0].client.upstream is None
    assert config.radius.radsec.psk_clients[0].client.upstream is None


def test_upstream_problems_on_radsec_clients_name_their_paths_all_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse(tmp_path, radsec="primary: radius\npass_attributes: [No-Such-Attribute]\n"
                               "groups_from_ldap: true",
              psk="pass_attributes: [Class]", bind_dn=False)
    text = "\n".join(err.value.problems)
    for expected in ("radius.radsec.clients[0].upstream",
                     "radius.radsec.clients[0].pass_attributes",
                     "radius.radsec.psk_clients[0].pass_attributes: only used with primary: "
                     "radius",
                     "radius.radsec.clients (gw).groups_from_ldap: needs ldap.bind_dn"):
        assert expected in text, (expected, text)


def test_the_daemon_builds_an_upstream_client_for_a_radsec_client(tmp_path):
    """Without it the listener finds no upstream and checks the password in LDAP instead."""
    config = parse(tmp_path, radsec=UPSTREAM, psk=UPSTREAM)
    daemon = Daemon(config, Clock(), ScriptedProvider(), directory=ScriptedDirectory())
    assert set(daemon.upstreams.by_client) == {"gw", "psk-gw"}
    assert daemon.upstreams.by_client["gw"].settings == \
        config.radius.radsec.clients[0].client.upstream


def test_radsec_timeout_advice_counts_the_upstream_servers(tmp_path):
    """push.timeout 60 s + upstream 4 s x 3 attempts = 72 s for the RadSec peer."""
    config = parse(tmp_path, radsec=UPSTREAM)
    (advice,) = [a for a in config.timeout_advice() if a.startswith("radius.radsec")]
    assert "at least 72 s" in advice and "upstream servers' timeout 12 s" in advice
