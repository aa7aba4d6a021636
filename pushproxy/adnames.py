"""Active Directory login names: UPN, ``DOMAIN\\user`` and plain sAMAccountName.

AD users type their name three ways: ``alice`` (sAMAccountName), ``CORP\\alice``
(down-level logon name: NetBIOS domain, backslash, sAMAccountName) and
``alice@corp.example`` (user principal name, possibly with an alternate UPN
suffix such as ``alice@alt.example``). With ``ldap.active_directory`` set,
`parse_name` sorts a typed name into one of those forms and the domain it
names, and `search_for` turns it into the search that finds the entry:

    alice               -> (sAMAccountName=alice) under the first domain's base
    CORP\\alice          -> (sAMAccountName=alice) under CORP's base
    alice@alt.example   -> (userPrincipalName=alice@alt.example) under the base of
                           the domain that lists alt.example among its suffixes
    EVIL\\alice, a@x.org -> `ForeignDomain`: refused before any directory traffic

The name typed is only input. Every piece of per-user state keys on the
account the entry proves (`canonical_account`): its stored sAMAccountName,
casefolded, qualified as ``netbios\\name`` for an entry outside the first
domain, so ``CORP\\alice`` and ``EU\\alice`` never share devices or limits.
Pure: no I/O; the config reader is `parse_active_directory`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pushproxy.checker import Checker
from pushproxy.decision import PrimaryResult, PrimaryStatus
from pushproxy.ldapfilter import FilterError, compile_filter

if TYPE_CHECKING:
    from pushproxy.config import LdapConfig

DEFAULT_UPN_FILTER = "(&(objectClass=user)(userPrincipalName={username}))"
# NetBIOS domain names: 1-15 characters, none of these (MS "Naming conventions in AD").
_NETBIOS = re.compile(r"[A-Za-z0-9!#$%&'()\-^_{}~]{1,15}")
_DNS = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                  r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
ACCOUNT_ATTRIBUTES = ("samaccountname", "userprincipalname")


@dataclass(frozen=True)
class AdDomain:
    """One domain we serve: its NetBIOS name, where its users are, its UPN suffixes."""

    netbios: str  # as configured; compared case-insensitively (ASCII)
    base: str  # search base of its users
    upn_suffixes: tuple[str, ...]  # lower-case DNS names


@dataclass(frozen=True)
class ActiveDirectory:
    """``ldap.active_directory``: the domains served; the first one takes plain names."""

    domains: tuple[AdDomain, ...]
    upn_filter: str = DEFAULT_UPN_FILTER

    def by_netbios(self, name: str) -> AdDomain | None:
        """The domain whose NetBIOS name is ``name`` (ASCII case-insensitive), or None."""
        if not name.isascii():
            return None
        return next((d for d in self.domains if d.netbios.upper() == name.upper()), None)

    def by_suffix(self, suffix: str) -> AdDomain | None:
        """The domain listing UPN suffix ``suffix`` (ASCII case-insensitive), or None."""
        if not suffix.isascii():
            return None
        return next((d for d in self.domains if suffix.lower() in d.upn_suffixes), None)


class NameForm(enum.Enum):
    """How a login name was written."""

    PLAIN = "plain"  # alice: the first domain's sAMAccountName
    DOWN_LEVEL = "down_level"  # CORP\alice
    UPN = "upn"  # alice@corp.example


@dataclass(frozen=True)
class AdName:
    """A typed name sorted: its form, the domain it names, the value to search for."""

    form: NameForm
    domain: AdDomain
    value: str  # the sAMAccountName (plain, down-level) or the whole UPN


@dataclass(frozen=True)
class ForeignDomain:
    """A name for a domain we do not serve (or no name at all): refused, never searched."""

    domain: str  # the domain part as typed, for the log and the audit detail
    why: str


def parse_name(ad: ActiveDirectory, typed: str) -> AdName | ForeignDomain:
    """Sort ``typed`` into an AD name form, or refuse it (`ForeignDomain`)."""
    if "\\" in typed:
        domain, _, account = typed.partition("\\")
        if not account or "\\" in account or "@" in account:
            return ForeignDomain(domain, "not DOMAIN\\user")
        found = ad.by_netbios(domain)
        if found is None:
            return ForeignDomain(domain, f"domain {domain!r} is not served here")
        return AdName(NameForm.DOWN_LEVEL, found, account)
    if "@" in typed:
        account, _, suffix = typed.rpartition("@")
        if not account:
            return ForeignDomain(suffix, "no name before @")
        found = ad.by_suffix(suffix)
        if found is None:
            return ForeignDomain(suffix, f"UPN suffix {suffix!r} is not served here")
        # Sent as typed but with the suffix as configured: AD compares UPNs
        # without regard to case, and the suffix decided the domain.
        return AdName(NameForm.UPN, found, f"{account}@{suffix.lower()}")
    return AdName(NameForm.PLAIN, ad.domains[0], typed)


def search_for(ad: ActiveDirectory, name: AdName, user_filter: str) -> tuple[str, str, str]:
    """(base, filter template, value for ``{username}``) that find ``name``'s entry.

    A UPN whose suffix is the domain's own DNS name (read from its base,
    ``DC=corp,DC=example`` -> corp.example) also finds an account that has
    no userPrincipalName at all by its sAMAccountName, as the DC binds such
    an "implicit UPN". An account whose stored UPN differs is not found that
    way: its own UPN is the one to type.
    """
    if name.form is not NameForm.UPN:
        return name.domain.base, user_filter, name.value
    account, _, suffix = name.value.rpartition("@")
    if suffix != dns_name(name.domain.base):
        return name.domain.base, ad.upn_filter, name.value
    # The sAMAccountName goes in escaped (RFC 4515, and "{" so that no
    # placeholder can hide in it); {username} stays for the whole UPN.
    sam = user_filter.replace("{username}", "".join(
        f"\\{ord(ch):02x}" if ch in "\\*()\0{}" else ch for ch in account))
    return (name.domain.base, f"(|{ad.upn_filter}(&{sam}(!(userPrincipalName=*))))",
            name.value)


def dns_name(base: str) -> str | None:
    """The DNS name a domain's base DN spells (DC=corp,DC=example -> corp.example), or None."""
    parts = [p.strip() for p in base.split(",")]
    labels = [p[3:].strip().lower() for p in parts if p[:3].lower() == "dc="]
    return ".".join(labels) if labels and len(labels) == len(parts) else None


def user_search(config: "LdapConfig", username: str) -> tuple[str, str, str] | ForeignDomain:
    """(base, filter template, value for ``{username}``) of the search for ``username``.

    Without ``ldap.active_directory``: ``user_base``, ``user_filter`` and the
    name as sent. With it, an AD name's domain picks the base, and a UPN is
    compared to userPrincipalName (`pushproxy.adnames`); a name for a domain
    not served is a `ForeignDomain`, never searched.
    """
    ad = config.active_directory
    if ad is None:
        return config.user_base, config.user_filter, username
    name = parse_name(ad, username)
    if isinstance(name, ForeignDomain):
        return name
    return search_for(ad, name, config.user_filter)


def foreign_domain(name: ForeignDomain) -> PrimaryResult:
    """The first factor's answer for a name whose domain is not served."""
    return PrimaryResult(PrimaryStatus.UNKNOWN_DOMAIN, detail=name.why)


def _under(dn: str, base: str) -> bool:
    """Whether normalized ``dn`` is ``base`` or below it."""
    return dn == base or dn.endswith("," + base)


def domain_of(ad: ActiveDirectory, dn: str) -> AdDomain | None:
    """The configured domain an entry's DN lies in (the deepest base that holds it)."""
    from pushproxy.ldapnames import normalize_dn  # ldapnames imports this module

    entry = normalize_dn(dn)
    holding = [d for d in ad.domains if _under(entry, normalize_dn(d.base))]
    return max(holding, key=lambda d: len(d.base), default=None)


def canonical_account(ad: ActiveDirectory | None, account: str, dn: str) -> str:
    """The key of all per-user state for the entry ``dn`` whose stored name is ``account``.

    ``account`` is already the entry's casefolded stored name. An entry in the
    first (default) domain keys on it alone, as without AD domains, so devices
    enrolled before the section existed still match; an entry in another
    domain keys on ``netbios\\account``, so two domains' alices stay apart.
    """
    if ad is None or "@" in account:  # a UPN is unique in the forest as it is
        return account
    domain = domain_of(ad, dn)
    if domain is None or domain is ad.domains[0]:
        return account
    return f"{domain.netbios}\\{account}".casefold()


def parse_active_directory(c: Checker, value, path: str, *,
                           username_attribute: str | None) -> ActiveDirectory | None:
    """Read ``ldap.active_directory``; every problem is recorded on ``c`` with its path."""
    m = c.mapping(value, path, required=("domains",), optional=("upn_filter",))
    if m is None:
        return None
    if username_attribute and username_attribute.lower() not in ACCOUNT_ATTRIBUTES:
        c.problem("ldap.username_attribute",
                  f"{username_attribute!r}: with {path} the account is sAMAccountName "
                  "(or userPrincipalName)")
    upn_filter = c.string(m, "upn_filter", f"{path}.upn_filter", required=False) \
        or DEFAULT_UPN_FILTER
    if "{username}" not in upn_filter:
        c.problem(f"{path}.upn_filter", "must contain {username}")
    elif not (upn_filter.startswith("(") and upn_filter.endswith(")")):
        c.problem(f"{path}.upn_filter", "must be an LDAP filter in parentheses")
    else:
        try:
            compile_filter(upn_filter.replace("{username}", "x"))
        except FilterError as exc:
            c.problem(f"{path}.upn_filter", f"not a valid LDAP filter: {exc}")
    domains: list[AdDomain] = []
    seen_names: dict[str, str] = {}
    seen_suffixes: dict[str, str] = {}
    for i, item in enumerate(c.seq(m, "domains", f"{path}.domains", None, min_len=1)):
        where = f"{path}.domains[{i}]"
        d = c.mapping(item, where, required=("netbios", "base"), optional=("upn_suffixes",))
        if d is None:
            continue
        netbios = c.string(d, "netbios", f"{where}.netbios")
        base = c.string(d, "base", f"{where}.base")
        if netbios is not None:
            if not _NETBIOS.fullmatch(netbios):
                c.problem(f"{where}.netbios", f"{netbios!r} is not a NetBIOS domain name "
                                              "(1-15 letters, digits or -_, no dots)")
            elif netbios.upper() in seen_names:
                c.problem(f"{where}.netbios",
                          f"{netbios!r} is also {seen_names[netbios.upper()]}")
            seen_names.setdefault(netbios.upper(), f"{where}.netbios")
        if base is not None and not _is_dn(base):
            c.problem(f"{where}.base", f"{base!r} is not a DN")
        suffixes = []
        for j, s in enumerate(c.seq(d, "upn_suffixes", f"{where}.upn_suffixes", [])):
            spath = f"{where}.upn_suffixes[{j}]"
            if not isinstance(s, str) or not _DNS.fullmatch(s.lower()):
                c.problem(spath, f"{s!r} is not a DNS name (corp.example)")
                continue
            if s.lower() in seen_suffixes:
                c.problem(spath, f"{s!r} is also {seen_suffixes[s.lower()]}")
                continue
            seen_suffixes[s.lower()] = spath
            suffixes.append(s.lower())
        if netbios is not None and base is not None:
            domains.append(AdDomain(netbios, base, tuple(suffixes)))
    if not domains:
        return None
    return ActiveDirectory(tuple(domains), upn_filter)


def _is_dn(text: str) -> bool:
    """Whether ``text`` parses as a non-empty DN."""
    from ldap3.core.exceptions import LDAPInvalidDnError
    from ldap3.utils.dn import parse_dn

    try:
        return bool(parse_dn(text, escape=False, strip=True))
    except (LDAPInvalidDnError, ValueError, IndexError):
        return False
