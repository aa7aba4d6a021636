"""Self-tests for the real-peer fixtures: the private slapd and the radclient helper."""

from __future__ import annotations

import os
import ssl

import ldap3
import pytest
import pytest_twisted
from ldap3.utils.conv import escape_filter_chars
from pyrad import packet
from pyrad.dictionary import Dictionary
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.threads import deferToThread

try:
    from .radclient import RADCLIENT_BIN, radclient, radclient_sync
    from .slapd import Slapd, _write_tls_material, slapd_available
except ImportError:
    from radclient import RADCLIENT_BIN, radclient, radclient_sync
    from slapd import Slapd, _write_tls_material, slapd_available

requires_radclient = pytest.mark.skipif(
    not os.access(RADCLIENT_BIN, os.X_OK),
    reason="radclient not installed (apt-get install freeradius-utils)",
)


def _conn(url: str, user: str | None = None, password: str | None = None, **server_kw):
    """Return an unbound ldap3 Connection with short timeouts."""
    server = ldap3.Server(url, connect_timeout=5, get_info=ldap3.NONE, **server_kw)
    return ldap3.Connection(server, user=user, password=password, receive_timeout=5)


def _tls(ca_file: str) -> ldap3.Tls:
    """Return a TLS config that requires a certificate signed by *ca_file*."""
    return ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file)


# ---------------------------------------------------------------- slapd


def test_slapd_runs_and_answers_anonymous_bind(slapd):
    """The session slapd is alive on 127.0.0.1 and answers LDAP."""
    assert slapd.running and slapd.url.startswith("ldap://127.0.0.1:")
    conn = _conn(slapd.url)
    assert conn.bind()
    conn.unbind()


def test_service_account_search_finds_alice(slapd):
    """The service account can bind and search people by uid."""
    conn = _conn(slapd.url, slapd.service_dn, slapd.service_password)
    assert conn.bind(), conn.result
    assert conn.search(slapd.people_dn, "(uid=alice)", attributes=["uid", "mail", "cn"])
    assert [e.entry_dn for e in conn.entries] == [slapd.user_dn("alice")]
    assert conn.entries[0].mail.value == "alice@example.com"
    conn.unbind()


def test_alice_binds_over_plain_ldap(slapd):
    """alice's seeded password works on ldap://."""
    conn = _conn(slapd.url, slapd.user_dn("alice"), "alice-pw")
    assert conn.bind(), conn.result
    conn.unbind()


def test_alice_binds_over_starttls_with_ca_validation(slapd):
    """StartTLS on the plain port succeeds with the certificate checked against ca.pem."""
    conn = _conn(slapd.starttls_url, slapd.user_dn("alice"), "alice-pw", tls=_tls(slapd.ca_file))
    conn.open()
    assert conn.start_tls(), conn.result
    assert conn.tls_started
    assert conn.bind(), conn.result
    conn.unbind()


def test_alice_binds_over_ldaps_with_ca_validation(slapd):
    """LDAPS on the second port succeeds with the certificate checked against ca.pem."""
    conn = _conn(slapd.ldaps_url, slapd.user_dn("alice"), "alice-pw", tls=_tls(slapd.ca_file))
    assert conn.server.ssl
    assert conn.bind(), conn.result
    conn.unbind()


def test_ldaps_certificate_rejected_without_the_test_ca(slapd, tmp_path):
    """Certificate validation is real: a different CA file makes the handshake fail."""
    # Another CA, not the server's own leaf: Python 3.13 verifies with
    # VERIFY_X509_PARTIAL_CHAIN, where a trusted leaf is an anchor by itself.
    (tmp_path / "other").mkdir()
    _write_tls_material(tmp_path / "other")
    other = tmp_path / "other" / "ca.pem"
    conn = _conn(slapd.ldaps_url, slapd.user_dn("alice"), "alice-pw", tls=_tls(str(other)))
    with pytest.raises(ldap3.core.exceptions.LDAPSocketOpenError):
        conn.bind()


def test_wrong_password_is_rejected(slapd):
    """A wrong password yields invalidCredentials (49)."""
    conn = _conn(slapd.url, slapd.user_dn("alice"), "not-alice-pw")
    assert not conn.bind()
    assert conn.result["result"] == 49


def test_special_character_uid_can_bind_and_be_found(slapd):
    """uid o'brien(x) exists, is found with an escaped filter, and can bind."""
    conn = _conn(slapd.url, slapd.service_dn, slapd.service_password)
    conn.bind()
    flt = "(uid=" + escape_filter_chars("o'brien(x)") + ")"
    assert flt == "(uid=o'brien\\28x\\29)"
    assert conn.search(slapd.people_dn, flt, attributes=["cn"])
    assert conn.entries[0].cn.value == "O'Brien (X)"
    user = _conn(slapd.url, conn.entries[0].entry_dn, "ob-pw")
    assert user.bind(), user.result


@pytest.mark.parametrize("who", ["anonymous", "service", "self"])
def test_userpassword_is_not_readable(slapd, who):
    """userPassword is never returned to anonymous, the service account or the user."""
    creds = {
        "anonymous": (None, None),
        "service": (slapd.service_dn, slapd.service_password),
        "self": (slapd.user_dn("alice"), "alice-pw"),
    }[who]
    conn = _conn(slapd.url, *creds)
    assert conn.bind()
    conn.search(slapd.base_dn, "(uid=alice)", attributes=["userPassword", "uid"])
    # anonymous sees nothing at all (noSuchObject) unless Slapd(anonymous_read=True)
    assert conn.result["result"] == (32 if who == "anonymous" else 0)
    for entry in conn.response or []:
        if entry.get("type") == "searchResEntry":
            assert "userPassword" not in entry["attributes"] or not entry["attributes"]["userPassword"]


def test_root_dn_can_read_userpassword(slapd):
    """The rootdn still sees userPassword (proves the ACL test above is meaningful)."""
    conn = _conn(slapd.url, slapd.root_dn, slapd.root_password)
    assert conn.bind()
    conn.search(slapd.people_dn, "(uid=alice)", attributes=["userPassword"])
    assert str(conn.entries[0].userPassword.value).startswith("{SSHA}")


def test_memberof_reflects_group_membership(slapd):
    """memberOf: alice in vpn-users, carol in none, dave in admins (direct only)."""
    conn = _conn(slapd.url, slapd.service_dn, slapd.service_password)
    conn.bind()

    def groups(uid: str) -> set[str]:
        conn.search(slapd.people_dn, f"(uid={escape_filter_chars(uid)})", attributes=["memberOf"])
        return {g.lower() for g in conn.entries[0].memberOf.values}

    assert groups("alice") == {slapd.group_dn("vpn-users")}
    assert groups("o'brien(x)") == {slapd.group_dn("vpn-users")}
    assert groups("carol") == set()
    assert groups("dave") == {slapd.group_dn("admins")}
    conn.search(slapd.groups_dn, "(cn=nested-outer)", attributes=["member"])
    assert conn.entries[0].member.values == [slapd.group_dn("admins")]


@pytest.mark.skipif(not slapd_available(), reason="slapd not installed")
def test_private_instance_restart_keeps_data_and_counts_binds(tmp_path):
    """A second Slapd with extra users restarts on the same ports and counts binds;
    with anonymous_read=True anonymous sees entries but still not userPassword;
    the memberof overlay maintains memberOf for changes made over LDAP."""
    extra = [(f"bench{i}", f"pw{i}") for i in range(50)]
    with Slapd(extra, extra_users_groups=["vpn-users"], loglevel="stats",
               anonymous_read=True, base_dir=tmp_path) as ldap:
        port = ldap.port
        ldap.restart()
        assert ldap.port == port and ldap.running
        dn = ldap.user_dn("bench7")
        assert _conn(ldap.url, dn, "pw7").bind()
        assert not _conn(ldap.url, dn, "wrong").bind()
        assert ldap.bind_count(dn) == 2
        anon = _conn(ldap.url)
        anon.bind()
        assert anon.search(ldap.people_dn, "(uid=bench7)", attributes=["uid", "userPassword", "memberOf"])
        assert anon.entries[0].entry_attributes_as_dict == {
            "uid": ["bench7"], "memberOf": [ldap.group_dn("vpn-users")], "userPassword": []}
        root = _conn(ldap.url, ldap.root_dn, ldap.root_password)
        assert root.bind()
        assert root.modify(ldap.group_dn("admins"),
                           {"member": [(ldap3.MODIFY_ADD, [ldap.user_dn("carol")])]})
        root.search(ldap.user_dn("carol"), "(objectClass=*)", ldap3.BASE, attributes=["memberOf"])
        assert root.entries[0].memberOf.values == [ldap.group_dn("admins")]
    assert not ldap.running and not ldap.directory.exists()


# ---------------------------------------------------------------- radclient

_DICTIONARY = """\
ATTRIBUTE User-Name 1 string
ATTRIBUTE User-Password 2 string
ATTRIBUTE Reply-Message 18 string
ATTRIBUTE State 24 octets
ATTRIBUTE Session-Timeout 27 integer
ATTRIBUTE Message-Authenticator 80 octets
"""


class PyradResponder(DatagramProtocol):
    """Minimal RADIUS server: accepts password "good", challenges "chal", else rejects."""

    def __init__(self, secret: bytes, dictionary: Dictionary) -> None:
        self.secret, self.dictionary, self.requests = secret, dictionary, []
        self.silent = False

    def datagramReceived(self, data: bytes, addr) -> None:
        """Answer one Access-Request, echoing User-Name in a Reply-Message."""
        req = packet.AuthPacket(packet=data, secret=self.secret, dict=self.dictionary)
        password = req.PwDecrypt(req["User-Password"][0])
        self.requests.append((req, password))
        if self.silent:
            return
        reply = req.CreateReply()
        reply.code = {"good": packet.AccessAccept, "chal": packet.AccessChallenge}.get(
            password, packet.AccessReject
        )
        reply.AddAttribute("Reply-Message", f"hello {req['User-Name'][0]}")
        reply.AddAttribute("Reply-Message", "line2\n\"quoted\"")
        reply.AddAttribute("Session-Timeout", 30)
        reply.AddAttribute("State", b"\x01\x02ab")
        self.transport.write(reply.ReplyPacket(), addr)


@pytest.fixture
def responder(tmp_path):
    """A PyradResponder on 127.0.0.1:<free port>; yields (host_port, protocol)."""
    path = tmp_path / "dictionary"
    path.write_text(_DICTIONARY)
    proto = PyradResponder(b"s3cret", Dictionary(str(path)))
    port = reactor.listenUDP(0, proto, interface="127.0.0.1")
    yield f"127.0.0.1:{port.getHost().port}", proto
    port.stopListening()


@requires_radclient
@pytest_twisted.inlineCallbacks
def test_radclient_parses_access_accept_with_reply_message(responder):
    """radclient output is parsed into code and unescaped reply attributes."""
    host_port, proto = responder
    result = yield radclient(host_port, "s3cret", [
        ("User-Name", "alice"), ("User-Password", "good"), ("Message-Authenticator", "0x00"),
    ])
    assert result.code == "Access-Accept" and result.exit_code == 0, result.stdout
    assert result.values("Reply-Message") == ["hello alice", 'line2\n"quoted"']
    assert result.get("Session-Timeout") == "30"
    assert result.get("State") == "0x01026162"
    assert result.get("Message-Authenticator", "").startswith("0x")
    req, password = proto.requests[-1]
    assert password == "good" and req.message_authenticator


@requires_radclient
@pytest_twisted.inlineCallbacks
def test_radclient_takes_a_secret_that_starts_with_a_dash(tmp_path):
    """A secret beginning with "-" (one generated secret in 64) is a secret, not options."""
    path = tmp_path / "dash-dictionary"
    path.write_text(_DICTIONARY)
    proto = PyradResponder(b"-V9x_secret", Dictionary(str(path)))
    port = reactor.listenUDP(0, proto, interface="127.0.0.1")
    try:
        result = yield radclient(f"127.0.0.1:{port.getHost().port}", "-V9x_secret",
                                 [("User-Name", "dash"), ("User-Password", "good")])
    finally:
        yield port.stopListening()
    assert result.code == "Access-Accept", result.stderr
    assert proto.requests[-1][1] == "good"


@requires_radclient
@pytest_twisted.inlineCallbacks
def test_radclient_quotes_special_characters_both_ways(responder):
    """Quotes, backslashes, tabs and UTF-8 in values survive the round trip."""
    host_port, proto = responder
    name = "o'brien(x) \\ \"q\" \t ünï"
    result = yield radclient(host_port, "s3cret", [("User-Name", name), ("User-Password", "x\"\\y")])
    assert result.code == "Access-Reject" and result.exit_code != 0
    assert result.get("Reply-Message") == f"hello {name}"
    req, password = proto.requests[-1]
    assert req["User-Name"] == [name] and password == "x\"\\y"


@requires_radclient
@pytest_twisted.inlineCallbacks
def test_radclient_reports_challenge_and_count(responder):
    """Access-Challenge is reported; count=2 yields two parsed replies."""
    host_port, _ = responder
    result = yield radclient(host_port, "s3cret", [("User-Name", "bob"), ("User-Password", "chal")],
                             count=2)
    assert result.code == "Access-Challenge"
    assert [r.code for r in result.replies] == ["Access-Challenge"] * 2


@requires_radclient
@pytest_twisted.inlineCallbacks
def test_radclient_no_reply_gives_code_none(responder):
    """Without an answer code is None, attributes empty and the exit code non-zero."""
    host_port, proto = responder
    proto.silent = True
    result = yield radclient(host_port, "s3cret", [("User-Name", "bob"), ("User-Password", "good")],
                             retries=1, timeout=0.5)
    assert result.code is None and result.attributes == []
    assert result.exit_code != 0


@requires_radclient
@pytest_twisted.inlineCallbacks
def test_radclient_sync_variant(responder):
    """radclient_sync works outside the reactor thread (run via deferToThread)."""
    host_port, _ = responder
    result = yield deferToThread(radclient_sync, host_port, "s3cret",
                                 [("User-Name", "carol"), ("User-Password", "good")])
    assert result.code == "Access-Accept" and result.get("Reply-Message") == "hello carol"
