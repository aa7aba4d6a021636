"""Issue 5 in the engine, with a Clock: challenges, passcodes, fatigue, locks, policy, memory."""

import ipaddress
import os

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from pushproxy.audit import AuditLog
from pushproxy.config import FailMode, NoDeviceMode, PushConfig
from pushproxy.decision import Outcome, PushResult, PushStatus, Reason
from pushproxy.engine import Engine, LoginRequest
from pushproxy.fatigue import FatigueLimits
from pushproxy.metrics import Counters
from pushproxy.policy import Action, Policy, Rule, Verification
from pushproxy.push import PasscodeVerdict
from tests.support import ScriptedDirectory, ScriptedProvider


class Factors:
    """Scripted second factors: a set of valid codes, locked users, alerts raised."""

    def __init__(self):
        self.codes = {"123456": "totp", "1234567890": "bypass"}
        self.locked = set()
        self.alerts = []

    def verify_passcode(self, username, code, now, *, source, limits):
        kind = self.codes.pop(code, None)  # each code works once
        return defer.succeed(PasscodeVerdict(kind) if kind else PasscodeVerdict.WRONG)

    def lock_of(self, username):
        return defer.succeed("locked" if username in self.locked else None)

    def fatigue_alert(self, username, now):
        self.alerts.append(username)


def make(policy=None, limits=None, timeout=60):
    clock = Clock()
    clock.advance(1_800_000_000)
    counters = Counters()
    engine = Engine(clock=clock, directory=ScriptedDirectory(), provider=ScriptedProvider(),
                    push=PushConfig(timeout=timeout, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(os.devnull, counters), counters=counters, policy=policy,
                    factors=Factors(), limits=limits or FatigueLimits())
    return engine, clock


def req(password="alice-pw", user="alice", client="vpn", station="198.51.100.7", state=None,
        verification=None):
    return LoginRequest(protocol="radius", username=user, password=password, client_name=client,
                        source="127.0.0.1", calling_station=station, nas="gw",
                        no_device=NoDeviceMode.REJECT, state=state, verification=verification)


def run(d):
    out = []
    d.addCallback(out.append)
    return out


def answer(engine, status=PushStatus.APPROVED, code=None):
    request = engine.provider.requests[-1]
    d = engine.provider._pending.pop(request.txid)
    d.callback(PushResult(status, request.txid, "dev", code=code))


NUMBER = Verification.NUMBER_MATCH
CODE = Verification.CODE_TO_LOGIN


def test_number_match_challenges_then_the_answer_with_state_waits_for_approval():
    engine, clock = make()
    first = run(engine.login(req(verification=NUMBER)))[0]
    assert first.outcome is Outcome.CHALLENGE and first.state
    (push,) = engine.provider.requests
    assert push.verification == "number_match" and push.number in first.message
    second = run(engine.login(req(password="ok", state=first.state, verification=NUMBER)))
    assert second == []  # held until the phone answers
    answer(engine, PushStatus.APPROVED)
    assert second[0].outcome is Outcome.ACCEPT and second[0].reason is Reason.PUSH_APPROVED


def test_number_mismatch_rejects_and_counts_as_a_denial():
    engine, clock = make(limits=FatigueLimits(max_denials=1))
    first = run(engine.login(req(verification=NUMBER)))[0]
    second = run(engine.login(req(password="x", state=first.state)))
    answer(engine, PushStatus.NUMBER_MISMATCH)
    assert second[0].reason is Reason.NUMBER_MISMATCH
    assert engine.factors.alerts == ["alice"]  # the denial threshold (1) was crossed
    third = run(engine.login(req(verification=NUMBER, station="2")))[0]
    assert third.reason is Reason.PUSHES_PAUSED


def test_code_to_login_right_code_accepts_wrong_code_rejects():
    for typed, reason in (("424242", Reason.PUSH_APPROVED), ("111111", Reason.WRONG_LOGIN_CODE)):
        engine, clock = make()
        first = run(engine.login(req(verification=CODE)))[0]
        answer(engine, PushStatus.APPROVED, code="424242")
        second = run(engine.login(req(password=typed, state=first.state)))
        assert second[0].reason is reason


@pytest.mark.parametrize("how", ["replayed", "other_client", "other_user", "expired", "forged"])
def test_challenge_state_misuse_is_rejected(how):
    engine, clock = make(timeout=30)
    first = run(engine.login(req(verification=NUMBER)))[0]
    state = first.state
    if how == "replayed":
        done = run(engine.login(req(password="x", state=state)))
        answer(engine)
        assert done[0].outcome is Outcome.ACCEPT
    kwargs = {"state": state, "password": "x"}
    if how == "other_client":
        kwargs["client"] = "other-gw"
    if how == "other_user":
        kwargs["user"] = "bob"
    if how == "expired":
        clock.advance(31)
    if how == "forged":
        kwargs["state"] = os.urandom(16)
    got = run(engine.login(req(**kwargs)))
    assert got[0].reason is Reason.CHALLENGE_INVALID and got[0].outcome is Outcome.REJECT


def test_passcode_suffix_accepts_once_without_a_push():
    engine, clock = make()
    assert run(engine.login(req("alice-pw,123456")))[0].reason is Reason.PASSCODE_TOTP
    assert run(engine.login(req("alice-pw,123456", station="2")))[0].reason is Reason.BAD_PASSCODE
    assert run(engine.login(req("alice-pw,1234567890")))[0].reason is Reason.PASSCODE_BYPASS
    assert engine.provider.requests == []


def test_passcode_never_rescues_a_wrong_password():
    engine, clock = make()
    assert run(engine.login(req("wrong,123456")))[0].reason is Reason.BAD_CREDENTIALS


def test_password_push_suffix_forces_a_push():
    engine, clock = make()
    got = run(engine.login(req("alice-pw,push")))
    assert len(engine.provider.requests) == 1
    answer(engine)
    assert got[0].reason is Reason.PUSH_APPROVED


def test_passcode_at_the_challenge_prompt_replaces_the_push():
    engine, clock = make()
    first = run(engine.login(req(verification=NUMBER)))[0]
    got = run(engine.login(req(password="123456", state=first.state)))
    assert got[0].reason is Reason.PASSCODE_TOTP
    assert engine.provider.cancelled == [engine.provider.requests[0].txid]


def test_push_spam_is_capped_per_window():
    engine, clock = make(limits=FatigueLimits(max_pending=1, max_pushes=3, window=600))
    reasons = []
    for i in range(20):
        got = run(engine.login(req(station=str(i))))
        if engine.provider._pending:
            answer(engine, PushStatus.TIMEOUT)
        reasons.append(got[0].reason if got else None)
        clock.advance(3)
    assert len(engine.provider.requests) == 3
    assert reasons.count(Reason.RATE_LIMITED) == 17


def test_locked_user_gets_no_push():
    engine, clock = make()
    engine.factors.locked.add("alice")
    got = run(engine.login(req()))
    assert got[0].reason is Reason.USER_LOCKED and engine.provider.requests == []


def test_policy_allow_deny_and_rule_verification():
    policy = Policy(rules=(
        Rule(name="office", action=Action.ALLOW,
             networks=(ipaddress.ip_network("10.0.0.0/8"),)),
        Rule(name="blocked", action=Action.DENY, users=frozenset({"mallory"})),
        Rule(name="partners", action=Action.PUSH, clients=frozenset({"partner-gw"}),
             verification=NUMBER),
    ), default_verification=Verification.NONE, timezone="UTC", remember_minutes=0)
    engine, clock = make(policy=policy)
    allowed = run(engine.login(req(station="10.1.2.3")))[0]
    assert (allowed.reason, allowed.rule) == (Reason.POLICY_ALLOW, "office")
    engine.directory.users["mallory"] = "m-pw"
    denied = run(engine.login(req(user="mallory", password="x")))
    assert denied[0].reason is Reason.BAD_CREDENTIALS  # the password is checked first
    denied = run(engine.login(req(user="mallory", password="m-pw")))[0]
    assert (denied.reason, denied.rule) == (Reason.POLICY_DENY, "blocked")
    partner = run(engine.login(req(client="partner-gw", verification=Verification.NONE)))[0]
    assert partner.outcome is Outcome.CHALLENGE  # the rule's verification beats the client's
    assert engine.provider.requests[-1].verification == "number_match"


def test_remembered_login_skips_the_push_for_the_same_station_only():
    policy = Policy(rules=(), default_verification=Verification.NONE, timezone="UTC",
                    remember_minutes=10)
    engine, clock = make(policy=policy)
    run(engine.login(req()))
    answer(engine)
    clock.advance(60)
    assert run(engine.login(req()))[0].reason is Reason.REMEMBERED
    other = run(engine.login(req(station="203.0.113.9")))
    assert other == [] and len(engine.provider.requests) == 2
    answer(engine, PushStatus.DENIED)
    clock.advance(60)
    # A denial forgets the user's remembered logins everywhere.
    assert run(engine.login(req())) == []
    assert len(engine.provider.requests) == 3


def test_case_variants_of_a_username_share_its_limits_and_devices():
    engine, clock = make(limits=FatigueLimits(max_pending=1))
    engine.directory.users["ALICE"] = engine.directory.users["Alice"] = "alice-pw"
    run(engine.login(req(user="alice", station="1")))
    blocked = run(engine.login(req(user="ALICE", station="2")))[0]
    assert blocked.reason is Reason.TOO_MANY_PENDING
    assert engine.provider.requests[0].username == "alice"


def test_a_denied_challenge_counts_even_if_the_user_never_returns_to_the_prompt():
    engine, clock = make(limits=FatigueLimits(max_denials=2))
    for station in ("1", "2"):
        run(engine.login(req(verification=NUMBER, station=station)))
        answer(engine, PushStatus.NUMBER_MISMATCH)
    blocked = run(engine.login(req(verification=NUMBER, station="3")))[0]
    assert blocked.reason is Reason.PUSHES_PAUSED
    assert engine.factors.alerts == ["alice"]


def test_a_failing_fraud_lock_check_follows_failmode_and_is_counted_as_a_provider_error():
    """The lock check is the push layer's first store read: when the store is down it
    must look like any other push-layer outage (failmode decides, the counter moves)."""
    from pushproxy.push import ProviderUnavailable

    engine, clock = make()
    engine.factors.lock_of = lambda username: defer.fail(ProviderUnavailable("store: locked"))
    (decision,) = run(engine.login(req()))
    assert decision.reason is Reason.PUSH_UNAVAILABLE_SECURE
    assert engine.provider.requests == []
    assert engine.counters.get("push_provider_errors") == 1
