"""Issue 14, finding 1 in the engine, with a Clock and the real approval service on an
in-memory store: passcode guessing pauses, alerts and locks (push and passcode, right code
included) until an admin unlocks; the challenge prompt counts too; wrong passwords from one
source are throttled before the directory."""

import os

from twisted.internet import defer
from twisted.internet.task import Clock

from pushproxy import passcodes
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.service import ApprovalService
from pushproxy.approval.store import Device, SQLiteStore
from pushproxy.audit import AuditLog
from pushproxy.config import FailMode, NoDeviceMode, PushConfig
from pushproxy.decision import Outcome, PushStatus, Reason
from pushproxy.engine import Engine, LoginRequest
from pushproxy.metrics import Counters
from pushproxy.passcode_limits import PasscodeLimits
from pushproxy.password_throttle import PasswordLimits
from pushproxy.policy import Verification
from tests.support import ScriptedDirectory, ScriptedProvider

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
T0 = 1_800_000_000.0


class Alerts:
    def __init__(self):
        self.raised = []

    def user_alert(self, event, username, now, **details):
        self.raised.append(event)
        return defer.succeed(None)


def make(passcode_limits=None, password_limits=None):
    clock = Clock()
    clock.advance(T0)
    store = SQLiteStore(":memory:")
    store.create_enrollment("alice", "tok", T0 - 10, T0 + 900)
    store.redeem_enrollment("tok", T0, Device("dev1", "alice", "phone", "key", None, T0, None,
                                               None, totp_secret=SECRET))
    counters = Counters()
    service = ApprovalService(store=AsyncStore.inline(store), reactor=clock, counters=counters,
                              vapid_public_key="k", alerter=Alerts(),
                              cpu=lambda f, *a: defer.maybeDeferred(f, *a))
    push = PushConfig(timeout=60, failmode=FailMode.SECURE, no_device=NoDeviceMode.REJECT,
                      passcode_limits=passcode_limits or PasscodeLimits(),
                      password_limits=password_limits or PasswordLimits())
    engine = Engine(clock=clock, directory=ScriptedDirectory(), provider=ScriptedProvider(),
                    push=push, audit=AuditLog(os.devnull, counters), counters=counters,
                    factors=service)
    return engine, clock, store


def req(password, station="198.51.100.7", state=None, verification=None, user="alice"):
    return LoginRequest(protocol="radius", username=user, password=password, client_name="vpn",
                        source="127.0.0.1", calling_station=station, nas="gw",
                        no_device=NoDeviceMode.REJECT, state=state, verification=verification)


def run(d):
    out = []
    d.addCallback(out.append)
    return out


def right_code(clock):
    return passcodes.totp(SECRET, passcodes.totp_step(clock.seconds()))


def wrong_code(clock):
    right = right_code(clock)
    return next(c for c in ("000000", "111111", "222222") if c != right
                and c != passcodes.totp(SECRET, passcodes.totp_step(clock.seconds()) - 1)
                and c != passcodes.totp(SECRET, passcodes.totp_step(clock.seconds()) + 1))


def test_guessing_pauses_alerts_then_locks_everything_until_unlock():
    engine, clock, store = make()
    reasons = []
    for _ in range(10):
        reasons.append(run(engine.login(req(f"alice-pw,{wrong_code(clock)}")))[0].reason)
        clock.advance(1)
    assert reasons[:5] == [Reason.BAD_PASSCODE] * 5
    assert reasons[5:] == [Reason.PASSCODES_PAUSED] * 5
    assert engine.factors.alerter.raised == ["passcodes_paused", "user_locked"]
    assert store.user_lock("alice").reason == "passcode guessing"
    # Locked: the right code, and a push, are refused; no push is even sent.
    right = run(engine.login(req(f"alice-pw,{right_code(clock)}", station="2")))[0]
    pushed = run(engine.login(req("alice-pw", station="3")))[0]
    assert right.reason is Reason.USER_LOCKED_GUESSING and right.outcome is Outcome.REJECT
    assert pushed.reason is Reason.USER_LOCKED_GUESSING and engine.provider.requests == []
    # `pushproxy unlock alice` does these two store calls.
    assert store.unlock_user("alice") and store.clear_passcode_failures("alice") == 10
    accepted = run(engine.login(req(f"alice-pw,{right_code(clock)}", station="4")))[0]
    assert accepted.reason is Reason.PASSCODE_TOTP and accepted.outcome is Outcome.ACCEPT


def test_the_right_code_during_a_pause_is_refused_unchecked():
    engine, clock, store = make(PasscodeLimits(max_failures=2, lock_after=5))
    for _ in range(2):
        run(engine.login(req(f"alice-pw,{wrong_code(clock)}")))
    got = run(engine.login(req(f"alice-pw,{right_code(clock)}")))[0]
    assert got.reason is Reason.PASSCODES_PAUSED
    # the code was never checked, so it is not used up: after the pause it works
    clock.advance(900)
    assert run(engine.login(req(f"alice-pw,{right_code(clock)}")))[0].reason \
        is Reason.PASSCODE_TOTP


def test_codes_typed_at_the_challenge_prompt_count_too():
    engine, clock, store = make(PasscodeLimits(max_failures=2, lock_after=3))
    reasons = []
    for i in range(3):
        first = run(engine.login(req("alice-pw", station=str(i),
                                     verification=Verification.NUMBER_MATCH)))[0]
        assert first.outcome is Outcome.CHALLENGE
        answer = run(engine.login(req(wrong_code(clock), station=str(i), state=first.state)))
        reasons.append(answer[0].reason)
    assert reasons == [Reason.BAD_PASSCODE, Reason.BAD_PASSCODE, Reason.PASSCODES_PAUSED]
    assert store.user_lock("alice").reason == "passcode guessing"
    assert engine.factors.alerter.raised == ["passcodes_paused", "user_locked"]
    # the next first request is refused before any push or challenge
    again = run(engine.login(req("alice-pw", station="9", verification=Verification.NUMBER_MATCH)))
    assert again[0].reason is Reason.USER_LOCKED_GUESSING


def test_a_fraud_lock_also_refuses_the_right_passcode():
    engine, clock, store = make()
    store.lock_user("alice", T0, "fraud report", "tx1")
    got = run(engine.login(req(f"alice-pw,{right_code(clock)}")))[0]
    assert got.reason is Reason.USER_LOCKED
    # not used up by the refused login: it works after the unlock
    store.unlock_user("alice")
    assert run(engine.login(req(f"alice-pw,{right_code(clock)}", station="2")))[0].reason \
        is Reason.PASSCODE_TOTP


def test_wrong_passwords_from_one_source_stop_reaching_the_directory():
    engine, clock, store = make(password_limits=PasswordLimits(max_failures=3, window=60,
                                                               pause=120))
    got = [run(engine.login(req("guess", station="203.0.113.9", user=u)))[0].reason
           for u in ("alice", "bob", "alice", "bob", "alice")]
    assert got == [Reason.BAD_CREDENTIALS] * 3 + [Reason.PASSWORDS_THROTTLED] * 2
    assert engine.directory.calls == ["alice", "bob", "alice"]  # no bind while throttled
    assert engine.counters.get("password_throttled", client="vpn") == 2
    # another calling station behind the same gateway is not affected
    other = run(engine.login(req("alice-pw", station="203.0.113.10")))
    assert engine.provider.requests and other == []  # a push is on its way
    engine.provider.answer(status=PushStatus.APPROVED)
    clock.advance(120)
    assert run(engine.login(req("guess", station="203.0.113.9")))[0].reason \
        is Reason.BAD_CREDENTIALS
