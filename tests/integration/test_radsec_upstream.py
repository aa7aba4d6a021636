"""Issue 20: ``primary: radius`` toward an upstream over RADIUS/TLS (FreeRADIUS 3.2's tls listener).

    radclient -> pushproxy (UDP in; primary: radius) -> FreeRADIUS over TLS 2083-style
              <- Accept with the upstream's Class and MPPE keys, after the push

and with RadSec on both sides (a RadSec client with ``primary: radius``):

    radclient -> FreeRADIUS (UDP in, home server over mutual TLS) -> pushproxy's
    RadSec listener -> FreeRADIUS upstream over TLS

The upstream's certificate is verified against our test CA and its name; ours
is checked by FreeRADIUS (require_client_cert). A server certificate from
another CA, or for another name, means no upstream answer: the login is rejected.
"""

from __future__ import annotations

import textwrap

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from pushproxy.radsec.listener import RadsecListener
from pushproxy.service import Daemon

from tests.integration.freeradius_upstream import UpstreamRadius, available
from tests.integration.harness import SECRET, load, start_daemon, write_config
from tests.integration.radclient import radclient
from tests.integration.test_upstream_radius import USERS, mschapv2, pap
from tests.radsec_pki import TestCA
from tests.support import ScriptedProvider

pytestmark = pytest.mark.skipif(not available(), reason="freeradius is not installed")

TLS_LISTEN = """\
server upstream_tls {{
	listen {{
		ipaddr = 127.0.0.1
		port = {port}
		type = auth
		proto = tcp
		clients = radsec
		tls {{
			private_key_file = {key}
			certificate_file = {cert}
			ca_file = {ca}
			fragment_size = 8192
			cipher_list = "DEFAULT"
			tls_min_version = "1.2"
			require_client_cert = yes
		}}
	}}
	authorize {{
		files
		mschap
		pap
	}}
	authenticate {{
		Auth-Type PAP {{
			pap
		}}
		Auth-Type MS-CHAP {{
			mschap
		}}
	}}
}}
clients radsec {{
	client pushproxy {{
		ipaddr = 127.0.0.1
		proto = tls
		secret = radsec
	}}
}}
"""


class TlsUpstream(UpstreamRadius):
    """The upstream test FreeRADIUS with a RADIUS/TLS listener on ``tls_port`` as well."""

    def __init__(self, base_dir, pki):
        super().__init__(base_dir, "unused-udp-secret-1", USERS)
        self.pki = pki
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.tls_port = s.getsockname()[1]
        s.close()

    def configure_site(self) -> None:
        """The UDP site of the parent (FreeRADIUS needs one) plus the TLS listener."""
        super().configure_site()
        ca, server = self.pki
        (self.raddb / "sites-enabled" / "upstream_tls").write_text(TLS_LISTEN.format(
            port=self.tls_port, key=server.key, cert=server.cert, ca=ca.path))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("upstream-pki")
    ca = TestCA(tmp)
    other = TestCA(tmp, name="Other CA")
    return {
        "ca": ca,
        "server": ca.issue("nps", cn="nps.test", dns=["nps.test"], ips=["127.0.0.1"],
                           server=True),
        "us": ca.issue("us", cn="pushproxy.test", dns=["pushproxy.test"]),
        # pushproxy's RadSec listener, and FreeRADIUS as the RadSec client in front of it
        "listener": ca.issue("listener", cn="pushproxy.test", dns=["pushproxy.test"],
                             ips=["127.0.0.1"], server=True),
        "front": ca.issue("front", cn="front.test", dns=["front.test"]),
        "other_ca": other,
    }


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, pki):
    server = TlsUpstream(tmp_path_factory.mktemp("freeradius-tls"), (pki["ca"], pki["server"]))
    server.start()
    yield server
    server.stop()


def client_yaml(port: int, pki, *, ca=None, name="nps.test") -> str:
    return textwrap.dedent(f"""\
        - name: vpn
          address: 127.0.0.1
          secret_file: radius.secret
          primary: radius
          upstream:
            - address: "127.0.0.1:{port}"
              timeout: 5
              tls:
                ca_file: {ca or pki["ca"].path}
                cert_file: {pki["us"].cert}
                key_file: {pki["us"].key}
                server_name: {name}
        """)


@pytest.fixture
def proxy(slapd, tmp_path):
    running = []

    @pytest_twisted.inlineCallbacks
    def make(clients, mode="approve"):
        path = write_config(tmp_path, slapd, clients=clients)
        provider = ScriptedProvider(mode=mode)
        daemon, address = yield start_daemon(load(path), provider)
        running.append(daemon)
        return daemon, address, provider

    yield make
    for daemon in running:
        pytest_twisted.blockon(daemon.stop())


@pytest_twisted.inlineCallbacks
def test_pap_through_a_tls_upstream_after_the_push(proxy, upstream, pki):
    daemon, address, provider = yield proxy(client_yaml(upstream.tls_port, pki))
    result = yield radclient(address, SECRET, pap("alice", "alice-up"), timeout=15)
    assert result.code == "Access-Accept", (result.stdout, upstream.log()[-2000:])
    assert bytes.fromhex(result.get("Class")[2:]) == b"upstream-class-alice"
    assert [r.username for r in provider.requests] == ["alice"]
    wrong = yield radclient(address, SECRET, pap("alice", "not-it"), timeout=15)
    assert wrong.code == "Access-Reject" and len(provider.requests) == 1


@pytest_twisted.inlineCallbacks
def test_mschapv2_through_a_tls_upstream_gives_mppe_keys_for_our_secret(proxy, upstream,
                                                                        pki):
    """The upstream hides the keys with "radsec"; the NAS gets them hidden with its own secret."""
    daemon, address, provider = yield proxy(client_yaml(upstream.tls_port, pki))
    attrs, (send, recv) = mschapv2("alice", "alice-up")
    result = yield radclient(address, SECRET, attrs, timeout=15)
    assert result.code == "Access-Accept", (result.stdout, upstream.log()[-2000:])
    assert result.get("MS-MPPE-Send-Key") == "0x" + send.hex()
    assert result.get("MS-MPPE-Recv-Key") == "0x" + recv.hex()


@pytest.mark.parametrize("what", ["other_ca", "other_name"])
@pytest_twisted.inlineCallbacks
def test_an_upstream_certificate_that_does_not_verify_gets_no_request(proxy, upstream, pki,
                                                                       what):
    clients = client_yaml(upstream.tls_port, pki, ca=pki["other_ca"].path) \
        if what == "other_ca" else client_yaml(upstream.tls_port, pki, name="evil.test")
    daemon, address, provider = yield proxy(clients)
    result = yield radclient(address, SECRET, pap("alice", "alice-up"), timeout=15)
    assert result.code == "Access-Reject"
    assert provider.requests == []


# -- RadSec in and out: a RadSec client with primary: radius ---------------------------

FRONT_SECRET = "front-udp-secret-0001"


def radsec_yaml(port: int, pki) -> str:
    """``radius.radsec`` (indented under ``radius:``): client "front", primary: radius."""
    return textwrap.indent(textwrap.dedent(f"""\
        radsec:
          listen: ["127.0.0.1:0"]
          cert_file: {pki["listener"].cert}
          key_file: {pki["listener"].key}
          ca_file: {pki["ca"].path}
          clients:
            - name: front
              match: {{dns: front.test}}
              primary: radius
              upstream:
                - address: "127.0.0.1:{port}"
                  timeout: 5
                  tls:
                    ca_file: {pki["ca"].path}
                    cert_file: {pki["us"].cert}
                    key_file: {pki["us"].key}
                    server_name: nps.test
        """), "  ")


@pytest.mark.parametrize("mode,expected", [("approve", "Access-Accept"),
                                           ("deny", "Access-Reject")])
@pytest_twisted.inlineCallbacks
def test_freeradius_radsec_client_mschapv2_through_a_tls_upstream(slapd, tmp_path, upstream,
                                                                  pki, mode, expected):
    """FreeRADIUS (mutual TLS) -> pushproxy's RadSec client entry with primary: radius ->
    FreeRADIUS over TLS. Approved: MS-CHAP2-Success and the MPPE keys RFC 3079 derives,
    as the NAS decrypts them with its own secret after two re-encryptions; denied: Reject."""
    from tests.integration.freeradius_radsec import RadsecFreeRadius

    path = write_config(tmp_path, slapd)
    path.write_text(path.read_text().replace(
        "radius:\n", "radius:\n" + radsec_yaml(upstream.tls_port, pki), 1))
    config = load(path)
    assert config.radius.radsec.clients[0].client.upstream is not None
    provider = ScriptedProvider(mode=mode)
    daemon = Daemon(config, reactor, provider)
    listener = RadsecListener(daemon)
    daemon.components.append(listener)
    yield daemon.start()
    fr = None
    try:
        (tmp_path / "front").mkdir()
        fr = RadsecFreeRadius(tmp_path / "front", FRONT_SECRET,
                              home_port=listener.ports[0].getHost().port,
                              cert=pki["front"].cert, key=pki["front"].key, ca=pki["ca"].path)
        yield threads.deferToThread(fr.start)
        attrs, (send, recv) = mschapv2("alice", "alice-up")
        result = yield radclient(fr.address, FRONT_SECRET, attrs, timeout=20, retries=1)
        assert result.code == expected, (result.stdout, fr.log()[-3000:],
                                         upstream.log()[-2000:])
        assert [(r.username, r.application) for r in provider.requests] == [("alice", "front")]
        assert daemon.counters.get("radius_requests", client="front") == 1
        if mode == "approve":
            assert result.get("MS-CHAP2-Success"), result.stdout
            assert result.get("MS-MPPE-Send-Key") == "0x" + send.hex()
            assert result.get("MS-MPPE-Recv-Key") == "0x" + recv.hex()
        else:
            assert result.get("MS-MPPE-Send-Key") is None
            assert result.get("MS-CHAP2-Success") is None
    finally:
        if fr is not None:
            yield threads.deferToThread(fr.stop)
        yield daemon.stop()
