"""The directory side of a rollout: a group's members, and each user's account and mail.

A group's members are those its ``member``/``uniqueMember``/``memberUid``
values name, nested groups followed, and, in Active Directory, the users whose
*primary group* it is: AD lists those in no ``member`` value, only in their own
``primaryGroupID`` (the group's RID, its ``primaryGroupToken``), so they are
searched for under the group's domain (see `pushproxy.adgroups`).

Blocking (ldap3 in the calling thread): for the command line only, never the
reactor. Every user is looked up exactly the way a login looks them up
(`LdapDirectory.lookup_blocking`: ``ldap.user_base``, ``user_filter``,
``required_groups``), so the account a mail enrolls is the account a login
proves, and a user who could never log in is refused rather than mailed.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from enum import Enum

import ldap3
from ldap3.core import exceptions as lexc

from pushproxy import adgroups, ldapsync
from pushproxy.adnames import canonical_account, domain_of
from pushproxy.decision import PrimaryStatus
from pushproxy.ldapauth import LdapDirectory
from pushproxy.ldapnames import account_of, normalize_dn
from pushproxy.metrics import Counters

MEMBER_ATTRIBUTES = ("member", "uniqueMember", "memberUid")
# What a listed entry is read with: its name, its members (a nested group), its
# class (an empty group is a group, not a user) and, in AD, its RID as a group.
ENTRY_ATTRIBUTES = MEMBER_ATTRIBUTES + ("objectClass", adgroups.PRIMARY_GROUP_TOKEN)
GROUP_CLASSES = frozenset({"group", "groupofnames", "groupofuniquenames", "posixgroup"})
MAX_NESTING = 8  # groups in groups; a cycle stops at the first repeat anyway
PAGE_SIZE = 500  # AD answers at most 1000 entries per page (MaxPageSize)
PAGED_RESULTS = "1.2.840.113556.1.4.319"


class DirectoryError(Exception):
    """The directory could not answer (down, refused, no such group)."""


class UserStatus(Enum):
    """What the directory says about one name."""

    FOUND = "found"
    UNKNOWN = "unknown"  # no such user (or no readable account attribute)
    AMBIGUOUS = "ambiguous"
    NOT_ALLOWED = "not_in_required_groups"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class DirectoryUser:
    """One looked-up name: the account logins prove, and where to mail it."""

    name: str  # as given (or as the group listed it)
    status: UserStatus
    account: str | None = None
    dn: str | None = None
    mail: str | None = None
    detail: str = ""


_STATUS = {PrimaryStatus.OK: UserStatus.FOUND, PrimaryStatus.UNKNOWN_USER: UserStatus.UNKNOWN,
           PrimaryStatus.AMBIGUOUS_USER: UserStatus.AMBIGUOUS,
           PrimaryStatus.UNKNOWN_DOMAIN: UserStatus.UNKNOWN,
           PrimaryStatus.NOT_IN_GROUP: UserStatus.NOT_ALLOWED}


class RolloutDirectory:
    """Group members and users' mail addresses, on the daemon's LDAP settings."""

    def __init__(self, ldap_config, mail_attribute: str = "mail"):
        self.config = ldap_config
        self.mail_attribute = mail_attribute
        self._ldap = LdapDirectory(ldap_config, reactor=None, counters=Counters())
        self._conn = None

    def close(self) -> None:
        """Close the connections this object opened (if any)."""
        self._ldap.close_blocking()
        if self._conn is not None:
            try:
                self._conn.unbind()
            except Exception:  # closing a broken socket: nothing left to do
                pass
            self._conn = None

    def _search(self, base: str, attributes) -> list[tuple[str, dict]]:
        """A base-scope read of ``base`` as the service account: [(dn, attributes)]."""
        return self._query(base, "(objectClass=*)", ldap3.BASE, attributes)[0]

    def _search_all(self, base: str, filter_: str, attributes) -> list[tuple[str, dict]]:
        """A subtree search as the service account, every page of it."""
        found, cookie = [], None
        while True:
            entries, cookie = self._query(base, filter_, ldap3.SUBTREE, attributes, cookie)
            found += entries
            if not cookie:
                return found

    def _query(self, base: str, filter_: str, scope, attributes,
               cookie: bytes | None = None) -> tuple[list[tuple[str, dict]], bytes | None]:
        """One search (a page of it, for a subtree): its entries and the next page's cookie.

        A connection that fails is opened again once, except in the middle of
        a paged search (the server's cookie belongs to the old connection)."""
        if self.config.bind_dn is None:
            raise DirectoryError("ldap.bind_dn is needed to read groups and mail addresses")
        paged = {} if scope == ldap3.BASE else {"paged_size": PAGE_SIZE, "paged_cookie": cookie}
        for attempt in range(1 if cookie else 2):
            if self._conn is None or self._conn.closed:
                self._conn = self._open()
            try:
                self._conn.search(base, filter_, search_scope=scope,
                                  attributes=list(attributes), **paged)
            except (lexc.LDAPException, OSError, ssl.SSLError) as exc:
                self.close()
                if attempt or cookie:
                    raise DirectoryError(f"{type(exc).__name__}: {exc}") from None
                continue
            code = self._conn.result.get("result", 0)
            if code == 32:  # noSuchObject
                return [], None
            if code != 0:
                raise DirectoryError(f"reading {base}: {self._conn.result.get('description')}")
            entries = [(e["dn"], e.get("attributes", {})) for e in self._conn.response or []
                       if e.get("type") == "searchResEntry"]
            control = (self._conn.result.get("controls") or {}).get(PAGED_RESULTS) or {}
            return entries, (control.get("value") or {}).get("cookie") or None
        raise AssertionError("unreachable")

    def _open(self):
        errors = []
        for server in self.config.servers:
            try:
                return ldapsync.open_search(self.config, server)
            except (ldapsync.ServerUnusable, lexc.LDAPException, OSError, ssl.SSLError) as exc:
                errors.append(f"{server.url}: {exc}")
        raise DirectoryError("; ".join(errors) or "no LDAP server")

    def members(self, group_dn: str) -> list[str]:
        """The names of the group's members (nested groups followed), in directory order.

        A member DN gives its entry's ``ldap.username_attribute``; ``memberUid``
        values are names already; in AD the users whose primary group it is
        (or a nested group is) come after each group's listed members.
        DirectoryError if the group does not exist."""
        found = self._search(group_dn, ENTRY_ATTRIBUTES)
        if not found:
            raise DirectoryError(f"no group {group_dn!r} in the directory")
        names: list[str] = []
        seen_dns = {found[0][0].lower()}
        self._collect(found[0][0], found[0][1], names, seen_dns, depth=0)
        unique = list(dict.fromkeys(names))
        return unique

    def _collect(self, group_dn: str, attrs: dict, names: list[str], seen: set[str],
                 depth: int) -> None:
        for value in _values(attrs, "memberUid"):
            names.append(value)
        for dn in _values(attrs, "member") + _values(attrs, "uniqueMember"):
            dn = dn.split("#", 1)[0]  # uniqueMember may carry "#'0101'B" (RFC 4519)
            if dn.lower() in seen:
                continue
            seen.add(dn.lower())
            entries = self._search(dn, (self.config.username_attribute,) + ENTRY_ATTRIBUTES)
            if not entries:
                continue  # a dangling member value: nobody to mail
            entry_dn, entry = entries[0]
            if _is_group(entry):
                if depth < MAX_NESTING:
                    self._collect(entry_dn, entry, names, seen, depth + 1)
                continue
            self._add(entry_dn, entry, names)
        rid = adgroups.group_rid([(group_dn, attrs)])
        if rid is not None:
            for entry_dn, entry in self._search_all(self._domain_base(group_dn),
                                                    f"({adgroups.PRIMARY_GROUP_ID}={rid})",
                                                    (self.config.username_attribute,)):
                if entry_dn.lower() not in seen:
                    seen.add(entry_dn.lower())
                    self._add(entry_dn, entry, names)

    def _add(self, entry_dn: str, entry: dict, names: list[str]) -> None:
        account = account_of(entry, self.config.username_attribute, entry_dn)
        if account:
            names.append(canonical_account(self.config.active_directory, account, entry_dn))

    def _domain_base(self, group_dn: str) -> str:
        """Where a group's primary members live: its domain (a primary group is
        always in its members' own domain), as configured or read from its DN."""
        ad = self.config.active_directory
        domain = domain_of(ad, group_dn) if ad is not None else None
        if domain is not None:
            return domain.base
        return adgroups.domain_of(normalize_dn(group_dn)) or self.config.user_base

    def user(self, name: str) -> DirectoryUser:
        """Look ``name`` up as a login would, then read its mail address."""
        found = self._ldap.lookup_blocking(name, keep=True)
        status = _STATUS.get(found.status, UserStatus.UNAVAILABLE)
        if status is not UserStatus.FOUND or not found.account:
            return DirectoryUser(name, status if status is not UserStatus.FOUND
                                 else UserStatus.UNKNOWN, dn=found.dn,
                                 detail=found.detail or found.status.value)
        mail = None
        try:
            entries = self._search(found.dn, (self.mail_attribute,))
        except DirectoryError as exc:
            return DirectoryUser(name, UserStatus.UNAVAILABLE, account=found.account,
                                 dn=found.dn, detail=str(exc))
        if entries:
            addresses = [v for v in _values(entries[0][1], self.mail_attribute) if "@" in v]
            mail = addresses[0] if addresses else None
        return DirectoryUser(name, UserStatus.FOUND, account=found.account, dn=found.dn,
                             mail=mail)


def _is_group(entry: dict) -> bool:
    """Whether a listed entry is a group (it has members, or a group's object class)."""
    return any(_values(entry, a) for a in MEMBER_ATTRIBUTES) or \
        any(c.lower() in GROUP_CLASSES for c in _values(entry, "objectClass"))


def _values(attrs: dict, name: str) -> list[str]:
    """An attribute's values as strings, whatever the case of its name."""
    values = next((v for k, v in attrs.items() if k.lower() == name.lower()), None)
    if values is None:
        return []
    if isinstance(values, (str, bytes)):
        values = [values]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in values if v]
