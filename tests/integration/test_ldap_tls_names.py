"""Which LDAP TLS connections accept which server certificates, by DNS name and by IP address.

One real slapd serves, in turn, certificates that name: DNS:localhost and
IP:127.0.0.1; only DNS:localhost; only IP:127.0.0.1; only the partial
wildcard DNS:local*; and nothing but CN=localhost. Every LDAP TLS path is
asked to reach it as ``localhost`` and as ``127.0.0.1``, over ldaps:// and
over StartTLS:

- ``twisted``: the daemon's logins (`LdapDirectory.authenticate`, the reactor
  client of `pushproxy.ldapconns`);
- ``front``: the LDAP front end's connection to the directory
  (`pushproxy.ldapfront.upstream.UpstreamConnector`);
- ``ldap3``: the command-line tools' lookup (`LdapDirectory.lookup_blocking`,
  `pushproxy.ldapsync`, also behind the rollout commands);
- ``check``: ``pushproxy test-connection``'s steps (its own handshake and name
  step, then the service bind through ldap3).

Each must accept exactly the names the certificate holds as subjectAltNames,
with Python's and OpenSSL's rules (an IP only as an IP: entry, a wildcard only
as a whole leftmost label, never the CN), and the same on Python 3.11, 3.12
and 3.13 (test_ldap_tls_pythons.py runs this module on the others): ldap3
2.9.1's own name check, which decided on 3.12+, refused IP-only certificates
and accepted partial wildcards.
"""

from __future__ import annotations

import io
from dataclasses import replace

import ldap3
import pytest
import pytest_twisted
from ldap3.core.exceptions import LDAPException
from twisted.internet import defer, endpoints, reactor, ssl
from twisted.internet.protocol import Factory

from pushproxy.connectivity.ldapcheck import check_ldap_server
from pushproxy.connectivity.report import Report
from pushproxy.decision import PrimaryStatus
from pushproxy.ldapauth import LdapDirectory
from pushproxy.ldapclient import LdapClientProtocol, LdapError
from pushproxy.ldapfront.upstream import UpstreamConnector, UpstreamFailed
from pushproxy.ldaptls import ldap3_tls
from pushproxy.tlsnames import NameCheckedTLS
from pushproxy.metrics import Counters
from tests.integration.harness import load, write_config
from tests.integration.slapd import Slapd, slapd_available
from tests.radsec_pki import TestCA

HOSTS = ("localhost", "127.0.0.1")
MODES = ("ldaps", "starttls")
PATHS = ("twisted", "front", "ldap3", "check")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``serve(**names)``: slapd restarted with a certificate naming exactly ``names``."""
    if not slapd_available():
        pytest.skip("OpenLDAP slapd/slapadd not installed (apt-get install slapd)")
    base = tmp_path_factory.mktemp("ldap-tls-names")
    ca = TestCA(base, name="LDAP TLS names CA")
    server = Slapd(base_dir=base)
    server.start()

    def serve(stem: str, *, cn: str = "ldap test server", dns=(), ips=()):
        issued = ca.issue(stem, cn=cn, dns=dns, ips=ips, server=True)
        server.stop()
        (server.directory / "server.pem").write_bytes(issued.cert.read_bytes())
        (server.directory / "server.key").write_bytes(issued.key.read_bytes())
        server.start()
        return server, str(ca.path)

    try:
        yield serve
    finally:
        server.stop()
        server.cleanup()


def _config(tmp_path, server: Slapd, ca_file: str, mode: str, host: str):
    port = server.ldaps_port if mode == "ldaps" else server.port
    url = f"{'ldaps' if mode == 'ldaps' else 'ldap'}://{host}:{port}"
    config = load(write_config(tmp_path, server, servers=[url]))
    ldap = replace(config.ldap, ca_file=ca_file, start_tls=mode == "starttls",
                   connect_timeout=2, response_timeout=2, backoff=0.0)
    return replace(config, ldap=ldap)


def _checked(config) -> tuple[bool, str]:
    """test-connection's verdict for the one server, and its report."""
    out = io.StringIO()
    report = Report(out)
    check_ldap_server(report, config, 0, "alice")
    text = out.getvalue()
    steps = {line.split()[1]: line.split()[0] for line in text.splitlines()
             if line.startswith("  ") and len(line.split()) > 1}
    # The name step and the bind through ldap3 must agree: the report once said
    # "does not name 127.0.0.1 ... it names IP:127.0.0.1" and refused the bind.
    assert (steps.get("hostname") == "OK") == (steps.get("bind") == "OK"), text
    return not report.failures, text


@defer.inlineCallbacks
def _outcomes(tmp_path, server, ca_file):
    """{(path, mode, host): accepted} for every path, mode and host; the reasons checked."""
    found, reports = {}, {}
    for mode in MODES:
        for host in HOSTS:
            config = _config(tmp_path, server, ca_file, mode, host)
            daemon = LdapDirectory(config.ldap, reactor, Counters())
            try:
                result = yield daemon.authenticate("alice", "alice-pw")
            finally:
                daemon.stop()
            found["twisted", mode, host] = result.status is PrimaryStatus.OK
            if result.status is not PrimaryStatus.OK:
                assert result.status is PrimaryStatus.UNAVAILABLE, result
                assert "certificate" in result.detail.lower(), result.detail
                assert daemon.counters.get("ldap_user_binds") == 0  # no password sent

            connector = UpstreamConnector(reactor, Counters(), config.ldap)
            try:
                upstream = yield defer.ensureDeferred(connector.connect())
                upstream.transport.loseConnection()
                found["front", mode, host] = True
            except UpstreamFailed as exc:
                found["front", mode, host] = False
                assert "certificate" in str(exc).lower() or "TLS failed" in str(exc), exc

            cli = LdapDirectory(config.ldap, reactor=None, counters=Counters())
            looked = cli.lookup_blocking("alice")
            found["ldap3", mode, host] = looked.status is PrimaryStatus.OK
            if looked.status is not PrimaryStatus.OK:
                assert looked.status is PrimaryStatus.UNAVAILABLE, looked
                assert "certificate" in looked.detail.lower() or "mismatch" in looked.detail, \
                    looked.detail

            found["check", mode, host], reports[mode, host] = _checked(config)
    return found, reports


def _expect(accepted_hosts) -> dict:
    return {(path, mode, host): host in accepted_hosts
            for mode in MODES for host in HOSTS for path in PATHS}


def _table(found: dict) -> str:
    """The outcomes as lines, for a readable assertion message."""
    return "\n".join(f"{path:8} {mode:9} {host:10} {'accepted' if ok else 'refused'}"
                     for (path, mode, host), ok in sorted(found.items()))


@pytest_twisted.inlineCallbacks
def test_a_certificate_naming_both_is_accepted_by_name_and_by_ip_on_every_path(served,
                                                                                tmp_path):
    server, ca = served("both", dns=["localhost"], ips=["127.0.0.1"])
    found, reports = yield _outcomes(tmp_path, server, ca)
    assert found == _expect(HOSTS), _table(found)
    assert "OK    hostname    the certificate names 127.0.0.1" in reports["ldaps", "127.0.0.1"]


@pytest_twisted.inlineCallbacks
def test_an_ip_only_certificate_is_accepted_for_the_ip_and_refused_for_the_name(served,
                                                                                 tmp_path):
    """ldap3's own check on 3.12+ ignored IP subjectAltNames and refused every login."""
    server, ca = served("ip-only", dns=[], ips=["127.0.0.1"])
    found, reports = yield _outcomes(tmp_path, server, ca)
    assert found == _expect({"127.0.0.1"}), _table(found)
    assert "does not name localhost" in reports["starttls", "localhost"]
    assert "it names IP:127.0.0.1" in reports["starttls", "localhost"]


@pytest_twisted.inlineCallbacks
def test_a_dns_only_certificate_is_refused_for_the_ip_address(served, tmp_path):
    server, ca = served("dns-only", dns=["localhost"])
    found, reports = yield _outcomes(tmp_path, server, ca)
    assert found == _expect({"localhost"}), _table(found)
    text = reports["ldaps", "127.0.0.1"]
    assert "does not name 127.0.0.1 (an IP address matches only an IP: entry)" in text, text


@pytest_twisted.inlineCallbacks
def test_a_partial_wildcard_is_refused_on_every_path(served, tmp_path):
    """ldap3's own check on 3.12+ let DNS:local* stand for localhost; Python never does."""
    server, ca = served("partial-wildcard", dns=["local*"])
    found, reports = yield _outcomes(tmp_path, server, ca)
    assert found == _expect(set()), _table(found)
    assert "partial one" in reports["starttls", "localhost"], reports["starttls", "localhost"]


@pytest_twisted.inlineCallbacks
def test_a_name_only_in_the_common_name_is_refused_on_every_path(served, tmp_path):
    """The daemon never accepted a CN-only certificate; the ldap3 paths now agree with it."""
    server, ca = served("cn-only", cn="localhost")
    found, reports = yield _outcomes(tmp_path, server, ca)
    assert found == _expect(set()), _table(found)
    assert "CN is not checked" in reports["ldaps", "localhost"], reports["ldaps", "localhost"]


def _ldap3_binds(server: Slapd, ca_file: str, name: str) -> bool:
    """Whether ldap3 with `ldap3_tls` binds at 127.0.0.1, the certificate checked for ``name``."""
    tls = ldap3_tls(ca_file, name)
    srv = ldap3.Server("127.0.0.1", port=server.ldaps_port, use_ssl=True, tls=tls,
                       connect_timeout=2, get_info=ldap3.NONE)
    conn = ldap3.Connection(srv, user=server.service_dn, password=server.service_password,
                            raise_exceptions=False, receive_timeout=2)
    try:
        return conn.bind()
    except LDAPException:
        return False
    finally:
        conn.unbind()


@defer.inlineCallbacks
def _twisted_binds(server: Slapd, ca_file: str, name: str):
    """Whether the reactor client with `NameCheckedTLS` binds, the name checked: ``name``."""
    with open(ca_file, "rb") as handle:
        trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(handle.read())])
    endpoint = endpoints.wrapClientTLS(
        NameCheckedTLS(name, trust),
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.ldaps_port, timeout=2))
    wrapper = yield endpoint.connect(Factory.forProtocol(lambda: LdapClientProtocol(reactor, 2)))
    proto = getattr(wrapper, "wrappedProtocol", wrapper)
    try:
        result = yield proto.bind(server.service_dn, server.service_password)
        return result.code == 0
    except LdapError as exc:
        assert "does not name" in str(exc), exc
        return False
    finally:
        proto.close()


@pytest_twisted.inlineCallbacks
def test_a_wildcard_counts_only_as_the_whole_leftmost_label_on_both_tls_stacks(served,
                                                                               tmp_path):
    """DNS:*.example.com names w1.example.com only; DNS:w*.example.net (the partial
    wildcard ldap3's own check accepted on 3.12+) names nothing.

    slapd is dialled at 127.0.0.1 and the certificate checked for a DNS name this
    machine need not resolve: both checks take the name apart from the address.
    """
    server, ca = served("wildcards", dns=["*.example.com", "w*.example.net"])
    names = {"w1.example.com": True, "example.com": False, "a.w1.example.com": False,
             "w1.example.net": False}
    found = {}
    for name in names:
        found["ldap3", name] = _ldap3_binds(server, ca, name)
        found["twisted", name] = yield _twisted_binds(server, ca, name)
    assert found == {(stack, name): ok for name, ok in names.items()
                     for stack in ("ldap3", "twisted")}, found
