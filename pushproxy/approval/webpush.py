"""Web Push delivery: VAPID (RFC 8292), aes128gcm (RFC 8291, RFC 8188), sending (RFC 8030)."""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import treq
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from pushproxy.approval.pushtarget import (
    CheckedEndpointFactory,
    EndpointRefused,
    EndpointRules,
    parse_endpoint,
)

#: RFC 8292 section 2: push services reject a JWT whose "exp" is more than 24 hours away.
MAX_VAPID_TTL = 24 * 3600
#: RFC 8291 section 4: 4096-byte body minus 86 header bytes, 16 tag bytes and 1 delimiter.
MAX_PLAINTEXT = 3993
#: RFC 8030 section 5.3.
URGENCIES = ("very-low", "low", "normal", "high")

_P256_POINT_LEN = 65
_ERROR_BODY_LIMIT = 300


def b64url_encode(data: bytes) -> str:
    """Base64url without padding, the form Web Push uses for keys, secrets and JWTs."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding (browsers omit it)."""
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _public_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    return key.public_key().public_bytes(*point)


def _require_p256(key: Any, what: str) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{what} must be a P-256 private key")


@dataclass(frozen=True)
class VapidKeys:
    """The application server's VAPID key pair (P-256, ES256), RFC 8292."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        _require_p256(self.private_key, "a VAPID key")

    @classmethod
    def generate(cls) -> VapidKeys:
        """A fresh random key pair."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM, for the key file."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, data: bytes) -> VapidKeys:
        """Load a key written by :meth:`to_pem` (or any unencrypted P-256 PEM key)."""
        return cls(serialization.load_pem_private_key(data, password=None))

    @property
    def public_key_bytes(self) -> bytes:
        """The public key as an uncompressed point (65 bytes)."""
        return _public_point(self.private_key)

    @property
    def public_key_b64url(self) -> str:
        """The public key as browsers take it for ``applicationServerKey``."""
        return b64url_encode(self.public_key_bytes)


def vapid_audience(endpoint_url: str) -> str:
    """The origin of a push endpoint, ``scheme://host[:port]``: the JWT "aud" claim."""
    parts = urlsplit(endpoint_url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("https", "http") or not host:
        raise ValueError("push endpoint is not an http(s) URL")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or port == {"https": 443, "http": 80}[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _check_subject(subject: str) -> None:
    # Some push services (Apple's) refuse a JWT without a usable contact, so fail at start-up.
    if not subject.startswith(("mailto:", "https://")):
        raise ValueError("VAPID subject must be a mailto: or https:// URI")


def _b64json(obj: dict[str, Any]) -> str:
    return b64url_encode(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def vapid_authorization(
    keys: VapidKeys, endpoint_url: str, subject: str, now: float, ttl: float = 12 * 3600
) -> str:
    """The ``Authorization`` value for a push to *endpoint_url*: ``vapid t=<JWT>, k=<key>``."""
    if not 0 < ttl <= MAX_VAPID_TTL:
        raise ValueError(f"VAPID ttl must be in (0, {MAX_VAPID_TTL}] seconds")
    _check_subject(subject)
    claims = {"aud": vapid_audience(endpoint_url), "exp": int(now + ttl), "sub": subject}
    signing_input = _b64json({"typ": "JWT", "alg": "ES256"}) + "." + _b64json(claims)
    der = keys.private_key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    # JWS (RFC 7518 section 3.4) wants fixed-width r || s, not the DER that cryptography emits.
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"vapid t={signing_input}.{b64url_encode(signature)}, k={keys.public_key_b64url}"


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def encrypt_payload(
    plaintext: bytes,
    ua_public_b64url: str,
    auth_secret_b64url: str,
    *,
    salt: bytes | None = None,
    server_private_key: ec.EllipticCurvePrivateKey | None = None,
    record_size: int = 4096,
) -> bytes:
    """Encrypt *plaintext* for a subscription: the whole aes128gcm body, in one record.

    *ua_public_b64url* and *auth_secret_b64url* are the subscription's ``keys.p256dh``
    and ``keys.auth``. *salt* and *server_private_key* are random unless given, which
    only tests should do: reusing them with the same subscription reuses a GCM nonce.
    """
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError(f"push payload is {len(plaintext)} bytes, at most {MAX_PLAINTEXT} fit")
    ua_public = b64url_decode(ua_public_b64url)
    if len(ua_public) != _P256_POINT_LEN or ua_public[0] != 4:
        raise ValueError("p256dh is not an uncompressed P-256 point")
    ua_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ua_public)
    auth_secret = b64url_decode(auth_secret_b64url)
    if len(auth_secret) != 16:
        raise ValueError("auth secret must be 16 bytes")
    salt = os.urandom(16) if salt is None else salt
    if len(salt) != 16:
        raise ValueError("salt must be 16 bytes")
    if server_private_key is None:
        server_private_key = ec.generate_private_key(ec.SECP256R1())
    _require_p256(server_private_key, "the server key")
    # One record must hold plaintext, delimiter and tag (RFC 8188 section 2).
    if not max(18, len(plaintext) + 17) <= record_size < 2**32:
        raise ValueError("record size too small for the payload in one record")

    as_public = _public_point(server_private_key)
    ecdh_secret = server_private_key.exchange(ec.ECDH(), ua_key)
    ikm = _hkdf(auth_secret, ecdh_secret, b"WebPush: info\x00" + ua_public + as_public, 32)
    cek = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    # The sequence number of the only record is 0, so the nonce is used as derived.
    ciphertext = AESGCM(cek).encrypt(nonce, plaintext + b"\x02", None)
    header = salt + struct.pack("!IB", record_size, len(as_public)) + as_public
    return header + ciphertext


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one push: accepted (``ok``), refused, or never answered.

    ``gone`` is set when the push service says the subscription no longer exists
    (404/410): the caller should forget it. ``status`` is the HTTP status if one came.
    """

    ok: bool
    status: int | None = None
    gone: bool = False
    error: str | None = None
    refused: bool = False  # the endpoint is not allowed (pushtarget): nothing was sent


def _describe(failure: Failure) -> str:
    # Agent wraps the real causes in ResponseFailed(reasons=[...]); their text is what helps.
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(f"{type(r.value).__name__}: {r.getErrorMessage()}" for r in reasons)
    return f"{type(failure.value).__name__}: {failure.getErrorMessage()}"


class WebPushSender:
    """Encrypts payloads and POSTs them to subscriptions' push services.

    *reactor* drives the timeout and, unless *http_client* is given, the HTTP agent.
    *http_client* is anything with treq's ``post``. *ttl* is how long, in seconds, the
    push service may hold a message for an offline device. *rules* say which
    endpoints may be reached (`pushtarget`: https:// on public addresses by default);
    the agent resolves every endpoint's name itself through *resolver* (default:
    the reactor's) and connects only to an address the rules allow.
    *allow_insecure_endpoints* (tests on loopback) allows http:// and private addresses.
    """

    def __init__(
        self,
        reactor: Any,
        vapid_keys: VapidKeys,
        subject: str,
        http_client: Any = None,
        timeout: float = 10.0,
        ttl: int = 60,
        *,
        allow_insecure_endpoints: bool = False,
        rules: EndpointRules | None = None,
        resolver: Any = None,
    ) -> None:
        _check_subject(subject)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if ttl < 0:
            raise ValueError("ttl must not be negative")
        if allow_insecure_endpoints:
            rules = EndpointRules(allow_private=True, allow_http=True)
        self._rules = rules or EndpointRules()
        if http_client is None:
            # Not persistent: Agent does not retry a POST on a cached connection that the
            # push service closed meanwhile, and a lost approval costs more than a handshake.
            pool = HTTPConnectionPool(reactor, persistent=False)
            # Our own endpoints: resolve, check the addresses, connect to a checked one.
            endpoints = CheckedEndpointFactory(reactor, self._rules, resolver=resolver,
                                               connect_timeout=timeout)
            http_client = HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))
        self._reactor = reactor
        self._keys = vapid_keys
        self._subject = subject
        self._http = http_client
        self._timeout = timeout
        self._ttl = int(ttl)

    def send(
        self, subscription: dict[str, Any], payload: bytes, urgency: str = "high"
    ) -> defer.Deferred[DeliveryResult]:
        """Deliver *payload* to *subscription* (a browser ``PushSubscription.toJSON()``).

        The Deferred always fires with a :class:`DeliveryResult`, never a failure.
        A bad *urgency* or an oversized *payload* is the caller's bug and raises
        ``ValueError`` at once; a malformed subscription gives ``ok=False``.
        """
        if urgency not in URGENCIES:
            raise ValueError(f"urgency must be one of {URGENCIES}")
        if len(payload) > MAX_PLAINTEXT:
            raise ValueError(f"push payload is {len(payload)} bytes, at most {MAX_PLAINTEXT} fit")
        try:
            endpoint, body, authorization = self._prepare(subscription, payload)
        except EndpointRefused as exc:
            return defer.succeed(DeliveryResult(ok=False, error=f"invalid subscription: {exc}",
                                                refused=True))
        except KeyError as exc:
            return defer.succeed(DeliveryResult(ok=False, error=f"invalid subscription: no {exc}"))
        except (TypeError, ValueError) as exc:
            return defer.succeed(DeliveryResult(ok=False, error=f"invalid subscription: {exc}"))
        headers = {
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": str(self._ttl),
            "Urgency": urgency,
            "Authorization": authorization,
        }
        d = defer.maybeDeferred(self._http.post, endpoint, data=body, headers=headers)
        d.addCallback(self._read_response)
        # Covers connecting, the response and its body; cancelling aborts the connection.
        # Agent reports that abort as ResponseNeverReceived, not CancelledError, so the
        # default TimeoutError translation would miss it: decide the outcome here.
        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=self._timed_out)
        d.addErrback(self._failed)
        return d

    def _prepare(self, subscription: dict[str, Any], payload: bytes) -> tuple[str, bytes, str]:
        endpoint = subscription["endpoint"]
        if not isinstance(endpoint, str):
            raise TypeError("endpoint is not a string")
        parse_endpoint(endpoint, self._rules)  # stored before the rules, or changed since
        keys = subscription["keys"]
        body = encrypt_payload(payload, keys["p256dh"], keys["auth"])
        authorization = vapid_authorization(
            self._keys, endpoint, self._subject, self._reactor.seconds()
        )
        return endpoint, body, authorization

    def _read_response(self, response: Any) -> defer.Deferred[DeliveryResult]:
        code = int(response.code)
        kept: list[bytes] = []

        def keep(data: bytes) -> None:
            # Only the start is worth logging; the rest is read and dropped.
            room = _ERROR_BODY_LIMIT - sum(map(len, kept))
            if room > 0:
                kept.append(data[:room])

        d = treq.collect(response, keep)
        d.addCallback(lambda _: self._classify(code, b"".join(kept)))
        return d

    @staticmethod
    def _classify(code: int, body: bytes) -> DeliveryResult:
        if 200 <= code < 300:
            return DeliveryResult(ok=True, status=code)
        if code in (404, 410):
            return DeliveryResult(False, code, gone=True, error=f"HTTP {code}: subscription gone")
        text = body.decode("utf-8", "replace").strip()
        return DeliveryResult(False, code, error=f"HTTP {code}: {text}" if text else f"HTTP {code}")

    def _timed_out(self, result: object, timeout: float) -> DeliveryResult:
        return DeliveryResult(ok=False, error=f"no answer within {timeout:g} s")

    @staticmethod
    def _failed(failure: Failure) -> DeliveryResult:
        refused = _refusal(failure)
        if refused is not None:
            return DeliveryResult(ok=False, error=str(refused), refused=True)
        return DeliveryResult(ok=False, error=_describe(failure))


def _refusal(failure: Failure) -> EndpointRefused | None:
    """The EndpointRefused behind a failed request, if that is what stopped it."""
    if failure.check(EndpointRefused):
        return failure.value
    for reason in getattr(failure.value, "reasons", None) or ():
        if reason.check(EndpointRefused):
            return reason.value
    return None
