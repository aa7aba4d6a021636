"""AD login names (issue 18): parsing, the account key, the config section, the front end's
classification, and the refusal of foreign domains before any directory traffic."""

from __future__ import annotations

import textwrap

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from pushproxy.adnames import (ActiveDirectory, AdDomain, AdName, ForeignDomain, NameForm,
                               canonical_account, parse_name, search_for)
from pushproxy.config import ConfigError, parse_config
from pushproxy.decision import PrimaryResult, PrimaryStatus, Reason
from pushproxy.ldapauth import LdapDirectory
from pushproxy.ldapnames import conclude
from pushproxy.ldapfront import ber
from pushproxy.ldapfront.binds import AdBind, BindKind, ad_bind, classify
from pushproxy.metrics import Counters
from tests.test_engine import audit_lines, login, make, result_of
from tests.test_ldapfront_binds import front_config

CORP = AdDomain("CORP", "DC=corp,DC=example", ("corp.example", "alt.example"))
EU = AdDomain("EU", "DC=eu,DC=corp,DC=example", ("eu.corp.example",))
AD = ActiveDirectory((CORP, EU))
FILTER = "(&(objectClass=user)(sAMAccountName={username}))"


@pytest.mark.parametrize("typed, expected", [
    ("alice", AdName(NameForm.PLAIN, CORP, "alice")),
    ("ALICE", AdName(NameForm.PLAIN, CORP, "ALICE")),
    ("CORP\\alice", AdName(NameForm.DOWN_LEVEL, CORP, "alice")),
    ("corp\\alice", AdName(NameForm.DOWN_LEVEL, CORP, "alice")),
    ("eu\\alice", AdName(NameForm.DOWN_LEVEL, EU, "alice")),
    ("alice@corp.example", AdName(NameForm.UPN, CORP, "alice@corp.example")),
    ("Alice@CORP.Example", AdName(NameForm.UPN, CORP, "Alice@corp.example")),
    ("alice@alt.example", AdName(NameForm.UPN, CORP, "alice@alt.example")),
    ("a@b@eu.corp.example", AdName(NameForm.UPN, EU, "a@b@eu.corp.example")),
])
def test_names_sort_into_their_form_and_domain(typed, expected):
    """Plain names go to the first domain; NetBIOS names and UPN suffixes pick theirs."""
    assert parse_name(AD, typed) == expected


@pytest.mark.parametrize("typed", [
    "EVIL\\alice", "\\alice", "CORP\\", "CORP\\a\\b", "CORP\\a@corp.example",
    "alice@evil.example", "alice@", "@corp.example", "alice@corp.example.evil",
    "alice@corp\u2024example", "CORP\u0130\\alice", "alice@sub.corp.example",
])
def test_names_for_domains_not_served_are_foreign(typed):
    """Another domain, a missing part or a look-alike domain is refused, never searched."""
    assert isinstance(parse_name(AD, typed), ForeignDomain)


def test_a_upn_is_compared_to_user_principal_name_under_its_domain():
    """UPNs use the UPN filter; plain and down-level names use ldap.user_filter."""
    upn = parse_name(AD, "alice@alt.example")
    assert search_for(AD, upn, FILTER) == (CORP.base, AD.upn_filter, "alice@alt.example")
    assert search_for(AD, parse_name(AD, "alice@eu.corp.example"), FILTER)[0] == EU.base
    assert search_for(AD, parse_name(AD, "EU\\bob"), FILTER) == (EU.base, FILTER, "bob")


def test_the_account_key_is_qualified_outside_the_first_domain():
    """CORP\\alice keys on "alice" (as before the section existed); EU\\alice on "eu\\alice"."""
    assert canonical_account(AD, "alice", "CN=Alice,CN=Users,DC=corp,DC=example") == "alice"
    # EU's base lies inside CORP's: the deepest base that holds the entry decides.
    assert canonical_account(AD, "alice", "cn=alice,cn=users,dc=EU,dc=corp,dc=example") \
        == "eu\\alice"
    assert canonical_account(AD, "alice", "CN=alice,DC=other,DC=example") == "alice"
    assert canonical_account(None, "alice", "CN=alice,DC=eu,DC=corp,DC=example") == "alice"


def test_conclude_keys_the_result_on_the_qualified_account(tmp_path):
    """The directory's result carries the key: stored sAMAccountName, domain when not first."""
    cfg = parse_config(textwrap.dedent(GOOD + SECTION), base_dir=tmp_path, env=ENV).ldap
    corp = conclude(cfg, frozenset(), "s", "CN=Alice,CN=Users,DC=corp,DC=example",
                    {"sAMAccountName": ["Alice"]}, frozenset())
    eu = conclude(cfg, frozenset(), "s", "CN=Alice,CN=Users,DC=eu,DC=corp,DC=example",
                  {"sAMAccountName": ["Alice"]}, frozenset())
    assert (corp.account, eu.account) == ("alice", "eu\\alice")


GOOD = """\
radius:
  clients:
    - name: gw
      address: 10.0.0.0/24
      secret_env: GW_SECRET
approval:
  public_url: https://mfa.example.com
  database: ":memory:"
ldap:
  servers: ["ldaps://dc1.corp.example"]
  bind_dn: cn=svc,dc=corp,dc=example
  bind_password_env: LDAP_PW
  user_base: dc=corp,dc=example
  user_filter: "(&(objectClass=user)(sAMAccountName={username}))"
"""
SECTION = """\
  active_directory:
    domains:
      - netbios: CORP
        base: "DC=corp,DC=example"
        upn_suffixes: [corp.example, Alt.Example]
      - netbios: EU
        base: "DC=eu,DC=corp,DC=example"
"""
ENV = {"GW_SECRET": "a-long-enough-secret", "LDAP_PW": "pw"}


def config_problems(section: str, ldap_extra: str = "") -> list[str]:
    text = GOOD.replace('  user_filter:', ldap_extra + '  user_filter:') + section
    with pytest.raises(ConfigError) as exc:
        parse_config(text, base_dir=None, env=ENV)
    return exc.value.problems


def test_the_section_parses_into_typed_domains(tmp_path):
    """Suffixes are kept lower-case; the default UPN filter is AD's."""
    cfg = parse_config(GOOD + SECTION, base_dir=tmp_path, env=ENV)
    ad = cfg.ldap.active_directory
    assert ad.domains[0] == AdDomain("CORP", "DC=corp,DC=example", ("corp.example",
                                                                     "alt.example"))
    assert ad.domains[1].upn_suffixes == ()
    assert ad.upn_filter == "(&(objectClass=user)(userPrincipalName={username}))"
    assert parse_config(GOOD, base_dir=tmp_path, env=ENV).ldap.active_directory is None


BAD_SECTION = """\
  active_directory:
    upn_filter: "(userPrincipalName={username})(x=y)"
    colour: blue
    domains:
      - netbios: CORP.EXAMPLE
        base: "not a dn"
        upn_suffixes: [corp.example, "bad suffix"]
      - netbios: eu
        base: "DC=eu,DC=example"
        upn_suffixes: [CORP.example]
        forest: x
      - netbios: EU
        base: "DC=eu2,DC=example"
      - base: "DC=x"
"""


def test_every_mistake_in_the_section_is_reported_at_once_with_its_path():
    """Unknown keys, bad names, DNs, suffixes, duplicates and filters: all in one run."""
    text = "\n".join(config_problems(BAD_SECTION))
    for needle in ("ldap.active_directory.colour: unknown key",
                   "ldap.active_directory.upn_filter: not a valid LDAP filter",
                   "ldap.active_directory.domains[0].netbios: 'CORP.EXAMPLE' is not a NetBIOS",
                   "ldap.active_directory.domains[0].base: 'not a dn' is not a DN",
                   "ldap.active_directory.domains[0].upn_suffixes[1]: 'bad suffix'",
                   "ldap.active_directory.domains[1].forest: unknown key",
                   "ldap.active_directory.domains[1].upn_suffixes[0]: 'CORP.example' is also",
                   "ldap.active_directory.domains[2].netbios: 'EU' is also",
                   "ldap.active_directory.domains[3].netbios: missing"):
        assert needle in text, (needle, text)


def test_the_account_attribute_must_be_an_ad_one():
    """With AD domains the key is sAMAccountName (or the UPN), never e.g. uid."""
    found = config_problems(SECTION, ldap_extra="  username_attribute: uid\n")
    assert any(p.startswith("ldap.username_attribute: 'uid'") for p in found), found


def test_the_example_section_in_config_example_parses():
    """config.example.yaml's commented AD block is valid once uncommented."""
    from pathlib import Path

    example = (Path(__file__).resolve().parent.parent / "config.example.yaml").read_text()
    start = example.index("  # active_directory:")
    block = []
    for line in example[start:].splitlines():
        if not line.startswith("  #"):
            break
        block.append("  " + line[len("  # "):] if line.strip() != "#" else "")
    cfg = parse_config(GOOD + "\n".join(block) + "\n", base_dir=None, env=ENV)
    assert cfg.ldap.active_directory.domains[0].netbios == "CORP"


def bind(name: str) -> ber.BindRequest:
    return ber.BindRequest(3, name, None, b"pw")


def test_the_front_end_takes_ad_names_only_with_ad_domains(tmp_path):
    """Without the section a UPN bind stays refused (not a DN); with it, it is a user bind."""
    cfg = front_config(tmp_path, """\
        ldap_front:
          listen: ["127.0.0.1:389"]
          require_tls: false
        """)
    for name in ("alice@corp.example", "CORP\\alice", "alice", "EVIL\\alice"):
        assert classify(bind(name), cfg, tls=True) is BindKind.REFUSE_BAD_NAME
        assert classify(bind(name), cfg, tls=True, ad=AD) is BindKind.USER


def test_the_front_end_binds_plain_names_with_the_first_domain():
    """A plain name goes upstream as CORP\\name; UPN and DOMAIN\\user as typed."""
    plain = ad_bind(AD, "alice", FILTER)
    assert isinstance(plain, AdBind) and plain.bind_name == "CORP\\alice"
    assert plain.base == CORP.base
    assert ad_bind(AD, "alice@alt.example", FILTER).bind_name == "alice@alt.example"
    assert ad_bind(AD, "eu\\bob", FILTER).base == EU.base
    assert isinstance(ad_bind(AD, "alice@evil.example", FILTER), ForeignDomain)


def test_the_directory_refuses_a_foreign_domain_before_any_connection(tmp_path):
    """EVIL\\alice: UNKNOWN_DOMAIN, a counter, and no server contacted."""
    cfg = parse_config(GOOD + SECTION, base_dir=tmp_path, env=ENV).ldap
    counters = Counters()
    directory = LdapDirectory(cfg, Clock(), counters)
    out = []
    directory.authenticate("EVIL\\alice", "pw").addCallback(out.append)
    assert out[0].status is PrimaryStatus.UNKNOWN_DOMAIN
    assert counters.get("ldap_foreign_domain") == 1 and directory._pools == {}


class _NotInGroup:
    """A directory that found the entry (account "alicia") but not in the required group."""

    def authenticate(self, username, password):
        return defer.succeed(PrimaryResult(PrimaryStatus.NOT_IN_GROUP, dn="CN=alicia",
                                           account="alicia"))


def test_a_refusal_after_the_directory_named_the_entry_audits_that_account(tmp_path):
    """alice@alt.example is alicia's UPN: the audit names alicia, the typed name is sent_user."""
    engine, _ = make(tmp_path, directory=_NotInGroup())
    got = result_of(engine.login(login(user="alice@alt.example")))
    assert got[0].reason is Reason.NOT_IN_GROUP
    (event,) = audit_lines(tmp_path)
    assert (event["user"], event["sent_user"]) == ("alicia", "alice@alt.example")


def test_admin_commands_look_only_ad_spellings_up(tmp_path):
    """Without AD domains, and for a plain name, the name is the key: no directory is asked."""
    from pushproxy.admin import ad_account

    plain = parse_config(GOOD, base_dir=tmp_path, env=ENV)
    assert ad_account(plain, "CORP\\alice") == ("CORP\\alice", None)
    with_ad = parse_config(GOOD + SECTION, base_dir=tmp_path, env=ENV)
    assert ad_account(with_ad, "alice") == ("alice", None)


def test_a_upn_in_the_domains_own_dns_name_also_finds_an_account_without_one():
    """alice@corp.example: userPrincipalName, or sAMAccountName where no UPN is stored;
    an alternate suffix is the stored UPN only; the name part is escaped."""
    from pushproxy.adnames import dns_name

    assert (dns_name(CORP.base), dns_name("OU=x,DC=corp")) == ("corp.example", None)
    base, template, value = search_for(AD, parse_name(AD, "a*(b){c}@corp.example"), FILTER)
    assert (base, value) == (CORP.base, "a*(b){c}@corp.example")
    assert template == ("(|(&(objectClass=user)(userPrincipalName={username}))"
                        "(&(&(objectClass=user)(sAMAccountName=a\\2a\\28b\\29\\7bc\\7d))"
                        "(!(userPrincipalName=*))))")
    assert search_for(AD, parse_name(AD, "a@alt.example"), FILTER)[1] == AD.upn_filter
