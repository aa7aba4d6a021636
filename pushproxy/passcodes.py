"""Passcodes for when the phone cannot get a push: the password suffix, TOTP, bypass codes.

Pure: no I/O, no clock (``now`` is passed in), no store. The engine decides
what a parsed credential means; the store makes "each code works once" hold
across processes (``use_totp_step``, ``consume_bypass_code``).

- ``password,123456`` -- a 6-digit TOTP code (RFC 6238: HMAC-SHA1, 30 s, 6 digits)
  from the device's authenticator, which works offline;
- ``password,123456789012`` -- a 12-digit one-time bypass code an admin issued
  (its first 3 digits name the stored code, so a guess costs one hash; codes
  issued before that have 10 digits and still work until they expire);
- ``password,push`` -- force a push (also what a bare password means).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

TOTP_DIGITS = 6
TOTP_PERIOD = 30  # seconds per step
BYPASS_DIGITS = 12
BYPASS_SELECTOR_DIGITS = 3  # the first digits of a bypass code: which stored code it is
LEGACY_BYPASS_DIGITS = 10  # codes issued before selectors: checked against every old code
#: scrypt cost: about 16 MiB and tens of milliseconds per hash. The bypass code
#: space is only 10**10, so a fast hash would be searched in minutes from a
#: stolen database; this makes each guess expensive.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
SCRYPT_SALT_BYTES = 16
SCRYPT_KEY_BYTES = 32
_SCRYPT_MAXMEM = 64 * 1024 * 1024  # above the 16 MiB that n and r need

# fullmatch, and [0-9] rather than \d: str.isdigit and \d accept non-ASCII digits
_TOTP_CODE = re.compile(r"[0-9]{%d}" % TOTP_DIGITS)
_BYPASS_CODE = re.compile(r"[0-9]{%d}|[0-9]{%d}" % (BYPASS_DIGITS, LEGACY_BYPASS_DIGITS))


class Factor(enum.Enum):
    """Which second factor a login asks for."""

    PUSH_DEFAULT = "push_default"  # no suffix: the configured default (a push)
    PUSH_FORCED = "push_forced"  # ``password,push``
    PASSCODE = "passcode"  # ``password,123456`` (TOTP) or ``password,123456789012`` (bypass)


@dataclass(frozen=True)
class Credential:
    """A RADIUS password split into the directory password and the second factor.

    ``code`` is the 6-digit TOTP or 12- (or old 10-) digit bypass code when ``factor`` is
    PASSCODE, else None. Neither the password nor the code shows in ``repr``,
    so a logged credential leaks nothing.
    """

    password: str = field(repr=False)
    factor: Factor
    code: str | None = field(default=None, repr=False)


def is_totp_code(code: str) -> bool:
    """Whether ``code`` has the form of a TOTP code (6 ASCII digits)."""
    return _TOTP_CODE.fullmatch(code) is not None


def is_bypass_code(code: str) -> bool:
    """Whether ``code`` has the form of a bypass code (12 ASCII digits, or 10 for old codes)."""
    return _BYPASS_CODE.fullmatch(code) is not None


def bypass_selector(code: str) -> str | None:
    """The selector of a bypass code (which stored code it names); None for an old 10-digit one."""
    if not is_bypass_code(code) or len(code) != BYPASS_DIGITS:
        return None
    return code[:BYPASS_SELECTOR_DIGITS]


def parse_password(password: str, delimiter: str = ",") -> Credential:
    """Split ``password`` at its LAST ``delimiter`` into password and factor.

    Only a suffix of ``push`` (any case), 6, 10 or 12 digits counts; any
    other text after the delimiter is part of the password (passwords may
    contain the delimiter). An empty delimiter turns suffixes off. A code with
    nothing before it gives an empty password, which the engine refuses.
    """
    if not delimiter or delimiter not in password:
        return Credential(password, Factor.PUSH_DEFAULT)
    head, _, suffix = password.rpartition(delimiter)
    if suffix.lower() == "push":
        return Credential(head, Factor.PUSH_FORCED)
    if is_totp_code(suffix) or is_bypass_code(suffix):
        return Credential(head, Factor.PASSCODE, suffix)
    return Credential(password, Factor.PUSH_DEFAULT)


# -- TOTP (RFC 6238 over RFC 4226)


def new_totp_secret() -> str:
    """A fresh TOTP secret: 160 random bits (RFC 4226's recommended size), base32."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii")


def _secret_bytes(secret_b32: str) -> bytes:
    # authenticator apps show secrets in groups and in lower case, without padding
    text = secret_b32.replace(" ", "").upper()
    text += "=" * (-len(text) % 8)
    try:
        return base64.b32decode(text)
    except (binascii.Error, ValueError):
        raise ValueError("a TOTP secret must be base32") from None


def totp_step(now: float) -> int:
    """The TOTP time step of Unix time ``now`` (30-second steps since the epoch)."""
    return int(now // TOTP_PERIOD)


def totp(secret_b32: str, step: int) -> str:
    """The 6-digit code of ``step`` (RFC 4226 HOTP with the step as counter)."""
    digest = hmac.new(_secret_bytes(secret_b32), struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F  # RFC 4226 5.3, dynamic truncation
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** TOTP_DIGITS).zfill(TOTP_DIGITS)


def totp_seconds_left(now: float) -> int:
    """Whole seconds (1..30) until the code of ``now`` changes."""
    return TOTP_PERIOD - int(now % TOTP_PERIOD)


def totp_matches(secret_b32: str, code: str, now: float, window: int = 1) -> int | None:
    """The step whose code is ``code``, within ``window`` steps of ``now``; else None.

    The caller must then claim the step (``Store.use_totp_step``) so that the
    code, and every older one, is refused afterwards. Each candidate is
    compared in constant time; the oldest matching step wins.
    """
    if not isinstance(code, str) or not is_totp_code(code):
        return None
    current = totp_step(now)
    for step in range(max(current - window, 0), current + window + 1):
        if hmac.compare_digest(totp(secret_b32, step), code):
            return step
    return None


def otpauth_uri(secret: str, username: str, issuer: str = "pushproxy") -> str:
    """The ``otpauth://totp/...`` URI authenticator apps import (as text or QR code)."""
    label = f"{quote(issuer, safe='')}:{quote(username, safe='')}"
    query = urlencode({"secret": secret, "issuer": issuer, "algorithm": "SHA1",
                       "digits": TOTP_DIGITS, "period": TOTP_PERIOD}, quote_via=quote)
    return f"otpauth://totp/{label}?{query}"


# -- bypass codes


def new_bypass_code(taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A fresh one-time bypass code: a random selector not in ``taken``, then 9 random digits.

    ValueError when every selector is taken.
    """
    free = sorted(set(f"{i:0{BYPASS_SELECTOR_DIGITS}d}"
                      for i in range(10 ** BYPASS_SELECTOR_DIGITS)) - set(taken))
    if not free:
        raise ValueError("every bypass code selector of this user is in use")
    digits = BYPASS_DIGITS - BYPASS_SELECTOR_DIGITS
    return secrets.choice(free) + str(secrets.randbelow(10 ** digits)).zfill(digits)


def _scrypt(code: str, salt: bytes) -> bytes:
    return hashlib.scrypt(code.encode("ascii"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=_SCRYPT_MAXMEM, dklen=SCRYPT_KEY_BYTES)


def hash_bypass_code(code: str) -> str:
    """How a bypass code is stored: ``scrypt$<salt b64>$<hash b64>``, with a random salt."""
    if not is_bypass_code(code):
        raise ValueError("a bypass code is 12 digits (10 for old codes)")
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    encode = base64.b64encode
    return f"scrypt${encode(salt).decode('ascii')}${encode(_scrypt(code, salt)).decode('ascii')}"


def bypass_code_matches(code: str, stored: str) -> bool:
    """Whether ``code`` is the bypass code hashed in ``stored`` (False if either is malformed).

    Slow on purpose (scrypt): run it off the reactor thread.
    """
    if not isinstance(code, str) or not is_bypass_code(code):
        return False  # also spares the scrypt cost on input that cannot match
    scheme, _, rest = stored.partition("$")
    salt_text, _, hash_text = rest.partition("$")
    if scheme != "scrypt":
        return False
    try:
        salt = base64.b64decode(salt_text, validate=True)
        expected = base64.b64decode(hash_text, validate=True)
    except (binascii.Error, ValueError):
        return False
    if not salt or len(expected) != SCRYPT_KEY_BYTES:
        return False
    return hmac.compare_digest(_scrypt(code, salt), expected)
