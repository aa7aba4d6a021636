"""Web Push: the RFC 8291 vector, interop with http_ece and py_vapid, delivery over real HTTP."""

import json
import os
import socket
import struct
import time

import http_ece
import pytest
import pytest_twisted
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from py_vapid import Vapid
from py_vapid import jwt as py_vapid_jwt
from twisted.internet import defer, task
from twisted.web import resource, server

from pushproxy.approval.webpush import (
    MAX_PLAINTEXT,
    MAX_VAPID_TTL,
    DeliveryResult,
    VapidKeys,
    WebPushSender,
    b64url_decode,
    b64url_encode,
    encrypt_payload,
    vapid_audience,
    vapid_authorization,
)

SUBJECT = "mailto:admin@example.com"

# RFC 8291 Appendix A.
RFC_PLAINTEXT = b"When I grow up, I want to be a watermelon"
RFC_AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
RFC_AS_PUBLIC = (
    "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
)
RFC_UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
RFC_UA_PUBLIC = (
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
)
RFC_SALT = "DGv6ra1nlYgDCS1FRnbzlw"
RFC_AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
RFC_BODY = (
    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml"
    "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT"
    "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
)


def _private_from_d(d_b64url):
    return ec.derive_private_key(int.from_bytes(b64url_decode(d_b64url), "big"), ec.SECP256R1())


class Browser:
    """A subscription as a browser makes one: a P-256 key pair and a 16-byte auth secret."""

    def __init__(self, endpoint="https://push.example.net/send/abc"):
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth = b64url_encode(os.urandom(16))
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.subscription = {
            "endpoint": endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url_encode(point), "auth": self.auth},
        }

    def decrypt(self, body):
        return http_ece.decrypt(
            body,
            private_key=self.private_key,
            auth_secret=b64url_decode(self.auth),
            version="aes128gcm",
        )


def _parse_authorization(value):
    assert value.startswith("vapid ")
    params = dict(p.strip().split("=", 1) for p in value[len("vapid ") :].split(","))
    return params["t"], params["k"]


def _verify_jwt(token, key_b64url):
    """Check the ES256 signature with the raw key; return (header, claims)."""
    head, claims, sig = token.split(".")
    raw = b64url_decode(sig)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(key_b64url))
    public.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    return json.loads(b64url_decode(head)), json.loads(b64url_decode(claims))


# --- encryption ---------------------------------------------------------------------------


def test_rfc8291_appendix_a_vector_reproduces_exact_body():
    as_private = _private_from_d(RFC_AS_PRIVATE)
    body = encrypt_payload(
        RFC_PLAINTEXT,
        RFC_UA_PUBLIC,
        RFC_AUTH,
        salt=b64url_decode(RFC_SALT),
        server_private_key=as_private,
    )
    assert b64url_encode(body) == RFC_BODY
    assert body[21:86] == b64url_decode(RFC_AS_PUBLIC)


def test_http_ece_decrypts_the_rfc_vector_body_with_the_ua_private_key():
    """Cross-checks the vector itself: an independent implementation agrees with it."""
    plain = http_ece.decrypt(
        b64url_decode(RFC_BODY),
        private_key=_private_from_d(RFC_UA_PRIVATE),
        auth_secret=b64url_decode(RFC_AUTH),
        version="aes128gcm",
    )
    assert plain == RFC_PLAINTEXT


@pytest.mark.parametrize("size", [0, 1, 41, 200, MAX_PLAINTEXT])
def test_http_ece_decrypts_bodies_for_fresh_subscriptions(size):
    browser = Browser()
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    keys = browser.subscription["keys"]
    body = encrypt_payload(payload, keys["p256dh"], keys["auth"])
    assert browser.decrypt(body) == payload
    assert len(body) == 86 + size + 17


def test_body_header_layout_is_salt_rs_idlen_and_ephemeral_key():
    browser = Browser()
    keys = browser.subscription["keys"]
    server_key = ec.generate_private_key(ec.SECP256R1())
    body = encrypt_payload(
        b"x", keys["p256dh"], keys["auth"], salt=b"s" * 16, server_private_key=server_key
    )
    assert body[:16] == b"s" * 16
    assert struct.unpack("!IB", body[16:21]) == (4096, 65)
    assert body[21:86] == server_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def test_each_encryption_uses_a_fresh_salt_and_server_key():
    keys = Browser().subscription["keys"]
    first = encrypt_payload(b"same", keys["p256dh"], keys["auth"])
    second = encrypt_payload(b"same", keys["p256dh"], keys["auth"])
    assert first[:16] != second[:16]
    assert first[21:86] != second[21:86]


def test_wrong_auth_secret_cannot_decrypt():
    browser = Browser()
    keys = browser.subscription["keys"]
    body = encrypt_payload(b"secret", keys["p256dh"], b64url_encode(b"\x00" * 16))
    with pytest.raises(http_ece.ECEException):
        browser.decrypt(body)


def test_plaintext_over_3993_bytes_is_rejected():
    keys = Browser().subscription["keys"]
    with pytest.raises(ValueError):
        encrypt_payload(b"x" * (MAX_PLAINTEXT + 1), keys["p256dh"], keys["auth"])


@pytest.mark.parametrize(
    "p256dh, auth",
    [
        (RFC_UA_PUBLIC[:-4], RFC_AUTH),  # truncated point
        (b64url_encode(b"\x04" + b"\x01" * 64), RFC_AUTH),  # not on the curve
        (RFC_UA_PUBLIC, b64url_encode(b"\x00" * 8)),  # short auth secret
    ],
)
def test_malformed_subscription_keys_are_rejected(p256dh, auth):
    with pytest.raises(ValueError):
        encrypt_payload(b"x", p256dh, auth)


# --- VAPID --------------------------------------------------------------------------------


def test_vapid_keys_round_trip_through_pem():
    keys = VapidKeys.generate()
    again = VapidKeys.from_pem(keys.to_pem())
    assert again.public_key_b64url == keys.public_key_b64url
    raw = b64url_decode(keys.public_key_b64url)
    assert len(raw) == 65 and raw[0] == 4 and "=" not in keys.public_key_b64url


def test_vapid_pem_is_interchangeable_with_py_vapid():
    keys = VapidKeys.generate()
    theirs = Vapid.from_pem(keys.to_pem())
    their_point = theirs.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert b64url_encode(their_point) == keys.public_key_b64url
    assert VapidKeys.from_pem(theirs.private_pem()).public_key_b64url == keys.public_key_b64url


def test_vapid_keys_refuse_other_curves():
    pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError):
        VapidKeys.from_pem(pem)


def test_vapid_header_has_valid_es256_jwt_and_claims():
    keys = VapidKeys.generate()
    now = 1_700_000_000.5
    value = vapid_authorization(keys, "https://fcm.googleapis.com/fcm/send/abc:def", SUBJECT, now)
    token, k = _parse_authorization(value)
    assert k == keys.public_key_b64url
    header, claims = _verify_jwt(token, k)
    assert header == {"typ": "JWT", "alg": "ES256"}
    assert claims == {
        "aud": "https://fcm.googleapis.com",
        "exp": int(now + 12 * 3600),
        "sub": SUBJECT,
    }
    # Independent verifier: py_vapid checks the signature and returns the same claims.
    assert py_vapid_jwt.decode(token, k) == claims


def test_vapid_signature_check_is_not_vacuous():
    keys = VapidKeys.generate()
    token, k = _parse_authorization(vapid_authorization(keys, "https://a.example/x", SUBJECT, 0))
    head, claims, sig = token.split(".")
    lasting = {"aud": "https://a.example", "exp": 10**10, "sub": SUBJECT}
    forged = b64url_encode(json.dumps(lasting).encode())
    with pytest.raises(InvalidSignature):
        _verify_jwt(f"{head}.{forged}.{sig}", k)
    with pytest.raises(InvalidSignature):
        _verify_jwt(token, VapidKeys.generate().public_key_b64url)


@pytest.mark.parametrize(
    "url, aud",
    [
        (
            "https://updates.push.services.mozilla.com/wpush/v2/gAAA",
            "https://updates.push.services.mozilla.com",
        ),
        ("https://Push.Example:443/a?b=c", "https://push.example"),
        ("https://push.example:8443/a", "https://push.example:8443"),
        ("http://127.0.0.1:9000/p", "http://127.0.0.1:9000"),
        ("https://[::1]:8443/p", "https://[::1]:8443"),
    ],
)
def test_vapid_audience_is_the_endpoint_origin(url, aud):
    assert vapid_audience(url) == aud


def test_vapid_ttl_is_capped_at_24_hours():
    keys = VapidKeys.generate()
    token, k = _parse_authorization(
        vapid_authorization(keys, "https://a.example/", SUBJECT, 100, ttl=MAX_VAPID_TTL)
    )
    assert _verify_jwt(token, k)[1]["exp"] == 100 + MAX_VAPID_TTL
    with pytest.raises(ValueError):
        vapid_authorization(keys, "https://a.example/", SUBJECT, 100, ttl=MAX_VAPID_TTL + 1)


def test_vapid_subject_must_be_mailto_or_https():
    with pytest.raises(ValueError):
        vapid_authorization(VapidKeys.generate(), "https://a.example/", "admin@example.com", 0)


# --- sending, with a fake client and a fake clock -------------------------------------------


class HangingClient:
    """A treq-like client whose requests never answer; records calls and cancellations."""

    def __init__(self):
        self.calls = []
        self.cancelled = 0

    def post(self, url, data=None, headers=None):
        self.calls.append((url, data, headers))

        def cancel(d):
            self.cancelled += 1

        return defer.Deferred(cancel)


def test_timeout_runs_on_the_given_reactor_and_cancels_the_request():
    clock = task.Clock()
    clock.advance(1_000_000)
    client = HangingClient()
    sender = WebPushSender(clock, VapidKeys.generate(), SUBJECT, http_client=client, timeout=5)
    results = []
    sender.send(Browser().subscription, b"hi").addCallback(results.append)
    clock.advance(4.9)
    assert results == []
    clock.advance(0.2)
    assert results == [DeliveryResult(ok=False, error="no answer within 5 s")]
    assert client.cancelled == 1
    token, k = _parse_authorization(client.calls[0][2]["Authorization"])
    assert _verify_jwt(token, k)[1]["exp"] == 1_000_000 + 12 * 3600


@pytest.mark.parametrize(
    "subscription",
    [
        {"endpoint": "http://push.example/x", "keys": Browser().subscription["keys"]},
        {"endpoint": "ftp://push.example/x", "keys": Browser().subscription["keys"]},
        {"endpoint": "https://push.example/x"},
        {"endpoint": "https://push.example/x", "keys": {"p256dh": "AAAA", "auth": RFC_AUTH}},
    ],
)
def test_bad_subscription_gives_failed_result_without_request(subscription):
    client = HangingClient()
    sender = WebPushSender(task.Clock(), VapidKeys.generate(), SUBJECT, http_client=client)
    results = []
    sender.send(subscription, b"hi").addCallback(results.append)
    assert len(results) == 1 and not results[0].ok and "invalid subscription" in results[0].error
    assert client.calls == []


def test_caller_errors_raise_at_once():
    sender = WebPushSender(task.Clock(), VapidKeys.generate(), SUBJECT, http_client=HangingClient())
    with pytest.raises(ValueError):
        sender.send(Browser().subscription, b"hi", urgency="urgent")
    with pytest.raises(ValueError):
        sender.send(Browser().subscription, b"x" * (MAX_PLAINTEXT + 1))
    with pytest.raises(ValueError):
        WebPushSender(task.Clock(), VapidKeys.generate(), "nobody")


# --- sending over real HTTP on loopback ------------------------------------------------------


class PushService(resource.Resource):
    """Records each POST and answers with *code*, or never answers when *hang*."""

    isLeaf = True

    def __init__(self, code=201, hang=False):
        super().__init__()
        self.code, self.hang, self.requests = code, hang, []

    def render_POST(self, request):
        self.requests.append((request.path, request.requestHeaders, request.content.read()))
        if self.hang:
            return server.NOT_DONE_YET
        request.setResponseCode(self.code)
        return b"" if self.code < 300 else b"gone away"


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def serve(reactor):
    ports = []

    def start(service):
        port = reactor.listenTCP(0, server.Site(service), interface="127.0.0.1")
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def _sender(reactor, keys, timeout=5.0):
    return WebPushSender(
        reactor, keys, SUBJECT, timeout=timeout, ttl=30, allow_insecure_endpoints=True
    )


@pytest_twisted.ensureDeferred
async def test_send_posts_encrypted_payload_with_webpush_headers(reactor, serve):
    service = PushService(201)
    base = serve(service)
    browser = Browser(f"{base}/push/sub-1")
    keys = VapidKeys.generate()
    payload = b'{"login":"alice"}'
    result = await _sender(reactor, keys).send(browser.subscription, payload, urgency="normal")
    assert result == DeliveryResult(ok=True, status=201)
    [(path, headers, body)] = service.requests
    assert path == b"/push/sub-1"

    def header(name):
        return headers.getRawHeaders(name)[0]

    assert header("Content-Encoding") == "aes128gcm"
    assert header("Content-Type") == "application/octet-stream"
    assert header("TTL") == "30"
    assert header("Urgency") == "normal"
    token, k = _parse_authorization(header("Authorization"))
    assert k == keys.public_key_b64url
    assert _verify_jwt(token, k)[1]["aud"] == base
    assert browser.decrypt(body) == payload


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("code", [404, 410])
async def test_expired_subscription_reports_gone(reactor, serve, code):
    browser = Browser(serve(PushService(code)) + "/push/old")
    result = await _sender(reactor, VapidKeys.generate()).send(browser.subscription, b"hi")
    assert (result.ok, result.status, result.gone) == (False, code, True)


@pytest_twisted.ensureDeferred
async def test_other_http_errors_fail_without_gone_and_keep_the_body_text(reactor, serve):
    browser = Browser(serve(PushService(429)) + "/push/x")
    result = await _sender(reactor, VapidKeys.generate()).send(browser.subscription, b"hi")
    assert (result.ok, result.status, result.gone) == (False, 429, False)
    assert result.error == "HTTP 429: gone away"


@pytest_twisted.ensureDeferred
async def test_silent_push_service_fails_within_the_timeout(reactor, serve):
    service = PushService(hang=True)
    browser = Browser(serve(service) + "/push/slow")
    started = time.monotonic()
    sender = _sender(reactor, VapidKeys.generate(), timeout=0.5)
    result = await sender.send(browser.subscription, b"hi")
    elapsed = time.monotonic() - started
    assert not result.ok and result.status is None and "no answer" in result.error
    assert 0.4 <= elapsed < 3.0
    assert len(service.requests) == 1


@pytest_twisted.ensureDeferred
async def test_refused_connection_gives_failed_result(reactor):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    browser = Browser(f"http://127.0.0.1:{port}/push/x")
    result = await _sender(reactor, VapidKeys.generate()).send(browser.subscription, b"hi")
    assert not result.ok and result.status is None and not result.gone
    assert "refused" in result.error.lower()
