"""Issue 14, finding 2: spellings a real slapd folds onto alice never escape alice's state.

slapd matches "alİce" (U+0130) and dozens of other Unicode spellings to alice;
Python folds them differently. The scan (tests/integration/folding.py) asks
slapd which spellings find alice, then sends every one of them through the
real daemon (radclient over UDP, ldapwhoami through the LDAP front end) in
each client mode: plain push, number matching (Access-Challenge), LDAP front
end. With ``no_device: allow``, a ``users: [alice] action: deny`` rule and a
device enrolled for alice, no spelling may skip the push, escape the rule or
reach a device set of its own.
"""

from __future__ import annotations

import shutil
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.utils import getProcessOutputAndValue

from pushproxy.approval import authenticator as auth
from pushproxy.decision import check_credentials
from tests.integration import folding
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient
from tests.integration.test_approval_e2e import first_request
from tests.integration.test_ldap_front import Front, front_section

MA = ("Message-Authenticator", "0x00")
PUSH = "no_device: allow\nlimits: {max_pushes: 100, max_denials: 100}"
DENY_ALICE = textwrap.dedent("""\
    policy:
      rules:
        - name: alice-denied
          users: [alice]
          action: deny
""")
NUMBER_CLIENT = textwrap.dedent("""\
    - name: number-gw
      address: 127.0.0.1
      secret_file: radius.secret
      verification: number_match
""")
# Spellings checked with a push answered on the phone (each costs a round trip).
SAMPLE = ("Alice", "alİce", "ａlice", "aℓice", "alⅰce")


@pytest.fixture(scope="module")
def folded(slapd):
    """Every candidate spelling that slapd's search resolves to alice's entry."""
    found = folding.folded_spellings(slapd, "alice")
    print(f"{len(found)} spellings slapd folds onto alice: {found!r}")
    return found


def attrs(user, station, password="alice-pw", state=None):
    out = [("User-Name", user), ("User-Password", password),
           ("Calling-Station-Id", station), MA]
    if state:
        out.insert(2, ("State", state))
    return out


@pytest.fixture
def stack(stacks):
    return lambda **kw: stacks(**{"push_extra": PUSH, **kw})


def test_the_scan_finds_the_spellings_the_review_used(folded):
    """The scan finds U+0130 and the fullwidth form (else the rest would prove nothing)."""
    assert "alİce" in folded and "ａlice" in folded and "Alice" in folded
    assert len(folded) >= 20


@pytest.mark.skipif(shutil.which("ldapwhoami") is None, reason="ldap-utils not installed")
@pytest_twisted.inlineCallbacks
def test_no_folded_spelling_escapes_a_deny_rule_in_any_client_mode(stack, slapd, tmp_path,
                                                                   folded):
    """users: [alice] deny + no_device: allow: every spelling is rejected, by RADIUS and LDAP."""
    s = yield stack(extra=DENY_ALICE + front_section(slapd))
    yield s.device("alice")
    front = Front(s, slapd, tmp_path)
    accepted = []
    for i, name in enumerate(folded):
        result = yield radclient(s.radius, SECRET, attrs(name, f"10.9.{i // 250}.{i % 250}"))
        if result.code != "Access-Reject":
            accepted.append(("radius", name, result.code))
        code, _, err = yield front.run("ldapwhoami", "-D", f"uid={name},{slapd.people_dn}",
                                       "-w", "alice-pw")
        if code != 49:
            accepted.append(("ldap", name, code, err))
    assert accepted == []
    events = s.audit()
    assert {e["reason"] for e in events} <= {"policy_deny", "invalid_username"}
    # Whatever got past the input checks was decided as alice, by the rule.
    denied = [e for e in events if e["reason"] == "policy_deny"]
    assert {e["user"] for e in denied} == {"alice"} and len(denied) > len(folded)
    assert s.daemon.counters.get("pushes_requested") == 0


@pytest_twisted.inlineCallbacks
def test_every_folded_spelling_pushes_to_alices_device_never_no_device_allowed(stack, folded):
    """Plain push: spellings the input checks pass push to alice's phone; none skips it."""
    s = yield stack()
    state = yield s.device("alice")
    for i, name in enumerate(folded):
        login = radclient(s.radius, SECRET, attrs(name, f"10.8.{i // 250}.{i % 250}"),
                          timeout=20)
        if check_credentials(name, "alice-pw") is None:  # past the input checks
            request = yield threads.deferToThread(first_request, state)
            assert request["username"] == "alice", name
            yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        result = yield login
        event = s.audit()[-1]
        assert event["reason"] in ("push_approved", "invalid_username"), (name, event)
        if event["reason"] == "push_approved":
            assert result.code == "Access-Accept" and event["user"] == "alice"
            assert event["sent_user"] == name
    assert "no_enrolled_device_allowed" not in {e["reason"] for e in s.audit()}
    assert s.daemon.counters.get("pushes_requested") == \
        sum(e["reason"] == "push_approved" for e in s.audit())


@pytest_twisted.inlineCallbacks
def test_number_matching_challenges_fold_onto_alice(stack, folded):
    """Number matching: the challenge and its answer are alice's, for every spelling."""
    s = yield stack(clients=NUMBER_CLIENT)
    state = yield s.device("alice")
    for i, name in enumerate(folded):
        station = f"10.7.{i // 250}.{i % 250}"
        first = yield radclient(s.radius, SECRET, attrs(name, station))
        if first.code == "Access-Reject":
            assert s.audit()[-1]["reason"] == "invalid_username", name
            continue
        assert first.code == "Access-Challenge", (name, first.code)
        request = yield threads.deferToThread(first_request, state)
        assert request["username"] == "alice", name
        number = "".join(ch for ch in first.get("Reply-Message") if ch.isdigit())
        second = radclient(s.radius, SECRET, attrs(name, station, password="ok",
                                                   state=first.get("State")), timeout=20)
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve", None, number)
        result = yield second
        assert result.code == "Access-Accept", name
        assert s.audit()[-1]["user"] == "alice"
    reasons = {e["reason"] for e in s.audit()}
    assert "challenge_sent" in reasons and "no_enrolled_device_allowed" not in reasons


@pytest.mark.skipif(shutil.which("ldapwhoami") is None, reason="ldap-utils not installed")
@pytest_twisted.inlineCallbacks
def test_ldap_front_binds_with_folded_dns_push_to_alice(stack, slapd, tmp_path, folded):
    """LDAP front end: a bind DN spelled another way still pushes to (and audits) alice."""
    s = yield stack(extra=front_section(slapd))
    state = yield s.device("alice")
    front = Front(s, slapd, tmp_path)
    for name in [n for n in SAMPLE if n in folded]:
        bind = front.run("ldapwhoami", "-D", f"uid={name},{slapd.people_dn}", "-w", "alice-pw")
        request = yield threads.deferToThread(first_request, state)
        assert request["username"] == "alice", name
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        code, _, err = yield bind
        assert code == 0, (name, err)
    events = s.audit()
    assert len(events) == len([n for n in SAMPLE if n in folded]) >= 3
    assert {(e["user"], e["reason"]) for e in events} == {("alice", "push_approved")}


@pytest_twisted.inlineCallbacks
def test_enroll_resolves_folded_spellings_to_the_one_account(stack, folded):
    """`pushproxy enroll alİce` enrolls alice (no second device set); unknown users are refused."""
    s = yield stack()
    for name in [n for n in SAMPLE if n in folded]:
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ("-m", "pushproxy.cli", "enroll", name, "--config",
                             str(s.config_path), "--no-qr"), env={"PATH": "/usr/bin:/bin"})
        assert code == 0, err
        assert out.decode().startswith("Enrollment link for alice "), out
    out, err, code = yield getProcessOutputAndValue(
        sys.executable, ("-m", "pushproxy.cli", "enroll", "mallory", "--config",
                         str(s.config_path), "--no-qr"), env={"PATH": "/usr/bin:/bin"})
    assert code == 1 and b"no user 'mallory' in the directory" in err and out == b""
    # For names only an upstream RADIUS server knows: as given, casefolded.
    out, err, code = yield getProcessOutputAndValue(
        sys.executable, ("-m", "pushproxy.cli", "enroll", "--no-directory-check", "CORP\\Mallory",
                         "--config", str(s.config_path), "--no-qr"), env={"PATH": "/usr/bin:/bin"})
    assert code == 0 and out.decode().startswith("Enrollment link for corp\\mallory "), err


def test_test_connection_shows_the_account_a_folded_spelling_resolves_to(slapd, tmp_path):
    """`pushproxy test-connection --user alİce` names the account logins key on."""
    import subprocess
    from tests.integration.harness import write_config
    config = write_config(tmp_path, slapd)
    out = subprocess.run([sys.executable, "-m", "pushproxy.connectivity", "--config",
                          str(config), "--user", "alİce"], capture_output=True, text=True,
                         timeout=120)
    assert "account 'alice' (uid)" in out.stdout, out.stdout + out.stderr
