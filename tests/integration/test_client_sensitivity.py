"""Issue 21 item 4: a sensitive RADIUS client (or the LDAP front end) requires
verified push and presence whatever the policy rules say (real daemon, slapd,
radclient, ldapwhoami, the command-line authenticator), and ``pushproxy policy
explain`` says so."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient
from tests.integration.test_approval_e2e import first_request, login_attrs

# radclient sends from 127.0.0.1: the sensitive client. The plain one is there for
# policy explain. The policy's only rule says "plain push, no presence" for everyone.
CLIENTS = textwrap.dedent("""\
    - name: plain-gw
      address: 127.0.0.2
      secret_file: radius.secret
    - name: admin-gw
      address: 127.0.0.1
      secret_file: radius.secret
      require_verification: number_match
      require_user_verification: true
""")
POLICY = textwrap.dedent("""\
    policy:
      rules:
        - name: everyone
          action: push
          verification: none
          require_user_verification: false
""")


@pytest.fixture
def stack(stacks):
    return stacks(clients=CLIENTS, extra=POLICY)


@pytest_twisted.inlineCallbacks
def test_the_sensitive_client_gets_a_number_and_needs_presence(stack):
    s = yield stack
    state = yield s.device()
    # the rule says plain push; the client says number matching AND presence
    first = yield radclient(s.radius, SECRET, login_attrs(station="10.0.0.2"))
    assert first.code == "Access-Challenge"
    request = yield threads.deferToThread(first_request, state)
    assert (request["verification"], request["user_verification"]) == \
        ("number_match", "required")
    number = "".join(ch for ch in first.get("Reply-Message") if ch.isdigit())
    with pytest.raises(auth.ApiError) as refused:
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve", None,
                                    number)
    assert refused.value.code == "presence_not_verified"  # the CLI has no passkey
    final = yield radclient(s.radius, SECRET, login_attrs(password="ok", station="10.0.0.2")
                            + [("State", first.get("State"))])
    assert final.code == "Access-Reject"
    assert [(e["client"], e["reason"], e["presence"]) for e in s.audit()] == [
        ("admin-gw", "challenge_sent", None),
        ("admin-gw", "presence_not_verified", "refused:no_passkey")]


@pytest_twisted.inlineCallbacks
def test_policy_explain_shows_the_client_floor(stack):
    s = yield stack
    out = yield threads.deferToThread(subprocess.run, [
        sys.executable, "-m", "pushproxy.cli", "policy", "explain", "--config",
        str(s.config_path), "--user", "alice", "--client", "admin-gw"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Result: push with number_match verification (rule 'everyone')" in out.stdout
    assert "client 'admin-gw' requires number_match (require_verification)" in out.stdout
    assert "Presence: Approve needs a passkey" in out.stdout
    assert "client 'admin-gw' requires it" in out.stdout
    plain = yield threads.deferToThread(subprocess.run, [
        sys.executable, "-m", "pushproxy.cli", "policy", "explain", "--config",
        str(s.config_path), "--user", "alice", "--client", "plain-gw"],
        capture_output=True, text=True, timeout=60)
    assert "Result: push with none verification" in plain.stdout
    assert "Presence: not required" in plain.stdout


@pytest_twisted.inlineCallbacks
def test_the_ldap_front_end_can_require_presence(stacks, slapd, tmp_path):
    """ldap_front.require_user_verification: a bind's push needs a passkey; the
    command-line authenticator has none, so its Approve is refused and the bind fails."""
    import shutil

    from tests.integration.test_ldap_front import FRONT, Front, front_section

    if shutil.which("ldapwhoami") is None:
        pytest.skip("ldap-utils not installed")
    s = yield stacks(timeout=20, extra=front_section(slapd, bind_cache_seconds=0,
                                                     require_user_verification="true"))
    front = Front(s, slapd, tmp_path)
    state = yield s.device()
    bind = front.whoami("alice", "alice-pw")
    request = yield threads.deferToThread(first_request, state)
    assert request["user_verification"] == "required"
    with pytest.raises(auth.ApiError):
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    code, _, _ = yield bind
    assert code != 0
    (event,) = front.audit()
    assert (event["client"], event["reason"], event["presence"]) == \
        (FRONT, "presence_not_verified", "refused:no_passkey")
