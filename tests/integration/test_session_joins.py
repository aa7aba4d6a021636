"""Issue 14, findings 4 and 7, through the real daemon with radclient over UDP.

Finding 4: two RADIUS sessions for alice without Calling-Station-Id (another
NAS-Port, or another NAS-Identifier) each got Accept from one approval. A
login now joins a pending one only from the same client, NAS, station, port
and credential; a failover-style resend (same everything, new id) still joins.

Finding 7: a challenge follow-up without User-Name was accepted with
"user": null, and a TOTP code typed at the prompt crashed the login.
"""

from __future__ import annotations

import textwrap

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from pushproxy.approval import authenticator as auth
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient
from tests.integration.test_approval_e2e import first_request

MA = ("Message-Authenticator", "0x00")
NUMBER_CLIENT = textwrap.dedent("""\
    - name: number-gw
      address: 127.0.0.1
      secret_file: radius.secret
      verification: number_match
""")


def attrs(*, nas="gw-1", port=None, port_id=None, user="alice", password="alice-pw",
          station=None, state=None):
    out = [("User-Name", user), ("User-Password", password), ("NAS-Identifier", nas)]
    if port is not None:
        out.append(("NAS-Port", port))
    if port_id is not None:
        out.append(("NAS-Port-Id", port_id))
    if station is not None:
        out.append(("Calling-Station-Id", station))
    if state is not None:
        out.append(("State", state))
    if user is None:
        out = [a for a in out if a[0] != "User-Name"]
    return out + [MA]


@pytest.fixture
def stack(stacks):
    # Two pushes may wait at once, so a second session shows as a second push.
    return lambda **kw: stacks(**{"push_extra": "limits: {max_pending: 2}", **kw})


def pending(state, count, deadline=15.0):
    """Wait until the device sees ``count`` open requests; returns them."""
    import time
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = auth.pending(state, wait=1)
        if len(found) >= count:
            return found
    raise AssertionError(f"fewer than {count} requests reached the device")


@pytest.mark.parametrize("first, second", [
    (dict(port=1), dict(port=2)),  # another NAS-Port of the same NAS
    (dict(port_id="tun0"), dict(port_id="tun1")),  # another NAS-Port-Id
    (dict(nas="gw-1"), dict(nas="gw-2")),  # another NAS, no port at all
], ids=["nas-port", "nas-port-id", "nas-identifier"])
@pytest_twisted.inlineCallbacks
def test_two_sessions_without_calling_station_get_two_pushes(stack, first, second):
    """Approving one session's push accepts that session only; the other is denied on its own."""
    s = yield stack()
    state = yield s.device()
    mine = radclient(s.radius, SECRET, attrs(**first), timeout=20)
    theirs = radclient(s.radius, SECRET, attrs(**second), timeout=20)
    requests = yield threads.deferToThread(pending, state, 2)
    assert len(requests) == 2
    approve, deny = requests
    yield threads.deferToThread(auth.answer, state, approve["txid"], "approve")
    yield threads.deferToThread(auth.answer, state, deny["txid"], "deny")
    results = yield defer.gatherResults([mine, theirs])
    assert sorted(r.code for r in results) == ["Access-Accept", "Access-Reject"]
    events = s.audit()
    assert sorted(e["reason"] for e in events) == ["push_approved", "push_denied"]
    assert not any(e["joined"] for e in events)
    assert s.daemon.counters.get("pushes_requested") == 2


@pytest_twisted.inlineCallbacks
def test_a_failover_resend_of_the_same_session_still_joins(stack):
    """Same NAS, port and password, new RADIUS id (a resend after a timeout): one push."""
    s = yield stack()
    state = yield s.device()
    login = attrs(port=7, port_id="tun7")
    first = radclient(s.radius, SECRET, login, timeout=20)
    request = yield threads.deferToThread(first_request, state)
    resend = radclient(s.radius, SECRET, login, timeout=20)  # another radclient: a new id
    # Wait until the resend has joined before answering.
    for _ in range(100):
        if s.daemon.counters.get("logins_joined") == 1:
            break
        yield threads.deferToThread(lambda: __import__("time").sleep(0.05))
    assert s.daemon.counters.get("logins_joined") == 1
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    results = yield defer.gatherResults([first, resend])
    assert [r.code for r in results] == ["Access-Accept", "Access-Accept"]
    assert s.daemon.counters.get("pushes_requested") == 1
    assert sorted(e["joined"] for e in s.audit()) == [False, True]


@pytest_twisted.inlineCallbacks
def test_no_station_and_no_port_never_join(stack):
    """Without Calling-Station-Id and NAS-Port nothing tells sessions apart: no join at all."""
    s = yield stack()
    state = yield s.device()
    logins = [radclient(s.radius, SECRET, attrs(), timeout=20) for _ in range(2)]
    requests = yield threads.deferToThread(pending, state, 2)
    for request in requests:
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    results = yield defer.gatherResults(logins)
    assert [r.code for r in results] == ["Access-Accept"] * 2
    assert s.daemon.counters.get("logins_joined") == 0
    assert s.daemon.counters.get("pushes_requested") == 2


@pytest_twisted.inlineCallbacks
def test_challenge_follow_up_without_user_name_is_rejected_and_audited(stack):
    """Finding 7: a follow-up with the State but no User-Name gets Reject, never Accept."""
    s = yield stack(clients=NUMBER_CLIENT)
    state = yield s.device()
    first = yield radclient(s.radius, SECRET, attrs(station="198.51.100.7"))
    assert first.code == "Access-Challenge"
    request = yield threads.deferToThread(first_request, state)
    number = "".join(ch for ch in first.get("Reply-Message") if ch.isdigit())
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve", None, number)
    nameless = yield radclient(s.radius, SECRET, attrs(user=None, password="ok",
                                                       station="198.51.100.7",
                                                       state=first.get("State")))
    assert nameless.code == "Access-Reject"
    last = s.audit()[-1]
    assert (last["reason"], last["user"]) == ("challenge_state_invalid", None)
    # Another user's name is refused as well; the State stays alice's.
    other = yield radclient(s.radius, SECRET, attrs(user="bob", password="ok",
                                                    station="198.51.100.7",
                                                    state=first.get("State")))
    assert other.code == "Access-Reject"
    ok = yield radclient(s.radius, SECRET, attrs(password="ok", station="198.51.100.7",
                                                 state=first.get("State")))
    assert ok.code == "Access-Accept" and s.audit()[-1]["user"] == "alice"


@pytest_twisted.inlineCallbacks
def test_totp_code_at_the_prompt_without_user_name_is_a_reject_not_a_crash(stack):
    """Finding 7: a TOTP code typed at the prompt, no User-Name: Reject, no internal_error."""
    s = yield stack(clients=NUMBER_CLIENT)
    state = yield s.device()
    first = yield radclient(s.radius, SECRET, attrs(station="198.51.100.8"))
    assert first.code == "Access-Challenge"
    code, _ = yield threads.deferToThread(auth.current_code, state)
    result = yield radclient(s.radius, SECRET, attrs(user=None, password=code,
                                                     station="198.51.100.8",
                                                     state=first.get("State")))
    assert result.code == "Access-Reject"
    assert s.audit()[-1]["reason"] == "challenge_state_invalid"
    assert s.daemon.counters.get("internal_errors") == 0
