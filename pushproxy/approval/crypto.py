"""Device keys and the signed texts of the approval protocol (docs/approval-protocol.md).

Devices sign with ECDSA P-256 / SHA-256 in WebCrypto's raw ``r || s`` form, so
the same code serves the web authenticator and the command-line one. Every
signed text starts with a purpose label ("pushproxy-answer-v1"), so a
signature made for one purpose can never be replayed as another.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from pushproxy.approval.webpush import b64url_decode, b64url_encode

DECISIONS = ("approve", "deny", "fraud")

# One algorithm object for every signature (building it costs as much as the DER below).
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class BadKey(ValueError):
    """A public key that is not an uncompressed P-256 point."""


@functools.lru_cache(maxsize=4096)
def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """A device public key from its b64u uncompressed point (parsed keys are cached)."""
    try:
        raw = b64url_decode(text)
        if len(raw) != 65 or raw[0] != 4:
            raise ValueError("not an uncompressed point")
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except (ValueError, TypeError) as exc:
        raise BadKey(f"invalid device public key: {exc}") from None


def public_key_text(key: ec.EllipticCurvePublicKey) -> str:
    """The b64u uncompressed point of ``key``."""
    return b64url_encode(key.public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint))


def sign(private_key: ec.EllipticCurvePrivateKey, text: str) -> str:
    """Sign ``text`` (UTF-8) the way a WebCrypto device does: b64u of r || s."""
    der = private_key.sign(text.encode("utf-8"), _ECDSA_SHA256)
    r, s = decode_dss_signature(der)
    return b64url_encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def _der_integer(octets: bytes) -> bytes:
    """A DER INTEGER of the unsigned big-endian ``octets`` (at most 32, as here)."""
    octets = octets.lstrip(b"\0") or b"\0"
    if octets[0] & 0x80:
        octets = b"\0" + octets  # positive: a high bit set needs a leading zero
    return b"\x02" + bytes((len(octets),)) + octets


def raw_to_der(raw: bytes) -> bytes:
    """A 64-octet WebCrypto ``r || s`` as the DER SEQUENCE OpenSSL verifies.

    The same octets as ``encode_dss_signature(r, s)``, without the detour
    through two Python integers (every device request and answer passes here).
    """
    body = _der_integer(raw[:32]) + _der_integer(raw[32:])
    return b"\x30" + bytes((len(body),)) + body


def verify(public_key: ec.EllipticCurvePublicKey, text: str, signature: str) -> bool:
    """Whether ``signature`` (b64u r || s) signs ``text`` under ``public_key``."""
    try:
        raw = b64url_decode(signature)
    except (ValueError, TypeError):
        return False
    if len(raw) != 64:
        return False
    der = raw_to_der(raw)
    try:
        public_key.verify(der, text.encode("utf-8"), _ECDSA_SHA256)
    except (InvalidSignature, UnicodeEncodeError):  # a lone surrogate: no device signed that
        return False
    return True


def enroll_text(token: str, public_key: str, name: str) -> str:
    """What a device signs to enroll: proves it holds the key it registers."""
    return f"pushproxy-enroll-v1\n{token}\n{public_key}\n{name}"


def request_text(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    """What a device signs for every authenticated request."""
    digest = b64url_encode(hashlib.sha256(body).digest())
    return f"pushproxy-request-v1\n{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}"


def device_headers(private_key: ec.EllipticCurvePrivateKey, device_id: str, method: str,
                   path: str, body: bytes, *, timestamp: str | None = None,
                   nonce: str | None = None) -> dict[str, str]:
    """The four headers that authenticate one device request (``path`` as sent, with query).

    ``timestamp`` defaults to now and ``nonce`` to 16 random octets; tests
    pass their own to replay or to use a Clock.
    """
    timestamp = timestamp if timestamp is not None else str(int(time.time()))
    nonce = nonce if nonce is not None else b64url_encode(os.urandom(16))
    text = request_text(method, path, timestamp, nonce, body)
    return {"X-Device-Id": device_id, "X-Timestamp": timestamp, "X-Nonce": nonce,
            "X-Signature": sign(private_key, text)}


def answer_text(txid: str, nonce: str, decision: str, username: str, device_id: str,
                number: str | None = None) -> str:
    """What a device signs to answer one transaction (number matching adds the typed number)."""
    text = f"pushproxy-answer-v1\n{txid}\n{nonce}\n{decision}\n{username}\n{device_id}"
    return text if number is None else f"{text}\n{number}"


def token_hash(token: str) -> str:
    """How an enrollment token is stored: only its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
