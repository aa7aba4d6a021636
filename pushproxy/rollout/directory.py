"""The directory side of a rollout: a group's members, and each user's account and mail.

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

from pushproxy.decision import PrimaryStatus
from pushproxy import ldapsync
from pushproxy.adnames import canonical_account
from pushproxy.ldapauth import LdapDirectory
from pushproxy.ldapnames import account_of
from pushproxy.metrics import Counters

MEMBER_ATTRIBUTES = ("member", "uniqueMember", "memberUid")
MAX_NESTING = 8  # groups in groups; a cycle stops at the first repeat anyway


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
        if self.config.bind_dn is None:
            raise DirectoryError("ldap.bind_dn is needed to read groups and mail addresses")
        for attempt in range(2):
            if self._conn is None or self._conn.closed:
                self._conn = self._open()
            try:
                self._conn.search(base, "(objectClass=*)", search_scope=ldap3.BASE,
                                  attributes=list(attributes))
            except (lexc.LDAPException, OSError, ssl.SSLError) as exc:
                self.close()
                if attempt:
                    raise DirectoryError(f"{type(exc).__name__}: {exc}") from None
                continue
            code = self._conn.result.get("result", 0)
            if code == 32:  # noSuchObject
                return []
            if code != 0:
                raise DirectoryError(f"reading {base}: {self._conn.result.get('description')}")
            return [(e["dn"], e.get("attributes", {})) for e in self._conn.response or []
                    if e.get("type") == "searchResEntry"]
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
        values are names already. DirectoryError if the group does not exist."""
        found = self._search(group_dn, MEMBER_ATTRIBUTES)
        if not found:
            raise DirectoryError(f"no group {group_dn!r} in the directory")
        names: list[str] = []
        seen_dns = {found[0][0].lower()}
        self._collect(found[0][1], names, seen_dns, depth=0)
        unique = list(dict.fromkeys(names))
        return unique

    def _collect(self, attrs: dict, names: list[str], seen: set[str], depth: int) -> None:
        for value in _values(attrs, "memberUid"):
            names.append(value)
        for dn in _values(attrs, "member") + _values(attrs, "uniqueMember"):
            dn = dn.split("#", 1)[0]  # uniqueMember may carry "#'0101'B" (RFC 4519)
            if dn.lower() in seen:
                continue
            seen.add(dn.lower())
            entries = self._search(dn, (self.config.username_attribute,) + MEMBER_ATTRIBUTES)
            if not entries:
                continue  # a dangling member value: nobody to mail
            entry_dn, entry = entries[0]
            if any(_values(entry, a) for a in MEMBER_ATTRIBUTES):
                if depth < MAX_NESTING:
                    self._collect(entry, names, seen, depth + 1)
                continue
            account = account_of(entry, self.config.username_attribute, entry_dn)
            if account:
                account = canonical_account(self.config.active_directory, account, entry_dn)
                names.append(account)

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


def _values(attrs: dict, name: str) -> list[str]:
    """An attribute's values as strings, whatever the case of its name."""
    values = next((v for k, v in attrs.items() if k.lower() == name.lower()), None)
    if values is None:
        return []
    if isinstance(values, (str, bytes)):
        values = [values]
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in values if v]
