"""The Samba AD DC fixture serves the domain the AD tests rely on (issue 18)."""

from __future__ import annotations

import ssl

import ldap3
import pytest

try:
    from tests.radsec_pki import TestCA
except ImportError:  # rootdir-relative import mode
    from radsec_pki import TestCA

IN_CHAIN = "1.2.840.113556.1.4.1941"


def _search(dc, base, flt, attrs, scope=ldap3.SUBTREE):
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=dc.ca_file)
    server = ldap3.Server(dc.ldaps_url, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    conn = ldap3.Connection(server, dc.service_dn, dc.service_password, auto_bind=True)
    try:
        conn.search(base, flt, search_scope=scope, attributes=attrs)
        return list(conn.entries)
    finally:
        conn.unbind()


@pytest.mark.parametrize("spelling", ["alice@corp.example", "CORP\\alice",
                                      "CN=alice,CN=Users,DC=corp,DC=example"])
def test_alice_binds_under_every_ad_spelling(samba_dc, spelling):
    """UPN, DOMAIN\\user and DN binds of alice succeed over verified LDAPS."""
    assert samba_dc.bind(spelling, samba_dc.password("alice")).ok


def test_wrong_password_is_52e(samba_dc):
    """A wrong password is AD's data 52e (and not a lockout: the domain has no threshold)."""
    for _ in range(3):
        result = samba_dc.bind("alice@corp.example", "Not-Her-Password-1")
        assert (result.code, result.diagnostic_code) == (49, "52e")
    assert samba_dc.bind("alice@corp.example", samba_dc.password("alice")).ok


@pytest.mark.parametrize("name, data", [
    ("disabled", "533"), ("pwexpired", "532"), ("mustchange", "773"),
    ("acctexpired", "701"), ("locked", "775"), ("nohours", "530")])
def test_account_states_give_their_ad_data_codes(samba_dc, name, data):
    """Each seeded account state refuses the right password with its own AD sub-code."""
    result = samba_dc.bind(samba_dc.users[name].upn, samba_dc.password(name))
    assert (result.ok, result.code, result.diagnostic_code) == (False, 49, data)


def test_alternate_upn_suffix_is_registered_and_names_other_accounts(samba_dc):
    """alt.example is a forest UPN suffix; bob@alt.example is bob, alice@alt.example is alicia."""
    partitions = _search(samba_dc, f"CN=Partitions,CN=Configuration,{'DC=corp,DC=example'}",
                         "(objectClass=*)", ["uPNSuffixes"], ldap3.BASE)
    assert partitions[0].uPNSuffixes.values == ["alt.example"]
    assert samba_dc.bind("bob@alt.example", samba_dc.password("bob")).ok
    assert samba_dc.bind("alice@alt.example", samba_dc.password("alicia")).ok
    assert not samba_dc.bind("alice@alt.example", samba_dc.password("alice")).ok
    found = _search(samba_dc, "DC=corp,DC=example", "(userPrincipalName=alice@alt.example)",
                    ["sAMAccountName"])
    assert [e.sAMAccountName.value for e in found] == ["alicia"]


def test_nested_groups_three_levels(samba_dc):
    """alice reaches vpn-users only through vpn-team -> vpn-staff; carol is in no group."""
    users = samba_dc.group_dn("vpn-users")
    found = _search(samba_dc, "DC=corp,DC=example",
                    f"(&(objectClass=user)(memberOf:{IN_CHAIN}:={users}))", ["sAMAccountName"])
    assert sorted(e.sAMAccountName.value for e in found) == ["alice", "bob"]
    direct = _search(samba_dc, "DC=corp,DC=example",
                     f"(&(objectClass=user)(memberOf={users}))", ["sAMAccountName"])
    assert [e.sAMAccountName.value for e in direct] == ["bob"]


def test_a_primary_group_member_is_in_no_member_list(samba_dc):
    """dora's primaryGroupID is vpn-users' RID (its primaryGroupToken); AD, and so the
    fixture, keeps her out of the group's member list and her memberOf."""
    users = samba_dc.group_dn("vpn-users")
    (group,) = _search(samba_dc, users, "(objectClass=*)",
                       ["primaryGroupToken", "member"], scope=ldap3.BASE)
    (dora,) = _search(samba_dc, "DC=corp,DC=example", "(sAMAccountName=dora)",
                      ["primaryGroupID", "memberOf"])
    assert dora.primaryGroupID.value == group.primaryGroupToken.value
    assert not any("dora" in m.lower() for m in group.member.values)
    assert users.lower() not in [m.lower() for m in dora.memberOf.values]


def test_ldaps_certificate_is_verified(samba_dc, tmp_path):
    """A client trusting another CA cannot bind: the fixture's LDAPS really is verified."""
    other = TestCA(tmp_path, "Other CA")
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(other.path))
    server = ldap3.Server(samba_dc.ldaps_url, use_ssl=True, tls=tls, connect_timeout=2,
                          get_info=ldap3.NONE)
    conn = ldap3.Connection(server, "alice@corp.example", samba_dc.password("alice"))
    with pytest.raises(ldap3.core.exceptions.LDAPException):
        conn.bind()
