"""Which binds get a push (classify), the bind cache, usernames from entries, the config."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from pushproxy.config import ConfigError, parse_config
from pushproxy.decision import Decision, Reason
from pushproxy.ldapfront import ber
from pushproxy.ldapfront.binds import (BindCache, BindKind, cache_may_answer, classify,
                                       is_dn, login_name, rdn_value)
from pushproxy.ldapfront.config import SaslMode
from pushproxy.ldapfront.server import bind_result
from pushproxy.policy import Action, LoginContext, Policy, Rule, Verification
from pushproxy.sensitivity import ClientRequirements

ALICE = "uid=alice,ou=people,dc=example,dc=com"
ROOT = Path(__file__).resolve().parent.parent


def front_config(tmp_path, section: str):
    """A full config (the example's other sections) with this ldap_front section."""
    example = (ROOT / "config.example.yaml").read_text().split("\nldap_front:")[0]
    text = example + "\n" + textwrap.dedent(section)
    return parse_config(text, base_dir=ROOT, env={}).ldap_front


@pytest.fixture
def cfg(tmp_path):
    return front_config(tmp_path, """\
        ldap_front:
          listen: ["127.0.0.1:389"]
          require_tls: false
          service_dns: ["CN=svc-wiki, OU=services,dc=example,dc=com"]
          exempt_ous: ["ou=robots,dc=example,dc=com"]
        """)


def req(name=ALICE, password=b"pw", version=3, mech=None):
    return ber.BindRequest(version, name, mech, password)


def test_user_binds_get_the_engine_and_service_and_exempt_dns_pass(cfg):
    assert classify(req(), cfg, tls=True) is BindKind.USER
    # DN comparison ignores case and spacing, as the directory does.
    assert classify(req("cn=SVC-WIKI,ou=services,dc=example,dc=com"), cfg, tls=True) \
        is BindKind.SERVICE
    assert classify(req("cn=backup,OU=Robots,dc=example,dc=com"), cfg, tls=True) \
        is BindKind.EXEMPT_OU
    # Only at or below the OU: a look-alike suffix is a user.
    assert classify(req("cn=x,ou=notrobots,dc=example,dc=com"), cfg, tls=True) is BindKind.USER


def test_empty_passwords_are_anonymous_or_unauthenticated_and_refused_by_default(cfg):
    assert classify(req("", b""), cfg, tls=True) is BindKind.REFUSE_ANONYMOUS
    assert classify(req(ALICE, b""), cfg, tls=True) is BindKind.REFUSE_UNAUTHENTICATED
    # Even a service DN: an empty password never proves anything.
    assert classify(req("cn=svc-wiki,ou=services,dc=example,dc=com", b""), cfg, tls=True) \
        is BindKind.REFUSE_UNAUTHENTICATED
    allowed = dataclasses.replace(cfg, allow_anonymous=True, allow_unauthenticated=True)
    assert classify(req("", b""), allowed, tls=True) is BindKind.ANONYMOUS
    assert classify(req(ALICE, b""), allowed, tls=True) is BindKind.UNAUTHENTICATED


def test_sasl_version_tls_and_names(cfg):
    assert classify(req(mech="GSSAPI"), cfg, tls=True) is BindKind.REFUSE_SASL
    passing = dataclasses.replace(cfg, sasl=SaslMode.PASS)
    assert classify(req(mech="GSSAPI"), passing, tls=False) is BindKind.SASL
    assert classify(req(version=2), cfg, tls=True) is BindKind.REFUSE_VERSION
    strict = dataclasses.replace(cfg, require_tls=True)
    assert classify(req(), strict, tls=False) is BindKind.REFUSE_CLEARTEXT
    assert classify(req(), strict, tls=True) is BindKind.USER
    assert classify(req("alice@example.com"), cfg, tls=True) is BindKind.REFUSE_BAD_NAME
    assert classify(req(ALICE, b"\xff\xfe"), cfg, tls=True) is BindKind.REFUSE_BAD_NAME


def test_the_cache_remembers_approved_binds_for_its_window_only():
    cache = BindCache(seconds=30, max_entries=100)
    key = cache.key("10.0.0.1", ALICE, b"pw")
    assert not cache.hit(key, 0)
    cache.remember(key, 100, "alice")
    assert cache.hit(key, 129.9) and cache.account_of(key) == "alice"
    assert not cache.hit(key, 130) and cache.account_of(key) is None
    assert len(cache) == 0  # expired entries go


def test_the_cache_key_depends_on_source_dn_and_password_but_never_holds_the_password():
    cache = BindCache(seconds=30, max_entries=100)
    key = cache.key("10.0.0.1", ALICE, b"hunter2")
    assert b"hunter2" not in key and len(key) == 32
    assert key == cache.key("10.0.0.1", "UID=Alice, ou=people,dc=example,dc=com", b"hunter2")
    assert key != cache.key("10.0.0.2", ALICE, b"hunter2")
    assert key != cache.key("10.0.0.1", ALICE, b"hunter3")
    # Another process (another random HMAC key) computes another key.
    assert key != BindCache(30, 100).key("10.0.0.1", ALICE, b"hunter2")


def test_the_cache_is_bounded_and_drops_the_oldest_first():
    cache = BindCache(seconds=30, max_entries=3)
    keys = [cache.key("h", f"uid=u{i},dc=x", b"pw") for i in range(5)]
    for i, key in enumerate(keys):
        cache.remember(key, 10 + i)
    assert len(cache) == 3
    assert [cache.hit(k, 15) for k in keys] == [False, False, True, True, True]
    cache.forget(keys[4])
    assert not cache.hit(keys[4], 15)


def test_a_cache_of_zero_seconds_is_off():
    cache = BindCache(seconds=0, max_entries=3)
    key = cache.key("h", ALICE, b"pw")
    cache.remember(key, 1)
    assert not cache.hit(key, 1)


def test_usernames_come_from_the_entry_and_prefer_the_value_naming_it():
    assert login_name({"uid": ["alice"]}, "uid", ALICE) == "alice"
    assert login_name({"uid": ["a.smith", "alice"]}, "uid", ALICE) == "alice"
    assert login_name({"samaccountname": ["asmith"]}, "sAMAccountName",
                      "cn=Alice Smith,ou=staff,dc=corp") == "asmith"
    assert login_name({}, "uid", ALICE) is None
    assert rdn_value("uid=o'brien(x),ou=people,dc=x", "uid") == "o'brien(x)"
    assert rdn_value(r"uid=a\,b,ou=p", "uid") == "a,b"
    assert rdn_value("cn=Alice,ou=p", "uid") is None


def test_names_read_the_same_whether_remembered_or_too_long_to_be_and_the_memo_is_bounded():
    """A bind's name is parsed once (`binds._dn_parts`); a long one every time, alike."""
    from pushproxy.ldapfront import binds

    long_ou = ",".join(f"ou=o{i}" for i in range(60))  # over binds._MEMO_NAME
    for tail in ("ou=people,dc=x", long_ou):
        name = r"uid=a\,b," + tail
        assert [rdn_value(name, "uid") for _ in range(2)] == ["a,b", "a,b"]
        assert is_dn(name) and is_dn(name)
        assert not is_dn("uid=a,=" + tail) and rdn_value("uid=a,=" + tail, "uid") is None
    for i in range(1000):
        is_dn(f"uid=u{i},dc=x")
    assert binds._dn_parts_memo.cache_info().currsize <= 128


def test_decisions_map_to_bind_results_in_one_place():
    assert bind_result(Decision.of(Reason.PUSH_APPROVED)) == (ber.SUCCESS, "")
    for reason in (Reason.PUSH_DENIED, Reason.PUSH_TIMEOUT, Reason.BAD_CREDENTIALS,
                   Reason.NO_DEVICE, Reason.POLICY_DENY, Reason.USER_LOCKED):
        assert bind_result(Decision.of(reason))[0] == ber.INVALID_CREDENTIALS
    assert bind_result(Decision.of(Reason.DIRECTORY_UNAVAILABLE))[0] == ber.UNAVAILABLE
    assert bind_result(Decision.of(Reason.DIRECTORY_BUSY))[0] == ber.BUSY


def test_config_problems_are_reported_with_their_paths(tmp_path):
    with pytest.raises(ConfigError) as err:
        front_config(tmp_path, """\
            ldap_front:
              listen: ["127.0.0.1"]
              listen_ldaps: ["127.0.0.1:636"]
              tls_cert: /nonexistent/cert.pem
              service_dns: ["not a dn"]
              sasl: maybe
              bind_cache_seconds: 3600
              max_message_size: 10
              colour: blue
            """)
    text = "\n".join(err.value.problems)
    for needle in ("ldap_front.listen[0]", "ldap_front.tls_cert: cannot read",
                   "tls_cert and tls_key go together", "ldap_front.service_dns[0]",
                   "ldap_front.sasl", "ldap_front.bind_cache_seconds: must be at most 600",
                   "ldap_front.max_message_size: must be at least 1024",
                   "ldap_front.colour: unknown key"):
        assert needle in text, text


def test_tls_is_required_for_binds_unless_turned_off(tmp_path):
    with pytest.raises(ConfigError, match="ldap_front.require_tls"):
        front_config(tmp_path, """\
            ldap_front:
              listen: ["127.0.0.1:389"]
            """)


def test_policy_rules_may_name_the_front_end(tmp_path):
    text = (ROOT / "config.example.yaml").read_text().split("\nldap_front:")[0].replace(
        "  remember_minutes: 0\n", "  remember_minutes: 0\n  rules:\n"
        "    - {name: wiki-robot, users: [svc-backup], clients: [vpn-gw-1, wiki-ldap], "
        "action: allow}\n")
    with pytest.raises(ConfigError, match="wiki-ldap"):
        parse_config(text, base_dir=ROOT, env={})
    cfg = parse_config(text + textwrap.dedent("""
        ldap_front:
          name: wiki-ldap
          listen: ["127.0.0.1:389"]
          require_tls: false
        """), base_dir=ROOT, env={})
    assert cfg.ldap_front.name == "wiki-ldap"


ADMINS = "cn=admins,ou=groups,dc=example,dc=com"
USERS = "cn=vpn-users,ou=groups,dc=example,dc=com"


def test_a_cached_approval_answers_only_a_bind_that_needs_a_plain_push_now():
    """Presence (rule, policy default or the front end's floor), a verified push, an
    allow/deny rule or a required group the user is not in: the engine decides."""
    def why(policy=Policy(), groups=(USERS,), requires=ClientRequirements(),
            required=frozenset({USERS})):
        ctx = LoginContext(username="alice", client_name="ldap-apps", client_ip="10.0.0.5",
                           groups=frozenset(groups), now=0.0, peer_is_application=True)
        return cache_may_answer(policy, ctx, requires, required)

    admins_presence = Policy(rules=(
        Rule("admins", Action.PUSH, groups=frozenset({ADMINS}), user_verification=True),))
    assert why() is None
    assert why(admins_presence) is None
    assert why(admins_presence, groups=(USERS, ADMINS)) == "presence_required"
    assert why(Policy(require_user_verification=True)) == "presence_required"
    assert why(requires=ClientRequirements(user_verification=True)) == "presence_required"
    assert why(Policy(rules=(Rule("apps", Action.PUSH, clients=frozenset({"ldap-apps"}),
                                  verification=Verification.NUMBER_MATCH),))) \
        == "verification_required"
    # the policy's default verification is not the front end's: LDAP binds push plainly
    assert why(Policy(default_verification=Verification.NUMBER_MATCH)) is None
    assert why(Policy(rules=(Rule("no", Action.DENY),))) == "policy_deny"
    assert why(Policy(rules=(Rule("yes", Action.ALLOW),))) == "policy_allow"
    assert why(groups=()) == "not_in_required_group"
    assert why(groups=(), required=frozenset()) is None
