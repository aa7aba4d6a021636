"""The engine: decisions, timeouts, failmode, joining, audit — with a Clock."""

import json

import pytest
from twisted.internet.task import Clock

from pushproxy.audit import AuditLog
from pushproxy.config import FailMode, NoDeviceMode, PushConfig
from pushproxy.decision import Outcome, PushStatus, Reason
from pushproxy.engine import Engine, LoginRequest
from pushproxy.fatigue import FatigueLimits
from pushproxy.metrics import Counters
from tests.support import ScriptedDirectory, ScriptedProvider


def make(tmp_path, *, failmode=FailMode.SECURE, provider=None, directory=None, timeout=60):
    clock = Clock()
    clock.advance(1_800_000_000)
    counters = Counters()
    audit = AuditLog(str(tmp_path / "audit.jsonl"), counters)
    engine = Engine(clock=clock, directory=directory or ScriptedDirectory(),
                    provider=provider or ScriptedProvider(),
                    push=PushConfig(timeout=timeout, failmode=failmode,
                                    no_device=NoDeviceMode.REJECT),
                    audit=audit, counters=counters)
    return engine, clock


def login(user="alice", password="alice-pw", station="198.51.100.7",
          no_device=NoDeviceMode.REJECT):
    return LoginRequest(protocol="radius", username=user, password=password,
                        client_name="vpn", source="127.0.0.1", calling_station=station,
                        nas="gw1", no_device=no_device)


def result_of(d):
    out = []
    d.addCallback(out.append)
    return out


def audit_lines(tmp_path):
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_approve_accepts_and_audits_without_password(tmp_path):
    engine, clock = make(tmp_path)
    got = result_of(engine.login(login()))
    assert got == []  # held until the phone answers
    engine.provider.answer(status=PushStatus.APPROVED)
    assert got[0].outcome is Outcome.ACCEPT and got[0].reason is Reason.PUSH_APPROVED
    (event,) = audit_lines(tmp_path)
    assert event["outcome"] == "accept" and event["user"] == "alice"
    assert event["txid"] == engine.provider.requests[0].txid
    assert "alice-pw" not in (tmp_path / "audit.jsonl").read_text()


def test_push_carries_context_for_the_phone(tmp_path):
    engine, clock = make(tmp_path)
    engine.login(login())
    (req,) = engine.provider.requests
    assert (req.username, req.application, req.client_ip, req.nas) == \
        ("alice", "vpn", "198.51.100.7", "gw1")
    assert req.expires - req.created == 60


def test_deny_rejects(tmp_path):
    engine, clock = make(tmp_path)
    got = result_of(engine.login(login()))
    engine.provider.answer(status=PushStatus.DENIED)
    assert got[0].reason is Reason.PUSH_DENIED and got[0].outcome is Outcome.REJECT


def test_wrong_password_rejects_without_push(tmp_path):
    engine, clock = make(tmp_path)
    got = result_of(engine.login(login(password="wrong")))
    assert got[0].reason is Reason.BAD_CREDENTIALS
    assert engine.provider.requests == []


def test_timeout_rejects_exactly_at_the_timeout_and_withdraws_the_push(tmp_path):
    engine, clock = make(tmp_path, timeout=30)
    got = result_of(engine.login(login()))
    clock.advance(29.9)
    assert got == []
    clock.advance(0.2)
    assert got[0].reason is Reason.PUSH_TIMEOUT and got[0].outcome is Outcome.REJECT
    assert engine.provider.cancelled == [engine.provider.requests[0].txid]


@pytest.mark.parametrize("failmode,outcome,reason", [
    (FailMode.SECURE, Outcome.REJECT, Reason.PUSH_UNAVAILABLE_SECURE),
    (FailMode.SAFE, Outcome.ACCEPT, Reason.PUSH_UNAVAILABLE_SAFE),
])
def test_provider_down_follows_failmode(tmp_path, failmode, outcome, reason):
    engine, clock = make(tmp_path, failmode=failmode, provider=ScriptedProvider(mode="down"))
    got = result_of(engine.login(login()))
    assert (got[0].outcome, got[0].reason) == (outcome, reason)


def test_failmode_safe_never_accepts_a_wrong_password(tmp_path):
    engine, clock = make(tmp_path, failmode=FailMode.SAFE, provider=ScriptedProvider(mode="down"))
    got = result_of(engine.login(login(password="nope")))
    assert got[0].outcome is Outcome.REJECT


@pytest.mark.parametrize("user,password,reason", [
    ("alice", "", Reason.EMPTY_PASSWORD),
    ("alice", None, Reason.NO_PASSWORD),
    ("alice\x00", "alice-pw", Reason.INVALID_USERNAME),
    ("", "x", Reason.INVALID_USERNAME),
    ("a" * 254, "x", Reason.INVALID_USERNAME),
    ("alice", "pw\x00x", Reason.NO_PASSWORD),
])
def test_unusable_input_is_rejected_before_the_directory(tmp_path, user, password, reason):
    engine, clock = make(tmp_path)
    got = result_of(engine.login(login(user=user, password=password)))
    assert got[0].reason is reason
    assert engine.directory.calls == []


def test_same_login_again_while_pending_joins_without_second_bind_or_push(tmp_path):
    engine, clock = make(tmp_path)
    first = result_of(engine.login(login()))
    second = result_of(engine.login(login()))
    assert len(engine.directory.calls) == 1 and len(engine.provider.requests) == 1
    engine.provider.answer(status=PushStatus.APPROVED)
    assert first[0].outcome is second[0].outcome is Outcome.ACCEPT
    events = audit_lines(tmp_path)
    assert sorted(e["joined"] for e in events) == [False, True]


def test_different_password_while_pending_is_checked_and_cannot_ride_the_approval(tmp_path):
    engine, clock = make(tmp_path)
    first = result_of(engine.login(login()))
    second = result_of(engine.login(login(password="guess")))
    assert second[0].reason is Reason.BAD_CREDENTIALS
    engine.provider.answer(status=PushStatus.APPROVED)
    assert first[0].outcome is Outcome.ACCEPT


def test_second_correct_login_during_primary_auth_shares_one_push(tmp_path):
    directory = ScriptedDirectory(hold=True)
    engine, clock = make(tmp_path, directory=directory)
    a = result_of(engine.login(login()))
    b = result_of(engine.login(login(station="198.51.100.7")))
    directory.release()
    assert len(engine.provider.requests) == 1
    engine.provider.answer(status=PushStatus.DENIED)
    assert a[0].reason is b[0].reason is Reason.PUSH_DENIED


def test_other_station_gets_its_own_push_within_the_pending_limit(tmp_path):
    engine, clock = make(tmp_path)
    engine.fatigue.limits = FatigueLimits(max_pending=2)
    engine.login(login(station="1.1.1.1"))
    engine.login(login(station="2.2.2.2"))
    third = result_of(engine.login(login(station="3.3.3.3")))
    assert len(engine.provider.requests) == 2
    assert third[0].reason is Reason.TOO_MANY_PENDING


def test_after_a_decision_a_new_login_starts_a_new_push(tmp_path):
    engine, clock = make(tmp_path)
    engine.login(login())
    engine.provider.answer(status=PushStatus.APPROVED)
    engine.login(login())
    assert len(engine.provider.requests) == 2


def test_no_device_rejects_unless_allowed(tmp_path):
    class NoDevice(ScriptedProvider):
        def request_approval(self, request):
            from twisted.internet import defer
            from pushproxy.decision import PushResult
            return defer.succeed(PushResult(PushStatus.NO_DEVICE, request.txid))

    engine, clock = make(tmp_path, provider=NoDevice())
    got = result_of(engine.login(login()))
    allowed = result_of(engine.login(login(station="x", no_device=NoDeviceMode.ALLOW)))
    assert got[0].reason is Reason.NO_DEVICE and got[0].outcome is Outcome.REJECT
    assert allowed[0].reason is Reason.NO_DEVICE_ALLOWED
    assert allowed[0].outcome is Outcome.ACCEPT


def test_stop_rejects_pending_logins_even_in_failmode_safe(tmp_path):
    engine, clock = make(tmp_path, failmode=FailMode.SAFE)
    got = result_of(engine.login(login()))
    engine.stop()
    assert got[0].reason is Reason.SHUTTING_DOWN and got[0].outcome is Outcome.REJECT


def test_provider_bug_is_unavailable_not_accept_in_secure_mode(tmp_path):
    class Broken(ScriptedProvider):
        def request_approval(self, request):
            raise RuntimeError("bug")

    engine, clock = make(tmp_path, provider=Broken())
    got = result_of(engine.login(login()))
    assert got[0].reason is Reason.PUSH_UNAVAILABLE_SECURE


def test_audit_write_failure_does_not_break_the_login(tmp_path):
    engine, clock = make(tmp_path)
    engine.audit.path = str(tmp_path / "missing-dir" / "audit.jsonl")
    got = result_of(engine.login(login(password="wrong")))
    assert got[0].outcome is Outcome.REJECT
    assert engine.counters.get("audit_write_errors") == 1


def test_a_decision_copy_is_what_dataclasses_replace_makes():
    import dataclasses

    from pushproxy.decision import Decision

    base = Decision(Outcome.ACCEPT, Reason.PUSH_APPROVED, txid="t", rule="r",
                    signals=("new_country",))
    for changes in ({}, {"user": "bob"}, {"user": "bob", "attributes": ((1, b"x"),),
                                          "signals": (), "location": None},
                    {"outcome": Outcome.REJECT, "reason": Reason.PUSH_DENIED, "rule": None}):
        copy = base.but(**changes)
        assert copy == dataclasses.replace(base, **changes) and copy is not base
        assert hash(copy) == hash(dataclasses.replace(base, **changes))
    assert base.user is None  # the original is left as it was
    with pytest.raises(TypeError):
        base.but(usr="bob")
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.but(user="bob").user = "eve"
