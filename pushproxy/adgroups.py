"""Active Directory group membership the way AD keeps it, and answers AD gives only in part.

* **Primary group.** AD never lists a user's primary group (usually "Domain
  Users") in ``member``/``memberOf``: the user's ``primaryGroupID`` holds the
  group's RID, and the group's ``objectSid`` is the domain SID plus that RID.
  A group's constructed ``primaryGroupToken`` is that RID as text, so reading
  it (base scope on the group) and comparing it with ``primaryGroupID``, for a
  group in the user's own domain (a primary group always is), proves the
  membership without handling binary SIDs.
* **Incomplete answers.** A referral (result 10: the base is in another
  domain), a search continuation reference to another domain where the user
  was not found, or a ``memberOf;range=0-1499`` value (a user in more groups
  than the DC returns at once) all mean "part of the answer is elsewhere".
  Such an answer could grant (a deny rule's group not seen) or deny wrongly,
  so the login is refused as ``directory_unavailable`` with a log line naming
  the cause, never decided on the part that came back.

Pure helpers; the LDAP conversation is in `pushproxy.ldapauth` and
`pushproxy.ldapfront.primary`.
"""

from __future__ import annotations

import re

from pushproxy.ldapfront import ber

PRIMARY_GROUP_ID = "primaryGroupID"
PRIMARY_GROUP_TOKEN = "primaryGroupToken"
REFERRAL = 10  # LDAP result code: the base is held by another server
_RID = re.compile(r"[0-9]{1,10}")
# AD's own application partitions: every subtree search from a domain root
# refers to them, and they never hold users.
_PARTITIONS = ("dc=forestdnszones,", "dc=domaindnszones,", "cn=configuration,")


class IncompleteAnswer(Exception):
    """The directory answered only in part; deciding on it could be wrong."""

    def __init__(self, why: str, detail: str):
        super().__init__(detail)
        self.why = why  # short label for the counter: referral, range, group_query


def _single(attrs: dict, name: str) -> str | None:
    values = next((v for k, v in attrs.items() if k.lower() == name.lower()), None)
    if isinstance(values, str):
        values = [values]
    if not values or len(values) != 1:
        return None
    # Strict: a RID is plain digits (it grants membership, so no lenient parsing).
    value = values[0] if isinstance(values[0], str) else None
    return value if value and _RID.fullmatch(value) else None


def primary_group_id(attrs: dict) -> str | None:
    """The user's primaryGroupID (a RID, as text), or None (not AD, or not one plain number)."""
    return _single(attrs, PRIMARY_GROUP_ID)


def domain_of(dn: str) -> str:
    """The domain naming context of a normalized DN: its trailing ``dc=`` RDNs."""
    parts = dn.split(",")
    tail = []
    for part in reversed(parts):
        if not part.startswith("dc="):
            break
        tail.append(part)
    return ",".join(reversed(tail))


def primary_group_candidates(user_dn: str, groups, rid: str | None) -> list[str]:
    """The groups (normalized DNs) that could be the user's primary group: same domain."""
    if rid is None:
        return []
    domain = domain_of(user_dn)
    return [g for g in groups if domain and domain_of(g) == domain]


def primary_group_query() -> tuple[bytes, list[str]]:
    """The base-scope filter and attributes that read a group's primaryGroupToken."""
    return ber.f_present("objectClass"), [PRIMARY_GROUP_TOKEN]


def group_rid(group_entries) -> str | None:
    """The RID (primaryGroupToken) a group's base read returned, or None."""
    return next((rid for _, attrs in group_entries
                 if (rid := _single(attrs, PRIMARY_GROUP_TOKEN)) is not None), None)


def is_primary_group(rid: str, group_entries) -> bool:
    """Whether a group whose base read returned ``group_entries`` has the RID ``rid``."""
    return rid is not None and group_rid(group_entries) == rid


class GroupRids:
    """The RIDs of the configured groups, each kept ``ttl`` seconds (``now`` passed in).

    Saves a query per group and login. A domain never reuses a RID, so a
    kept value can at worst miss a group deleted and recreated under the same
    DN for ``ttl`` seconds; it can never make another group the primary one.
    Only configured groups are kept, so the table cannot grow.
    """

    def __init__(self, ttl: float = 300.0):
        self.ttl = ttl
        self._known: dict[str, tuple[str | None, float]] = {}

    def get(self, group: str, now: float) -> tuple[bool, str | None]:
        """(known, rid): known False when the group must be asked."""
        found = self._known.get(group)
        if found is None or found[1] <= now:
            return False, None
        return True, found[0]

    def put(self, group: str, rid: str | None, now: float) -> None:
        """Keep what the group's base read said (None: no RID, e.g. not an AD group)."""
        self._known[group] = (rid, now + self.ttl)


def ranged(attrs: dict, name: str) -> str | None:
    """The ranged spelling of ``name`` the entry came with (``memberof;range=0-1499``), if any."""
    prefix = f"{name.lower()};range="
    return next((k for k in attrs if k.lower().startswith(prefix)), None)


def foreign_references(urls) -> list[str]:
    """The search continuation references that are not AD's own partitions."""
    return [u for u in urls if not any(p in u.lower() for p in _PARTITIONS)]


def check_group_answer(group: str, code: int, message: str) -> None:
    """Raise IncompleteAnswer unless a group query's result is a plain yes or no.

    Success and noSuchObject (the group is gone) are answers; a referral
    (the group is in another domain: use a global catalog) or any other
    error leaves the membership unknown.
    """
    if code in (0, 32):
        return
    why = "referral" if code == REFERRAL else "group_query"
    raise IncompleteAnswer(why, f"group query on {group} answered {code} {message[:120]}")
