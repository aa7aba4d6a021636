"""The LDAP front end's bind cache never answers a bind that needs more than the
approval it remembers (real daemon, slapd, ldapwhoami, the command-line authenticator).

A cached approval spares an application's repeated binds a second push. A bind
whose push would need presence (a face or fingerprint, docs/presence.md), a
verified push, a group the user left, or a user locked since, goes to the
engine as a first bind would: the cache is asked at every hit, with the groups
the bind just read and the policy in force now.
"""

from __future__ import annotations

import shutil
import textwrap
import time

import ldap3
import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from pushproxy.approval.store import SQLiteStore
from pushproxy.config import parse_config
from tests.integration.test_approval_e2e import first_request
from tests.integration.test_ldap_front import FRONT, Front, front_section

pytestmark = pytest.mark.skipif(shutil.which("ldapwhoami") is None,
                                reason="ldap-utils not installed")


def policy(fallback: str, *rules: str) -> str:
    return textwrap.dedent(f"""\
        policy:
          user_verification_fallback: {fallback}
        """) + ("  rules:\n" + textwrap.indent("".join(rules), "    ") if rules else "")


ADMINS_NEED_PRESENCE = textwrap.dedent("""\
    - name: admins
      groups: ["{admins}"]
      action: push
      require_user_verification: true
    - name: everyone
      action: push
    """)


def modify_group(slapd, group: str, op, user: str) -> None:
    """Add or remove ``user`` in ``group`` as the directory's administrator."""
    server = ldap3.Server(slapd.url, connect_timeout=5)
    with ldap3.Connection(server, slapd.root_dn, slapd.root_password, auto_bind=True,
                          receive_timeout=5) as conn:
        assert conn.modify(slapd.group_dn(group), {"member": [(op, [slapd.user_dn(user)])]}), \
            conn.result


@pytest_twisted.inlineCallbacks
def approve_next(state, decision="approve"):
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], decision)
    return request


@pytest_twisted.inlineCallbacks
def test_with_presence_required_every_bind_gets_its_push_under_fallback_allow(
        stacks, slapd, tmp_path):
    """The front end's floor requires presence; the CLI (no passkey) is allowed to
    approve. Each of two identical binds needs its own push: the cache (30 s by
    default) never answers a bind that needs a face check."""
    s = yield stacks(timeout=20, extra=front_section(slapd, require_user_verification="true")
                     + policy("allow"))
    front = Front(s, slapd, tmp_path)
    state = yield s.device("alice")
    for _ in range(2):
        bind = front.whoami("alice", "alice-pw")
        request = yield approve_next(state)
        assert request["user_verification"] == "required"
        code, _, err = yield bind
        assert code == 0, err
    assert front.counter("pushes_requested") == 2
    assert front.counter("ldap_front_bind_cache_hits") == 0
    assert [(e["client"], e["reason"], e["presence"]) for e in front.audit()] == \
        [(FRONT, "push_approved", "not_verified")] * 2


@pytest_twisted.inlineCallbacks
def test_a_user_added_to_a_presence_group_is_not_let_in_by_the_cache(stacks, slapd, tmp_path):
    """Under ``user_verification_fallback: refuse``: alice's bind is approved while
    no rule asks her for presence; she then joins a group whose rule does. Her
    next bind, within the cache window, gets a push that needs a passkey, which
    the CLI cannot give: invalid credentials, not a cached success."""
    rules = ADMINS_NEED_PRESENCE.format(admins=slapd.group_dn("admins"))
    s = yield stacks(timeout=20, extra=front_section(slapd) + policy("refuse", rules))
    front = Front(s, slapd, tmp_path)
    state = yield s.device("alice")
    bind = front.whoami("alice", "alice-pw")
    request = yield approve_next(state)
    assert request["user_verification"] != "required"
    code, _, err = yield bind
    assert code == 0, err
    yield threads.deferToThread(modify_group, slapd, "admins", ldap3.MODIFY_ADD, "alice")
    try:
        bind = front.whoami("alice", "alice-pw")
        request = yield threads.deferToThread(first_request, state)
        assert request["user_verification"] == "required"
        with pytest.raises(auth.ApiError):
            yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        code, _, _ = yield bind
        assert code == 49
    finally:
        yield threads.deferToThread(modify_group, slapd, "admins", ldap3.MODIFY_DELETE,
                                    "alice")
    assert front.counter("ldap_front_bind_cache_hits") == 0
    assert front.counter("ldap_front_bind_cache_passed_over", why="presence_required") == 1
    assert [(e["rule"], e["reason"], e["presence"]) for e in front.audit()] == [
        ("everyone", "push_approved", None),
        ("admins", "presence_not_verified", "refused:no_passkey")]


@pytest_twisted.inlineCallbacks
def test_a_reload_that_requires_number_matching_or_presence_empties_the_cache_for_it(
        stacks, slapd, tmp_path):
    """A cached approval, then a reload: a rule for the front end that names number
    matching (which a bind cannot carry: 49), then the front end's presence floor.
    Neither is answered from the cache."""
    s = yield stacks(timeout=20, extra=front_section(slapd) + policy("refuse"))
    front = Front(s, slapd, tmp_path)
    state = yield s.device("alice")
    bind = front.whoami("alice", "alice-pw")
    yield approve_next(state)
    assert (yield bind)[0] == 0
    assert (yield front.whoami("alice", "alice-pw"))[0] == 0  # the cache, as before
    assert front.counter("ldap_front_bind_cache_hits") == 1
    text = s.config_path.read_text()

    def reload(new_text):
        return s.daemon.reload(parse_config(new_text, base_dir=s.config_path.parent, env={}))

    reload(text.replace("policy:\n", "policy:\n  rules:\n    - name: apps-number\n"
                        f"      clients: [{FRONT}]\n      action: push\n"
                        "      verification: number_match\n", 1))
    bind = front.whoami("alice", "alice-pw")
    stuck = yield threads.deferToThread(first_request, state)  # one she cannot finish
    assert stuck["verification"] == "number_match"
    code, _, _ = yield bind
    assert code == 49
    yield threads.deferToThread(auth.answer, state, stuck["txid"], "deny")
    assert front.counter("ldap_front_bind_cache_passed_over",
                         why="verification_required") == 1
    # Back to plain push: a new approval is cached again; then presence on the front end.
    reload(text)
    bind = front.whoami("alice", "alice-pw")
    yield approve_next(state)
    assert (yield bind)[0] == 0
    reload(text.replace(f"  name: {FRONT}\n",
                        f"  name: {FRONT}\n  require_user_verification: true\n", 1))
    bind = front.whoami("alice", "alice-pw")
    request = yield threads.deferToThread(first_request, state)
    assert request["user_verification"] == "required"
    with pytest.raises(auth.ApiError):
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    assert (yield bind)[0] == 49
    assert front.counter("ldap_front_bind_cache_hits") == 1
    assert front.counter("ldap_front_bind_cache_passed_over", why="presence_required") == 1


@pytest_twisted.inlineCallbacks
def test_leaving_the_required_group_or_a_lock_ends_the_cached_approval(
        stacks, slapd, tmp_path):
    """``ldap.required_groups`` and a fraud lock are checked at every cache hit."""
    s = yield stacks(timeout=20, extra=front_section(slapd))
    front = Front(s, slapd, tmp_path)
    state = yield s.device("alice")
    bind = front.whoami("alice", "alice-pw")
    yield approve_next(state)
    assert (yield bind)[0] == 0
    yield threads.deferToThread(modify_group, slapd, "vpn-users", ldap3.MODIFY_DELETE, "alice")
    try:
        code, _, _ = yield front.whoami("alice", "alice-pw")
    finally:
        yield threads.deferToThread(modify_group, slapd, "vpn-users", ldap3.MODIFY_ADD,
                                    "alice")
    assert code == 49
    assert front.audit()[-1]["reason"] == "not_in_required_group"
    bind = front.whoami("alice", "alice-pw")
    yield approve_next(state)
    assert (yield bind)[0] == 0
    store = SQLiteStore(s.config.approval.database)
    try:
        store.lock_user("alice", time.time(), "fraud_report", None)
    finally:
        store.close()
    code, _, _ = yield front.whoami("alice", "alice-pw")
    assert code == 49
    assert front.audit()[-1]["reason"] == "user_locked_after_fraud_report"
    assert front.counter("ldap_front_bind_cache_hits") == 0
    assert front.counter("ldap_front_bind_cache_passed_over", why="locked") == 1
    assert front.counter("ldap_front_bind_cache_passed_over",
                         why="not_in_required_group") == 1
