"""Issue 18 acceptance (account states and groups) against a real Samba AD DC over verified
LDAPS: each account state gets its own audit reason and no push (pushes counted at the push
provider), a wrong password stays a wrong password, nested (three levels) and primary group
membership pass ``required_groups``, a non-member does not; the LDAP front end answers an
account state with AD's own ``data`` code.

    radclient --RADIUS--> pushproxy (in process) --LDAPS, CA verified--> samba (AD DC)
    ldapwhoami --LDAP--> pushproxy's LDAP front end --LDAPS--> samba
"""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue

from pushproxy.wiring import build_daemon

from tests.integration.harness import SECRET, load, start_daemon
from tests.integration.radclient import radclient
from tests.support import ScriptedProvider

BASE = "DC=corp,DC=example"
MA = ("Message-Authenticator", "0x00")
STATES = [("disabled", "account_disabled", "533"), ("pwexpired", "password_expired", "532"),
          ("mustchange", "must_change_password", "773"),
          ("acctexpired", "account_expired", "701"), ("locked", "account_locked", "775"),
          ("nohours", "logon_hours", "530")]


def ad_config(tmp_path, dc, *, servers=None, groups=None, group_mode="ad_nested",
              front=False) -> str:
    """A config for the daemon against the Samba DC (users searched from the domain root)."""
    for name, text in (("radius.secret", SECRET), ("ldap.secret", dc.service_password)):
        (tmp_path / name).write_text(text + "\n")
        (tmp_path / name).chmod(0o600)
    groups = groups if groups is not None else [dc.group_dn("vpn-users")]
    text = textwrap.dedent(f"""\
        radius:
          listen: ["127.0.0.1:0"]
          clients:
            - name: test-nas
              address: 127.0.0.1
              secret_file: radius.secret
        ldap:
          servers: {json.dumps(servers or [dc.ldaps_url])}
          ca_file: {dc.ca_file}
          bind_dn: "{dc.service_dn}"
          bind_password_file: ldap.secret
          user_base: "{BASE}"
          user_filter: "(&(objectClass=user)(sAMAccountName={{username}}))"
          required_groups: {json.dumps(groups)}
          group_membership: {group_mode}
          connect_timeout: 3
          response_timeout: 5
        push:
          timeout: 5
        audit:
          path: audit.jsonl
        daemon:
          stop_grace: 1
        approval:
          listen: "127.0.0.1:0"
          public_url: "http://127.0.0.1"
          database: ":memory:"
        """)
    if front:
        text += textwrap.dedent("""\
            ldap_front:
              name: ldap-apps
              listen: ["127.0.0.1:0"]
              require_tls: false
            """)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def daemon(samba_dc, tmp_path):
    """Start a daemon against the DC with a scripted provider (approves at once)."""
    started = []

    @pytest_twisted.inlineCallbacks
    def _start(**kwargs):
        provider = ScriptedProvider(mode="approve")
        running, addr = yield start_daemon(load(ad_config(tmp_path, samba_dc, **kwargs)),
                                           provider)
        started.append(running)
        return running, addr, provider

    yield _start
    for running in started:
        pytest_twisted.blockon(running.stop())


def audit(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def login(addr, user, password):
    return radclient(addr, SECRET, [("User-Name", user), ("User-Password", password),
                                    ("Calling-Station-Id", "198.51.100.7"), MA])


@pytest.mark.parametrize("name,reason,data", STATES)
@pytest_twisted.inlineCallbacks
def test_each_account_state_is_its_own_reason_and_never_a_push(daemon, samba_dc, tmp_path,
                                                                 name, reason, data):
    _, addr, provider = yield daemon()
    result = yield login(addr, name, samba_dc.password(name))
    wrong = yield login(addr, "alice", "Not-The-Password-9")
    # The RADIUS client hears the same plain Reject as for a wrong password.
    assert (result.code, result.get("Reply-Message")) == (wrong.code,
                                                          wrong.get("Reply-Message"))
    assert result.code == "Access-Reject"
    assert provider.requests == []
    event, _ = audit(tmp_path)
    assert (event["outcome"], event["reason"]) == ("reject", reason)


@pytest.mark.parametrize("name", ["alice", "disabled", "mustchange", "pwexpired"])
@pytest_twisted.inlineCallbacks
def test_a_wrong_password_stays_a_wrong_password_whatever_the_accounts_state(
        daemon, tmp_path, name):
    """AD says 52e to a wrong password even for a disabled account: no oracle, no push."""
    _, addr, provider = yield daemon()
    result = yield login(addr, name, "Not-The-Password-9")
    assert result.code == "Access-Reject" and provider.requests == []
    assert audit(tmp_path)[0]["reason"] == "bad_credentials"


@pytest_twisted.inlineCallbacks
def test_nested_three_levels_passes_required_groups_and_a_non_member_does_not(
        daemon, samba_dc, tmp_path):
    running, addr, provider = yield daemon()
    assert (yield login(addr, "alice", samba_dc.password("alice"))).code == "Access-Accept"
    assert (yield login(addr, "bob", samba_dc.password("bob"))).code == "Access-Accept"
    assert (yield login(addr, "carol", samba_dc.password("carol"))).code == "Access-Reject"
    assert [r.username for r in provider.requests] == ["alice", "bob"]
    assert [e["reason"] for e in audit(tmp_path)] == ["push_approved", "push_approved",
                                                      "not_in_required_group"]
    assert running.counters.get("ldap_incomplete_answers", why="referral") == 0


@pytest.mark.parametrize("mode", ["ad_nested", "member_of"])
@pytest_twisted.inlineCallbacks
def test_the_primary_group_counts_though_no_member_list_names_it(daemon, samba_dc, tmp_path,
                                                                  mode):
    """carol is in no group but her primary group, Domain Users; Domain Admins she is not."""
    _, addr, provider = yield daemon(groups=[f"CN=Domain Users,CN=Users,{BASE}"],
                                     group_mode=mode)
    assert (yield login(addr, "carol", samba_dc.password("carol"))).code == "Access-Accept"
    _, addr2, provider2 = yield daemon(groups=[f"CN=Domain Admins,CN=Users,{BASE}"],
                                       group_mode=mode)
    assert (yield login(addr2, "carol", samba_dc.password("carol"))).code == "Access-Reject"
    assert len(provider.requests) == 1 and provider2.requests == []


@pytest_twisted.inlineCallbacks
def test_an_unknown_user_under_the_domain_root_is_unknown_not_an_incomplete_answer(
        daemon, tmp_path):
    """The root search refers to AD's own partitions (Configuration, DNS zones): not users."""
    running, addr, provider = yield daemon()
    assert (yield login(addr, "nobody-here", "Whatever-1")).code == "Access-Reject"
    assert audit(tmp_path)[0]["reason"] == "unknown_user"
    assert running.counters.get("ldap_incomplete_answers", why="referral") == 0


@pytest_twisted.inlineCallbacks
def test_the_global_catalog_serves_logins_states_and_nested_groups(daemon, samba_dc, tmp_path):
    _, addr, provider = yield daemon(servers=[samba_dc.gc_ldaps_url])
    assert (yield login(addr, "alice", samba_dc.password("alice"))).code == "Access-Accept"
    assert (yield login(addr, "disabled", samba_dc.password("disabled"))).code == \
        "Access-Reject"
    assert [e["reason"] for e in audit(tmp_path)] == ["push_approved", "account_disabled"]
    assert len(provider.requests) == 1


@pytest.mark.skipif(shutil.which("ldapwhoami") is None, reason="ldap-utils not installed")
@pytest_twisted.inlineCallbacks
def test_the_ldap_front_end_answers_each_state_with_ads_data_code(samba_dc, tmp_path):
    """Through the built-in approval service: its push counter stays at zero."""
    running = build_daemon(load(ad_config(tmp_path, samba_dc, front=True)), reactor)
    yield running.start()
    try:
        yield _front_states(running, samba_dc, tmp_path)
    finally:
        yield running.stop()


@defer.inlineCallbacks
def _front_states(running, samba_dc, tmp_path):
    front = next(c for c in running.components if hasattr(c, "cache"))
    url = f"ldap://127.0.0.1:{front.port(ldaps=False)}"
    env = {"HOME": str(tmp_path), "LDAPCONF": "/dev/null", "PATH": "/usr/bin:/bin"}

    def whoami(dn, password):
        d = getProcessOutputAndValue(shutil.which("ldapwhoami"),
                                     ["-x", "-H", url, "-o", "nettimeout=20", "-D", dn,
                                      "-w", password], env=env)
        return d.addCallback(lambda r: (r[2], r[1].decode()))

    for name, reason, data in STATES:
        code, err = yield whoami(samba_dc.user_dn(name), samba_dc.password(name))
        assert code != 0 and "Invalid credentials (49)" in err, err
        assert f"data {data}," in err, err
    code, err = yield whoami(samba_dc.user_dn("mustchange"), "Not-The-Password-9")
    assert "Invalid credentials (49)" in err and "data " not in err, err
    assert running.counters.get("pushes_requested") == 0
    assert [e["reason"] for e in audit(tmp_path)] == [r for _, r, _ in STATES] + \
        ["bad_credentials"]
