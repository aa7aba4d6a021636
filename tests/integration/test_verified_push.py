"""Issue 5 acceptance with real slapd + radclient + the approval service + the CLI authenticator.

Challenges go over the wire as real Access-Challenge / State round trips: the
test reads the State radclient prints and sends it back in the second request.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient
from tests.integration.test_approval_e2e import first_request

MA = ("Message-Authenticator", "0x00")
CLIENTS = textwrap.dedent("""\
    - name: number-gw
      address: 127.0.0.1
      secret_file: radius.secret
      verification: number_match
""")
POLICY = textwrap.dedent("""\
    policy:
      rules:
        - name: trusted-office
          networks: [10.20.0.0/16]
          action: allow
        - name: no-bob-from-outside
          users: [bob]
          networks: [192.0.2.0/24]
          action: deny
""")


def attrs(user="alice", password="alice-pw", station="198.51.100.7", state=None):
    out = [("User-Name", user), ("User-Password", password),
           ("Calling-Station-Id", station), MA]
    if state:
        out.insert(2, ("State", state))
    return out


@pytest.fixture
def stack(stacks):
    return lambda **kw: stacks(**{"clients": CLIENTS, "extra": POLICY, **kw})


def reasons(stack):
    return [e["reason"] for e in stack.audit()]


@pytest_twisted.inlineCallbacks
def test_number_match_right_number_accepts_wrong_number_rejects(stack):
    s = yield stack()
    state = yield s.device()
    # Right number.
    first = yield radclient(s.radius, SECRET, attrs())
    assert first.code == "Access-Challenge"
    message, radius_state = first.get("Reply-Message"), first.get("State")
    number = "".join(ch for ch in message if ch.isdigit())
    assert len(number) == 2 and radius_state.startswith("0x")
    request = yield threads.deferToThread(first_request, state)
    # The phone is never told the number: the user must read it on the login screen.
    assert request["verification"] == "number_match" and "number" not in request
    second = radclient(s.radius, SECRET, attrs(password="ok", state=radius_state), timeout=20)
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve", None, number)
    result = yield second
    assert result.code == "Access-Accept"
    # Wrong number: a denial.
    first = yield radclient(s.radius, SECRET, attrs(station="2"))
    request = yield threads.deferToThread(first_request, state)
    number = "".join(ch for ch in first.get("Reply-Message") if ch.isdigit())
    wrong = "99" if number != "99" else "98"
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve", None, wrong)
    result = yield radclient(s.radius, SECRET, attrs(password="ok", station="2",
                                                     state=first.get("State")))
    assert result.code == "Access-Reject"
    assert reasons(s)[-1] == "number_mismatch"
    assert s.daemon.counters.get("answers", outcome="number_mismatch") == 1


@pytest_twisted.inlineCallbacks
def test_code_to_login_right_code_accepts_wrong_code_rejects(stack):
    s = yield stack(clients=textwrap.dedent("""\
        - name: code-gw
          address: 127.0.0.1
          secret_file: radius.secret
          verification: code_to_login
    """))
    state = yield s.device()
    for station, right in (("1", True), ("2", False)):
        first = yield radclient(s.radius, SECRET, attrs(station=station))
        assert first.code == "Access-Challenge"
        request = yield threads.deferToThread(first_request, state)
        assert request["verification"] == "code_to_login"
        answer = yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        code = answer["code"]
        typed = code if right else f"{(int(code) + 1) % 10**6:06d}"
        final = yield radclient(s.radius, SECRET, attrs(password=typed, station=station,
                                                        state=first.get("State")))
        assert final.code == ("Access-Accept" if right else "Access-Reject")
    assert reasons(s) == ["challenge_sent", "push_approved", "challenge_sent",
                          "wrong_login_code"]


@pytest_twisted.inlineCallbacks
def test_challenge_state_replayed_or_expired_is_rejected(stack):
    s = yield stack(timeout=5)
    state = yield s.device()
    first = yield radclient(s.radius, SECRET, attrs())
    request = yield threads.deferToThread(first_request, state)
    number = "".join(ch for ch in first.get("Reply-Message") if ch.isdigit())
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve", None, number)
    ok = yield radclient(s.radius, SECRET, attrs(password="ok", state=first.get("State")))
    assert ok.code == "Access-Accept"
    replay = yield radclient(s.radius, SECRET, attrs(password="again", state=first.get("State")))
    assert replay.code == "Access-Reject"
    late = yield radclient(s.radius, SECRET, attrs(station="3"))
    yield threads.deferToThread(time.sleep, 5.5)
    expired = yield radclient(s.radius, SECRET, attrs(password="ok", station="3",
                                                      state=late.get("State")))
    assert expired.code == "Access-Reject"
    assert reasons(s).count("challenge_state_invalid") == 2


def totp_now(state_dir):
    return auth.current_code(state_dir)[0]


@pytest_twisted.inlineCallbacks
def test_passcodes_appended_to_the_password(stack, tmp_path):
    s = yield stack(clients=textwrap.dedent("""\
        - name: plain-gw
          address: 127.0.0.1
          secret_file: radius.secret
    """))
    state = yield s.device()
    code = yield threads.deferToThread(totp_now, state)
    ok = yield radclient(s.radius, SECRET, attrs(password=f"alice-pw,{code}"))
    again = yield radclient(s.radius, SECRET, attrs(password=f"alice-pw,{code}", station="2"))
    assert (ok.code, again.code) == ("Access-Accept", "Access-Reject")
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "bypass", "alice", "--count", "1",
                          "--config", str(s.config_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    bypass = [w for w in out.stdout.split() if w.isdigit() and len(w) == 12][0]
    first = yield radclient(s.radius, SECRET, attrs(password=f"alice-pw,{bypass}", station="3"))
    second = yield radclient(s.radius, SECRET, attrs(password=f"alice-pw,{bypass}", station="4"))
    assert (first.code, second.code) == ("Access-Accept", "Access-Reject")
    assert s.daemon.provider.waiting == 0 and s.daemon.counters.get("pushes_requested") == 0
    forced = radclient(s.radius, SECRET, attrs(password="alice-pw,push", station="5"), timeout=20)
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    assert (yield forced).code == "Access-Accept"
    assert reasons(s) == ["passcode_totp", "bad_passcode", "passcode_bypass", "bad_passcode",
                          "push_approved"]


@pytest_twisted.inlineCallbacks
def test_push_spam_is_capped_denials_pause_and_fraud_locks_until_unlock(stack):
    s = yield stack(clients=textwrap.dedent("""\
        - name: plain-gw
          address: 127.0.0.1
          secret_file: radius.secret
    """), push_extra="limits: {max_pushes: 4, window: 600, max_denials: 2}\n")
    state = yield s.device()
    # 20 logins in quick succession: each push is denied at once by the "phone".
    pushes = 0
    for i in range(20):
        login = radclient(s.radius, SECRET, attrs(station=f"10.9.0.{i}"), timeout=10)
        found = yield threads.deferToThread(auth.pending, state, 1)
        if found:
            pushes += 1
            yield threads.deferToThread(auth.answer, state, found[0]["txid"], "deny")
        yield login
    assert pushes <= 4 and pushes == 2  # two denials pause pushes before the rate limit
    assert "pushes_paused_after_denials" in reasons(s)
    assert s.daemon.counters.get("alerts", kind="pushes_paused") == 1
    # bob reports fraud: locked until an admin unlocks.
    bob = yield s.device(user="bob")
    login = radclient(s.radius, SECRET, attrs(user="bob", password="bob-pw"), timeout=10)
    found = yield threads.deferToThread(first_request, bob)
    yield threads.deferToThread(auth.answer, bob, found["txid"], "fraud")
    assert (yield login).code == "Access-Reject"
    locked = yield radclient(s.radius, SECRET, attrs(user="bob", password="bob-pw", station="2"))
    assert locked.code == "Access-Reject" and reasons(s)[-1] == "user_locked_after_fraud_report"
    out = yield threads.deferToThread(subprocess.run, [
        sys.executable, "-m", "pushproxy.cli", "unlock", "bob", "--config", str(s.config_path)],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    login = radclient(s.radius, SECRET, attrs(user="bob", password="bob-pw", station="3"))
    found = yield threads.deferToThread(first_request, bob)
    yield threads.deferToThread(auth.answer, bob, found["txid"], "approve")
    assert (yield login).code == "Access-Accept"


@pytest_twisted.inlineCallbacks
def test_policy_allow_skips_the_push_and_deny_rejects_and_explain_names_the_rule(stack):
    s = yield stack(clients=textwrap.dedent("""\
        - name: plain-gw
          address: 127.0.0.1
          secret_file: radius.secret
    """))
    allowed = yield radclient(s.radius, SECRET, attrs(station="10.20.3.4"))
    denied = yield radclient(s.radius, SECRET, attrs(user="bob", password="bob-pw",
                                                     station="192.0.2.7"))
    assert (allowed.code, denied.code) == ("Access-Accept", "Access-Reject")
    events = s.audit()
    assert [(e["reason"], e["rule"]) for e in events] == [
        ("policy_allow", "trusted-office"), ("policy_deny", "no-bob-from-outside")]
    assert s.daemon.counters.get("pushes_requested") == 0
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "policy", "explain",
                          "--config", str(s.config_path), "--user", "alice", "--client",
                          "plain-gw", "--ip", "10.20.3.4"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "trusted-office" in out.stdout and "allow" in out.stdout.lower()
