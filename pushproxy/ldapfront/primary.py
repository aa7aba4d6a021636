"""The first factor of an LDAP login, on the client's own upstream connection.

    simple bind as the user -> read the user's own entry (login attribute,
    memberOf) -> group checks for the groups the policy/exemptions name

All of it runs as the user, so the connection ends up bound exactly as the
client asked, and the proxy needs no service account. Requests reuse the
bind's message id one after another: the client may send nothing while its
bind is pending, so that id cannot clash with one of the client's.
"""

from __future__ import annotations

from pushproxy import adgroups, adstate
from pushproxy.adnames import ActiveDirectory, canonical_account
from pushproxy.config import GroupMode
from pushproxy.decision import PrimaryResult, PrimaryStatus
from pushproxy.ldapnames import AD_IN_CHAIN, normalize_dn
from pushproxy.ldapfront import ber
from pushproxy.ldapfront.binds import AdBind, login_name, rdn_value
from pushproxy.ldapfront.upstream import Upstream, UpstreamFailed
from pushproxy.metrics import Counters

SUBTREE = 2
_BIND_DONE = frozenset({ber.BIND_RESPONSE})
_SEARCH_DONE = frozenset({ber.SEARCH_DONE})
# Bind results that mean "the directory cannot answer now", not "wrong password".
_UNAVAILABLE = {ber.BUSY: PrimaryStatus.BUSY, ber.UNAVAILABLE: PrimaryStatus.UNAVAILABLE,
                ber.OPERATIONS_ERROR: PrimaryStatus.UNAVAILABLE}


async def _search(upstream: Upstream, mid: int, base: str, filter_: bytes,
                  attributes: list[str], *, group: bool = False, scope: int = 0,
                  size_limit: int = 1) -> list[tuple[str, dict[str, list[str]]]]:
    """A search (base scope unless told): the entries found (none when the base is
    missing or unreadable).

    ``group``: a membership question, whose answer must be a plain yes or no
    (a referral raises IncompleteAnswer, see `adgroups.check_group_answer`).
    """
    answers = await upstream.exchange(
        ber.search_request(mid, base, filter_, attributes, scope=scope, size_limit=size_limit,
                           time_limit=max(1, int(upstream.response_timeout))),
        mid, _SEARCH_DONE)
    if group and answers and answers[-1].op_tag == ber.SEARCH_DONE:
        done = ber.parse_result(answers[-1].op)
        adgroups.check_group_answer(base, done.code, done.message)
    return [ber.parse_entry(m.op) for m in answers if m.op_tag == ber.SEARCH_ENTRY]


async def read_user(upstream: Upstream, mid: int, dn: str, password: str, attribute: str,
                    group_mode: GroupMode, candidates: frozenset[str],
                    counters: Counters, now: float | None = None,
                    ad_name: AdBind | None = None,
                    ad: ActiveDirectory | None = None) -> tuple[PrimaryResult, str]:
    """Bind as ``dn``; the PrimaryResult and the username to give the engine.

    ``now`` (wall-clock seconds) dates the entry's accountExpires; None skips
    reading the entry's account flags (AD refuses those binds itself).
    ``ad_name``: ``dn`` is an AD login name (UPN, DOMAIN\\user): bind with its
    ``bind_name``, then find the entry by its search instead of reading ``dn``.
    ``ad``: ``ldap.active_directory``, for the account's domain qualification.
    Raises UpstreamFailed (or ProtocolError) when the server stops answering.
    """
    server = upstream.server.url
    guess = (rdn_value(dn, attribute) or dn) if ad_name is None else dn
    counters.inc("ldap_front_user_binds")
    bind_name = ad_name.bind_name if ad_name is not None else dn
    (answer,) = (await upstream.exchange(ber.bind_request(mid, bind_name, password), mid,
                                         _BIND_DONE))[-1:]
    bind = ber.parse_result(answer.op)
    code = bind.code
    if code == ber.INVALID_CREDENTIALS:
        refusal = adstate.parse_bind_diagnostic(bind.message)
        if refusal.state is not None:
            # AD's own reason (disabled, must change...): no push, and the
            # client hears the same "data" code AD would have told it.
            counters.inc("ldap_account_refusals", state=refusal.state.value)
            return PrimaryResult(PrimaryStatus.ACCOUNT_REFUSED, dn=dn, server=server,
                                 account_state=refusal.state,
                                 password_proved=refusal.password_proved,
                                 detail=f"bind refused: AD data {refusal.data:x}"), guess
    if code != ber.SUCCESS:
        status = _UNAVAILABLE.get(code, PrimaryStatus.BAD_CREDENTIALS)
        return PrimaryResult(status, dn=dn, server=server, detail=f"bind result {code}"), guess
    wanted = [attribute, *adstate.STATE_ATTRIBUTES, adgroups.PRIMARY_GROUP_ID]
    wanted += ["memberOf"] if group_mode is GroupMode.MEMBER_OF else []
    if ad_name is not None:
        # The directory bound the name; its entry is found by the same search a
        # RADIUS login makes, as the user now. Not exactly one entry: fail closed.
        entries = await _search(upstream, mid, ad_name.base, ad_name.filter_, wanted,
                                scope=SUBTREE, size_limit=2)
        if len(entries) != 1:
            status = PrimaryStatus.AMBIGUOUS_USER if entries else PrimaryStatus.UNKNOWN_USER
            return PrimaryResult(status, dn=None, server=server,
                                 detail="the bound name's entry was not found once"), guess
        dn = entries[0][0]
    else:
        entries = await _search(upstream, mid, dn, ber.f_present("objectClass"), wanted)
    # The entry's DN as stored (not as typed: slapd binds "uid=alİce" as alice),
    # so a multi-valued login attribute gives the value the entry is named by.
    stored_dn, attrs = entries[0] if entries else (dn, {})
    # A directory that hides the entry from its own user still named it in the
    # DN, as typed: trusted only in plain ASCII, where casefolding matches the
    # directory's own folding (a "K" KELVIN SIGN would key on another account).
    username = login_name(attrs, attribute, stored_dn)
    if username is None and ad_name is None:
        named = rdn_value(dn, attribute)
        username = named if named is not None and named.isascii() else None
    if username is None:
        return PrimaryResult(PrimaryStatus.UNKNOWN_USER, dn=dn, server=server,
                             detail=f"no {attribute} readable in the entry"), guess
    state = adstate.entry_state(attrs, now) if now is not None else None
    if state is not None:  # the password is proved: the entry's flags are safe to read
        counters.inc("ldap_account_refusals", state=state.value)
        return PrimaryResult(PrimaryStatus.ACCOUNT_REFUSED, dn=dn, server=server,
                             account=canonical_account(ad, username.casefold(), stored_dn),
                             account_state=state, password_proved=True, detail="the entry's account flags"), username
    groups = await _groups(upstream, mid, dn, username, attrs, group_mode, candidates)
    # The account every piece of per-user state keys on: the stored name.
    return PrimaryResult(PrimaryStatus.OK, dn=dn, server=server, groups=groups,
                         account=canonical_account(ad, username.casefold(), stored_dn)), username


async def _groups(upstream: Upstream, mid: int, dn: str, username: str,
                  attrs: dict[str, list[str]], mode: GroupMode,
                  candidates: frozenset[str]) -> frozenset[str]:
    """Which of ``candidates`` (normalized DNs) hold the user.

    Raises IncompleteAnswer when part of the answer is elsewhere (see adgroups).
    """
    if not candidates:
        return frozenset()
    found = set()
    rid = adgroups.primary_group_id(attrs)
    token_filter, token_attrs = adgroups.primary_group_query()
    for group in adgroups.primary_group_candidates(normalize_dn(dn), sorted(candidates), rid):
        if adgroups.is_primary_group(rid, await _search(upstream, mid, group, token_filter,
                                                        token_attrs, group=True)):
            found.add(group)
    if mode is GroupMode.MEMBER_OF:
        ranged = adgroups.ranged(attrs, "memberOf")
        if ranged is not None:
            raise adgroups.IncompleteAnswer("range", f"the entry lists {ranged}: "
                                            "use group_mode ad_nested")
        return frozenset(found) | (candidates
                                   & {normalize_dn(g) for g in attrs.get("memberof", [])})
    for group in sorted(candidates):
        if mode is GroupMode.AD_NESTED:
            base, filter_ = dn, ber.f_extensible(AD_IN_CHAIN, "memberOf", group)
        else:
            base, filter_ = group, ber.f_or(ber.f_equal("member", dn),
                                            ber.f_equal("uniqueMember", dn),
                                            ber.f_equal("memberUid", username))
        if await _search(upstream, mid, base, filter_, ["1.1"], group=True):
            found.add(group)
    return frozenset(found)


__all__ = ["read_user", "UpstreamFailed"]
