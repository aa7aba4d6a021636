"""The pure half of directory logins: DNs compared, filters escaped, the account an entry proves.

No I/O here: `pushproxy.ldapauth` (the daemon), `pushproxy.ldapsync` (the
command line), `pushproxy.connectivity.ldapcheck` (test-connection) and the
LDAP front end all build their queries and read their answers with these, so
every path keys one entry on one account and asks for groups the same way.
"""

from __future__ import annotations

import functools

from ldap3.core import exceptions as lexc
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from pushproxy.adnames import canonical_account
from pushproxy.config import GroupMode, LdapConfig
from pushproxy.decision import PrimaryResult, PrimaryStatus

# Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: membership through nested groups.
AD_IN_CHAIN = "1.2.840.113556.1.4.1941"


@functools.lru_cache(maxsize=4096)
def normalize_dn(dn: str) -> str:
    """A DN in a form where equal DNs compare equal (case, spacing).

    Remembered for the last 4,096 DNs: every login of a member normalizes the
    same group DNs (its memberOf values) again (issue 16)."""
    if "\\" not in dn and '"' not in dn and "+" not in dn and "#" not in dn:
        # A plain DN (every group DN in practice): split here, as ldap3 would.
        parts = [p.split("=") for p in dn.split(",")]
        if all(len(p) == 2 and p[0].strip() and p[1].strip() for p in parts):
            return ",".join(f"{a.strip().lower()}={v.strip().lower()}" for a, v in parts)
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except (lexc.LDAPInvalidDnError, ValueError):
        return dn.strip().lower()
    return ",".join(f"{attr.lower()}={value.lower()}" for attr, value, _ in parts)


def user_filter(template: str, username: str) -> str:
    """The search filter for ``username``, escaped per RFC 4515."""
    return template.replace("{username}", escape_filter_chars(username))


def direct_bind_name(template: str, username: str) -> str:
    """The bind name of a direct-bind template: DN-escaped when it is a DN."""
    if "=" in template.split("{username}")[0]:
        return template.replace("{username}", escape_rdn(username))
    return template.replace("{username}", username)


def account_of(attrs: dict, attribute: str, dn: str) -> str | None:
    """The account an entry proves: its stored ``attribute`` value, casefolded.

    Never the name typed: slapd matches "alİce" (U+0130) or "ＡＬＩＣＥ" to
    alice by its own folding, which Python's does not reproduce, so state
    keyed on the typed spelling would miss alice's devices, locks and rules.
    A multi-valued attribute gives the value the DN is named by, else the
    first in casefold order, so every spelling of one entry gives one account.
    """
    values = next((v for k, v in attrs.items() if k.lower() == attribute.lower()), None)
    if isinstance(values, (str, bytes)):
        values = [values]
    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
              for v in values or ()]
    values = [v for v in values if v]
    if not values:
        return None
    rdn = _first_rdn(dn)
    if rdn is not None and rdn[0].lower() == attribute.lower():
        named = [v for v in values if v.casefold() == rdn[1].casefold()]
        if named:
            return named[0].casefold()
    return min(values, key=lambda v: (v.casefold(), v)).casefold()


def _first_rdn(dn: str) -> tuple[str, str] | None:
    """(type, value) of the DN's first RDN; a plain one is split here, ldap3 parses the rest."""
    head = dn.split(",", 1)[0]
    if "\\" not in head and "+" not in head and '"' not in head and head.count("=") == 1:
        attr, value = head.split("=")
        return attr.strip(), value.strip()
    try:
        return parse_dn(dn, escape=False, strip=True)[0][:2]
    except (lexc.LDAPInvalidDnError, ValueError, IndexError):
        return None


def group_query(mode: GroupMode, dn: str, username: str, group: str) -> tuple[str, str]:
    """The base-scope search (base DN, filter) that finds something iff the user is in ``group``."""
    if mode is GroupMode.AD_NESTED:
        # Read the user's own entry, matching memberOf through nested groups.
        return dn, f"(memberOf:{AD_IN_CHAIN}:={escape_filter_chars(group)})"
    esc = escape_filter_chars(dn)
    return group, (f"(|(member={esc})(uniqueMember={esc})"
                   f"(memberUid={escape_filter_chars(username)}))")


def values_of(attrs: dict, attribute: str) -> list:
    """An entry's values of ``attribute``, whatever the case of its name."""
    return next((v for k, v in attrs.items() if k.lower() == attribute.lower()), None) or []


def conclude(config: LdapConfig, required: frozenset[str], server: str, dn: str, attrs: dict,
             groups: frozenset[str]) -> PrimaryResult:
    """The result for a user whose password was right (or who was looked up): account, groups."""
    account = account_of(attrs, config.username_attribute, dn)
    if account is not None:
        account = canonical_account(config.active_directory, account, dn)
    if account is None:
        # Without the stored name there is nothing safe to key devices and
        # locks on: fail closed rather than fall back to the typed spelling.
        return PrimaryResult(PrimaryStatus.UNKNOWN_USER, dn=dn, server=server,
                             detail=f"no {config.username_attribute} readable in the entry")
    if required and not groups & required:
        return PrimaryResult(PrimaryStatus.NOT_IN_GROUP, dn=dn, server=server, account=account)
    return PrimaryResult(PrimaryStatus.OK, dn=dn, server=server, groups=groups, account=account)
