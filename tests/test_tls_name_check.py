"""Every Twisted TLS client of ours refuses a trusted certificate that does not name the server.

Real TLS servers on loopback, certificates from a throwaway CA the client
trusts. The holes pinned here: Twisted's ``optionsForClientTLS`` (and so
Agent's default HTTPS policy) let a certificate without subjectAltNames, or
with only a malformed wildcard, through for any host name, because the
verify callback ignores service_identity's CertificateError. The LDAP paths
have their own test against slapd (tests/integration/test_ldap_tls_names.py);
this one covers the RADIUS/TLS upstream link and the HTTPS clients (Web Push
endpoints, the alert webhook).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.web import resource, server
from twisted.web.client import Agent

from pushproxy.approval.alerts import Alerter
from pushproxy.metrics import Counters
from pushproxy.tlsnames import NameCheckedPolicy
from pushproxy.upstream.settings import UpstreamServer, UpstreamTls
from pushproxy.upstream.tlslink import client_options
from tests.radsec_pki import TestCA

# (certificate's SAN entries, the name the client asks for, whether it must connect)
CASES = {
    "dns-match": (dict(dns=["localhost"]), "localhost", True),
    "ip-match": (dict(ips=["127.0.0.1"]), "127.0.0.1", True),
    "cn-only": (dict(), "localhost", False),
    "cn-only-other-host": (dict(), "bank.example", False),
    "partial-wildcard": (dict(dns=["local*"]), "localhost", False),
    "dns-for-ip": (dict(dns=["localhost"]), "127.0.0.1", False),
    "other-name": (dict(dns=["other.example"]), "localhost", False),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The CA and one server certificate per case (CN localhost), as PEM files."""
    ca = TestCA(tmp_path_factory.mktemp("tlsnames"), "Name Check CA")
    issued = {case: ca.issue(case, cn="localhost", server=True, **san)
              for case, (san, _, _) in CASES.items()}
    client = ca.issue("client", cn="pushproxy")
    return ca, issued, client


def _identity(issued) -> ssl.PrivateCertificate:
    return ssl.PrivateCertificate.loadPEM(issued.cert.read_bytes() + issued.key.read_bytes())


class _Echo(protocol.Protocol):
    def dataReceived(self, data):  # noqa: N802 (Twisted's interface)
        self.transport.write(data)


class _Probe(protocol.Protocol):
    """Writes one line once connected; fires ``done`` with True on the echo, False on loss."""

    def __init__(self, done: defer.Deferred):
        self.done = done

    def connectionMade(self):  # noqa: N802
        self.transport.write(b"ping")

    def dataReceived(self, data):  # noqa: N802
        if not self.done.called:
            self.done.callback(True)
        self.transport.loseConnection()

    def connectionLost(self, reason=None):  # noqa: N802
        if not self.done.called:
            self.done.callback(False)


def _connects(port: int, creator) -> defer.Deferred:
    """Fires True if a TLS connection made with ``creator`` carried data, else False."""
    done = defer.Deferred()
    factory = protocol.ClientFactory.forProtocol(lambda: _Probe(done))
    factory.clientConnectionFailed = lambda _, reason: done.called or done.callback(False)
    reactor.connectSSL("127.0.0.1", port, factory, creator)
    return done.addTimeout(10, reactor)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest_twisted.inlineCallbacks
def test_upstream_tls_link_checks_the_name(pki, case):
    """The RADIUS/TLS upstream's options (with our client certificate) decide by the SAN."""
    ca, issued, client = pki
    _, name, expected = CASES[case]
    # the server requires a client certificate from the CA: ours must still be sent
    authority = ssl.Certificate.loadPEM(ca.path.read_bytes())
    port = reactor.listenSSL(0, protocol.Factory.forProtocol(_Echo),
                             _identity(issued[case]).options(authority), interface="127.0.0.1")
    try:
        upstream = UpstreamServer(
            host="127.0.0.1", port=port.getHost().port, secret=b"s", timeout=3, retries=0,
            require_message_authenticator=True, tls=UpstreamTls(
                ca_file=str(ca.path), cert_file=str(client.cert), key_file=str(client.key),
                server_name=name))
        ok = yield _connects(port.getHost().port, client_options(upstream))
    finally:
        yield port.stopListening()
    assert ok is expected


@pytest.mark.parametrize("case", sorted(CASES))
@pytest_twisted.inlineCallbacks
def test_https_policy_checks_the_name(pki, case):
    """An Agent with `NameCheckedPolicy` (Web Push, alert webhook) decides by the SAN too."""
    ca, issued, _ = pki
    _, name, expected = CASES[case]
    root = resource.Resource()
    root.putChild(b"hook", _Ok())
    port = reactor.listenSSL(0, server.Site(root), _identity(issued[case]).options(),
                             interface="127.0.0.1")
    trust = ssl.Certificate.loadPEM(ca.path.read_bytes())
    # the name is dialled as asked; every name here resolves to 127.0.0.1 via the endpoint
    http = HTTPClient(Agent.usingEndpointFactory(reactor, _Loopback(
        port.getHost().port, NameCheckedPolicy(trustRoot=trust))))
    try:
        try:
            response = yield http.get(f"https://{name}/hook").addTimeout(10, reactor)
            body = yield response.content()
            ok = response.code == 200 and body == b"ok"
        except Exception:  # noqa: BLE001 - any failure to connect is a refusal here
            ok = False
    finally:
        yield port.stopListening()
    assert ok is expected


def test_the_alert_webhook_client_uses_the_checked_policy():
    """The default webhook client is an Agent with `NameCheckedPolicy`, not Agent's default.

    (Its trust is the platform's store, so a loopback server with a test CA
    cannot show the name check itself; the policy is what the test above ran.)
    """
    alerter = Alerter(reactor, Counters(), webhook="https://hooks.example/x")
    assert isinstance(alerter.http._agent._endpointFactory._policyForHTTPS, NameCheckedPolicy)


class _Ok(resource.Resource):
    isLeaf = True

    def render_GET(self, request):  # noqa: N802
        return b"ok"


class _Loopback:
    """An Agent endpoint factory that dials 127.0.0.1:``port`` for any URL, TLS by ``policy``."""

    def __init__(self, port: int, policy):
        self.port, self.policy = port, policy

    def endpointForURI(self, uri):  # noqa: N802 (Twisted's interface)
        creator = self.policy.creatorForNetloc(uri.host, uri.port)
        return wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port))
