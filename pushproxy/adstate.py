"""Active Directory account states: what a refused bind, an entry and MS-CHAP say.

Three sources tell why AD will not let an account log in, and each is parsed
here into one typed value (`AccountState`), never passed on as a string:

* the diagnostic of a bind refused with invalidCredentials (49): AD (and a
  Samba AD DC) writes ``80090308: LdapErr: DSID-..., comment:
  AcceptSecurityContext error, data 533, v...``, where ``data`` is the
  Windows error (0x52e wrong password, 0x533 disabled, 0x773 must change...);
* the user's entry: ``userAccountControl`` and the constructed
  ``msDS-User-Account-Control-Computed`` flags, ``accountExpires`` and
  ``pwdLastSet``;
* the MS-CHAP-Error an upstream RADIUS server (NPS, FreeRADIUS with
  ntlm_auth) puts in its Reject (RFC 2759 section 6, RFC 2548 2.1.5).

Which of these prove the password (the oracle question): AD returns 530,
531, 532, 533, 701 and 773 only after the password was checked and right;
with a wrong password it says 52e whatever the account's state. 775 (locked
out) it returns for any password. `BindRefusal.password_proved` carries that
difference: a state the password did not prove is still refused, but it
counts as a wrong password for the source's throttle. The entry's flags are
only read once the password was right (or the upstream proved it), so they
never tell a guesser anything. Everything here is pure; time comes in as
``now`` (POSIX seconds).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class AccountState(enum.Enum):
    """Why the directory refuses an account whose name (and maybe password) it knows.

    The values are the audit trail's reasons.
    """

    PASSWORD_EXPIRED = "password_expired"
    MUST_CHANGE_PASSWORD = "must_change_password"
    ACCOUNT_DISABLED = "account_disabled"
    ACCOUNT_LOCKED = "account_locked"
    ACCOUNT_EXPIRED = "account_expired"
    LOGON_HOURS = "logon_hours"
    LOGON_WORKSTATION = "logon_workstation"


@dataclass(frozen=True)
class BindRefusal:
    """A bind refused with invalidCredentials, as AD's diagnostic explains it."""

    data: int | None  # AD's Windows error code (0x52e...), None when the message has none
    state: AccountState | None  # None: a plain wrong password (or nothing readable)
    password_proved: bool = False  # AD says this state only for the right password


# AD's "data" codes (Windows errors, hex) -> (state, said only for the right password).
AD_DATA: dict[int, tuple[AccountState | None, bool]] = {
    0x525: (None, False),  # no such user: a wrong password to the client
    0x52E: (None, False),  # wrong password
    0x530: (AccountState.LOGON_HOURS, True),
    0x531: (AccountState.LOGON_WORKSTATION, True),
    0x532: (AccountState.PASSWORD_EXPIRED, True),
    0x533: (AccountState.ACCOUNT_DISABLED, True),
    0x701: (AccountState.ACCOUNT_EXPIRED, True),
    0x773: (AccountState.MUST_CHANGE_PASSWORD, True),
    0x775: (AccountState.ACCOUNT_LOCKED, False),
}
DATA_OF_STATE = {state: data for data, (state, _) in AD_DATA.items() if state is not None}

# Only the head of a diagnostic is read: AD's is ~100 characters, and a
# megabyte of "data 533" from a broken server must not cost a regex over it.
MAX_DIAGNOSTIC = 512
_AD_MARK = "AcceptSecurityContext error"
_DATA = re.compile(r"(?<![0-9A-Za-z_])data ([0-9A-Fa-f]{3,4})(?![0-9A-Za-z_])")


def parse_bind_diagnostic(message: str) -> BindRefusal:
    """What AD's diagnostic of a refused bind (result 49) says about the account.

    Anything that is not plainly AD's format (no AcceptSecurityContext mark,
    no ``data`` code, two different codes, a code we do not know) is a plain
    wrong password: a state is only ever read from an unambiguous answer.
    """
    head = message[:MAX_DIAGNOSTIC] if isinstance(message, str) else ""
    if _AD_MARK not in head:
        return BindRefusal(None, None)
    codes = {int(found, 16) for found in _DATA.findall(head)}
    if len(codes) != 1:
        return BindRefusal(None, None)
    (data,) = codes
    state, proved = AD_DATA.get(data, (None, False))
    return BindRefusal(data, state, proved)


def ad_diagnostic(state: AccountState) -> str:
    """The diagnostic AD sends with result 49 for ``state`` (Windows clients read ``data``)."""
    return (f"80090308: LdapErr: DSID-0C09044E, comment: {_AD_MARK}, "
            f"data {DATA_OF_STATE[state]:x}, v4563")


# userAccountControl / msDS-User-Account-Control-Computed flags (MS-ADTS 2.2.16)
ACCOUNTDISABLE = 0x2
LOCKOUT = 0x10
DONT_EXPIRE_PASSWORD = 0x10000
PASSWORD_EXPIRED = 0x800000
# FILETIME (100 ns since 1601-01-01) of the POSIX epoch; accountExpires 0 or
# 0x7FFFFFFFFFFFFFFF means "never".
_EPOCH_AS_FILETIME = 116444736000000000
_NEVER = 0x7FFFFFFFFFFFFFFF
_INTEGER = re.compile(r"-?[0-9]{1,20}")

# The attributes `entry_state` reads (asked for in the user search; a
# directory that has none of them, like OpenLDAP, answers without them).
STATE_ATTRIBUTES = ("userAccountControl", "msDS-User-Account-Control-Computed",
                    "accountExpires", "pwdLastSet")


_STATE_NAMES = frozenset(name.lower() for name in STATE_ATTRIBUTES)


def _integer(values) -> int | None:
    """The one integer in an attribute's ``values``; None if absent, repeated or not one."""
    if isinstance(values, (str, bytes)):
        values = [values]
    if not values or len(values) != 1:
        return None
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    value = str(value).strip()
    if not _INTEGER.fullmatch(value):
        return None
    return int(value)


def entry_state(attrs: dict, now: float) -> AccountState | None:
    """The state the user's entry shows at ``now``, or None (usable, or nothing readable).

    Read only after the password was proved. ``lockoutTime`` is deliberately
    not read: AD leaves it set after the lockout duration has passed, until
    the next good logon, so only the DC's computed LOCKOUT flag says whether
    the account is locked now. A value that is not one plain integer is
    ignored (the bind, which AD checks itself, still decides).
    """
    # One pass over the entry's attribute names (the first spelling of each
    # name, any case, counts); an entry with none of them, as every OpenLDAP
    # entry, is usable without reading four names (issue 16).
    found: dict = {}
    for key, values in attrs.items():
        lowered = key.lower()
        if lowered in _STATE_NAMES and lowered not in found:
            found[lowered] = values
    if not found:
        return None
    flags = 0
    for name in ("useraccountcontrol", "msds-user-account-control-computed"):
        value = _integer(found.get(name))
        if value is not None:
            flags |= value & 0xFFFFFFFF  # AD writes the 32 bits signed or unsigned
    if flags & ACCOUNTDISABLE:
        return AccountState.ACCOUNT_DISABLED
    if flags & LOCKOUT:
        return AccountState.ACCOUNT_LOCKED
    expires = _integer(found.get("accountexpires"))
    if expires is not None and 0 < expires < _NEVER:
        if now * 10_000_000 + _EPOCH_AS_FILETIME >= expires:
            return AccountState.ACCOUNT_EXPIRED
    if flags & PASSWORD_EXPIRED:
        return AccountState.PASSWORD_EXPIRED
    if _integer(found.get("pwdlastset")) == 0 and not flags & DONT_EXPIRE_PASSWORD:
        return AccountState.MUST_CHANGE_PASSWORD
    return None


# MS-CHAP-Error "E=" codes (RFC 2759 section 6)
_MSCHAP_ERROR = re.compile(r"(?:^|\s)E=([0-9]{1,5})(?=\s|$)")
_MSCHAP_MESSAGE = re.compile(r"(?:^|\s)M=(.*)$", re.S)
_MSCHAP_STATES = {
    646: AccountState.LOGON_HOURS,  # ERROR_RESTRICTED_LOGON_HOURS
    647: AccountState.ACCOUNT_DISABLED,  # ERROR_ACCT_DISABLED
    648: AccountState.PASSWORD_EXPIRED,  # ERROR_PASSWD_EXPIRED (NPS: also "must change")
}


def mschap_error_state(value: bytes) -> AccountState | None:
    """The account state an upstream's MS-CHAP-Error names, or None (wrong password, other).

    The attribute is the MS-CHAP ident octet then ``E=eeeeeeeeee R=r C=... V=v
    M=<msg>``. FreeRADIUS's rlm_mschap sends 647 with "Account locked out"
    and 691 with "Account disabled", so the message refines those two; 691
    otherwise (and 649 no dial-in permission, 709 change failed) stays a
    refusal without a state. The reply is authenticated by the upstream's
    secret, so its words can be read; only the first 256 octets are.
    """
    # Some servers leave the ident octet out; "E=" at the start cannot be one
    # (an ident of 0x45 would be followed by "=" only in such a value).
    raw = value if value[:2] == b"E=" else value[1:]
    text = raw[:256].decode("ascii", "replace")
    found = _MSCHAP_ERROR.search(text)
    if found is None:
        return None
    code = int(found.group(1))
    said = _MSCHAP_MESSAGE.search(text)
    words = said.group(1).lower() if said else ""
    if code == 647 and "locked" in words:
        return AccountState.ACCOUNT_LOCKED
    if code == 691 and "disabled" in words:
        return AccountState.ACCOUNT_DISABLED
    return _MSCHAP_STATES.get(code)
