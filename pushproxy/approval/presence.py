"""Presence: passkeys (WebAuthn) that make an Approve prove a face or fingerprint.

A device registers a platform passkey (user verification required) bound to
it; when a login's policy requires presence (``require_user_verification``,
docs/presence.md), its Approve must carry an assertion of one of that device's
passkeys whose challenge the server derived from the transaction, the decision
and the device, with a nonce it handed out once:

    challenge = SHA-256("pushproxy-presence-v1" 0 txid 0 "approve" 0 device 0 nonce)

The checks themselves (RP ID hash, origin, challenge, UP and UV flags, the
signature, the sign counter) are py_webauthn's ``verify_*_response``; this
module decides which challenge, which credential and which counter they are
checked against, and turns every failure into a typed `Refusal`. Nothing here
trusts the browser's word: the flags come from the signed authenticator data.

The RP ID is the host of ``approval.public_url`` and the origin its scheme,
host and port: a passkey made on another name cannot answer here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from webauthn import verify_authentication_response, verify_registration_response

from pushproxy import logs
from pushproxy.approval.passkeystore import Passkey
from pushproxy.approval.webpush import b64url_decode, b64url_encode

log = logging.getLogger("pushproxy.approval.presence")

REGISTER_TTL = 300.0  # seconds a registration challenge stays usable
TIMEOUT_MS = 120_000  # what the browser is told to allow for the ceremony
MAX_PASSKEYS = 4  # per device: a platform authenticator makes one; re-registering adds
# Sizes beyond anything a real authenticator sends: bounded before any parsing.
MAX_FIELD = {"id": 1400, "rawId": 1400, "clientDataJSON": 4096, "authenticatorData": 2048,
             "signature": 1024, "userHandle": 256, "attestationObject": 32768}
COSE_ALGORITHMS = (-7, -257)  # ES256, RS256: what platform authenticators make
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class Refusal(Exception):
    """A presence check that failed; ``code`` is short and goes to the audit trail."""

    def __init__(self, code: str, why: str):
        super().__init__(why)
        self.code = code
        self.why = why


class Malformed(ValueError):
    """A WebAuthn payload that is not even shaped like one (an HTTP 400, decides nothing)."""


@dataclass(frozen=True)
class RelyingParty:
    """Who the passkeys are for: the approval service's public name."""

    rp_id: str
    origin: str
    name: str = "pushproxy"

    @classmethod
    def from_public_url(cls, public_url: str) -> RelyingParty:
        """The RP of ``approval.public_url`` (its host; origin = scheme://host[:port])."""
        parts = urlsplit(public_url)
        host = (parts.hostname or "").lower()
        shown = f"[{host}]" if ":" in host else host
        # as a browser serializes the origin: no user info, no default port
        default = {"https": 443, "http": 80}.get(parts.scheme)
        port = f":{parts.port}" if parts.port and parts.port != default else ""
        return cls(rp_id=host, origin=f"{parts.scheme}://{shown}{port}")

    @property
    def usable(self) -> bool:
        """WebAuthn refuses an IP address as RP ID: passkeys need a DNS name."""
        host = self.rp_id
        return bool(host) and not host.replace(".", "").isdigit() and ":" not in host


def approval_challenge(txid: str, device_id: str, nonce: str) -> bytes:
    """The challenge an Approve's assertion must sign (see the module docstring)."""
    return hashlib.sha256("\0".join(("pushproxy-presence-v1", txid, "approve", device_id,
                                     nonce)).encode("utf-8")).digest()


def register_challenge(device_id: str, nonce: str) -> bytes:
    """The challenge a device's passkey registration must carry."""
    return hashlib.sha256("\0".join(("pushproxy-passkey-register-v1", device_id,
                                     nonce)).encode("utf-8")).digest()


def approval_subject(txid: str) -> str:
    """The store's name for an Approve's challenge."""
    return f"approve:{txid}"


#: The store's name for the challenge of "add a device" (docs/presence.md): a device
#: with a passkey makes a link for a new device only with its face or fingerprint,
#: or a thief holding the unlocked phone could enroll a phone of their own.
ADD_DEVICE = "add-device"


def add_device_challenge(device_id: str, nonce: str) -> bytes:
    """The challenge an "add a device" assertion must sign."""
    return hashlib.sha256("\0".join(("pushproxy-presence-v1", ADD_DEVICE, device_id,
                                     nonce)).encode("utf-8")).digest()


def check_shape(credential, *, registration: bool) -> dict:
    """The browser's PublicKeyCredential JSON, bounded; `Malformed` if it is not one."""
    if not isinstance(credential, dict):
        raise Malformed("webauthn must be a PublicKeyCredential JSON object")
    response = credential.get("response")
    if not isinstance(response, dict):
        raise Malformed("webauthn.response must be an object")
    wanted = ("clientDataJSON", "attestationObject") if registration else \
        ("clientDataJSON", "authenticatorData", "signature")
    for key in ("id", "rawId"):
        if not isinstance(credential.get(key), str) or not credential[key]:
            raise Malformed(f"webauthn.{key} must be a non-empty string")
    if credential.get("type") != "public-key":
        raise Malformed("webauthn.type must be public-key")
    for key in wanted:
        if not isinstance(response.get(key), str):
            raise Malformed(f"webauthn.response.{key} must be a string")
    for key, value in list(credential.items()) + list(response.items()):
        if isinstance(value, str) and len(value) > MAX_FIELD.get(key, 4096):
            raise Malformed(f"webauthn field {key} is too large")
    if not _B64URL.fullmatch(credential["rawId"]) or credential["id"] != credential["rawId"]:
        raise Malformed("webauthn.rawId must be base64url and equal to webauthn.id")
    return credential


class Presence:
    """The passkey side of the approval service; ``store`` is its `AsyncStore`."""

    def __init__(self, store, rp: RelyingParty, wallclock, counters):
        self.store = store
        self.rp = rp
        self.wallclock = wallclock
        self.counters = counters

    # -- registration

    async def creation_options(self, device) -> dict:
        """PublicKeyCredentialCreationOptions (JSON form) for a passkey of ``device``."""
        if not self.rp.usable:
            raise Refusal("no_rp", f"approval.public_url host {self.rp.rp_id!r} is not a DNS "
                                   "name: WebAuthn needs one")
        now = self.wallclock()
        nonce = secrets.token_urlsafe(24)
        await self.store.put_webauthn_challenge(device.id, "register", nonce,
                                                now + REGISTER_TTL, now)
        existing = await self.store.passkeys(device.id)
        return {
            "rp": {"id": self.rp.rp_id, "name": self.rp.name},
            "user": {"id": b64url_encode(device.id.encode("utf-8")), "name": device.username,
                     "displayName": f"{device.username} ({device.name})"},
            "challenge": b64url_encode(register_challenge(device.id, nonce)),
            "pubKeyCredParams": [{"type": "public-key", "alg": alg} for alg in COSE_ALGORITHMS],
            "authenticatorSelection": {"authenticatorAttachment": "platform",
                                       "userVerification": "required",
                                       "residentKey": "discouraged",
                                       "requireResidentKey": False},
            "attestation": "none", "timeout": TIMEOUT_MS,
            "excludeCredentials": [{"type": "public-key", "id": p.credential_id}
                                   for p in existing],
        }

    async def register(self, device, credential) -> Passkey:
        """Verify a new passkey for ``device`` (`Refusal`/`Malformed` if not) and store it."""
        check_shape(credential, registration=True)
        now = self.wallclock()
        nonce = await self.store.take_webauthn_challenge(device.id, "register", now)
        if nonce is None:
            raise Refusal("no_challenge", "no open passkey registration for this device")
        if len(await self.store.passkeys(device.id)) >= MAX_PASSKEYS:
            raise Refusal("too_many", f"this device has {MAX_PASSKEYS} passkeys already")
        try:
            verified = verify_registration_response(
                credential=credential, expected_challenge=register_challenge(device.id, nonce),
                expected_rp_id=self.rp.rp_id, expected_origin=self.rp.origin,
                require_user_verification=True,
                supported_pub_key_algs=list(_algorithms()))
        except Exception as exc:  # every parse or check failure refuses (fail closed)
            raise self._refused(device, "bad_registration", exc) from None
        passkey = Passkey(credential_id=b64url_encode(verified.credential_id),
                          device_id=device.id,
                          public_key=b64url_encode(verified.credential_public_key),
                          sign_count=verified.sign_count, user_verified=verified.user_verified,
                          backup_eligible=verified.credential_device_type == "multi_device",
                          backed_up=verified.credential_backed_up, created=now)
        if not await self.store.add_passkey(passkey):
            raise Refusal("duplicate", "this passkey is already registered (or the device "
                                       "was revoked)")
        self.counters.inc("passkeys_registered")
        logs.event(log, logging.INFO, "approval.passkey_registered", device=device.id,
                   user=device.username, backed_up=passkey.backed_up)
        return passkey

    # -- approvals

    async def request_options(self, device, tx) -> dict:
        """PublicKeyCredentialRequestOptions for approving ``tx`` on ``device``
        (``tx`` None: for "add a device")."""
        passkeys = await self.store.passkeys(device.id)
        if not passkeys:
            raise Refusal("no_passkey", "this device has no passkey")
        now = self.wallclock()
        nonce = secrets.token_urlsafe(24)
        # single use, and no longer than the request it is for
        if tx is None:
            await self.store.put_webauthn_challenge(device.id, ADD_DEVICE, nonce,
                                                    now + REGISTER_TTL, now)
            challenge = add_device_challenge(device.id, nonce)
        else:
            await self.store.put_webauthn_challenge(device.id, approval_subject(tx.id), nonce,
                                                    tx.expires, now)
            challenge = approval_challenge(tx.id, device.id, nonce)
        return {"challenge": b64url_encode(challenge),
                "rpId": self.rp.rp_id, "timeout": TIMEOUT_MS, "userVerification": "required",
                "allowCredentials": [{"type": "public-key", "id": p.credential_id,
                                      "transports": ["internal"]} for p in passkeys]}

    async def check_approval(self, device, tx, assertion, fallback: str) -> str:
        """Whether ``device`` may approve ``tx``: "verified" or "not_verified" (a device
        without a passkey, ``fallback`` "allow"); else `Refusal`.

        ``assertion`` is the answer's ``webauthn`` object (None: none sent), already
        through `check_shape`. The challenge is taken (single use) before the
        checks, so a failed attempt cannot be retried with the same challenge.
        """
        passkeys = await self.store.passkeys(device.id)
        if not passkeys:
            if fallback == "allow":
                return "not_verified"
            raise Refusal("no_passkey", "presence is required and this device has no passkey")
        return await self._check(device, passkeys, assertion, approval_subject(tx.id),
                                 lambda nonce: approval_challenge(tx.id, device.id, nonce))

    async def check_add_device(self, device, assertion) -> str | None:
        """Whether ``device`` may make a link for a new device: a device with a passkey
        must prove presence ("verified"); one without needs nothing (None)."""
        passkeys = await self.store.passkeys(device.id)
        if not passkeys:
            return None
        return await self._check(device, passkeys, assertion, ADD_DEVICE,
                                 lambda nonce: add_device_challenge(device.id, nonce))

    async def _check(self, device, passkeys, assertion, subject: str, challenge_of) -> str:
        if assertion is None:
            raise Refusal("no_assertion", "presence is required: the request carried no "
                                          "passkey assertion")
        now = self.wallclock()
        nonce = await self.store.take_webauthn_challenge(device.id, subject, now)
        if nonce is None:
            raise Refusal("no_challenge", "no open presence challenge for this on this device")
        passkey = next((p for p in passkeys if p.credential_id == assertion["rawId"]
                        or p.credential_id == assertion["id"]), None)
        if passkey is None:
            raise Refusal("other_credential", "the assertion is not made with a passkey of "
                                              "this device")
        try:
            verified = verify_authentication_response(
                credential=assertion, expected_challenge=challenge_of(nonce),
                expected_rp_id=self.rp.rp_id, expected_origin=self.rp.origin,
                credential_public_key=b64url_decode(passkey.public_key),
                credential_current_sign_count=passkey.sign_count,
                require_user_verification=True)
        except Exception as exc:  # every parse or check failure refuses (fail closed)
            raise self._refused(device, _code_of(exc), exc) from None
        if not await self.store.passkey_used(passkey.credential_id, device.id,
                                             passkey.sign_count, verified.new_sign_count, now):
            raise Refusal("counter", "the passkey's counter moved meanwhile (a parallel use)")
        return "verified"

    def _refused(self, device, code: str, exc: Exception) -> Refusal:
        why = f"{type(exc).__name__}: {str(exc)[:200]}"
        logs.event(log, logging.WARNING, "approval.passkey_check_failed", device=device.id,
                   code=code, why=why)
        return Refusal(code, why)


def _algorithms():
    from webauthn.helpers.cose import COSEAlgorithmIdentifier

    return (COSEAlgorithmIdentifier(alg) for alg in COSE_ALGORITHMS)


def _code_of(exc: Exception) -> str:
    """A short audit code for a py_webauthn refusal (its messages are its own)."""
    text = str(exc).lower()
    for needle, code in (("sign count", "counter"), ("user verification", "uv_off"),
                         ("verified", "uv_off"), ("origin", "wrong_origin"),
                         ("rp id", "wrong_rp_id"), ("challenge", "wrong_challenge"),
                         ("signature", "bad_signature")):
        if needle in text:
            return code
    return "bad_assertion"


def parse_payload(value) -> dict | None:
    """The answer body's ``webauthn`` (absent/None: None), shape-checked; `Malformed`."""
    if value is None:
        return None
    if isinstance(value, str):  # a client may send the JSON text itself
        if len(value) > 16384:
            raise Malformed("webauthn is too large")
        try:
            value = json.loads(value)
        except ValueError:
            raise Malformed("webauthn is not JSON") from None
    return check_shape(value, registration=False)


def config_warnings(config) -> list[str]:
    """check-config / serve: presence is required somewhere but cannot work as set up."""
    policy = config.policy
    clients = [c.name for c in config.radius.all_clients if c.requires.user_verification]
    front = getattr(config, "ldap_front", None)
    if front is not None and front.requires.user_verification:
        clients.append(front.name)
    needed = policy.require_user_verification or clients or any(
        rule.user_verification for rule in policy.rules)
    rp = RelyingParty.from_public_url(config.approval.public_url)
    if not needed or rp.usable:
        return []
    outcome = ("refused" if policy.user_verification_fallback == "refuse"
               else "allowed without it (presence not_verified)")
    return [f"presence is required (policy or clients {', '.join(clients) or '-'}) but "
            f"approval.public_url's host {rp.rp_id!r} is not a DNS name: WebAuthn passkeys "
            f"need one, so no device can make one and every such Approve is {outcome}"]
