"""Issue 3 acceptance: real slapd + radclient + the built-in approval service + the CLI authenticator.

The daemon is built exactly as `pushproxy serve` builds it (`build_daemon`),
with an SQLite file database; devices are the real command-line
authenticator talking HTTP to the real API.
"""

from __future__ import annotations

import json
import socket
import sys
import textwrap
import time

import http_ece
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, reactor, threads
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web import resource, server

from pushproxy.approval import authenticator as auth
from pushproxy.approval import crypto
from pushproxy.approval.service import new_enrollment
from pushproxy.approval.store import SQLiteStore
from pushproxy.approval.webpush import b64url_encode
from pushproxy.wiring import build_daemon
from tests.integration.harness import SECRET, load, write_config
from tests.integration.radclient import radclient

MA = ("Message-Authenticator", "0x00")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def login_attrs(user="alice", password="alice-pw", station="198.51.100.7"):
    return [("User-Name", user), ("User-Password", password),
            ("Calling-Station-Id", station), ("NAS-Identifier", "gw-e2e"), MA]


class Recorder(resource.Resource):
    """A loopback HTTP endpoint that records requests (alert webhook, push service)."""

    isLeaf = True

    def __init__(self, status=201):
        super().__init__()
        self.requests = []
        self.status = status
        self.arrived = defer.Deferred()

    def render_POST(self, request):
        self.requests.append((dict(request.requestHeaders.getAllRawHeaders()),
                              request.content.read()))
        request.setResponseCode(self.status)
        if not self.arrived.called:
            reactor.callLater(0, self.arrived.callback, None)
        return b""


class Stack:
    """A running daemon with the built-in approval service, and its config folder."""

    def __init__(self, tmp_path, slapd, *, timeout=20, webhook=None, http_port=None,
                 clients=None, push_extra="", extra="", public_host="127.0.0.1",
                 ldap_extra="", user_filter=None):
        self.tmp_path = tmp_path
        self.http_port = http_port or free_tcp_port()
        # public_host "localhost": passkeys need a DNS name as RP ID (docs/presence.md)
        approval = textwrap.dedent(f"""\
            approval:
              listen: "127.0.0.1:{self.http_port}"
              public_url: "http://{public_host}:{self.http_port}"
              database: pushproxy.db
            """) + (f'  alert_webhook: "{webhook}"\n' if webhook else "")
        more = {"user_filter": user_filter} if user_filter else {}
        self.config_path = write_config(tmp_path, slapd, push=f"timeout: {timeout}\n{push_extra}",
                                        approval=approval, clients=clients,
                                        ldap_extra=ldap_extra, **more)
        if extra:  # more top-level sections (policy)
            self.config_path.write_text(self.config_path.read_text() + "\n" + extra)
        self.config = load(self.config_path)
        self.daemon = None

    @defer.inlineCallbacks
    def start(self):
        self.daemon = build_daemon(self.config, reactor, insecure_push_endpoints=True)
        yield self.daemon.start()
        self.radius = f"127.0.0.1:{self.daemon.ports[0].getHost().port}"
        return self

    def stop(self):
        return self.daemon.stop()

    def link(self, user="alice"):
        store = SQLiteStore(self.config.approval.database)
        try:
            return new_enrollment(store, user, self.config.approval.public_url, 900, time.time())
        finally:
            store.close()

    def device(self, user="alice", name="phone"):
        state = str(self.tmp_path / f"{user}-{name}")
        return threads.deferToThread(auth.enroll, self.link(user), state, name).addCallback(
            lambda _: state)

    def audit(self):
        return [json.loads(x) for x in (self.tmp_path / "audit.jsonl").read_text().splitlines()]


def first_request(state, deadline=15.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = auth.pending(state, wait=5)
        if found:
            return found[0]
    raise AssertionError("no request reached the device")


@pytest_twisted.inlineCallbacks
def test_enroll_login_approve_gives_accept(stacks):
    stack = yield stacks()
    state = yield stack.device()
    login = radclient(stack.radius, SECRET, login_attrs(), timeout=30)
    request = yield threads.deferToThread(first_request, state)
    assert (request["username"], request["application"], request["client_ip"], request["nas"]) \
        == ("alice", "test-nas", "198.51.100.7", "gw-e2e")
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    result = yield login
    assert result.code == "Access-Accept"
    (event,) = stack.audit()
    assert event["reason"] == "push_approved" and event["txid"] == request["txid"]


@pytest_twisted.inlineCallbacks
def test_deny_gives_reject_and_posts_an_alert(stacks):
    hook = Recorder(status=204)
    listening = reactor.listenTCP(0, server.Site(hook), interface="127.0.0.1")
    try:
        stack = yield stacks(webhook=f"http://127.0.0.1:{listening.getHost().port}/alert")
        state = yield stack.device(user="bob")
        login = radclient(stack.radius, SECRET, login_attrs(user="bob", password="bob-pw"),
                          timeout=30)
        request = yield threads.deferToThread(first_request, state)
        yield threads.deferToThread(auth.answer, state, request["txid"], "fraud")
        result = yield login
        assert result.code == "Access-Reject"
        yield hook.arrived
        headers, body = hook.requests[0]
        alert = json.loads(body)
        assert alert["event"] == "push_fraud" and alert["user"] == "bob"
        assert alert["client_ip"] == "198.51.100.7" and alert["txid"] == request["txid"]
        assert stack.audit()[0]["reason"] == "push_reported_fraud"
    finally:
        yield listening.stopListening()


@pytest_twisted.inlineCallbacks
def test_no_answer_rejects_at_the_timeout_and_the_device_sees_it_closed(stacks):
    stack = yield stacks(timeout=5)
    state = yield stack.device()
    started = time.monotonic()
    result = yield radclient(stack.radius, SECRET, login_attrs(), timeout=15)
    assert result.code == "Access-Reject"
    assert 4.9 <= time.monotonic() - started < 9
    left = yield threads.deferToThread(auth.pending, state)
    assert left == []
    assert stack.audit()[0]["reason"] == "push_timeout"


@pytest_twisted.inlineCallbacks
def test_two_devices_both_see_the_request_and_the_first_answer_wins(stacks):
    stack = yield stacks()
    one = yield stack.device(name="one")
    two = yield stack.device(name="two")
    login = radclient(stack.radius, SECRET, login_attrs(), timeout=30)
    seen_one = yield threads.deferToThread(first_request, one)
    seen_two = yield threads.deferToThread(first_request, two)
    assert seen_one["txid"] == seen_two["txid"]
    yield threads.deferToThread(auth.answer, two, seen_two["txid"], "approve")
    # The other device sees the request closed and can no longer answer it.
    left = yield threads.deferToThread(auth.pending, one)
    assert left == []
    with pytest.raises(auth.AuthenticatorError):
        yield threads.deferToThread(auth.answer, one, seen_one["txid"], "deny")
    result = yield login
    assert result.code == "Access-Accept"


@pytest_twisted.inlineCallbacks
def test_user_without_a_device_is_rejected_with_a_reason(stacks):
    stack = yield stacks()
    result = yield radclient(stack.radius, SECRET, login_attrs(user="bob", password="bob-pw"))
    assert result.code == "Access-Reject"
    assert stack.audit()[0]["reason"] == "no_enrolled_device"


@pytest_twisted.inlineCallbacks
def test_web_push_reaches_a_subscribed_device_encrypted_and_vapid_signed(stacks):
    push_service = Recorder(status=201)
    listening = reactor.listenTCP(0, server.Site(push_service), interface="127.0.0.1")
    try:
        stack = yield stacks()
        # A browser-like device: its own key, a push subscription with its ECDH key + auth secret.
        device_key = ec.generate_private_key(ec.SECP256R1())
        ua_key = ec.generate_private_key(ec.SECP256R1())
        auth_secret = b"0123456789abcdef"
        ua_public = ua_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        endpoint = f"http://127.0.0.1:{listening.getHost().port}/push/abc"
        subscription = {"endpoint": endpoint, "keys": {"p256dh": b64url_encode(ua_public),
                                                       "auth": b64url_encode(auth_secret)}}
        token = stack.link().split("#", 1)[1]
        public = crypto.public_key_text(device_key.public_key())
        device = yield stack.daemon.provider.enroll(
            token, public, "browser", subscription,
            crypto.sign(device_key, crypto.enroll_text(token, public, "browser")))
        login = radclient(stack.radius, SECRET, login_attrs(), timeout=30)
        yield push_service.arrived
        headers, body = push_service.requests[0]
        plain = http_ece.decrypt(body, private_key=ua_key, auth_secret=auth_secret,
                                 version="aes128gcm")
        message = json.loads(plain)
        assert message["username"] == "alice" and message["client_ip"] == "198.51.100.7"
        assert headers[b"Content-Encoding"] == [b"aes128gcm"]
        vapid = headers[b"Authorization"][0].decode()
        assert vapid.startswith("vapid t=") and stack.daemon.provider.vapid_public_key in vapid
        # The device answers what the push told it about.
        tx = yield stack.daemon.provider.store.transaction(message["txid"])
        sig = crypto.sign(device_key, crypto.answer_text(tx.id, message["nonce"], "approve",
                                                         "alice", device.id))
        yield stack.daemon.provider.answer(device, tx.id, "approve", sig)
        result = yield login
        assert result.code == "Access-Accept"
    finally:
        yield listening.stopListening()


@pytest_twisted.inlineCallbacks
def test_restart_keeps_devices_and_rejects_the_login_pending_during_it(stacks, slapd, tmp_path):
    stack = yield stacks()
    state = yield stack.device()
    login = radclient(stack.radius, SECRET, login_attrs(), timeout=30)
    request = yield threads.deferToThread(first_request, state)
    yield stack.stop()  # the pending login is answered, not left hanging
    result = yield login
    assert result.code == "Access-Reject"
    assert stack.audit()[-1]["reason"] == "shutting_down"
    again = yield Stack(tmp_path, slapd, http_port=stack.http_port).start()
    try:
        left = yield threads.deferToThread(auth.pending, state)
        assert left == []  # the interrupted login's request was closed at the restart
        login = radclient(again.radius, SECRET, login_attrs(station="2"), timeout=30)
        request = yield threads.deferToThread(first_request, state)
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        result = yield login
        assert result.code == "Access-Accept"
    finally:
        yield again.stop()


def cli(*args):
    return getProcessOutputAndValue(sys.executable, ("-m", "pushproxy.cli") + args,
                                    env={"PATH": "/usr/bin:/bin"})


@pytest_twisted.inlineCallbacks
def test_enroll_and_devices_commands_work_while_the_daemon_serves_logins(stacks):
    stack = yield stacks()
    state = yield stack.device()
    login = radclient(stack.radius, SECRET, login_attrs(), timeout=30)
    request = yield threads.deferToThread(first_request, state)
    out, err, code = yield cli("enroll", "bob", "--config", str(stack.config_path), "--no-qr")
    assert code == 0, err
    link = out.decode().strip().splitlines()[-1]
    assert link.startswith(stack.config.approval.public_url + "/app/enroll#")
    out, err, code = yield cli("devices", "list", "--config", str(stack.config_path))
    assert code == 0 and b"alice" in out, err
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    result = yield login
    assert result.code == "Access-Accept"
    device_id = json.load(open(f"{state}/device.json"))["device_id"]
    out, err, code = yield cli("devices", "revoke", device_id, "--config", str(stack.config_path))
    assert code == 0, err
    result = yield radclient(stack.radius, SECRET, login_attrs(station="3"))
    assert result.code == "Access-Reject"
    assert stack.audit()[-1]["reason"] == "no_enrolled_device"
    with pytest.raises(auth.ApiError) as refused:
        yield threads.deferToThread(auth.pending, state)
    assert refused.value.status == 401
