"""The LDAP front end's first factor on AD: a refused bind's diagnostic, the entry's flags,
the primary group and partial group answers, with a scripted upstream connection."""

from __future__ import annotations

import pytest
from twisted.internet import defer

from pushproxy.adgroups import IncompleteAnswer
from pushproxy.adstate import AccountState, ad_diagnostic
from pushproxy.config import GroupMode
from pushproxy.decision import PrimaryStatus
from pushproxy.ldapfront import ber
from pushproxy.ldapfront.primary import read_user
from pushproxy.metrics import Counters

BASE = "dc=corp,dc=example"
ALICE = f"cn=alice,cn=users,{BASE}"
USERS_GROUP = f"cn=domain users,cn=users,{BASE}"
VPN = f"cn=vpn,cn=users,{BASE}"
NOW = 1_800_000_000.0


def entry(mid, dn, attrs):
    body = b"".join(ber.tlv(ber.SEQUENCE, ber.octets(k) + ber.tlv(
        ber.SET, b"".join(ber.octets(v) for v in vs))) for k, vs in attrs.items())
    return ber.parse_message(ber.message(mid, ber.SEARCH_ENTRY,
                                         ber.octets(dn) + ber.tlv(ber.SEQUENCE, body)))


class Upstream:
    """Answers the bind with ``bind`` (code, message) and each search with ``search(base)``."""

    def __init__(self, bind=(0, ""), search=None):
        self.bind, self.search = bind, search
        self.server = type("S", (), {"url": "ldap://dc"})()
        self.response_timeout = 5
        self.bases = []

    def exchange(self, request, mid, final):
        if ber.BIND_RESPONSE in final:
            return defer.succeed([ber.parse_message(ber.bind_response(mid, *self.bind))])
        msg = ber.parse_message(request)
        _, start, stop = ber.read_tlv(msg.op, 0, len(msg.op))
        base = msg.op[start:stop].decode()
        self.bases.append(base)
        entries, code = self.search(base, msg.op)
        return defer.succeed([entry(mid, dn, attrs) for dn, attrs in entries] + [
            ber.parse_message(ber.message(mid, ber.SEARCH_DONE, ber.result(code)))])


def user(**extra):
    return lambda base, op: ([(ALICE, {"sAMAccountName": ["alice"], **extra})], 0) \
        if base == ALICE and b"objectClass" in op and b"1.2.840" not in op else ([], 0)


def read(upstream, groups=frozenset(), mode=GroupMode.AD_NESTED, now=NOW):
    counters = Counters()
    out = []
    defer.ensureDeferred(read_user(upstream, 2, ALICE, "pw", "sAMAccountName", mode,
                                   frozenset(groups), counters, now=now)).addBoth(out.append)
    return out[0], counters


@pytest.mark.parametrize("data,state,proved", [
    ("533", AccountState.ACCOUNT_DISABLED, True), ("775", AccountState.ACCOUNT_LOCKED, False),
    ("773", AccountState.MUST_CHANGE_PASSWORD, True)])
def test_a_refused_bind_with_ads_diagnostic_is_that_state(data, state, proved):
    upstream = Upstream(bind=(49, ad_diagnostic(state)))
    (result, _), counters = read(upstream)
    assert (result.status, result.account_state, result.password_proved) == \
        (PrimaryStatus.ACCOUNT_REFUSED, state, proved)
    assert upstream.bases == []  # nothing read after a refused bind
    assert counters.get("ldap_account_refusals", state=state.value) == 1


def test_a_refused_bind_without_ads_words_is_a_wrong_password():
    (result, _), _ = read(Upstream(bind=(49, "data 533")))
    assert (result.status, result.account_state) == (PrimaryStatus.BAD_CREDENTIALS, None)


def test_the_entrys_flags_after_a_good_bind_refuse_the_account():
    (result, name), _ = read(Upstream(search=user(userAccountControl=["514"])))
    assert (result.status, result.account_state, result.account, name) == \
        (PrimaryStatus.ACCOUNT_REFUSED, AccountState.ACCOUNT_DISABLED, "alice", "alice")


def test_the_primary_group_counts_in_the_front_end_too():
    def search(base, op):
        if base == USERS_GROUP:
            return [(USERS_GROUP, {"primaryGroupToken": ["513"]})], 0
        return user(primaryGroupID=["513"])(base, op)
    (result, _), _ = read(Upstream(search=search), groups={USERS_GROUP, VPN})
    assert result.status is PrimaryStatus.OK and result.groups == frozenset({USERS_GROUP})


@pytest.mark.parametrize("code", [10, 53])
def test_a_group_query_without_a_plain_answer_raises_instead_of_saying_not_a_member(code):
    def search(base, op):
        if b"1.2.840.113556.1.4.1941" in op:
            return [], code
        return user()(base, op)
    failure, _ = read(Upstream(search=search), groups={VPN})
    assert failure.check(IncompleteAnswer)


def test_a_ranged_member_of_raises_in_member_of_mode():
    failure, _ = read(Upstream(search=user(**{"memberOf;range=0-1499": [VPN]})), groups={VPN},
                      mode=GroupMode.MEMBER_OF)
    assert failure.check(IncompleteAnswer)


def test_the_front_end_refuses_a_partial_group_answer_as_unavailable_with_a_counter():
    """A referral on a group query: 'directory unavailable', never 'not a member'."""
    from tests.test_ldapfront_protocol import FrontState, connect

    def search(base, op):
        if b"1.2.840.113556.1.4.1941" in op:
            return [], 10
        return user()(base, op)
    front = FrontState(login_attribute="sAMAccountName")
    front.group_mode, front.candidates = GroupMode.AD_NESTED, frozenset({VPN})
    proto, _ = connect(front)
    upstream = Upstream(search=search)

    async def ensure():
        return upstream
    proto._ensure_upstream = ensure
    out = []
    defer.ensureDeferred(proto._primary(2, ALICE, "pw")).addBoth(out.append)
    (result, _), = out
    assert result.status is PrimaryStatus.UNAVAILABLE and "group query" in result.detail
    assert front.counters.get("ldap_incomplete_answers", why="referral") == 1
