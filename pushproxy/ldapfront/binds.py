"""Which binds get a push, and the short cache that spares repeated binds a second push.

Pure: `classify` maps a BindRequest and the config to a `BindKind`; the
`BindCache` takes ``now`` from the caller. The protocol in `server` does the I/O.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from pushproxy import sensitivity
from pushproxy.adnames import ActiveDirectory, ForeignDomain, NameForm, parse_name, search_for
from pushproxy.ldapnames import normalize_dn
from pushproxy.ldapfront import ber
from pushproxy.ldapfilter import FilterTemplate
from pushproxy.ldapfront.config import LdapFrontConfig, SaslMode
from pushproxy.policy import Action, LoginContext, Policy, Verification, evaluate
from pushproxy.sensitivity import ClientRequirements


class BindKind(enum.Enum):
    """What the front end does with one BindRequest."""

    USER = "user"  # bind upstream, then the engine (push)
    SERVICE = "service"  # a configured service DN: forwarded, no push
    EXEMPT_OU = "exempt_ou"  # at or below an exempt OU: forwarded, no push
    ANONYMOUS = "anonymous"  # allowed anonymous bind: forwarded
    UNAUTHENTICATED = "unauthenticated"  # allowed name + empty password: forwarded
    SASL = "sasl"  # forwarded (sasl: pass)
    REFUSE_ANONYMOUS = "refused_anonymous"
    REFUSE_UNAUTHENTICATED = "refused_unauthenticated"
    REFUSE_SASL = "refused_sasl"
    REFUSE_VERSION = "refused_version"
    REFUSE_CLEARTEXT = "refused_cleartext"  # a password without TLS, and TLS is required
    REFUSE_BAD_NAME = "refused_bad_name"  # not a DN, or a password that is not UTF-8


PASS_THROUGH = frozenset({BindKind.SERVICE, BindKind.EXEMPT_OU, BindKind.ANONYMOUS,
                          BindKind.UNAUTHENTICATED, BindKind.SASL})

# The result code each refusal gets (RFC 4511 4.2.2, RFC 4513 5.1.2).
REFUSAL_CODES = {
    BindKind.REFUSE_ANONYMOUS: ber.INAPPROPRIATE_AUTHENTICATION,
    BindKind.REFUSE_UNAUTHENTICATED: ber.UNWILLING_TO_PERFORM,
    BindKind.REFUSE_SASL: ber.AUTH_METHOD_NOT_SUPPORTED,
    BindKind.REFUSE_VERSION: ber.PROTOCOL_ERROR,
    BindKind.REFUSE_CLEARTEXT: ber.CONFIDENTIALITY_REQUIRED,
    BindKind.REFUSE_BAD_NAME: ber.INVALID_CREDENTIALS,
}
REFUSAL_MESSAGES = {
    BindKind.REFUSE_ANONYMOUS: "anonymous bind not allowed",
    BindKind.REFUSE_UNAUTHENTICATED: "unauthenticated bind (empty password) not allowed",
    BindKind.REFUSE_SASL: "SASL binds are not supported here",
    BindKind.REFUSE_VERSION: "LDAPv3 only",
    BindKind.REFUSE_CLEARTEXT: "use StartTLS or LDAPS before a simple bind",
    BindKind.REFUSE_BAD_NAME: "invalid credentials",
}


# Names up to this long are parsed once and remembered (`_dn_parts`); a bind
# asks about its name four or five times, and ldap3's parser is pure Python.
_MEMO_NAME = 256


def _dn_parts(name: str) -> tuple[tuple[str, str, str], ...] | None:
    """ldap3's parse of ``name`` (attribute, value, separator per RDN), or None if
    it is not a DN."""
    if len(name) <= _MEMO_NAME:
        return _dn_parts_memo(name)
    return _parse(name)


def _parse(name: str) -> tuple[tuple[str, str, str], ...] | None:
    try:
        return tuple(tuple(part) for part in parse_dn(name, escape=False, strip=True))
    except (LDAPInvalidDnError, ValueError, IndexError):
        return None


# Bounded: 128 names of at most _MEMO_NAME characters, about 5 KB each parsed
# into the most RDNs that fit: under a megabyte whatever clients send.
_dn_parts_memo = functools.lru_cache(maxsize=128)(_parse)


def is_dn(name: str) -> bool:
    """Whether ``name`` parses as a DN."""
    return bool(_dn_parts(name))


def in_subtree(dn: str, base: str) -> bool:
    """Whether normalized ``dn`` is ``base`` or below it."""
    return dn == base or dn.endswith("," + base)


def classify(req: ber.BindRequest, config: LdapFrontConfig, *, tls: bool,
             ad: ActiveDirectory | None = None) -> BindKind:
    """What to do with ``req`` (``tls``: the client connection is encrypted).

    ``ad``: ``ldap.active_directory``; with it a bind name that is not a DN is an
    AD login name (UPN, DOMAIN\\user, sAMAccountName), a user bind like a DN:
    `ad_bind` says which account it names once the directory bound it.
    """
    if req.version != 3:
        return BindKind.REFUSE_VERSION
    if not req.simple:
        return BindKind.SASL if config.sasl is SaslMode.PASS else BindKind.REFUSE_SASL
    if not req.password:
        # RFC 4513 5.1.2: an empty password makes a bind anonymous whatever the name.
        if not req.name:
            return BindKind.ANONYMOUS if config.allow_anonymous else BindKind.REFUSE_ANONYMOUS
        return BindKind.UNAUTHENTICATED if config.allow_unauthenticated \
            else BindKind.REFUSE_UNAUTHENTICATED
    if config.require_tls and not tls:
        return BindKind.REFUSE_CLEARTEXT
    if not req.name:
        return BindKind.REFUSE_BAD_NAME
    try:
        req.password.decode("utf-8")
    except UnicodeDecodeError:
        return BindKind.REFUSE_BAD_NAME
    if not is_dn(req.name):
        # Service accounts and exempt OUs are matched on the entry's DN once
        # the directory bound the name (`ad_bind`), never on the spelling typed.
        return BindKind.USER if ad is not None else BindKind.REFUSE_BAD_NAME
    dn = normalize_dn(req.name)
    if dn in config.service_dns:
        return BindKind.SERVICE
    if any(in_subtree(dn, ou) for ou in config.exempt_ous):
        return BindKind.EXEMPT_OU
    return BindKind.USER


@dataclass(frozen=True)
class AdBind:
    """How to check an AD login name upstream: the name to bind with, then the search
    (subtree under ``base``, BER ``filter_``) that finds the entry it bound."""

    bind_name: str
    base: str
    filter_: bytes


def ad_bind(ad: ActiveDirectory, name: str, user_filter: str) -> AdBind | ForeignDomain:
    """The upstream bind and entry search for the AD login name ``name``, or a refusal.

    A UPN and ``DOMAIN\\user`` go upstream as typed (AD binds both); a plain
    sAMAccountName gets the first domain's NetBIOS name, as a Windows logon
    would give it. A name for a domain not served is refused here, before
    any traffic: the DC would otherwise check a password for a domain the
    proxy knows nothing about (a trusted forest, say).
    """
    parsed = parse_name(ad, name)
    if isinstance(parsed, ForeignDomain):
        return parsed
    base, template, value = search_for(ad, parsed, user_filter)
    bind_name = f"{parsed.domain.netbios}\\{name}" if parsed.form is NameForm.PLAIN else name
    return AdBind(bind_name, base, FilterTemplate(template).render(value))


def rdn_value(dn: str, attribute: str) -> str | None:
    """The value of the DN's first RDN when its type is ``attribute`` (uid=alice,... -> alice)."""
    parts = _dn_parts(dn)
    if parts and parts[0][0].lower() == attribute.lower() and parts[0][2] != "+":
        return _unescape(parts[0][1])
    return None


def _unescape(value: str) -> str:
    r"""RFC 4514 escapes (\, or \2C) back to characters."""
    out, i = bytearray(), 0
    raw = value.encode("utf-8")
    while i < len(raw):
        if raw[i:i + 1] == b"\\" and i + 1 < len(raw):
            pair = raw[i + 1:i + 3]
            try:
                out.append(int(pair, 16))
                i += 3
                continue
            except ValueError:
                out += raw[i + 1:i + 2]
                i += 2
                continue
        out += raw[i:i + 1]
        i += 1
    return out.decode("utf-8", "replace")


def login_name(entry_attrs: dict[str, list[str]], attribute: str, dn: str) -> str | None:
    """The username to hand the engine: the entry's login attribute.

    A multi-valued attribute (uid may be) prefers the value in the DN, which
    is the one the entry is named by, else the first in casefold order: the
    same choice as `pushproxy.ldapnames.account_of`, so one entry is one
    account on both front ends.
    """
    values = [v for v in entry_attrs.get(attribute.lower(), []) if v]
    if not values:
        return None
    named = rdn_value(dn, attribute)
    if named is not None and any(v.casefold() == named.casefold() for v in values):
        return next(v for v in values if v.casefold() == named.casefold())
    return min(values, key=lambda v: (v.casefold(), v))


def cache_may_answer(policy: Policy, ctx: LoginContext, requires: ClientRequirements,
                     required_groups: frozenset[str]) -> str | None:
    """Why a cached approval may not answer this bind now; None: it may.

    Asked at every hit, with the groups the bind just read and the policy and
    client floor in force now (a reload, or a user added to a group, changes
    what this bind needs). Only a bind whose push would be plain and without
    presence is spared: presence (a face or fingerprint) is asked for every
    bind, like every RADIUS login that needs it (docs/presence.md); a verified
    push (number matching) cannot be answered over LDAP, so it is the engine's
    to refuse; allow and deny rules are the engine's to decide and audit.
    """
    if required_groups and not ctx.groups & required_groups:
        return "not_in_required_group"
    decision = evaluate(policy, ctx)
    if decision.action is not Action.PUSH:
        return f"policy_{decision.action.value}"
    # LDAP binds carry no verification of their own (server.py: Verification.NONE).
    needs = sensitivity.needs_for(decision, requires, Verification.NONE)
    if needs.user_verification:
        return "presence_required"
    if needs.verification is not Verification.NONE:
        return "verification_required"
    return None


class BindCache:
    """Recently approved binds, so an application's repeated binds cost one push.

    Keyed by client address, normalized DN and an HMAC-SHA256 of the password
    under a random per-process key: the password itself is never kept, and the
    key cannot be checked offline against a list of guesses. The client
    address is part of the key so that the same password from another host
    still needs its own push. Bounded in size (oldest entries go first) and time.
    """

    def __init__(self, seconds: float, max_entries: int):
        self.seconds = seconds
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)
        # key -> (expiry, the account the approval was for: its lock is read early)
        self._entries: OrderedDict[bytes, tuple[float, str | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, source: str, dn: str, password: bytes) -> bytes:
        """The cache key for one bind; nothing in it reveals the password."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (source.encode("utf-8"), normalize_dn(dn).encode("utf-8"), password):
            mac.update(len(part).to_bytes(4, "big") + part)  # unambiguous concatenation
        return mac.digest()

    def hit(self, key: bytes, now: float) -> bool:
        """Whether ``key`` was approved less than ``seconds`` ago."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry[0] <= now:
            del self._entries[key]
            return False
        return True

    def account_of(self, key: bytes) -> str | None:
        """The account the approval remembered under ``key`` was for (None: not given,
        or no entry). A hint only: the bind's own entry names the account."""
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def remember(self, key: bytes, now: float, account: str | None = None) -> None:
        """Note an approved bind of ``account`` (a no-op when the cache is off)."""
        if self.seconds <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (now + self.seconds, account)
        # Entries are in expiry order (same lifetime, appended): drop the
        # expired from the front, then the oldest while over the limit.
        while self._entries:
            first_key, (first_expires, _) = next(iter(self._entries.items()))
            if first_expires > now and len(self._entries) <= self.max_entries:
                break
            del self._entries[first_key]

    def forget(self, key: bytes) -> None:
        """Drop ``key`` (its password no longer works upstream)."""
        self._entries.pop(key, None)

    def reconfigure(self, seconds: float, max_entries: int) -> None:
        """New limits (reload); entries over the new size go at the next remember."""
        self.seconds, self.max_entries = seconds, max_entries
        if seconds <= 0:
            self._entries.clear()
