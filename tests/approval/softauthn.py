"""A software WebAuthn platform authenticator for tests: makes the exact bytes a
browser sends (registration with "none" attestation, assertions), with knobs to
get each field wrong on purpose (flags, origin, RP ID, counter, challenge)."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from pushproxy.approval.webpush import b64url_decode, b64url_encode

UP, UV, AT = 0x01, 0x04, 0x40


class SoftAuthenticator:
    """One passkey (ES256) for ``rp_id``, used from ``origin``."""

    def __init__(self, rp_id: str, origin: str):
        self.rp_id = rp_id
        self.origin = origin
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(16)
        self.count = 0

    @property
    def id(self) -> str:
        """The credential id, b64u (what the server stores)."""
        return b64url_encode(self.credential_id)

    def _cose(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                            -3: numbers.y.to_bytes(32, "big")})

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge,
                           "origin": origin or self.origin, "crossOrigin": False}).encode()

    def create(self, options: dict, *, flags: int = UP | UV, origin: str | None = None,
               rp_id: str | None = None) -> dict:
        """navigator.credentials.create's answer, as PublicKeyCredential.toJSON() gives it."""
        auth = (hashlib.sha256((rp_id or self.rp_id).encode()).digest()
                + bytes([flags | AT]) + struct.pack(">I", self.count) + bytes(16)
                + struct.pack(">H", len(self.credential_id)) + self.credential_id
                + self._cose())
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth})
        client = self._client_data("webauthn.create", options["challenge"], origin)
        return {"id": self.id, "rawId": self.id, "type": "public-key",
                "response": {"clientDataJSON": b64url_encode(client),
                             "attestationObject": b64url_encode(attestation),
                             "transports": ["internal"]},
                "clientExtensionResults": {}, "authenticatorAttachment": "platform"}

    def get(self, options: dict, *, flags: int = UP | UV, origin: str | None = None,
            rp_id: str | None = None, count: int | None = None) -> dict:
        """navigator.credentials.get's answer (PublicKeyCredential.toJSON())."""
        self.count = self.count + 1 if count is None else count
        auth = (hashlib.sha256((rp_id or self.rp_id).encode()).digest() + bytes([flags])
                + struct.pack(">I", self.count))
        client = self._client_data("webauthn.get", options["challenge"], origin)
        signature = self.key.sign(auth + hashlib.sha256(client).digest(),
                                  ec.ECDSA(hashes.SHA256()))
        return {"id": self.id, "rawId": self.id, "type": "public-key",
                "response": {"clientDataJSON": b64url_encode(client),
                             "authenticatorData": b64url_encode(auth),
                             "signature": b64url_encode(signature), "userHandle": None},
                "clientExtensionResults": {}, "authenticatorAttachment": "platform"}


def challenge_of(options: dict) -> bytes:
    """The raw challenge of a server's options."""
    return b64url_decode(options["challenge"])
