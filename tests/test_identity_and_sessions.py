"""Issue 14, findings 2, 4, 5 and 7 in the pure layers and the engine (with a Clock).

2: per-user state keys on the account the directory proved, never on the typed
   spelling. 4: a login joins a pending one only within one session. 5: the
   LDAP front end's peer is an application server. 7: a challenge follow-up
   must carry the challenged User-Name.
"""

import ipaddress
import json

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from pushproxy.audit import AuditLog
from pushproxy.challenges import ChallengeError, ChallengeTable
from pushproxy.config import ConfigError, FailMode, NoDeviceMode, PushConfig, parse_config
from pushproxy.decision import Outcome, PrimaryResult, PrimaryStatus, PushResult, PushStatus, Reason
from pushproxy.engine import Engine, LoginRequest, join_key
from pushproxy.fatigue import FatigueLimits
from pushproxy.ldapnames import account_of
from pushproxy.metrics import Counters
from pushproxy.policy import Action, LoginContext, Policy, Rule, Verification, evaluate
from tests.support import ScriptedProvider
from tests.test_config import ENV, GOOD
from tests.test_engine_verified import Factors


class FoldingDirectory:
    """Like slapd: several spellings find alice's entry, whose stored uid is "alice"."""

    def __init__(self, spellings=("alice", "alİce", "Alice")):
        self.spellings = set(spellings)
        self.calls = []

    def authenticate(self, username, password):
        self.calls.append(username)
        if username not in self.spellings:
            return defer.succeed(PrimaryResult(PrimaryStatus.UNKNOWN_USER))
        if password != "alice-pw":
            return defer.succeed(PrimaryResult(PrimaryStatus.BAD_CREDENTIALS))
        return defer.succeed(PrimaryResult(PrimaryStatus.OK, dn="uid=alice,dc=example",
                                           account="alice"))


def make(tmp_path, *, policy=None, limits=None, no_device=NoDeviceMode.REJECT, directory=None):
    clock = Clock()
    clock.advance(1_800_000_000)
    counters = Counters()
    engine = Engine(clock=clock, directory=directory or FoldingDirectory(),
                    provider=ScriptedProvider(),
                    push=PushConfig(timeout=60, failmode=FailMode.SECURE, no_device=no_device),
                    audit=AuditLog(str(tmp_path / "audit.jsonl"), counters), counters=counters,
                    policy=policy, factors=Factors(),
                    limits=limits or FatigueLimits(max_pending=5, max_pushes=50))
    return engine, clock


def req(user="alice", *, password="alice-pw", client="vpn", station="198.51.100.7", nas="gw",
        nas_ip=None, port=None, state=None, verification=None, protocol="radius",
        peer_is_application=False, no_device=NoDeviceMode.REJECT):
    return LoginRequest(protocol=protocol, username=user, password=password, client_name=client,
                        source="127.0.0.1", calling_station=station, nas=nas,
                        no_device=no_device, state=state, verification=verification,
                        nas_ip=nas_ip, port=port, peer_is_application=peer_is_application)


def run(d):
    out = []
    d.addCallback(out.append)
    return out


def answer(engine, index=-1, status=PushStatus.APPROVED):
    request = engine.provider.requests[index]
    engine.provider._pending.pop(request.txid).callback(PushResult(status, request.txid, "dev"))


def audit(tmp_path):
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


# -- finding 2: one canonical identity per login --


def test_a_folded_spelling_pushes_to_the_directorys_account_and_audits_both(tmp_path):
    engine, _ = make(tmp_path)
    got = run(engine.login(req("alİce")))
    assert [r.username for r in engine.provider.requests] == ["alice"]
    answer(engine)
    assert got[0].reason is Reason.PUSH_APPROVED and got[0].user == "alice"
    (event,) = audit(tmp_path)
    assert (event["user"], event["sent_user"]) == ("alice", "alİce")


def test_a_folded_spelling_meets_alices_deny_rule(tmp_path):
    policy = Policy(rules=(Rule("alice-denied", Action.DENY, users=frozenset({"alice"})),))
    engine, _ = make(tmp_path, policy=policy, no_device=NoDeviceMode.ALLOW)
    for spelling in ("alİce", "Alice", "alice"):
        got = run(engine.login(req(spelling, no_device=NoDeviceMode.ALLOW)))
        assert got[0].reason is Reason.POLICY_DENY, spelling
    assert engine.provider.requests == []


def test_a_folded_spelling_shares_alices_fraud_lock_pending_limit_and_passcodes(tmp_path):
    engine, _ = make(tmp_path, limits=FatigueLimits(max_pending=1))
    engine.factors.locked.add("alice")
    assert run(engine.login(req("alİce")))[0].reason is Reason.USER_LOCKED
    engine.factors.locked.clear()
    run(engine.login(req("alice")))
    assert run(engine.login(req("alİce", station="2")))[0].reason is Reason.TOO_MANY_PENDING
    seen = []
    engine.factors.verify_passcode = lambda user, code, now, **_: seen.append(user) or \
        defer.succeed(None)
    run(engine.login(req("alİce", password="alice-pw,654321", station="3")))
    assert seen == ["alice"]


def test_a_folded_spelling_uses_alices_remembered_login(tmp_path):
    engine, _ = make(tmp_path, policy=Policy(remember_minutes=10))
    first = run(engine.login(req("alice")))
    answer(engine)
    assert first[0].reason is Reason.PUSH_APPROVED
    # Remembered for the account: any spelling of alice from that station skips the push.
    assert run(engine.login(req("alİce")))[0].reason is Reason.REMEMBERED


def test_without_an_account_the_engine_keys_on_the_casefolded_name_sent(tmp_path):
    class NoAccount(FoldingDirectory):
        def authenticate(self, username, password):
            return defer.succeed(PrimaryResult(PrimaryStatus.OK))
    engine, _ = make(tmp_path, directory=NoAccount())
    run(engine.login(req("ALICE")))
    assert engine.provider.requests[0].username == "alice"


@pytest.mark.parametrize("attrs,dn,expected", [
    ({"uid": ["alice"]}, "uid=alice,ou=people", "alice"),
    ({"UID": ["Alice"]}, "uid=alice,ou=people", "alice"),
    ({"uid": "alice"}, "uid=alice,ou=people", "alice"),
    ({"uid": ["al", "alice"]}, "uid=alice,ou=people", "alice"),  # the value the DN names
    ({"uid": ["zed", "Bob"]}, "cn=Bob Smith,ou=people", "bob"),  # else the first, casefolded
    ({"uid": []}, "uid=alice,ou=people", None),
    ({}, "uid=alice,ou=people", None),  # never the DN's (typed) value: fail closed
])
def test_account_of_reads_the_stored_value(attrs, dn, expected):
    assert account_of(attrs, "uid", dn) == expected


def parse_ldap(tmp_path, extra: str):
    text = GOOD.replace("  user_base: ou=people,dc=example,dc=com\n",
                        "  user_base: ou=people,dc=example,dc=com\n" + extra)
    return parse_config(text, base_dir=tmp_path, env=ENV)


@pytest.mark.parametrize("extra,expected", [
    ("", "uid"),
    ('  user_filter: "(&(objectClass=user)(sAMAccountName={username}))"\n', "sAMAccountName"),
    ('  user_filter: "(|(uid={username})(mail={username}))"\n', "uid"),
    ('  user_filter: "(mail={username})"\n  username_attribute: uid\n', "uid"),
])
def test_username_attribute_defaults_to_the_filters_attribute(tmp_path, extra, expected):
    assert parse_ldap(tmp_path, extra).ldap.username_attribute == expected


@pytest.mark.parametrize("extra", ['  user_filter: "(cn:dn:={username})"\n',
                                   '  username_attribute: "u id"\n'])
def test_username_attribute_must_be_a_name_the_filter_or_the_admin_gives(tmp_path, extra):
    with pytest.raises(ConfigError) as err:
        parse_ldap(tmp_path, extra)
    assert any(p.startswith("ldap.username_attribute") for p in err.value.problems), \
        err.value.problems


# -- finding 4: joins only within one session --


def test_join_key_needs_a_station_or_a_port():
    assert join_key(req(station=None), "alice") is None
    assert join_key(req(station=None, port="5"), "alice") is not None
    assert join_key(req(), "alice") is not None


@pytest.mark.parametrize("other", [
    dict(port="2"), dict(nas="gw-2"), dict(nas_ip="192.0.2.9"), dict(client="vpn-2"),
], ids=["nas-port", "nas-identifier", "nas-ip", "client"])
def test_another_session_never_joins_and_is_not_accepted_by_the_first_approval(tmp_path, other):
    engine, _ = make(tmp_path)
    base = dict(station=None, port="1", nas_ip="192.0.2.1")
    mine = run(engine.login(req(**base)))
    theirs = run(engine.login(req(**{**base, **other})))
    assert len(engine.provider.requests) == 2
    answer(engine, 0)
    assert mine[0].outcome is Outcome.ACCEPT and theirs == []
    answer(engine, 1, PushStatus.DENIED)
    assert theirs[0].reason is Reason.PUSH_DENIED
    assert engine.counters.get("logins_joined") == 0


def test_no_station_and_no_port_runs_every_login_on_its_own(tmp_path):
    engine, _ = make(tmp_path)
    logins = [run(engine.login(req(station=None))) for _ in range(2)]
    assert len(engine.provider.requests) == 2 and engine.pending == 2
    answer(engine, 0)
    assert logins[0][0].outcome is Outcome.ACCEPT and logins[1] == []
    answer(engine, 1)
    assert engine.pending == 0


def test_the_same_session_and_password_still_joins(tmp_path):
    engine, _ = make(tmp_path)
    first = run(engine.login(req(station=None, port="7")))
    resend = run(engine.login(req(station=None, port="7")))
    assert len(engine.provider.requests) == 1 and engine.counters.get("logins_joined") == 1
    answer(engine)
    assert first[0].outcome is resend[0].outcome is Outcome.ACCEPT


def test_another_password_spelling_in_the_same_session_does_not_share_the_push(tmp_path):
    """"alice-pw" and "alice-pw,push" pass the same bind, but are two credentials."""
    engine, _ = make(tmp_path)
    run(engine.login(req()))
    run(engine.login(req(password="alice-pw,push")))
    assert len(engine.provider.requests) == 2 and engine.counters.get("pushes_joined") == 0


# -- finding 5: the LDAP front end's peer is the application server --


NETS = (ipaddress.ip_network("10.0.0.0/8"),)


def context(client="ldap-apps", ip="10.1.2.3", app=True):
    return LoginContext("alice", client, ip, now=1_800_000_000, peer_is_application=app)


def test_a_networks_rule_without_clients_never_matches_an_application_peer():
    policy = Policy(rules=(Rule("office-lan", Action.ALLOW, networks=NETS),))
    assert evaluate(policy, context()).action is Action.PUSH
    assert evaluate(policy, context(app=False)).action is Action.ALLOW


def test_a_networks_rule_naming_the_client_matches_its_application_peer():
    policy = Policy(rules=(Rule("apps", Action.ALLOW, networks=NETS,
                                clients=frozenset({"ldap-apps"})),))
    decision = evaluate(policy, context())
    assert decision.action is Action.ALLOW and decision.names_client
    assert evaluate(policy, context(client="other")).action is Action.PUSH


def test_remembered_logins_skip_ldap_front_end_binds_unless_a_rule_names_the_front_end(tmp_path):
    ldap = dict(protocol="ldap", client="ldap-apps", station="10.1.2.3", port="connection 1",
                peer_is_application=True)
    engine, _ = make(tmp_path, policy=Policy(remember_minutes=10))
    run(engine.login(req(**ldap)))
    answer(engine)
    assert run(engine.login(req(**{**ldap, "port": "connection 2"}))) == []  # pushed again
    assert len(engine.provider.requests) == 2
    named = Policy(remember_minutes=10, rules=(
        Rule("apps", Action.PUSH, clients=frozenset({"ldap-apps"})),))
    engine, _ = make(tmp_path, policy=named)
    run(engine.login(req(**ldap)))
    answer(engine)
    got = run(engine.login(req(**{**ldap, "port": "connection 2"})))
    assert got[0].reason is Reason.REMEMBERED


# -- finding 7: a challenge follow-up must carry the challenged User-Name --


def test_the_challenge_table_refuses_a_follow_up_without_user_name():
    table = ChallengeTable()
    challenge = table.open("vpn", "alice", "number_match", 0.0, 60.0, sent="alİce")
    with pytest.raises(ChallengeError, match="without User-Name"):
        table.find(challenge.state, "vpn", None, 1.0)
    assert table.find(challenge.state, "vpn", "ALİCE", 1.0) is challenge  # the spelling sent
    assert table.find(challenge.state, "vpn", "Alice", 1.0) is challenge  # the account
    with pytest.raises(ChallengeError):
        table.find(challenge.state, "vpn", "bob", 1.0)


@pytest.mark.parametrize("typed", ["ok", "123456"], ids=["answer", "totp-code"])
def test_a_follow_up_without_user_name_is_rejected_and_audited(tmp_path, typed):
    engine, _ = make(tmp_path)
    first = run(engine.login(req(verification=Verification.NUMBER_MATCH)))[0]
    answer(engine)
    got = run(engine.login(req(None, password=typed, state=first.state)))
    assert got[0].reason is Reason.CHALLENGE_INVALID and got[0].outcome is Outcome.REJECT
    assert engine.counters.get("internal_errors") == 0
    last = audit(tmp_path)[-1]
    assert (last["reason"], last["user"]) == ("challenge_state_invalid", None)
    # The challenge is still alice's to answer.
    ok = run(engine.login(req(password="x", state=first.state)))
    assert ok[0].outcome is Outcome.ACCEPT and ok[0].user == "alice"


@pytest.mark.parametrize("attrs,expected", [
    ({}, None),
    ({"NAS-Port": 5}, "5"),
    ({"NAS-Port-Id": "tun0"}, "id=tun0"),
    ({"NAS-Port": 5, "NAS-Port-Id": "tun0"}, "5 id=tun0"),
])
def test_the_codec_reads_nas_port_and_nas_port_id_as_the_session(attrs, expected):
    from pushproxy.radius import codec
    from tests.test_radius_server import DICT, SECRET, request
    _, raw = request(**{k.replace("-", "_"): v for k, v in attrs.items()},
                     NAS_IP_Address="192.0.2.1")
    decoded = codec.decode_request(raw, SECRET, DICT, require_message_authenticator=True)
    assert decoded.nas_port == expected and decoded.nas_ip == "192.0.2.1"


def test_policy_explain_says_why_a_networks_rule_passes_over_an_application_peer():
    from pushproxy.policy import explain
    policy = Policy(rules=(Rule("office-lan", Action.ALLOW, networks=NETS),),
                    remember_minutes=10)
    text = explain(policy, context())
    assert "is an application server, not the user" in text
    assert "Remembered login: off for this client" in text


class _Upstream:
    """Answers the LDAP front end's bind with success and its entry read with ``entries``."""

    def __init__(self, entries):
        from pushproxy.ldapfront import ber
        self.ber = ber
        self.entries = entries
        self.server = type("S", (), {"url": "ldap://upstream"})()
        self.response_timeout = 5

    def exchange(self, request, mid, final):
        ber = self.ber
        if ber.BIND_RESPONSE in final:
            return defer.succeed([ber.parse_message(ber.bind_response(mid, ber.SUCCESS))])
        out = []
        for dn, attrs in self.entries:
            body = b"".join(ber.tlv(ber.SEQUENCE, ber.octets(k) + ber.tlv(
                ber.SET, b"".join(ber.octets(v) for v in vs))) for k, vs in attrs.items())
            out.append(ber.parse_message(ber.message(
                mid, ber.SEARCH_ENTRY, ber.octets(dn) + ber.tlv(ber.SEQUENCE, body))))
        out.append(ber.parse_message(ber.message(mid, ber.SEARCH_DONE, ber.result(0))))
        return defer.succeed(out)


@pytest.mark.parametrize("typed_dn,entries,status,account", [
    # The stored entry names the account, whatever the spelling of the bind DN.
    ("uid=alİce,ou=people", [("uid=alice,ou=people", {"uid": ["alice"]})], PrimaryStatus.OK,
     "alice"),
    ("uid=ALICE,ou=people", [("uid=alice,ou=people", {"uid": ["alias", "alice"]})],
     PrimaryStatus.OK, "alice"),
    # The entry is hidden from its user: the typed RDN only when plain ASCII.
    ("uid=Alice,ou=people", [], PrimaryStatus.OK, "alice"),
    ("uid=alİce,ou=people", [], PrimaryStatus.UNKNOWN_USER, None),
])
def test_the_ldap_front_end_keys_on_the_stored_name(typed_dn, entries, status, account):
    from pushproxy.config import GroupMode
    from pushproxy.ldapfront.primary import read_user
    d = defer.ensureDeferred(read_user(_Upstream(entries), 2, typed_dn, "pw", "uid",
                                       GroupMode.MEMBER_OF, frozenset(), Counters()))
    (result, _), = run(d)
    assert (result.status, result.account) == (status, account)


def test_the_ldap_front_ends_login_attribute_follows_ldap_username_attribute(tmp_path):
    front = "ldap_front:\n  listen: [\"127.0.0.1:0\"]\n  require_tls: false\n"
    ad = '  user_filter: "(sAMAccountName={username})"\n'
    assert parse_ldap(tmp_path, ad + front).ldap_front.login_attribute == "sAMAccountName"
    with pytest.raises(ConfigError) as err:
        parse_ldap(tmp_path, ad + front + "  login_attribute: uid\n")
    assert any("differs from ldap.username_attribute" in p for p in err.value.problems)


def test_one_entry_is_one_account_on_both_front_ends():
    from pushproxy.ldapfront.binds import login_name
    attrs = {"uid": ["zed", "Bob"]}
    assert login_name(attrs, "uid", "cn=Bob Smith,ou=people").casefold() == \
        account_of(attrs, "uid", "cn=Bob Smith,ou=people") == "bob"
