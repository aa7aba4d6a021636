"""The LDAP filters and bind names built from user input are escaped (RFC 4515 / RFC 4514)."""

import pytest

from pushproxy.config import GroupMode
from pushproxy.ldapnames import direct_bind_name, group_query, normalize_dn, user_filter

TEMPLATE = "(&(objectClass=person)(uid={username}))"


@pytest.mark.parametrize("username,expected", [
    ("alice", "(&(objectClass=person)(uid=alice))"),
    ("*", r"(&(objectClass=person)(uid=\2a))"),
    ("a)(uid=*", r"(&(objectClass=person)(uid=a\29\28uid=\2a))"),
    ("x\\00", r"(&(objectClass=person)(uid=x\5c00))"),
    ("o'brien(x)", r"(&(objectClass=person)(uid=o'brien\28x\29))"),
])
def test_user_filter_escapes_every_metacharacter(username, expected):
    assert user_filter(TEMPLATE, username) == expected


def test_direct_bind_names_escape_dn_specials_but_not_upns():
    assert direct_bind_name("uid={username},ou=people,dc=x", "a,b=c") == \
        r"uid=a\,b\=c,ou=people,dc=x"
    assert direct_bind_name("{username}@example.com", "alice") == "alice@example.com"


def test_group_queries_per_mode():
    dn = "uid=a(1),ou=people,dc=x"
    base, flt = group_query(GroupMode.AD_NESTED, dn, "a(1)", "cn=vpn,dc=x")
    assert base == dn and flt == "(memberOf:1.2.840.113556.1.4.1941:=cn=vpn,dc=x)"
    base, flt = group_query(GroupMode.GROUP_SEARCH, dn, "a(1)", "cn=vpn,dc=x")
    assert base == "cn=vpn,dc=x"
    assert flt == (r"(|(member=uid=a\281\29,ou=people,dc=x)"
                   r"(uniqueMember=uid=a\281\29,ou=people,dc=x)(memberUid=a\281\29))")


def test_normalize_dn_ignores_case_and_spacing():
    assert normalize_dn("CN=VPN Users, OU=Groups,DC=Example,DC=com") == \
        normalize_dn("cn=vpn users,ou=groups,dc=example,dc=com")
