"""Issue 14, finding 5: the LDAP front end's peer is the application server, not the user.

A ``networks:`` rule matching the application server skipped the push for
every bind (policy_allow), and a login remembered for that server let a later
bind skip its push. Now both apply to LDAP front-end binds only where the rule
names the front end in ``clients:``. Real slapd, ldapwhoami, approval service.
"""

from __future__ import annotations

import shutil
import textwrap

import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from tests.integration.test_approval_e2e import first_request
from tests.integration.test_ldap_front import FRONT, Front, front_section

pytestmark = pytest.mark.skipif(shutil.which("ldapwhoami") is None,
                                reason="ldap-utils not installed")


@pytest.fixture
def front_with(stacks, slapd, tmp_path):
    @pytest_twisted.inlineCallbacks
    def make(policy: str):
        stack = yield stacks(timeout=20, extra=textwrap.dedent(policy)
                             + front_section(slapd, bind_cache_seconds=0))
        return Front(stack, slapd, tmp_path)

    return make


@pytest_twisted.inlineCallbacks
def bind_and_approve(front, state, user="alice"):
    """A bind that must push: answered on the phone; fires with ldapwhoami's exit code."""
    bind = front.whoami(user, f"{user}-pw")
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    code, _, err = yield bind
    return code


@pytest_twisted.inlineCallbacks
def test_a_networks_rule_without_clients_does_not_match_the_application_server(front_with):
    """office-lan (networks: 127.0.0.0/8, no clients) must not skip the push for binds."""
    front = yield front_with("""\
        policy:
          rules:
            - name: office-lan
              networks: [127.0.0.0/8]
              action: allow
    """)
    state = yield front.stack.device("alice")
    code = yield bind_and_approve(front, state)
    assert code == 0
    (event,) = front.audit()
    assert (event["reason"], event["rule"]) == ("push_approved", None)


@pytest_twisted.inlineCallbacks
def test_a_networks_rule_that_names_the_front_end_applies(front_with):
    """Naming the front end in clients: says the admin means that application server."""
    front = yield front_with(f"""\
        policy:
          rules:
            - name: app-server
              clients: [{FRONT}]
              networks: [127.0.0.1/32]
              action: allow
    """)
    code, _, err = yield front.whoami("alice", "alice-pw")
    assert code == 0, err
    (event,) = front.audit()
    assert (event["reason"], event["rule"]) == ("policy_allow", "app-server")


@pytest_twisted.inlineCallbacks
def test_a_remembered_login_does_not_carry_over_to_the_next_bind_from_the_same_server(front_with):
    """remember_minutes: an approved bind does not let the next bind from the app skip the push."""
    front = yield front_with("""\
        policy:
          remember_minutes: 10
    """)
    state = yield front.stack.device("alice")
    assert (yield bind_and_approve(front, state)) == 0
    assert (yield bind_and_approve(front, state)) == 0  # a second push, answered again
    assert [e["reason"] for e in front.audit()] == ["push_approved", "push_approved"]
    assert front.counter("pushes_requested") == 2


@pytest_twisted.inlineCallbacks
def test_a_rule_naming_the_front_end_lets_its_logins_be_remembered(front_with):
    """With a rule whose clients name the front end, remembered logins apply as for RADIUS."""
    front = yield front_with(f"""\
        policy:
          remember_minutes: 10
          rules:
            - name: apps-push
              clients: [{FRONT}]
              action: push
    """)
    state = yield front.stack.device("alice")
    assert (yield bind_and_approve(front, state)) == 0
    code, _, err = yield front.whoami("alice", "alice-pw")
    assert code == 0, err
    assert [e["reason"] for e in front.audit()] == ["push_approved", "remembered_login"]
