"""Push endpoints (issue 14, finding 6: blind SSRF): https:// on public addresses only.

Checked at registration (enroll and ``PUT /v1/device/subscription``: syntax, IP
literals, and what a name resolves to) and again at every delivery after the
sender's own DNS lookup, so a name that later resolves to 127.0.0.1 reaches
nothing. The connect-time tests run a real listener on 127.0.0.1 and count its
connections; each has a control in which the rules allow private addresses
and the same listener does see the connection, so the zero is not vacuous.
"""

from __future__ import annotations

import logging
import os

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.task import Clock
from zope.interface import implementer

from fuzz.approval_target import Harness, http_request, json_body
from pushproxy.approval import crypto, pushtarget
from pushproxy.approval.pushtarget import EndpointRefused, EndpointRules, parse_endpoint
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.service import ApprovalError, ApprovalService, new_enrollment
from pushproxy.approval.store import SQLiteStore
from pushproxy.approval.webpush import VapidKeys, WebPushSender, b64url_encode
from pushproxy.config import ConfigError, parse_config
from pushproxy.metrics import Counters
from pushproxy.push import ApprovalRequest

STRICT = EndpointRules()

REFUSED = [
    "http://push.example.net/x",  # not https
    "ftp://push.example.net/x",
    "https://127.0.0.1/x",
    "https://127.0.0.1:8443/admin",
    "https://10.0.0.1/x",
    "https://192.168.1.1/x",
    "https://172.16.0.1/x",
    "https://100.64.0.1/x",  # shared address space (CGNAT)
    "https://169.254.169.254/latest/meta-data",  # cloud metadata
    "https://0.0.0.0/x",
    "https://224.0.0.1/x",
    "https://[::1]/x",
    "https://[::]/x",
    "https://[::ffff:127.0.0.1]/x",
    "https://[::ffff:10.0.0.1]/x",
    "https://[fc00::1]/x",
    "https://[fe80::1%25eth0]/x",
    "https://[2002:7f00:1::]/x",  # 6to4 around 127.0.0.1
    "https://[64:ff9b::7f00:1]/x",  # NAT64 around 127.0.0.1
    "https://127.1/x",  # legacy IPv4 forms getaddrinfo takes as 127.0.0.1
    "https://2130706433/x",
    "https://0x7f000001/x",
    "https://user:pw@push.example.net/x",
    "https://@push.example.net/x",
    "https:///x",
    "https://push.example.net:0/x",
    "https://push.example.net:99999/x",
    "https://bad_host!.example/x",
    "https://[::1/x",
    None,
    42,
]

ACCEPTED = [
    "https://fcm.googleapis.com/fcm/send/abc",
    "https://updates.push.services.mozilla.com/wpush/v2/abc",
    "https://web.push.apple.com/QGz",
    "https://push.example.net:8443/x",
    "https://8.8.8.8/x",
    "https://[2001:4860:4860::8888]/x",
]


@pytest.mark.parametrize("url", REFUSED)
def test_registration_syntax_refuses_http_private_literals_and_userinfo(url):
    with pytest.raises(EndpointRefused):
        parse_endpoint(url, STRICT)


@pytest.mark.parametrize("url", ACCEPTED)
def test_public_https_endpoints_pass_the_syntax_check(url):
    assert parse_endpoint(url, STRICT).scheme == "https"


def test_allow_private_lifts_the_address_rule_but_not_https():
    relay = EndpointRules(allow_private=True)
    assert str(parse_endpoint("https://10.0.0.1:8443/x", relay).literal) == "10.0.0.1"
    with pytest.raises(EndpointRefused, match="https"):
        parse_endpoint("http://10.0.0.1/x", relay)
    test_only = EndpointRules(allow_private=True, allow_http=True)
    assert parse_endpoint("http://127.0.0.1:9/x", test_only).port == 9


# -- resolvers


@implementer(IHostnameResolver)
class TableResolver:
    """A DNS stand-in: name -> addresses, changeable between calls (rebinding)."""

    def __init__(self, table):
        self.table = dict(table)
        self.asked = []

    def resolveHostName(self, receiver, hostName, portNumber=0,  # noqa: N802,N803
                        addressTypes=None, transportSemantics="TCP"):  # noqa: N803
        self.asked.append(hostName)
        receiver.resolutionBegan(None)
        for address in self.table.get(hostName, ()):
            kind = IPv6Address if ":" in address else IPv4Address
            receiver.addressResolved(kind("TCP", address, portNumber))
        receiver.resolutionComplete()
        return None


def run(coro):
    """The result of a coroutine that never waits (table resolver, inline store)."""
    got = []
    defer.ensureDeferred(coro).addBoth(got.append)
    assert got, "did not finish"
    if isinstance(got[0], Exception) or hasattr(got[0], "raiseException"):
        got[0].raiseException()
    return got[0]


def test_a_name_resolving_only_to_private_addresses_is_refused_at_registration():
    dns = TableResolver({"localhost": ["127.0.0.1", "::1"], "intranet.example": ["10.1.2.3"],
                         "mixed.example": ["10.1.2.3", "93.184.216.34"],
                         "rebind.example": ["::ffff:127.0.0.1"]})
    for name in ("localhost", "intranet.example", "rebind.example"):
        with pytest.raises(EndpointRefused, match="non-public"):
            run(pushtarget.check_registration(f"https://{name}/x", STRICT, dns, Clock()))
    # one public address is enough here: the sender connects only to that one
    run(pushtarget.check_registration("https://mixed.example/x", STRICT, dns, Clock()))
    # no answer (DNS down, NXDOMAIN) does not refuse: delivery checks again
    run(pushtarget.check_registration("https://unknown.example/x", STRICT, dns, Clock()))
    relay = EndpointRules(allow_private=True)
    run(pushtarget.check_registration("https://intranet.example/x", relay, dns, Clock()))


@pytest_twisted.ensureDeferred
async def test_localhost_through_the_reactors_own_resolver_is_refused():
    """The daemon's resolver (reactor.nameResolver, getaddrinfo in a thread) sees /etc/hosts."""
    from twisted.internet import reactor

    with pytest.raises(EndpointRefused, match="non-public"):
        await pushtarget.check_registration("https://localhost/x", STRICT,
                                            reactor.nameResolver, reactor)


# -- the service: enroll and subscription updates


def subscription(endpoint):
    ua = ec.generate_private_key(ec.SECP256R1())
    point = ua.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)
    return {"endpoint": endpoint, "keys": {"p256dh": b64url_encode(point),
                                           "auth": b64url_encode(os.urandom(16))}}


class Rig:
    """An approval service on an in-memory store with one enrolled device."""

    def __init__(self, reactor, resolver, rules=STRICT, sender=None):
        self.store = SQLiteStore(":memory:")
        self.counters = Counters()
        self.service = ApprovalService(store=AsyncStore.inline(self.store), reactor=reactor,
                                       counters=self.counters, vapid_public_key="v",
                                       sender=sender, push_rules=rules, resolver=resolver,
                                       wallclock=lambda: 1_800_000_000.0)
        self.device = self.enroll(None)

    def enroll(self, sub):
        link = new_enrollment(self.store, "alice", "https://mfa.example", 900, 1_800_000_000.0)
        token = link.split("#", 1)[1]
        key = ec.generate_private_key(ec.SECP256R1())
        public = crypto.public_key_text(key.public_key())
        sig = crypto.sign(key, crypto.enroll_text(token, public, "phone"))
        self.last_token = token
        return run(self.service._enroll(token, public, "phone", sub, sig))


def test_set_subscription_refuses_private_endpoints_with_400_and_counts_them(caplog):
    dns = TableResolver({"localhost": ["127.0.0.1"], "push.example.net": ["93.184.216.34"]})
    rig = Rig(Clock(), dns)
    bad = ["http://push.example.net/x", "https://127.0.0.1/x", "https://10.0.0.1/x",
           "https://[::1]/x", "https://[::ffff:127.0.0.1]/x", "https://169.254.169.254/x",
           "https://localhost/x"]
    caplog.set_level(logging.WARNING, "pushproxy.approval")
    for url in bad:
        with pytest.raises(ApprovalError) as refused:
            run(rig.service._set_subscription(rig.device, subscription(url)))
        assert (refused.value.status, refused.value.code) == (400, "bad_push_endpoint")
    assert rig.store.device(rig.device.id).push_subscription is None
    assert rig.counters.get("push_endpoints_refused") == len(bad)
    assert caplog.text.count("approval.push_endpoint_refused") == len(bad)
    good = subscription("https://push.example.net/x")
    run(rig.service._set_subscription(rig.device, good))
    assert rig.store.device(rig.device.id).push_subscription == good


def test_enroll_with_a_private_endpoint_is_refused_and_keeps_the_link_unused():
    dns = TableResolver({"localhost": ["127.0.0.1"]})
    rig = Rig(Clock(), dns)
    for url in ("https://127.0.0.1/x", "https://localhost/x"):
        with pytest.raises(ApprovalError) as refused:
            rig.enroll(subscription(url))
        assert refused.value.status == 400
        assert rig.store.enrollment(crypto.token_hash(rig.last_token)) is not None
    assert len(rig.store.devices("alice")) == 1


# -- delivery: the sender resolves and checks again


class Listener(protocol.Factory):
    """A TCP listener on 127.0.0.1 that counts connections and closes each at once."""

    def __init__(self):
        self.connections = 0

    def buildProtocol(self, addr):  # noqa: N802
        self.connections += 1
        proto = protocol.Protocol()
        proto.connectionMade = lambda: proto.transport.loseConnection()
        return proto


@pytest.fixture
def listener():
    from twisted.internet import reactor

    factory = Listener()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    factory.port = port.getHost().port
    yield factory
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def sender(reactor, rules, dns):
    return WebPushSender(reactor, VapidKeys.generate(), "mailto:admin@example.net",
                         timeout=3, rules=rules, resolver=dns)


@pytest_twisted.ensureDeferred
async def test_a_name_that_resolves_to_loopback_at_send_time_gets_no_connection(listener):
    from twisted.internet import reactor

    dns = TableResolver({"push.example.net": ["127.0.0.1"]})
    sub = subscription(f"https://push.example.net:{listener.port}/push/x")
    result = await sender(reactor, STRICT, dns).send(sub, b"{}")
    assert not result.ok and result.refused and "127.0.0.1" in result.error
    assert dns.asked == ["push.example.net"]
    # literal addresses never reach the socket either
    literal = subscription(f"https://127.0.0.1:{listener.port}/push/x")
    assert (await sender(reactor, STRICT, dns).send(literal, b"{}")).refused
    assert listener.connections == 0
    # control: the same name with private endpoints allowed does connect
    relay = await sender(reactor, EndpointRules(allow_private=True), dns).send(sub, b"{}")
    assert not relay.ok and not relay.refused
    assert listener.connections == 1


@pytest_twisted.ensureDeferred
async def test_dns_rebinding_after_registration_is_refused_counted_and_logged(listener, caplog):
    """Registered while the name was public; at the push it resolves to 127.0.0.1."""
    from twisted.internet import reactor

    dns = TableResolver({"push.example.net": ["93.184.216.34"]})
    rig = Rig(reactor, dns, sender=sender(reactor, STRICT, dns))
    sub = subscription(f"https://push.example.net:{listener.port}/push/x")
    await rig.service._set_subscription(rig.device, sub)
    dns.table["push.example.net"] = ["127.0.0.1", "::1"]
    caplog.set_level(logging.WARNING, "pushproxy.approval")
    now = 1_800_000_000.0
    waiting = rig.service.request_approval(ApprovalRequest(
        txid="tx1", username="alice", application="vpn", client_ip="198.51.100.7", nas="gw1",
        created=now, expires=now + 60, verification="none", number=None))
    for _ in range(50):
        if rig.counters.get("push_deliveries"):
            break
        await deferLater(reactor, 0.02)
    assert rig.counters.get("push_deliveries", outcome="refused") == 1
    assert rig.counters.get("push_deliveries", outcome="failed") == 0
    assert "approval.delivery_refused" in caplog.text and "push.example.net" in caplog.text
    assert listener.connections == 0
    # the subscription stays (not "gone"): the phone still long-polls
    assert rig.store.device(rig.device.id).push_subscription == sub
    waiting.cancel()
    waiting.addErrback(lambda _: None)


def deferLater(reactor, seconds):  # noqa: N802
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


# -- the real approval API over HTTP


def test_a_device_put_of_a_private_endpoint_over_http_gets_400():
    h = Harness()
    h.service.resolver = TableResolver({"localhost": ["127.0.0.1"],
                                        "push.example.net": ["93.184.216.34"]})
    path = "/v1/device/subscription"
    for i, url in enumerate(["https://127.0.0.1:8443/x", "http://push.example.net/x",
                             "https://[::ffff:10.0.0.1]/x", "https://localhost/x",
                             "https://169.254.169.254/x", "https://[::1/x"]):
        body = json_body({"push_subscription": subscription(url)})
        headers = h.sign_request("PUT", path, body, f"put-{i}".ljust(22, "n"))
        assert h.exchange(http_request("PUT", path, headers, body), settle=1) == [400]
        assert b"bad_push_endpoint" in h.last_response
    assert h.store.device(h.device.id).push_subscription is None
    body = json_body({"push_subscription": subscription("https://push.example.net/x")})
    headers = h.sign_request("PUT", path, body, "put-ok".ljust(22, "n"))
    assert h.exchange(http_request("PUT", path, headers, body), settle=1) == [200]


# -- the config switch


def test_allow_private_push_endpoints_is_a_validated_boolean(tmp_path):
    (tmp_path / "r.secret").write_text("a-long-radius-secret\n")
    base = """
radius:
  clients: [{name: gw, address: 127.0.0.1, secret_file: r.secret}]
ldap: {servers: ["ldap://127.0.0.1"], user_base: "dc=x", bind_template: "uid={username},dc=x"}
approval:
  public_url: https://mfa.example.net
  database: ":memory:"
"""
    parse = lambda text: parse_config(text, base_dir=tmp_path, env={})  # noqa: E731
    assert parse(base).approval.allow_private_push_endpoints is False
    on = parse(base + "  allow_private_push_endpoints: true\n")
    assert on.approval.allow_private_push_endpoints is True
    with pytest.raises(ConfigError, match="allow_private_push_endpoints: must be true or false"):
        parse(base + "  allow_private_push_endpoints: yes-please\n")


# -- a whole HTTPS delivery through the checked endpoint (relay allowed on loopback)


def _self_signed(name: str):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert_pem, key_pem


@pytest_twisted.ensureDeferred
async def test_delivery_uses_the_name_for_tls_and_host_but_connects_to_the_checked_address():
    """The certificate is checked for the endpoint's name (not the IP), Host is the name."""
    from treq.client import HTTPClient
    from twisted.internet import reactor, ssl
    from twisted.web import resource, server
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    seen = []

    class Push(resource.Resource):
        isLeaf = True

        def render_POST(self, request):  # noqa: N802
            seen.append(request.getHeader("host"))
            request.setResponseCode(201)
            return b""

    cert_pem, key_pem = _self_signed("push.example.net")
    identity = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
    connections = []

    class CountingSite(server.Site):
        def buildProtocol(self, addr):  # noqa: N802
            connections.append(addr)
            return super().buildProtocol(addr)

    port = reactor.listenSSL(0, CountingSite(Push()), identity.options(),
                             interface="127.0.0.1")
    number = port.getHost().port
    try:
        trust = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(cert_pem))
        dns = TableResolver({"push.example.net": ["127.0.0.1"], "other.example.net":
                             ["127.0.0.1"]})

        def client(rules):
            endpoints = pushtarget.CheckedEndpointFactory(reactor, rules, resolver=dns,
                                                          tls_policy=trust, connect_timeout=3)
            pool = HTTPConnectionPool(reactor, persistent=False)
            return WebPushSender(reactor, VapidKeys.generate(), "mailto:admin@example.net",
                                 timeout=5, rules=rules, http_client=HTTPClient(
                                     Agent.usingEndpointFactory(reactor, endpoints, pool=pool)))

        relay = EndpointRules(allow_private=True)
        ok = await client(relay).send(
            subscription(f"https://push.example.net:{number}/push/x"), b"{}")
        assert ok.ok and ok.status == 201
        assert seen == [f"push.example.net:{number}"]
        # the same address under another name: the certificate does not match, no POST
        other = await client(relay).send(
            subscription(f"https://other.example.net:{number}/push/x"), b"{}")
        assert not other.ok and not other.refused and len(seen) == 1
        # and with the default rules the address is never reached at all
        strict = await client(STRICT).send(
            subscription(f"https://push.example.net:{number}/push/x"), b"{}")
        assert strict.refused and len(seen) == 1
        assert len(connections) == 2  # the first two only: the strict one never connected
    finally:
        await port.stopListening()
