"""The demo's in-process LDAP directory, driven by the daemon's own client (ldap3).

The server runs on the test's reactor, so every blocking ldap3 call goes to a
thread (``deferToThread``); on the reactor thread it would deadlock.
"""

from __future__ import annotations

import ldap3
import pytest
import pytest_twisted
from ldap3.utils.conv import escape_filter_chars
from twisted.internet import reactor, threads
from twisted.internet.protocol import ClientCreator

from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap.ldapclient import LDAPClient

from pushproxy.config import GroupMode, LdapConfig, LdapServer
from pushproxy.decision import PrimaryStatus
from pushproxy.demo_directory import (
    DEMO_BASE, DEMO_PEOPLE_BASE, DEMO_SERVICE_DN, DEMO_SERVICE_PASSWORD, DEMO_USERS,
    demo_group_dn, demo_ldif, demo_user_dn, start_demo_directory)
from pushproxy.ldapauth import LdapDirectory
from pushproxy.metrics import Counters

ALICE = demo_user_dn("alice")
VPN = demo_group_dn("vpn-users")
TIMEOUT = 5  # seconds; every client call is bounded by this


@pytest.fixture
def directory():
    d = pytest_twisted.blockon(start_demo_directory(reactor))
    yield d
    pytest_twisted.blockon(d.stop())


def connect(directory, user=None, password=None):
    """An open (not bound) ldap3 connection, configured like the daemon's."""
    server = ldap3.Server("127.0.0.1", port=directory.port, get_info=ldap3.NONE,
                          connect_timeout=TIMEOUT)
    conn = ldap3.Connection(server, user=user, password=password,
                            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
                            raise_exceptions=False, receive_timeout=TIMEOUT, read_only=False,
                            # else ldap3 invents empty values for requested attributes
                            return_empty_attributes=False)
    conn.open(read_server_info=False)
    return conn


def rebind(conn, dn, password):
    conn.authentication, conn.user, conn.password = ldap3.SIMPLE, dn, password
    ok = conn.bind()
    return ok, conn.result["result"]


def entries(conn):
    return [e for e in conn.response or [] if e.get("type") == "searchResEntry"]


def in_thread(fn, *args):
    return threads.deferToThread(fn, *args)


def test_seed_is_hashed_and_complete():
    ldif = demo_ldif()
    for password in list(DEMO_USERS.values()) + [DEMO_SERVICE_PASSWORD]:
        assert password not in ldif
    assert ldif.count("userPassword: {SSHA}") == len(DEMO_USERS) + 1
    assert f"memberOf: {VPN}" in ldif and ldif.endswith("\n\n")


def test_non_loopback_interface_refused():
    with pytest.raises(ValueError):
        start_demo_directory(reactor, interface="0.0.0.0")


@pytest_twisted.inlineCallbacks
def test_service_search_finds_alice_with_member_of(directory):
    assert directory.url == f"ldap://127.0.0.1:{directory.port}"

    def run():
        conn = connect(directory, DEMO_SERVICE_DN, DEMO_SERVICE_PASSWORD)
        assert conn.bind(), conn.result
        conn.search(DEMO_PEOPLE_BASE, "(&(objectClass=inetOrgPerson)(uid=alice))",
                    search_scope=ldap3.SUBTREE, attributes=["memberOf"], size_limit=2)
        found = entries(conn)
        # The daemon asks for no attributes ("1.1") when it does not need memberOf.
        conn.search(DEMO_PEOPLE_BASE, "(uid=alice)", attributes=ldap3.NO_ATTRIBUTES)
        bare = entries(conn)
        conn.unbind()
        return found, bare

    found, bare = yield in_thread(run)
    assert [e["dn"] for e in found] == [ALICE]
    assert found[0]["attributes"]["memberOf"] == [VPN]
    assert [e["dn"] for e in bare] == [ALICE] and bare[0]["attributes"] == {}


@pytest_twisted.inlineCallbacks
def test_binds_good_wrong_unknown_and_repeated_on_one_connection(directory):
    def run():
        conn = connect(directory)
        results = [
            rebind(conn, ALICE, "alice-pw"),
            rebind(conn, ALICE, "wrong"),
            rebind(conn, demo_user_dn("nobody"), "x"),
            rebind(conn, "uid=x,ou=elsewhere,dc=example", "x"),
            rebind(conn, demo_user_dn("bob"), "bob-pw"),
            rebind(conn, ALICE, "ALICE-PW"),
            rebind(conn, ALICE, "alice-pw"),
            rebind(conn, DEMO_SERVICE_DN, DEMO_SERVICE_PASSWORD),
        ]
        conn.unbind()
        return results

    assert (yield in_thread(run)) == [
        (True, 0), (False, 49), (False, 49), (False, 49),
        (True, 0), (False, 49), (True, 0), (True, 0)]


@pytest_twisted.inlineCallbacks
def test_escaped_filters_match_nothing(directory):
    def run():
        conn = connect(directory, DEMO_SERVICE_DN, DEMO_SERVICE_PASSWORD)
        conn.bind()
        out = []
        for flt in (r"(uid=a\29\28uid=\2a)", r"(uid=\2a)",
                    f"(uid={escape_filter_chars('*')})", f"(uid={escape_filter_chars('a*')})"):
            conn.search(DEMO_BASE, flt, search_scope=ldap3.SUBTREE)
            out.append((conn.result["result"], entries(conn)))
        conn.unbind()
        return out

    for code, found in (yield in_thread(run)):
        assert (code, found) == (0, [])


@pytest_twisted.inlineCallbacks
def test_group_search_as_the_daemon_does_it(directory):
    def member_filter(uid):
        esc = escape_filter_chars(demo_user_dn(uid))
        return f"(|(member={esc})(uniqueMember={esc})(memberUid={escape_filter_chars(uid)}))"

    def run():
        conn = connect(directory, DEMO_SERVICE_DN, DEMO_SERVICE_PASSWORD)
        conn.bind()
        out = {}
        for uid in ("alice", "bob", "carol"):
            conn.search(VPN, member_filter(uid), search_scope=ldap3.BASE,
                        attributes=ldap3.NO_ATTRIBUTES)
            out[uid] = [e["dn"] for e in entries(conn)]
        conn.unbind()
        return out

    assert (yield in_thread(run)) == {"alice": [VPN], "bob": [VPN], "carol": []}


@pytest_twisted.inlineCallbacks
def test_user_password_is_never_readable_nor_searchable(directory):
    def run():
        conn = connect(directory)
        out = {}
        # Anonymous: no search at all (a failed bind also drops back to anonymous).
        conn.search(DEMO_BASE, "(uid=alice)", attributes=["*"])
        out["anonymous"] = conn.result["result"]
        conn.search("", "(uid=alice)", search_scope=ldap3.SUBTREE, attributes=["*"])
        out["anonymous_from_empty_base"] = entries(conn)
        rebind(conn, ALICE, "alice-pw")
        rebind(conn, ALICE, "wrong")
        conn.search(DEMO_BASE, "(uid=alice)", attributes=["*"])
        out["after_failed_bind"] = conn.result["result"]
        # Bound as the service account or the user: everything but userPassword.
        for who, pw in ((DEMO_SERVICE_DN, DEMO_SERVICE_PASSWORD), (ALICE, "alice-pw")):
            rebind(conn, who, pw)
            for attrs in (["*"], ["userPassword", "uid"], ["userpassword;binary"]):
                conn.search(DEMO_BASE, "(objectClass=*)", attributes=attrs)
                for e in entries(conn):
                    assert not any(k.lower().startswith("userpassword")
                                   for k in e["raw_attributes"]), (who, attrs, e)
            conn.search(DEMO_BASE, "(uid=alice)", attributes=["*"])
            out[who] = entries(conn)[0]["attributes"]["uid"]
            # A filter on userPassword would be a guessing oracle.
            conn.search(DEMO_BASE, "(&(uid=alice)(userPassword={SSHA}*))")
            out[who, "filter"] = conn.result["result"]
            conn.search(DEMO_BASE, "(!(!(userPassword=*)))")
            out[who, "nested"] = conn.result["result"]
            conn.search(DEMO_BASE, "(|(uid=nobody)(userPassword=alice-pw))")
            out[who, "equality"] = conn.result["result"]
        conn.unbind()
        return out

    out = yield in_thread(run)
    assert out["anonymous"] == 50 and out["after_failed_bind"] == 50
    assert out["anonymous_from_empty_base"] == []
    for who in (DEMO_SERVICE_DN, ALICE):
        assert out[who] == ["alice"]
        assert out[who, "filter"] == out[who, "nested"] == out[who, "equality"] == 50


@pytest_twisted.inlineCallbacks
def test_empty_password_never_authenticates(directory):
    # ldap3 refuses to send an empty simple password, so speak LDAP with ldaptor's client.
    client = yield ClientCreator(reactor, LDAPClient).connectTCP("127.0.0.1", directory.port,
                                                                 timeout=TIMEOUT)
    try:
        for dn in (ALICE, DEMO_SERVICE_DN):
            response = yield client.send(pureldap.LDAPBindRequest(dn=dn, auth=b""))
            assert response.resultCode == 49
        response = yield client.send(pureldap.LDAPSearchRequest(
            baseObject=DEMO_BASE, filter=pureldap.LDAPFilter_present("uid")))
        assert response.resultCode == 50  # still anonymous
    finally:
        client.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_directory_is_read_only(directory):
    def run():
        conn = connect(directory, ALICE, "alice-pw")
        conn.bind()
        conn.modify(ALICE, {"userPassword": [(ldap3.MODIFY_REPLACE, ["hijacked"])]})
        modify = conn.result["result"]
        conn.delete(demo_user_dn("bob"))
        delete = conn.result["result"]
        conn.add(demo_user_dn("mallory"), "inetOrgPerson",
                 {"uid": "mallory", "cn": "M", "sn": "M", "userPassword": "m"})
        add = conn.result["result"]
        conn.unbind()
        still = connect(directory)
        bound = rebind(still, ALICE, "alice-pw"), rebind(still, demo_user_dn("mallory"), "m")
        still.unbind()
        return (modify, delete, add), bound

    codes, bound = yield in_thread(run)
    assert codes == (53, 53, 53)
    assert bound == ((True, 0), (False, 49))


@pytest_twisted.inlineCallbacks
def test_stop_closes_listener_and_connections(directory):
    conn = yield in_thread(connect, directory, DEMO_SERVICE_DN, DEMO_SERVICE_PASSWORD)
    assert (yield in_thread(conn.bind))
    yield directory.stop()

    def after():
        try:
            alive = conn.search(DEMO_BASE, "(uid=alice)")
        except ldap3.core.exceptions.LDAPException:
            alive = False
        try:
            connect(directory)
            refused = False
        except ldap3.core.exceptions.LDAPException:
            refused = True
        return alive, refused

    assert (yield in_thread(after)) == (False, True)
    yield directory.stop()  # idempotent: the fixture stops it again


def _daemon_config(directory, **overrides):
    host, port = "127.0.0.1", directory.port
    fields = dict(
        servers=(LdapServer(url=directory.url, host=host, port=port, use_ssl=False),),
        start_tls=False, ca_file=None, bind_dn=DEMO_SERVICE_DN,
        bind_password=DEMO_SERVICE_PASSWORD, user_base=DEMO_PEOPLE_BASE,
        user_filter="(&(objectClass=inetOrgPerson)(uid={username}))", bind_template=None,
        required_groups=(VPN,), group_mode=GroupMode.MEMBER_OF, group_base=None,
        connect_timeout=TIMEOUT, response_timeout=TIMEOUT, backoff=1.0, pool_size=2,
        max_queue=8)
    fields.update(overrides)
    return LdapConfig(**fields)


@pytest.mark.parametrize("mode", [
    {}, {"group_mode": GroupMode.GROUP_SEARCH},
    {"bind_template": f"uid={{username}},{DEMO_PEOPLE_BASE}", "bind_dn": None,
     "bind_password": None}])
@pytest_twisted.inlineCallbacks
def test_the_daemon_client_against_the_demo(directory, mode):
    ldap = LdapDirectory(_daemon_config(directory, **mode), reactor, Counters())
    ldap.start()
    try:
        got = {}
        for user, pw in (("alice", "alice-pw"), ("bob", "bob-pw"), ("carol", "carol-pw"),
                         ("alice", "nope"), ("alice", ""), ("nobody", "x"), ("*", "x"),
                         ("alice)(uid=*", "x")):
            got[user, pw] = (yield ldap.authenticate(user, pw)).status
    finally:
        yield threads.deferToThread(ldap.stop)
    search_then_bind = "bind_template" not in mode
    assert got == {
        ("alice", "alice-pw"): PrimaryStatus.OK,
        ("bob", "bob-pw"): PrimaryStatus.OK,
        ("carol", "carol-pw"): PrimaryStatus.NOT_IN_GROUP,
        ("alice", "nope"): PrimaryStatus.BAD_CREDENTIALS,
        # ldap3 itself refuses to send an empty password; the daemon surfaces that
        # as a server error, which is the daemon's business, not the demo's.
        ("alice", ""): got["alice", ""],
        ("nobody", "x"): (PrimaryStatus.UNKNOWN_USER if search_then_bind
                          else PrimaryStatus.BAD_CREDENTIALS),
        ("*", "x"): (PrimaryStatus.UNKNOWN_USER if search_then_bind
                     else PrimaryStatus.BAD_CREDENTIALS),
        ("alice)(uid=*", "x"): (PrimaryStatus.UNKNOWN_USER if search_then_bind
                                else PrimaryStatus.BAD_CREDENTIALS),
    }
    assert got["alice", ""] is not PrimaryStatus.OK
