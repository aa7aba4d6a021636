"""Seeds a freshly provisioned Samba AD DC (run offline, before ``samba`` starts).

Run by :mod:`tests.integration.samba_dc` with the *system* Python (the one that
has Samba's ``samba`` bindings): ``/usr/bin/python3 samba_seed.py SMB_CONF
SPEC_JSON``.  It opens ``sam.ldb`` directly through Samba's own module stack
(so passwords are hashed, ``memberOf`` and UPN uniqueness are kept the way the
DC keeps them) and writes, from the JSON spec:

- the extra UPN suffixes on ``CN=Partitions,CN=Configuration`` (``uPNSuffixes``);
- users (sAMAccountName, password, UPN, given name), disabled or not;
- nested groups (each group lists its member users and member groups);
- a user's primary group (``primaryGroupID`` = the group's RID): the user is
  made a member first, as AD demands, and the DC then keeps the user out of
  the group's ``member`` list, as AD does;
- account states that need more than a flag: ``pwdLastSet=0`` (must change),
  ``pwdLastSet`` 400 days back (expired password), ``accountExpires`` in the
  past, ``logonHours`` all zero, and a fine-grained password settings object
  (PSO) that locks one user after two wrong passwords without touching the
  domain-wide policy other users are tested under.

Not imported by pytest: it needs Samba's bindings, which live in the system
Python only.
"""

from __future__ import annotations

import gc
import json
import sys
import time

import ldb
import samba
from samba.auth import system_session
from samba.dcerpc import security
from samba.ndr import ndr_unpack
from samba.param import LoadParm
from samba.samdb import SamDB

_UF_ACCOUNTDISABLE = 0x0002


def _open(conf: str) -> SamDB:
    """Open the DC's ``sam.ldb`` with the DC's own smb.conf."""
    lp = LoadParm()
    lp.load(conf)
    return SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)


def _pso(samdb: SamDB, name: str, applies_to: str, **settings: int) -> None:
    """Add a password settings object for one user (intervals in 100 ns, negative)."""
    base = samdb.domain_dn()
    values = {
        "msDS-PasswordSettingsPrecedence": 1,
        "msDS-PasswordReversibleEncryptionEnabled": "FALSE",
        "msDS-PasswordHistoryLength": 0,
        "msDS-PasswordComplexityEnabled": "FALSE",
        "msDS-MinimumPasswordLength": 0,
        "msDS-MinimumPasswordAge": 0,
        "msDS-MaximumPasswordAge": -(10 ** 7) * 86400 * 365,
        "msDS-LockoutThreshold": 0,
        "msDS-LockoutObservationWindow": -(10 ** 7) * 1800,
        "msDS-LockoutDuration": -(10 ** 7) * 1800,
    }
    values.update({key.replace("_", "-"): value for key, value in settings.items()})
    message = {"dn": f"CN={name},CN=Password Settings Container,CN=System,{base}",
               "objectClass": "msDS-PasswordSettings", "msDS-PSOAppliesTo": applies_to}
    message.update({key: str(value) for key, value in values.items()})
    samdb.add(message)


def _replace(samdb: SamDB, dn: str, attribute: str, value) -> None:
    """Replace one attribute of *dn*."""
    message = ldb.Message(ldb.Dn(samdb, dn))
    message[attribute] = ldb.MessageElement(value, ldb.FLAG_MOD_REPLACE, attribute)
    samdb.modify(message)


def seed(conf: str, spec: dict) -> None:
    """Write every object of *spec* into the DC's database."""
    samdb = _open(conf)
    base = str(samdb.domain_dn())
    users_dn = f"CN=Users,{base}"
    if spec.get("upn_suffixes"):
        partitions = f"CN=Partitions,{samdb.get_config_basedn()}"
        message = ldb.Message(ldb.Dn(samdb, partitions))
        message["uPNSuffixes"] = ldb.MessageElement(
            list(spec["upn_suffixes"]), ldb.FLAG_MOD_ADD, "uPNSuffixes")
        samdb.modify(message)
    for user in spec["users"]:
        name = user["name"]
        samdb.newuser(name, user["password"], givenname=user.get("given_name"),
                      useusernameascn=True, setpassword=True)
        dn = f"CN={name},{users_dn}"
        if user.get("upn"):
            _replace(samdb, dn, "userPrincipalName", user["upn"])
        if user.get("disabled"):
            samdb.disable_account(f"(sAMAccountName={name})")
        if user.get("must_change"):
            _replace(samdb, dn, "pwdLastSet", "0")
        if user.get("account_expired"):
            _replace(samdb, dn, "accountExpires", "1")  # 1601-01-01: long past
        if user.get("no_logon_hours"):
            _replace(samdb, dn, "logonHours", b"\x00" * 21)
        if user.get("lockout_after"):
            _pso(samdb, f"lockout-{name}", dn,
                 msDS_LockoutThreshold=int(user["lockout_after"]))
    for group in spec.get("groups", []):
        samdb.newgroup(group["name"])
    for group in spec.get("groups", []):
        members = list(group.get("users", [])) + list(group.get("groups", []))
        if members:
            samdb.add_remove_group_members(group["name"], members, add_members_operation=True)
    for user in spec["users"]:
        if user.get("primary_group"):
            _set_primary_group(samdb, f"CN={user['name']},{users_dn}", user["name"],
                               user["primary_group"])


def _set_primary_group(samdb: SamDB, dn: str, name: str, group: str) -> None:
    """Make *group* the primary group of *name* (its RID in ``primaryGroupID``)."""
    samdb.add_remove_group_members(group, [name], add_members_operation=True)
    found = samdb.search(base=samdb.domain_dn(), scope=ldb.SCOPE_SUBTREE,
                         expression=f"(&(objectClass=group)(sAMAccountName={group}))",
                         attrs=["objectSid"])
    sid = str(ndr_unpack(security.dom_sid, found[0]["objectSid"][0]))
    _replace(samdb, dn, "primaryGroupID", sid.rsplit("-", 1)[1])


def age_passwords(conf: str, spec: dict) -> None:
    """Set ``pwdLastSet`` 400 days back for users marked ``password_expired``.

    The DC refuses any ``pwdLastSet`` but 0 and -1 through its module stack, and
    it ignores a maximum password age under one day (a PSO cannot expire a
    password within the test), so the value is written into the domain
    partition's database file directly, past the modules. The domain's default
    maximum age (42 days) then makes the password expired, as an old password
    is on a real domain.
    """
    stale = [user["name"] for user in spec["users"] if user.get("password_expired")]
    if not stale:
        return
    lp = LoadParm()
    lp.load(conf)
    partition = "DC=" + ",DC=".join(lp.get("realm").upper().split("."))
    raw = ldb.Ldb(url=f"{lp.private_path('sam.ldb.d')}/{partition}.ldb", options=["modules:"])
    base = ",".join(f"DC={part}" for part in lp.get("realm").lower().split("."))
    when = int((time.time() - 400 * 86400 + 11644473600) * 10 ** 7)  # NT time, 100 ns
    for name in stale:
        _replace(raw, f"CN={name},CN=Users,{base}", "pwdLastSet", str(when))


def main(argv: list[str]) -> int:
    """``samba_seed.py SMB_CONF SPEC_JSON``: seed and exit 0, or print the error and exit 1."""
    conf, spec_file = argv[1], argv[2]
    with open(spec_file, encoding="utf-8") as handle:
        spec = json.load(handle)
    try:
        seed(conf, spec)
        gc.collect()  # close sam.ldb before its partition file is opened again
        age_passwords(conf, spec)
    except (ldb.LdbError, samba.NTSTATUSError) as exc:  # say what failed, not a traceback
        print(f"samba_seed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
