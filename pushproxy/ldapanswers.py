"""What the directory's answers to one login mean (pure: results in, typed values out).

`pushproxy.ldapauth` talks to the directory; these functions read what came
back: the user search's entries (or why there are none we can trust), a
user bind's result (bound, or AD's reason for refusing it), and the
`PrimaryResult` of an account Active Directory refuses. Errors that mean the
server is at fault raise `ServerFailed` (the next server is tried); a partial
answer raises `IncompleteAnswer` (the login is refused, the server stays up).
"""

from __future__ import annotations

from pushproxy import adgroups, adstate
from pushproxy.adgroups import IncompleteAnswer
from pushproxy.decision import PrimaryResult, PrimaryStatus

SUCCESS, SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT, INVALID_CREDENTIALS = 0, 4, 32, 49
# The refusal of a bind never sent (no password): a plain wrong password.
NO_PASSWORD = adstate.BindRefusal(None, None)


class ServerFailed(Exception):
    """This server could not serve the request; try the next one."""


def user_entries(result) -> tuple:
    """A user search's entries; an error other than "none" or "too many" fails the server.

    A referral, or no entry but references to another domain, is an
    incomplete answer: the user may be there (a global catalog would know).
    """
    if result.code == adgroups.REFERRAL:
        raise IncompleteAnswer("referral", f"the user search was referred elsewhere "
                               f"({result.message[:120]}): search a global catalog instead")
    if result.code not in (SUCCESS, SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT):
        raise ServerFailed(f"user search failed: {result.code} {result.message}")
    foreign = adgroups.foreign_references(getattr(result, "references", ()))
    if not result.entries and foreign:
        raise IncompleteAnswer("referral", f"user not found here, and the search refers to "
                               f"{foreign[0]} (not followed): search a global catalog instead")
    return result.entries


def bind_refusal(result) -> adstate.BindRefusal | None:
    """A user bind's answer: None (bound), or AD's reason for invalidCredentials.

    Any other result fails the server.
    """
    if result.code == SUCCESS:
        return None
    if result.code == INVALID_CREDENTIALS:
        return adstate.parse_bind_diagnostic(result.message)
    raise ServerFailed(f"user bind failed: {result.code} {result.message}")


def account_refusal(server: str, dn: str | None, account: str | None, attrs: dict,
                    refusal: adstate.BindRefusal | None, now: float) -> PrimaryResult | None:
    """The result for an account the directory refuses, or None (usable).

    ``refusal``: the bind failed, and AD's diagnostic may say why (no state:
    a wrong password); None: the password was proved, and the entry's own
    flags are read at ``now``.
    """
    if refusal is not None:
        if refusal.state is None:
            return PrimaryResult(PrimaryStatus.BAD_CREDENTIALS, dn=dn, server=server)
        state, proved = refusal.state, refusal.password_proved
        detail = f"bind refused: AD data {refusal.data:x}"
    else:
        state, proved = adstate.entry_state(attrs, now), True
        if state is None:
            return None
        detail = "the entry's account flags"
    return PrimaryResult(PrimaryStatus.ACCOUNT_REFUSED, dn=dn, server=server, account=account,
                         account_state=state, password_proved=proved, detail=detail)
