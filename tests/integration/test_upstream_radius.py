"""Issue 10 acceptance: a real FreeRADIUS as the upstream first factor, radclient as the NAS.

    radclient -> pushproxy (primary: radius) -> FreeRADIUS (users file)
              <- Accept + upstream Class/MPPE keys, after the push is approved

The push side is the real approval service with the command-line
authenticator where the push matters to the property (MS-CHAPv2), and a
ScriptedProvider elsewhere (recording every push asked for).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import textwrap

import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from tests.integration.freeradius_upstream import UpstreamRadius, available
from tests.integration.harness import SECRET, load, start_daemon, write_config
from tests.integration.mschapv2 import md4, ms_chap2_response, mppe_keys, nt_password_hash, \
    nt_response
from tests.integration.radclient import radclient
from tests.integration.test_approval_e2e import Stack, first_request
from tests.support import ScriptedProvider

pytestmark = pytest.mark.skipif(not available(), reason="freeradius is not installed")

MA = ("Message-Authenticator", "0x00")
UPSTREAM_SECRET = "upstream-secret-4567"
USERS = textwrap.dedent("""\
    alice Cleartext-Password := "alice-up"
    \tClass = "upstream-class-alice", Filter-Id = "from-upstream"
    bob Cleartext-Password := "bob-up"
    \tClass = "upstream-class-bob"
    erin Cleartext-Password := "erin-up"
    \tClass = "upstream-class-erin"
    carol Cleartext-Password := "carol-up"
    \tClass = "upstream-class-carol"
    mallory Cleartext-Password := "mallory-up"
    frank Cleartext-Password := "frank-old", SMB-Account-CTRL-TEXT := "[Ue]"
    grace Cleartext-Password := "grace-pw", SMB-Account-CTRL-TEXT := "[UD]"
    heidi Cleartext-Password := "heidi-pw", SMB-Account-CTRL-TEXT := "[UL]"
    """)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    server = UpstreamRadius(tmp_path_factory.mktemp("freeradius"), UPSTREAM_SECRET, USERS)
    server.start()
    yield server
    server.stop()


class SilentUdp:
    """A bound UDP port that never answers (an upstream server that is down)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"


def client_yaml(servers, *, timeout=2, retries=0, extra="", mauth=False) -> str:
    """The RADIUS client block of a primary: radius client."""
    ups = "".join(textwrap.dedent(f"""\
          - address: "{address}"
            secret_file: upstream.secret
            timeout: {timeout}
            retries: {retries}
            require_message_authenticator: {str(mauth).lower()}
        """) for address in servers)
    return textwrap.dedent("""\
        - name: vpn
          address: 127.0.0.1
          secret_file: radius.secret
          primary: radius
          upstream:
        """) + textwrap.indent(ups, "    ") + extra


@pytest.fixture
def proxy(slapd, tmp_path):
    """Start a daemon with a ScriptedProvider; returns (daemon, address, provider)."""
    running = []

    @pytest_twisted.inlineCallbacks
    def make(clients, mode="approve", extra="", any_group=False):
        (tmp_path / "upstream.secret").write_text(UPSTREAM_SECRET + "\n")
        path = write_config(tmp_path, slapd, clients=clients)
        text = path.read_text() + "\n" + textwrap.dedent(extra)
        if any_group:  # users outside vpn-users may log in too
            text = "\n".join(line for line in text.splitlines()
                              if "required_groups" not in line) + "\n"
        path.write_text(text)
        provider = ScriptedProvider(mode=mode)
        daemon, address = yield start_daemon(load(path), provider)
        running.append(daemon)
        return daemon, address, provider

    yield make
    for daemon in running:
        pytest_twisted.blockon(daemon.stop())


def pap(user, password):
    return [("User-Name", user), ("User-Password", password), MA]


def mschapv2(user, password):
    """An MS-CHAPv2 request, and the (send, recv) MPPE keys the NAS must end up with."""
    challenge, peer = secrets.token_bytes(16), secrets.token_bytes(16)
    response = nt_response(challenge, peer, user, password)
    attrs = [("User-Name", user), ("MS-CHAP-Challenge", "0x" + challenge.hex()),
             ("MS-CHAP2-Response", "0x" + ms_chap2_response(1, peer, response).hex()), MA]
    return attrs, mppe_keys(password, response)


@pytest_twisted.inlineCallbacks
def test_pap_accept_after_push_carries_the_upstream_attributes(proxy, upstream):
    """PAP: the password is re-hidden for the upstream; its Class and Filter-Id reach the NAS."""
    daemon, address, provider = yield proxy(client_yaml([upstream.address]))
    result = yield radclient(address, SECRET, pap("alice", "alice-up"))
    assert result.code == "Access-Accept", result.stdout
    assert result.get("Filter-Id") == "from-upstream"
    assert bytes.fromhex(result.get("Class")[2:]) == b"upstream-class-alice"
    assert [r.username for r in provider.requests] == ["alice"]


@pytest_twisted.inlineCallbacks
def test_mschapv2_approved_on_a_device_gives_the_upstream_mppe_keys_for_our_secret(
        slapd, tmp_path, upstream):
    """MS-CHAPv2 end to end with the real approval service: the keys decrypt with OUR secret
    to exactly what RFC 3079 derives from the user's password and NT-Response."""
    (tmp_path / "upstream.secret").write_text(UPSTREAM_SECRET + "\n")
    stack = yield Stack(tmp_path, slapd, clients=client_yaml([upstream.address])).start()
    try:
        state = yield stack.device()
        attrs, (send, recv) = mschapv2("alice", "alice-up")
        login = radclient(stack.radius, SECRET, attrs, timeout=30)
        request = yield threads.deferToThread(first_request, state)
        assert request["username"] == "alice"
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        result = yield login
    finally:
        yield stack.stop()
    assert result.code == "Access-Accept", result.stdout
    # radclient decrypts MS-MPPE-*-Key with its own secret (ours, downstream) and
    # its request's authenticator: equal keys prove the re-encryption.
    assert result.get("MS-MPPE-Send-Key") == "0x" + send.hex()
    assert result.get("MS-MPPE-Recv-Key") == "0x" + recv.hex()
    assert result.get("MS-CHAP2-Success", "").startswith("0x01")  # ident 1, then S=...
    assert bytes.fromhex(result.get("Class")[2:]) == b"upstream-class-alice"
    assert stack.audit()[0]["reason"] == "push_approved"


@pytest_twisted.inlineCallbacks
def test_mschapv1_keys_are_rehidden_too(proxy, upstream):
    """MS-CHAPv1 (radclient's MS-CHAP-Password): MS-CHAP-MPPE-Keys (RFC 2548 2.4.1) survives."""
    daemon, address, provider = yield proxy(client_yaml([upstream.address]))
    result = yield radclient(address, SECRET, [("User-Name", "bob"),
                                               ("MS-CHAP-Password", "bob-up"), MA])
    assert result.code == "Access-Accept", result.stdout
    keys = bytes.fromhex(result.get("MS-CHAP-MPPE-Keys")[2:])
    assert keys[8:24] == md4(nt_password_hash("bob-up"))  # the NT session key


@pytest_twisted.inlineCallbacks
def test_upstream_reject_is_relayed_and_no_push_is_sent(proxy, upstream):
    daemon, address, provider = yield proxy(client_yaml([upstream.address]))
    attrs, _ = mschapv2("alice", "wrong-password")
    result = yield radclient(address, SECRET, attrs)
    assert result.code == "Access-Reject"
    assert result.get("MS-CHAP-Error") is not None  # the upstream's own error, relayed
    result = yield radclient(address, SECRET, pap("alice", "wrong"))
    assert result.code == "Access-Reject"
    assert provider.requests == []


@pytest_twisted.inlineCallbacks
def test_denied_push_rejects_without_the_upstream_attributes(proxy, upstream):
    daemon, address, provider = yield proxy(client_yaml([upstream.address]), mode="deny")
    attrs, _ = mschapv2("alice", "alice-up")
    result = yield radclient(address, SECRET, attrs)
    assert result.code == "Access-Reject"
    assert len(provider.requests) == 1
    names = {name for name, _ in result.attributes}
    assert not names & {"Class", "Filter-Id", "MS-MPPE-Send-Key", "MS-MPPE-Recv-Key",
                        "MS-CHAP2-Success"}


@pytest_twisted.inlineCallbacks
def test_first_upstream_down_the_second_answers_with_one_push(proxy, upstream):
    silent = SilentUdp()
    try:
        daemon, address, provider = yield proxy(
            client_yaml([silent.address, upstream.address], timeout=0.5, retries=1))
        result = yield radclient(address, SECRET, pap("alice", "alice-up"), timeout=10)
        assert result.code == "Access-Accept"
        assert len(provider.requests) == 1
        assert daemon.counters.get("upstream_timeouts", server=silent.address) == 1
        assert daemon.counters.get("upstream_resends", server=silent.address) == 1
        # The silent server is now in backoff: the next login goes to the live one at once.
        result = yield radclient(address, SECRET, pap("bob", "bob-up"), timeout=10)
        assert result.code == "Access-Accept"
        assert daemon.counters.get("upstream_timeouts", server=silent.address) == 1
    finally:
        silent.sock.close()


@pytest_twisted.inlineCallbacks
def test_upstream_challenge_follow_up_goes_back_upstream(proxy, upstream):
    """A token prompt from the upstream (Access-Challenge + State) reaches the NAS; the
    answer with that State goes to the upstream, not to pushproxy's own challenges."""
    daemon, address, provider = yield proxy(client_yaml([upstream.address]))
    first = yield radclient(address, SECRET, pap("erin", "erin-up"))
    assert first.code == "Access-Challenge"
    assert first.get("Reply-Message") == "Token code?"
    assert provider.requests == []
    second = yield radclient(address, SECRET, pap("erin", "erin-up")[:2]
                             + [("State", first.get("State")), MA])
    assert second.code == "Access-Accept", second.stdout
    assert bytes.fromhex(second.get("Class")[2:]) == b"upstream-class-erin"
    assert len(provider.requests) == 1


@pytest_twisted.inlineCallbacks
def test_pass_attributes_keeps_only_the_listed_ones_and_the_protocol_keys(proxy, upstream):
    daemon, address, provider = yield proxy(client_yaml(
        [upstream.address], extra="  pass_attributes: [Class]\n"))
    attrs, (send, _) = mschapv2("alice", "alice-up")
    result = yield radclient(address, SECRET, attrs)
    assert result.code == "Access-Accept"
    assert result.get("Class") is not None and result.get("Filter-Id") is None
    assert result.get("MS-MPPE-Send-Key") == "0x" + send.hex()


@pytest_twisted.inlineCallbacks
def test_unsigned_upstream_replies_are_refused_when_message_authenticator_is_required(
        proxy, upstream):
    """FreeRADIUS 3.2.1 signs no Accept: with require_message_authenticator the reply is
    dropped as a possible Blast-RADIUS forgery, and the login fails closed."""
    daemon, address, provider = yield proxy(client_yaml([upstream.address], timeout=0.5,
                                                        mauth=True))
    result = yield radclient(address, SECRET, pap("alice", "alice-up"), timeout=10)
    assert result.code == "Access-Reject"
    assert provider.requests == []
    assert daemon.counters.get("upstream_drops", reason="invalid") >= 1


@pytest_twisted.inlineCallbacks
def test_group_mapped_attributes_only_for_members(proxy, slapd):
    """LDAP primary: vpn-users members get Fortinet-Group-Name and Cisco-AVPair, others not;
    radclient decodes both with FreeRADIUS's own vendor dictionaries."""
    clients = textwrap.dedent("""\
        - name: fw
          address: 127.0.0.1
          secret_file: radius.secret
        """)
    extra = f"""\
        reply_attributes:
          - group: "{slapd.group_dn('vpn-users')}"
            attributes:
              - "Fortinet-Group-Name = vpn-users"
              - "Cisco-AVPair = shell:priv-lvl=15"
          - group: "{slapd.group_dn('admins')}"
            attributes: ["Filter-Id = admins"]
        """
    daemon, address, provider = yield proxy(clients, extra=extra, any_group=True)
    member = yield radclient(address, SECRET, pap("alice", "alice-pw"))
    other = yield radclient(address, SECRET, pap("carol", "carol-pw"))
    assert member.code == other.code == "Access-Accept", (member.stdout, other.stdout)
    assert member.get("Fortinet-Group-Name") == "vpn-users"
    assert member.get("Cisco-AVPair") == "shell:priv-lvl=15"
    assert member.get("Filter-Id") is None
    names = {name for name, _ in other.attributes}
    assert not names & {"Fortinet-Group-Name", "Cisco-AVPair", "Filter-Id"}


@pytest_twisted.inlineCallbacks
def test_groups_from_ldap_map_attributes_for_an_upstream_login(proxy, upstream, slapd):
    """primary: radius + groups_from_ldap: the password is checked upstream, the groups are
    read from the directory (service account, no bind as the user) for reply_attributes."""
    extra = f"""\
        reply_attributes:
          - group: "{slapd.group_dn('vpn-users')}"
            attributes: ["Fortinet-Group-Name = vpn-users"]
        """
    daemon, address, provider = yield proxy(
        client_yaml([upstream.address], extra="  groups_from_ldap: true\n"), extra=extra,
        any_group=True)
    binds = daemon.counters.get("ldap_user_binds")
    member = yield radclient(address, SECRET, pap("alice", "alice-up"))
    other = yield radclient(address, SECRET, pap("carol", "carol-up"))
    assert member.code == other.code == "Access-Accept", (member.stdout, other.stdout)
    assert member.get("Fortinet-Group-Name") == "vpn-users"
    assert bytes.fromhex(member.get("Class")[2:]) == b"upstream-class-alice"
    assert other.get("Fortinet-Group-Name") is None
    assert daemon.counters.get("ldap_user_binds") == binds  # nobody bound as the user


@pytest_twisted.inlineCallbacks
def test_groups_from_ldap_enforces_required_groups_and_unknown_users(proxy, upstream):
    daemon, address, provider = yield proxy(
        client_yaml([upstream.address], extra="  groups_from_ldap: true\n"))
    carol = yield radclient(address, SECRET, pap("carol", "carol-up"))  # not in vpn-users
    bob = yield radclient(address, SECRET, pap("bob", "bob-up"))  # in vpn-users
    assert carol.code == "Access-Reject" and bob.code == "Access-Accept"
    assert [r.username for r in provider.requests] == ["bob"]


def eap_md5_login(address, user, password):
    """Two EAP-MD5 rounds through ``address`` (radclient each time); returns both results."""
    identity = bytes([2, 1, 0, 5 + len(user), 1]) + user.encode()
    first = yield radclient(address, SECRET, [("User-Name", user),
                                              ("EAP-Message", "0x" + identity.hex()), MA])
    if first.code != "Access-Challenge":
        return first, None
    eap = bytes.fromhex(first.get("EAP-Message")[2:])
    ident, size = eap[1], eap[5]
    digest = hashlib.md5(bytes([ident]) + password.encode() + eap[6:6 + size]).digest()
    answer = bytes([2, ident, 0, 22, 4, 16]) + digest
    second = yield radclient(address, SECRET, [("User-Name", user),
                                               ("EAP-Message", "0x" + answer.hex()),
                                               ("State", first.get("State")), MA])
    return first, second


@pytest_twisted.inlineCallbacks
def test_eap_md5_rounds_pass_through_and_the_final_accept_pushes(proxy, upstream):
    """EAP: the Challenge rounds are relayed (signed replies required: FreeRADIUS signs EAP),
    the follow-up with the upstream's State goes back upstream, and only the Accept pushes."""
    daemon, address, provider = yield proxy(client_yaml([upstream.address], mauth=True))
    first, second = yield from_generator(eap_md5_login(address, "alice", "alice-up"))
    assert first.code == "Access-Challenge" and first.get("Reply-Message") is None
    assert second is not None and second.code == "Access-Accept", second.stdout
    assert second.get("EAP-Message") == "0x03" + first.get("EAP-Message")[4:6] + "0004"
    assert bytes.fromhex(second.get("Class")[2:]) == b"upstream-class-alice"
    assert second.get("Reply-Message") is None  # none of ours next to EAP
    assert [r.username for r in provider.requests] == ["alice"]
    assert daemon.counters.get("upstream_challenges") == 1


@pytest_twisted.inlineCallbacks
def test_eap_accept_without_the_proved_identity_is_rejected(proxy, upstream):
    """The upstream sends no User-Name for mallory: nobody to push to safely, so Reject."""
    daemon, address, provider = yield proxy(client_yaml([upstream.address], mauth=True))
    first, second = yield from_generator(eap_md5_login(address, "mallory", "mallory-up"))
    assert first.code == "Access-Challenge" and second.code == "Access-Reject"
    assert provider.requests == []
    # Our own Reject still ends the EAP conversation: EAP-Failure, the Response's id.
    assert second.get("EAP-Message") == "0x04" + first.get("EAP-Message")[4:6] + "0004"


@pytest_twisted.inlineCallbacks
def test_eap_push_denied_gets_an_eap_failure_and_none_of_the_upstream_attributes(
        proxy, upstream):
    daemon, address, provider = yield proxy(client_yaml([upstream.address], mauth=True),
                                            mode="deny")
    first, second = yield from_generator(eap_md5_login(address, "alice", "alice-up"))
    assert second.code == "Access-Reject" and len(provider.requests) == 1
    assert second.get("EAP-Message") == "0x04" + first.get("EAP-Message")[4:6] + "0004"
    assert second.get("Class") is None


def from_generator(gen):
    """Run a generator of Deferreds (eap_md5_login) as one inlineCallbacks Deferred."""
    return pytest_twisted.inlineCallbacks(lambda: (yield from gen))()


@pytest_twisted.inlineCallbacks
def test_mschapv2_password_expired_is_relayed_for_the_client_to_change_it(proxy, upstream):
    """The upstream says E=648 (password expired): the gateway gets that MS-CHAP-Error, so
    the user's client can start its change-password exchange; no push for it."""
    daemon, address, provider = yield proxy(client_yaml([upstream.address]))
    attrs, _ = mschapv2("frank", "frank-old")
    result = yield radclient(address, SECRET, attrs)
    assert result.code == "Access-Reject", result.stdout
    assert "E=648" in result.get("MS-CHAP-Error", ""), result.stdout
    assert provider.requests == []


@pytest.mark.parametrize("user,password,error,reason", [
    ("frank", "frank-old", "E=648", "password_expired"),
    ("grace", "grace-pw", "E=691", "account_disabled"),  # FreeRADIUS: "M=Account disabled"
    ("heidi", "heidi-pw", "E=647", "account_locked"),  # FreeRADIUS: "M=Account locked out"
    ("alice", "not-alices", "E=691", "bad_credentials"),
])
@pytest_twisted.inlineCallbacks
def test_mschapv2_errors_give_the_accounts_state_as_the_audit_reason(proxy, upstream, tmp_path,
                                                                    user, password, error,
                                                                    reason):
    """The upstream's MS-CHAP-Error is relayed as it came, and names the audit reason."""
    daemon, address, provider = yield proxy(client_yaml([upstream.address]), any_group=True)
    attrs, _ = mschapv2(user, password)
    result = yield radclient(address, SECRET, attrs)
    assert result.code == "Access-Reject", result.stdout
    assert error in result.get("MS-CHAP-Error", ""), result.stdout
    assert provider.requests == []
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in events] == [reason]
