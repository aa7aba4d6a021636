"""The approval HTTP API's own behaviour, over real loopback TCP.

The service behind it is `StandInService`, a recording stand-in with the
`ApprovalService` interface: these tests are about the HTTP layer (limits,
parsing, status codes, headers, authentication plumbing, long-poll
cancellation). The real service is exercised in test_authenticator_e2e.py.
"""

import json
import logging
import socket
import time

import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import defer, task, threads
from twisted.web import static
from twisted.web.client import Agent, HTTPConnectionPool

from pushproxy.approval.api import build_site
from pushproxy.approval.web import SECURITY_HEADERS
from pushproxy.approval.service import ApprovalError
from pushproxy.approval.store import Device

MAX_BODY = 1024
AUTH = {"X-Device-Id": "dev1", "X-Timestamp": "1796000000", "X-Nonce": "n" * 22,
        "X-Signature": "sig"}
DEVICE = Device(id="dev1", username="alice", name="phone", public_key="pk",
                push_subscription=None, created=1.0, last_seen=None, revoked=None)


class StandInService:
    """Stand-in for ApprovalService (the HTTP layer's collaborator): records calls.

    ``fail`` maps a method name to an exception its Deferred fails with.
    ``pending`` returns a Deferred the test controls (``polls``) when wait > 0.
    """

    def __init__(self):
        self.calls = []
        self.fail = {}
        self.polls = []
        self.poll_cancelled = []
        self.for_answer = []  # authenticate's for_answer, per call

    def _result(self, name, value):
        if name in self.fail:
            return defer.fail(self.fail[name])
        return defer.succeed(value)

    def info(self):
        self.calls.append(("info",))
        if "info" in self.fail:
            raise self.fail["info"]
        return {"version": 1, "vapid_public_key": "VAPID", "server_time": 1796000001.5}

    def enroll(self, token, public_key, name, subscription, signature):
        self.calls.append(("enroll", token, public_key, name, subscription, signature))
        return self._result("enroll", DEVICE)

    def authenticate(self, device_id, timestamp, nonce, signature, method, path, body,
                     for_answer=False):
        self.calls.append(("authenticate", device_id, timestamp, nonce, signature, method,
                           path, body))
        self.for_answer.append(for_answer)
        return self._result("authenticate", DEVICE)

    def pending(self, device, wait):
        self.calls.append(("pending", device.id, wait))
        if wait <= 0:
            return self._result("pending", [{"txid": "t1"}])
        d = defer.Deferred(lambda _: self.poll_cancelled.append(True))
        self.polls.append(d)
        return d

    def answer(self, device, txid, decision, signature, number=None):
        self.calls.append(("answer", device.id, txid, decision, signature))
        return self._result("answer", {"status": "recorded"})

    def set_subscription(self, device, subscription):
        self.calls.append(("set_subscription", device.id, subscription))
        return self._result("set_subscription", None)

    def called(self, name):
        return [c for c in self.calls if c[0] == name]


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def service():
    return StandInService()


@pytest.fixture
def server(reactor, service):
    """The real Site on 127.0.0.1, an ephemeral port; yields (site, base_url)."""
    site = build_site(service, max_body=MAX_BODY, reactor=reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield site, f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest.fixture
def base(server):
    return server[1]


@pytest.fixture
def http(reactor):
    # Not persistent: every test ends with no connection left open.
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


async def call(http, method, url, body=None, headers=None, raw=None):
    """One request; returns (status, headers, parsed JSON or None, raw bytes)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    response = await http.request(method, url, data=data, headers=headers or {})
    content = await treq.content(response)
    try:
        parsed = json.loads(content)
    except ValueError:
        parsed = None
    return response.code, response.headers, parsed, content


def header(headers, name):
    values = headers.getRawHeaders(name.encode())
    return values[0].decode() if values else None


def assert_json_and_secure(headers):
    assert header(headers, "Content-Type") == "application/json; charset=utf-8"
    for name, value in SECURITY_HEADERS:
        assert header(headers, name.decode()) == value.decode()
    assert headers.getRawHeaders("Server") is None


def raw_exchange(port_url, data, read_for=3.0):
    """Blocking: send raw bytes, read until close or ``read_for`` seconds; runs in a thread."""
    host, port = port_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_for) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + read_for
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


# -- plain endpoints, headers, 404 / 405


@pytest_twisted.ensureDeferred
async def test_info_is_json_with_security_headers(base, http):
    status, headers, body, _ = await call(http, "GET", base + "/v1/info")
    assert status == 200
    assert body == {"version": 1, "vapid_public_key": "VAPID", "server_time": 1796000001.5}
    assert_json_and_secure(headers)


@pytest.mark.parametrize("path", ["/", "/nope", "/v1", "/v1/", "/v1/nope", "/v1/info/",
                                  "/v1/info/x", "/v1/device", "/v1/device/nope",
                                  "/app/no-such-file.js"])
@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_json_404(base, http, path):
    status, headers, body, _ = await call(http, "GET", base + path)
    assert status == 404
    assert body["error"] == "not_found"
    assert_json_and_secure(headers)


@pytest.mark.parametrize("method,path,allowed", [
    ("POST", "/v1/info", "GET"), ("GET", "/v1/enroll", "POST"),
    ("PUT", "/v1/device/pending", "GET"), ("GET", "/v1/device/answer", "POST"),
    ("DELETE", "/v1/device/answer", "POST"), ("POST", "/v1/device/subscription", "PUT"),
    ("HEAD", "/v1/info", "GET"),
])
@pytest_twisted.ensureDeferred
async def test_wrong_method_is_405_with_allow(base, http, service, method, path, allowed):
    status, headers, body, _ = await call(http, method, base + path, headers=AUTH)
    assert status == 405
    assert header(headers, "Allow") == allowed
    if method != "HEAD":
        assert body["error"] == "method_not_allowed"
    assert service.called("authenticate") == []


@pytest_twisted.ensureDeferred
async def test_app_is_left_free_for_the_web_authenticator(server, http):
    site, base = server
    site.resource.putChild(b"app", static.Data(b"<html>app</html>", "text/html"))
    response = await http.get(base + "/app")
    assert response.code == 200
    assert await treq.content(response) == b"<html>app</html>"
    for name, value in SECURITY_HEADERS:  # mounted pages get them too
        assert response.headers.getRawHeaders(name) == [value]


@pytest_twisted.ensureDeferred
async def test_exception_escaping_a_mounted_resource_is_a_bare_json_500(server, http, caplog):
    from twisted.web import resource

    class Broken(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            raise ValueError("private detail")

    site, base = server
    site.resource.putChild(b"app", Broken())
    with caplog.at_level(logging.ERROR, logger="pushproxy.approval.api"):
        status, headers, body, content = await call(http, "GET", base + "/app")
    assert status == 500
    assert body == {"error": "internal"}
    assert b"private" not in content
    assert_json_and_secure(headers)
    assert any("private detail" in r.getMessage() for r in caplog.records)


# -- body limit


@pytest_twisted.ensureDeferred
async def test_declared_oversize_body_is_refused_before_it_is_sent(base):
    head = (b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    # Only the headers go out: the 413 must come without the server waiting for the body.
    reply = await threads.deferToThread(raw_exchange, base, head)
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"Connection: close" in headers
    assert b"Content-Type: application/json; charset=utf-8" in headers
    for name, value in SECURITY_HEADERS:
        assert name + b": " + value in headers
    assert json.loads(body)["error"] == "too_large"


@pytest_twisted.ensureDeferred
async def test_expect_continue_gets_413_and_no_100(base):
    head = (b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 100000000\r\n\r\n")
    reply = await threads.deferToThread(raw_exchange, base, head)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"100 Continue" not in reply


@pytest_twisted.ensureDeferred
async def test_chunked_body_is_cut_off_past_the_limit(base, service):
    chunk = b"x" * 600
    data = (b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
    reply = await threads.deferToThread(raw_exchange, base, data)
    assert reply.startswith(b"HTTP/1.1 413")
    assert service.called("enroll") == []


@pytest_twisted.ensureDeferred
async def test_body_of_exactly_max_body_is_accepted(base, http, service):
    fields = {"token": "t", "public_key": "k", "name": "n", "signature": "s",
              "push_subscription": None}
    raw = json.dumps(fields).encode()
    raw = raw[:-1] + b" " * (MAX_BODY - len(raw)) + b"}"
    assert len(raw) == MAX_BODY
    status, _, body, _ = await call(http, "POST", base + "/v1/enroll", raw=raw)
    assert status == 201
    status, _, body, _ = await call(http, "POST", base + "/v1/enroll", raw=raw + b" ")
    assert status == 413


# -- enrollment and JSON parsing


@pytest_twisted.ensureDeferred
async def test_enroll_passes_fields_and_answers_201(base, http, service):
    sub = {"endpoint": "https://push.example/x", "keys": {"p256dh": "p", "auth": "a"}}
    status, headers, body, _ = await call(
        http, "POST", base + "/v1/enroll",
        {"token": "tok", "public_key": "pk", "name": "phone", "push_subscription": sub,
         "signature": "sig"})
    assert status == 201
    assert body == {"device_id": "dev1", "username": "alice", "vapid_public_key": "VAPID"}
    assert service.called("enroll") == [("enroll", "tok", "pk", "phone", sub, "sig")]
    assert_json_and_secure(headers)


@pytest_twisted.ensureDeferred
async def test_enroll_without_subscription_means_none(base, http, service):
    status, _, _, _ = await call(http, "POST", base + "/v1/enroll",
                                 {"token": "t", "public_key": "k", "name": "n", "signature": "s"})
    assert status == 201
    assert service.called("enroll")[0][4] is None


@pytest.mark.parametrize("raw", [
    b"", b"{", b"not json", b"[]", b'"text"', b"null", b"\xff\xfe{}",
    b'{"token": NaN}', b"[" * 5000 + b"]" * 5000,
    b'{"token": 1, "public_key": "k", "name": "n", "signature": "s"}',
    b'{"token": "t", "public_key": null, "name": "n", "signature": "s"}',
    b'{"token": "t", "public_key": "k", "name": ["n"], "signature": "s"}',
    b'{"token": "t", "public_key": "k", "name": "n"}',
    b'{"token": "t", "public_key": "k", "name": "n", "signature": "s", "push_subscription": "x"}',
])
@pytest_twisted.ensureDeferred
async def test_malformed_enroll_bodies_are_400(reactor, service, raw):
    site = build_site(service, max_body=20000, reactor=reactor)  # room for the deep nesting
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    try:
        status, headers, body, _ = await call(
            http, "POST", f"http://127.0.0.1:{port.getHost().port}/v1/enroll", raw=raw)
    finally:
        await port.stopListening()
    assert status == 400
    assert body["error"] == "bad_request"
    assert isinstance(body["message"], str)
    assert_json_and_secure(headers)
    assert service.called("enroll") == []


@pytest_twisted.ensureDeferred
async def test_approval_error_becomes_its_status_and_code(base, http, service):
    service.fail["enroll"] = ApprovalError(403, "invalid_enrollment", "unknown, used or expired")
    status, _, body, _ = await call(http, "POST", base + "/v1/enroll",
                                    {"token": "t", "public_key": "k", "name": "n",
                                     "signature": "s"})
    assert status == 403
    assert body == {"error": "invalid_enrollment", "message": "unknown, used or expired"}


@pytest_twisted.ensureDeferred
async def test_unexpected_exception_is_a_bare_500_and_logged(base, http, service, caplog):
    service.fail["enroll"] = RuntimeError("secret detail /etc/db")
    with caplog.at_level(logging.ERROR, logger="pushproxy.approval.api"):
        status, headers, body, content = await call(
            http, "POST", base + "/v1/enroll",
            {"token": "t", "public_key": "k", "name": "n", "signature": "s"})
    assert status == 500
    assert body == {"error": "internal"}
    assert b"secret" not in content and b"Traceback" not in content
    assert_json_and_secure(headers)
    assert any("internal_error" in r.getMessage() and "secret detail" in r.getMessage()
               for r in caplog.records)


@pytest_twisted.ensureDeferred
async def test_exception_in_synchronous_info_is_a_bare_500(base, http, service):
    service.fail["info"] = KeyError("boom")
    status, _, body, content = await call(http, "GET", base + "/v1/info")
    assert status == 500
    assert body == {"error": "internal"}
    assert b"boom" not in content


# -- device authentication


@pytest.mark.parametrize("missing", list(AUTH))
@pytest.mark.parametrize("method,path", [("GET", "/v1/device/pending"),
                                         ("POST", "/v1/device/answer"),
                                         ("PUT", "/v1/device/subscription")])
@pytest_twisted.ensureDeferred
async def test_missing_auth_header_is_401(base, http, service, missing, method, path):
    headers = {k: v for k, v in AUTH.items() if k != missing}
    status, resp_headers, body, _ = await call(http, method, base + path, {"x": 1},
                                               headers=headers)
    assert status == 401
    assert body["error"] == "unauthenticated"
    assert missing in body["message"]
    assert service.called("authenticate") == []
    assert_json_and_secure(resp_headers)


@pytest_twisted.ensureDeferred
async def test_repeated_auth_header_is_401(base, http, service):
    headers = dict(AUTH)
    headers["X-Nonce"] = ["a" * 22, "b" * 22]
    status, _, body, _ = await call(http, "GET", base + "/v1/device/pending", headers=headers)
    assert status == 401
    assert service.called("authenticate") == []


@pytest_twisted.ensureDeferred
async def test_authenticate_gets_headers_method_uri_as_sent_and_raw_body(base, http, service):
    raw = b'{"txid":"t1",  "decision":"approve","signature":"s"}'
    status, _, body, _ = await call(http, "POST", base + "/v1/device/answer?x=1&y=%41",
                                    raw=raw, headers=AUTH)
    assert status == 200
    assert body == {"status": "recorded"}
    assert service.called("authenticate") == [
        ("authenticate", "dev1", "1796000000", "n" * 22, "sig", "POST",
         "/v1/device/answer?x=1&y=%41", raw)]
    assert service.called("answer") == [("answer", "dev1", "t1", "approve", "s")]
    # only an answer may take its device from memory (its compare-and-set checks it)
    assert service.for_answer == [True]
    status, _, _, _ = await call(http, "GET", base + "/v1/device/pending", headers=AUTH)
    assert status == 200 and service.for_answer == [True, False]


@pytest.mark.parametrize("method,path,call_name", [("GET", "/v1/device/pending", "pending"),
                                                   ("POST", "/v1/device/answer", "answer")])
@pytest_twisted.ensureDeferred
async def test_a_401_after_the_authentication_counts_against_the_source(
        base, http, service, method, path, call_name):
    """A cluster node finds a replayed nonce with the long-poll's list or the answer's
    compare-and-set, after the signature check: that 401 counts like a bad signature
    (the default limit is 10 per source); other refusals (409) never count."""
    body = b'{"txid":"t1","decision":"approve","signature":"s"}'
    service.fail[call_name] = ApprovalError(409, "already_decided", "already answered")
    for _ in range(12):
        status, *_ = await call(http, method, base + path, raw=body, headers=AUTH)
        assert status == 409
    service.fail[call_name] = ApprovalError(401, "unauthenticated", "replayed request")
    for _ in range(10):
        status, *_ = await call(http, method, base + path, raw=body, headers=AUTH)
        assert status == 401
    calls = len(service.calls)
    status, headers, refused, _ = await call(http, method, base + path, raw=body,
                                             headers=AUTH)
    assert (status, refused["error"]) == (429, "too_many_failures")
    assert header(headers, "Retry-After")
    assert len(service.calls) == calls  # refused before the service is asked anything


@pytest_twisted.ensureDeferred
async def test_refused_authentication_is_401_before_the_body_is_judged(base, http, service):
    service.fail["authenticate"] = ApprovalError(401, "unauthenticated", "bad signature")
    status, _, body, _ = await call(http, "POST", base + "/v1/device/answer", raw=b"{bad",
                                    headers=AUTH)
    assert status == 401
    assert body == {"error": "unauthenticated", "message": "bad signature"}
    assert service.called("answer") == []


@pytest.mark.parametrize("fields", [
    {"txid": "t", "decision": "maybe", "signature": "s"},
    {"txid": 5, "decision": "approve", "signature": "s"},
    {"txid": "t", "decision": "approve"},
])
@pytest_twisted.ensureDeferred
async def test_bad_answer_fields_are_400(base, http, service, fields):
    status, _, body, _ = await call(http, "POST", base + "/v1/device/answer", fields,
                                    headers=AUTH)
    assert status == 400
    assert body["error"] == "bad_request"
    assert service.called("answer") == []


@pytest.mark.parametrize("code,status", [("unknown_transaction", 404), ("already_decided", 409),
                                         ("expired", 410), ("bad_signature", 403)])
@pytest_twisted.ensureDeferred
async def test_answer_refusals_pass_through(base, http, service, code, status):
    service.fail["answer"] = ApprovalError(status, code, "no")
    got, _, body, _ = await call(http, "POST", base + "/v1/device/answer",
                                 {"txid": "t", "decision": "deny", "signature": "s"},
                                 headers=AUTH)
    assert got == status
    assert body == {"error": code, "message": "no"}


@pytest_twisted.ensureDeferred
async def test_subscription_put(base, http, service):
    sub = {"endpoint": "https://push.example/x", "keys": {"p256dh": "p", "auth": "a"}}
    status, _, body, _ = await call(http, "PUT", base + "/v1/device/subscription",
                                    {"push_subscription": sub}, headers=AUTH)
    assert status == 200
    status, _, body, _ = await call(http, "PUT", base + "/v1/device/subscription",
                                    {"push_subscription": None}, headers=AUTH)
    assert status == 200
    assert service.called("set_subscription") == [("set_subscription", "dev1", sub),
                                                  ("set_subscription", "dev1", None)]
    for bad in ({}, {"push_subscription": [1]}):
        status, _, body, _ = await call(http, "PUT", base + "/v1/device/subscription", bad,
                                        headers=AUTH)
        assert status == 400


# -- pending and the long-poll


@pytest_twisted.ensureDeferred
async def test_pending_without_wait_is_immediate(base, http, service):
    status, _, body, _ = await call(http, "GET", base + "/v1/device/pending", headers=AUTH)
    assert status == 200
    assert body == {"requests": [{"txid": "t1"}], "server_time": 1796000001.5}
    assert service.called("pending") == [("pending", "dev1", 0.0)]


@pytest.mark.parametrize("query", ["wait=abc", "wait=31", "wait=-1", "wait=nan", "wait=1e1",
                                   "wait=", "wait=inf", "wait=30.5", "wait=1&wait=2",
                                   "wait=%201"])
@pytest_twisted.ensureDeferred
async def test_invalid_wait_is_400(base, http, service, query):
    status, _, body, _ = await call(http, "GET", base + "/v1/device/pending?" + query,
                                    headers=AUTH)
    assert status == 400
    assert body["error"] == "bad_request"
    assert service.called("pending") == []


async def _poll_reached(reactor, service, seconds: float = 10.0):
    """Until the long poll reached the service (a loaded machine may take longer than 0.2 s)."""
    for _ in range(int(seconds / 0.02)):
        if service.polls:
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"the long poll did not reach the service within {seconds} s")


@pytest.mark.parametrize("query,wait", [("wait=0", 0.0), ("wait=30", 30.0),
                                        ("wait=2.5", 2.5), ("other=1", 0.0)])
@pytest_twisted.ensureDeferred
async def test_valid_wait_reaches_the_service(reactor, base, http, service, query, wait):
    d = defer.ensureDeferred(call(http, "GET", base + "/v1/device/pending?" + query,
                                  headers=AUTH))
    if wait > 0:
        await _poll_reached(reactor, service)
        service.polls[0].callback([])
    status, _, body, _ = await d
    assert status == 200
    assert service.called("pending") == [("pending", "dev1", wait)]


@pytest_twisted.ensureDeferred
async def test_long_poll_answers_when_the_service_fires(reactor, base, http, service):
    d = defer.ensureDeferred(call(http, "GET", base + "/v1/device/pending?wait=25",
                                  headers=AUTH))
    await _poll_reached(reactor, service)
    assert not d.called
    service.polls[0].callback([{"txid": "new"}])
    status, _, body, _ = await d
    assert status == 200
    assert body["requests"] == [{"txid": "new"}]


@pytest_twisted.ensureDeferred
async def test_client_disconnect_cancels_the_long_poll(reactor, base, http, service, caplog):
    """The poll is withdrawn, and its cancellation is no internal error: nobody to answer."""
    caplog.set_level(logging.INFO, logger="pushproxy.approval.api")
    d = defer.ensureDeferred(call(http, "GET", base + "/v1/device/pending?wait=25",
                                  headers=AUTH))
    await _poll_reached(reactor, service)
    assert len(service.polls) == 1 and not service.poll_cancelled
    d.cancel()  # Agent aborts the connection
    with pytest.raises(Exception):
        await d
    for _ in range(50):
        if service.poll_cancelled:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    assert service.poll_cancelled == [True]
    await task.deferLater(reactor, 0.05, lambda: None)
    assert not [r for r in caplog.records if "internal_error" in r.getMessage()
                or "serve_failed" in r.getMessage()]


# -- logging


@pytest_twisted.ensureDeferred
async def test_access_log_is_structured_and_has_no_query(base, http, caplog):
    with caplog.at_level(logging.DEBUG, logger="pushproxy.approval.api"):
        await call(http, "GET", base + "/v1/device/pending?wait=0&secret=hunter2", headers=AUTH)
        await call(http, "GET", base + "/nope?token=abc")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("approval.http ")]
    assert len(lines) == 2
    assert "path=/v1/device/pending" in lines[0] and "status=200" in lines[0]
    assert "device=dev1" in lines[0]
    assert "status=404" in lines[1]
    assert all("hunter2" not in line and "abc" not in line and "?" not in line
               for line in lines)
