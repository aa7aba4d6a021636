"""The directory client against a scripted AD-like server on loopback: account flags read after
a right password (accountExpires on the clock passed in), the primary group by RID, and every
partial answer (referral, references to another domain, ranged memberOf, a group in another
domain) refused with a counter instead of deciding on the part that came back."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor, threads
from twisted.internet.task import Clock

from pushproxy.adstate import AccountState
from pushproxy.config import GroupMode, LdapConfig, LdapServer
from pushproxy.decision import PrimaryStatus
from pushproxy.ldapauth import LdapDirectory
from pushproxy.ldapfront import ber
from pushproxy.metrics import Counters

BASE = "dc=corp,dc=example"
SERVICE = f"cn=svc,cn=users,{BASE}"
ALICE = f"cn=alice,cn=users,{BASE}"
USERS_GROUP = f"cn=domain users,cn=users,{BASE}"
VPN = f"cn=vpn,cn=users,{BASE}"
NOW = 1_800_000_000.0


def entry(mid, dn, attrs):
    body = ber.octets(dn) + ber.tlv(ber.SEQUENCE, b"".join(
        ber.tlv(ber.SEQUENCE, ber.octets(k) + ber.tlv(ber.SET, b"".join(ber.octets(v)
                                                                         for v in vs)))
        for k, vs in attrs.items()))
    return ber.message(mid, ber.SEARCH_ENTRY, body)


def done(mid, code=0, message=""):
    return ber.message(mid, ber.SEARCH_DONE, ber.result(code, message))


def reference(mid, url):
    return ber.message(mid, ber.SEARCH_REFERENCE, ber.octets(url))


class Scripted(protocol.Protocol):
    """Answers binds (service: ok; alice: the script's password) and searches by base DN."""

    def dataReceived(self, data):
        buf = bytearray(data)
        while (found := ber.next_message(buf, 1 << 20)) is not None:
            msg = found[1]
            if msg.op_tag == ber.BIND_REQUEST:
                req = ber.parse_bind(msg.op)
                ok = req.name == SERVICE or req.password == b"right"
                self.transport.write(ber.bind_response(msg.message_id, 0 if ok else 49))
            elif msg.op_tag == ber.SEARCH_REQUEST:
                _, start, stop = ber.read_tlv(msg.op, 0, len(msg.op))
                base = msg.op[start:stop].decode()
                self.transport.write(b"".join(self.factory.script(msg.message_id, base,
                                                                  msg.op)))


@pytest.fixture
def server():
    factory = protocol.Factory.forProtocol(Scripted)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield factory, port.getHost().port
    port.stopListening()


def directory(port, *, mode=GroupMode.AD_NESTED, groups=(VPN,), clock=None):
    config = LdapConfig(
        servers=(LdapServer(url=f"ldap://127.0.0.1:{port}", host="127.0.0.1", port=port,
                            use_ssl=False),),
        start_tls=False, ca_file=None, bind_dn=SERVICE, bind_password="svc", user_base=BASE,
        user_filter="(&(objectClass=user)(sAMAccountName={username}))", bind_template=None,
        required_groups=tuple(groups), group_mode=mode, group_base=None, connect_timeout=2,
        response_timeout=2, backoff=30, pool_size=2, max_queue=8,
        username_attribute="sAMAccountName")
    counters = Counters()
    ldap = LdapDirectory(config, reactor, counters)
    if clock is not None:
        ldap._now = clock.seconds  # the wall clock of accountExpires, driven by the test
    return ldap, counters


def alice(**extra):
    return {"sAMAccountName": ["alice"], "userAccountControl": ["512"], **extra}


def script_for(user_answer, *, group=None, token=None):
    """A script: the user search gets ``user_answer``; groups answer per ``group``/``token``."""
    def script(mid, base, op):
        if base == BASE:
            return user_answer(mid)
        if b"1.2.840.113556.1.4.1941" in op:  # nested-membership query on the user's entry
            return group(mid, base) if group else [done(mid)]
        if b"primaryGroupToken" in op:
            return [entry(mid, base, {"primaryGroupToken": [token(base)]}), done(mid)] \
                if token else [done(mid)]
        return [done(mid)]
    return script


@pytest_twisted.inlineCallbacks
def login(ldap, password="right"):
    try:
        return (yield ldap.authenticate("alice", password))
    finally:
        yield threads.deferToThread(ldap.stop)


@pytest.mark.parametrize("attrs,state", [
    (alice(userAccountControl=["514"]), AccountState.ACCOUNT_DISABLED),
    (alice(**{"msDS-User-Account-Control-Computed": ["16"]}), AccountState.ACCOUNT_LOCKED),
    (alice(pwdLastSet=["0"]), AccountState.MUST_CHANGE_PASSWORD),
])
@pytest_twisted.inlineCallbacks
def test_flags_read_after_the_right_password_refuse_the_account(server, attrs, state):
    factory, port = server
    factory.script = script_for(lambda mid: [entry(mid, ALICE, attrs), done(mid)])
    ldap, counters = directory(port)
    result = yield login(ldap)
    assert (result.status, result.account_state, result.password_proved) == \
        (PrimaryStatus.ACCOUNT_REFUSED, state, True)
    assert result.account == "alice"
    assert counters.get("ldap_account_refusals", state=state.value) == 1


@pytest_twisted.inlineCallbacks
def test_flags_are_never_read_for_a_wrong_password(server):
    """A disabled account with a wrong password is a wrong password (no oracle)."""
    factory, port = server
    factory.script = script_for(
        lambda mid: [entry(mid, ALICE, alice(userAccountControl=["514"])), done(mid)])
    ldap, _ = directory(port)
    result = yield login(ldap, password="wrong")
    assert (result.status, result.account_state) == (PrimaryStatus.BAD_CREDENTIALS, None)


@pytest_twisted.inlineCallbacks
def test_account_expiry_follows_the_clock_passed_in(server):
    factory, port = server
    expires = str(int((NOW + 60) * 10_000_000) + 116444736000000000)
    factory.script = script_for(
        lambda mid: [entry(mid, ALICE, alice(accountExpires=[expires])), done(mid)],
        group=lambda mid, base: [entry(mid, base, {}), done(mid)])
    clock = Clock()
    clock.advance(NOW)
    ldap, _ = directory(port, clock=clock)
    assert (yield ldap.authenticate("alice", "right")).status is PrimaryStatus.OK
    clock.advance(60)
    result = yield login(ldap)
    assert result.account_state is AccountState.ACCOUNT_EXPIRED


@pytest.mark.parametrize("mode", [GroupMode.AD_NESTED, GroupMode.MEMBER_OF])
@pytest_twisted.inlineCallbacks
def test_the_primary_group_is_matched_by_rid_in_the_users_domain_only(server, mode):
    factory, port = server
    other_domain = "cn=domain users,cn=users,dc=child,dc=corp,dc=example"
    factory.script = script_for(
        lambda mid: [entry(mid, ALICE, alice(primaryGroupID=["513"])), done(mid)],
        token=lambda base: "513")
    ldap, _ = directory(port, mode=mode, groups=(USERS_GROUP, other_domain))
    result = yield login(ldap)
    assert result.status is PrimaryStatus.OK and result.groups == frozenset({USERS_GROUP})


@pytest.mark.parametrize("rid", ["514", "513 ", "0x201", "5" * 12, ""])
@pytest_twisted.inlineCallbacks
def test_another_or_odd_primary_group_id_is_no_membership(server, rid):
    factory, port = server
    factory.script = script_for(
        lambda mid: [entry(mid, ALICE, alice(primaryGroupID=[rid])), done(mid)],
        token=lambda base: "513")
    ldap, _ = directory(port, groups=(USERS_GROUP,))
    assert (yield login(ldap)).status is PrimaryStatus.NOT_IN_GROUP


@pytest.mark.parametrize("user_answer,why", [
    (lambda mid: [done(mid, 10, "Referral: ldap://child.corp.example/")], "referral"),
    (lambda mid: [reference(mid, "ldap://child.corp.example/DC=child,DC=corp,DC=example"),
                  done(mid)], "referral"),
])
@pytest_twisted.inlineCallbacks
def test_a_user_search_answered_elsewhere_is_refused_and_the_server_stays_up(
        server, user_answer, why):
    factory, port = server
    factory.script = script_for(user_answer)
    ldap, counters = directory(port)
    result = yield login(ldap)
    assert result.status is PrimaryStatus.UNAVAILABLE and "global catalog" in result.detail
    assert counters.get("ldap_incomplete_answers", why=why) == 1
    assert counters.get("ldap_server_errors", server=f"ldap://127.0.0.1:{port}") == 0


@pytest_twisted.inlineCallbacks
def test_references_to_ads_own_partitions_are_not_users(server):
    factory, port = server
    factory.script = script_for(lambda mid: [
        reference(mid, "ldap://corp.example/CN=Configuration,DC=corp,DC=example"),
        reference(mid, "ldap://ForestDnsZones.corp.example/DC=ForestDnsZones,DC=corp,DC=x"),
        done(mid)])
    ldap, counters = directory(port)
    assert (yield login(ldap)).status is PrimaryStatus.UNKNOWN_USER


@pytest_twisted.inlineCallbacks
def test_references_beside_the_one_user_found_do_not_matter(server):
    factory, port = server
    factory.script = script_for(
        lambda mid: [entry(mid, ALICE, alice()), reference(mid, "ldap://child/DC=child"),
                     done(mid)],
        group=lambda mid, base: [entry(mid, base, {}), done(mid)])
    ldap, _ = directory(port)
    assert (yield login(ldap)).status is PrimaryStatus.OK


@pytest.mark.parametrize("code", [10, 53, 1])
@pytest_twisted.inlineCallbacks
def test_a_group_query_without_a_plain_answer_refuses_rather_than_says_not_a_member(
        server, code):
    factory, port = server
    factory.script = script_for(lambda mid: [entry(mid, ALICE, alice()), done(mid)],
                                group=lambda mid, base: [done(mid, code, "elsewhere")])
    ldap, counters = directory(port)
    result = yield login(ldap)
    assert result.status is PrimaryStatus.UNAVAILABLE
    assert counters.get("ldap_incomplete_answers",
                        why="referral" if code == 10 else "group_query") == 1


@pytest_twisted.inlineCallbacks
def test_a_group_that_no_longer_exists_is_simply_not_held(server):
    factory, port = server
    factory.script = script_for(lambda mid: [entry(mid, ALICE, alice()), done(mid)],
                                group=lambda mid, base: [done(mid, 32)])
    ldap, _ = directory(port)
    assert (yield login(ldap)).status is PrimaryStatus.NOT_IN_GROUP


@pytest_twisted.inlineCallbacks
def test_a_ranged_member_of_is_refused_in_member_of_mode(server):
    """Over 1,500 groups AD sends memberOf;range=0-1499: the required group may be past it."""
    factory, port = server
    factory.script = script_for(lambda mid: [
        entry(mid, ALICE, alice(**{"memberOf;range=0-1499": [f"cn=g{i},{BASE}"
                                                             for i in range(3)]})),
        done(mid)])
    ldap, counters = directory(port, mode=GroupMode.MEMBER_OF)
    result = yield login(ldap)
    assert result.status is PrimaryStatus.UNAVAILABLE and "ad_nested" in result.detail
    assert counters.get("ldap_incomplete_answers", why="range") == 1


@pytest_twisted.inlineCallbacks
def test_a_groups_rid_is_asked_once_per_ttl_not_per_login(server):
    factory, port = server
    asked = []

    def token(base):
        asked.append(base)
        return "513"
    factory.script = script_for(
        lambda mid: [entry(mid, ALICE, alice(primaryGroupID=["513"])), done(mid)], token=token)
    clock = Clock()
    ldap, _ = directory(port, mode=GroupMode.MEMBER_OF, groups=(USERS_GROUP,))
    ldap.monotonic = clock.seconds
    try:
        for _ in range(3):
            result = yield ldap.authenticate("alice", "right")
            assert result.groups == frozenset({USERS_GROUP})
        assert asked == [USERS_GROUP]
        clock.advance(301)
        assert (yield ldap.authenticate("alice", "right")).status is PrimaryStatus.OK
        assert asked == [USERS_GROUP] * 2
    finally:
        yield threads.deferToThread(ldap.stop)


@pytest_twisted.inlineCallbacks
def test_a_lookup_for_an_upstream_login_refuses_a_disabled_account(server):
    """groups_from_ldap: the upstream proved the password; AD's flags still refuse."""
    factory, port = server
    factory.script = script_for(
        lambda mid: [entry(mid, ALICE, alice(userAccountControl=["514"])), done(mid)])
    ldap, _ = directory(port)
    try:
        result = yield ldap.lookup("alice")
    finally:
        yield threads.deferToThread(ldap.stop)
    assert (result.status, result.account_state) == (PrimaryStatus.ACCOUNT_REFUSED,
                                                     AccountState.ACCOUNT_DISABLED)
