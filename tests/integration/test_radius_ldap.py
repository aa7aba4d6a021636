"""Issue 2 acceptance: real slapd + real radclient + the in-process daemon.

The push provider is scripted (the built-in approval service has its own
end-to-end tests); everything else is the production path: UDP, pyrad codec,
retransmit table, engine, ldap3 against slapd, audit file.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import pytest_twisted
from pyrad import packet as rpacket
from twisted.internet import reactor, threads

from pushproxy.radius import codec
from tests.integration.harness import (SECRET, SilentServer, closed_port, load, start_daemon,
                                       write_config)
from tests.integration.radclient import radclient
from tests.support import ScriptedProvider

MA = ("Message-Authenticator", "0x00")
DICT = codec.load_dictionary()


def login_attrs(user="alice", password="alice-pw", station="198.51.100.7"):
    return [("User-Name", user), ("User-Password", password),
            ("Calling-Station-Id", station), ("NAS-Identifier", "gw-test"), MA]


@pytest.fixture
def run(slapd, tmp_path):
    """Start a daemon with a given provider and config tweaks; stops it afterwards."""
    started = []

    @pytest_twisted.inlineCallbacks
    def _run(provider, **config_kwargs):
        config = load(write_config(tmp_path, slapd, **config_kwargs))
        daemon, addr = yield start_daemon(config, provider)
        started.append(daemon)
        return daemon, addr

    yield _run
    for daemon in started:
        pytest_twisted.blockon(daemon.stop())


def audit(tmp_path):
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


@pytest_twisted.inlineCallbacks
def test_right_password_and_approve_gives_accept(run, tmp_path):
    provider = ScriptedProvider(mode="approve")
    daemon, addr = yield run(provider)
    result = yield radclient(addr, SECRET, login_attrs())
    assert result.code == "Access-Accept"
    assert len(provider.requests) == 1
    req = provider.requests[0]
    assert (req.username, req.application, req.client_ip, req.nas) == \
        ("alice", "test-nas", "198.51.100.7", "gw-test")
    (event,) = audit(tmp_path)
    assert event["outcome"] == "accept" and event["reason"] == "push_approved"
    assert "alice-pw" not in (tmp_path / "audit.jsonl").read_text()


@pytest_twisted.inlineCallbacks
def test_wrong_password_rejects_without_a_push(run, tmp_path):
    provider = ScriptedProvider(mode="approve")
    daemon, addr = yield run(provider)
    result = yield radclient(addr, SECRET, login_attrs(password="not-her-password"))
    assert result.code == "Access-Reject"
    assert provider.requests == []
    assert audit(tmp_path)[0]["reason"] == "bad_credentials"


@pytest_twisted.inlineCallbacks
def test_deny_gives_reject(run):
    daemon, addr = yield run(ScriptedProvider(mode="deny"))
    result = yield radclient(addr, SECRET, login_attrs(user="bob", password="bob-pw"))
    assert result.code == "Access-Reject"


@pytest_twisted.inlineCallbacks
def test_no_answer_rejects_after_the_timeout(run, tmp_path):
    provider = ScriptedProvider(mode="silent")
    daemon, addr = yield run(provider)
    started = time.monotonic()
    result = yield radclient(addr, SECRET, login_attrs(), timeout=10, retries=1)
    elapsed = time.monotonic() - started
    assert result.code == "Access-Reject"
    assert 4.9 <= elapsed < 8, elapsed
    assert audit(tmp_path)[0]["reason"] == "push_timeout"
    assert provider.cancelled == [provider.requests[0].txid]


@pytest.mark.parametrize("failmode,expected", [("secure", "Access-Reject"),
                                               ("safe", "Access-Accept")])
@pytest_twisted.inlineCallbacks
def test_provider_down_follows_failmode(run, failmode, expected):
    daemon, addr = yield run(ScriptedProvider(mode="down"), push=f"timeout: 5\nfailmode: {failmode}")
    result = yield radclient(addr, SECRET, login_attrs())
    assert result.code == expected


@pytest_twisted.inlineCallbacks
def test_user_outside_the_required_group_is_rejected(run, tmp_path):
    provider = ScriptedProvider(mode="approve")
    daemon, addr = yield run(provider)
    result = yield radclient(addr, SECRET, login_attrs(user="carol", password="carol-pw"))
    assert result.code == "Access-Reject"
    assert provider.requests == []
    assert audit(tmp_path)[0]["reason"] == "not_in_required_group"


@pytest_twisted.inlineCallbacks
def test_group_search_mode_and_special_characters_in_uid(run):
    provider = ScriptedProvider(mode="approve")
    daemon, addr = yield run(provider, ldap_extra="group_membership: group_search\n")
    ok = yield radclient(addr, SECRET, login_attrs(user="o'brien(x)", password="ob-pw"))
    carol = yield radclient(addr, SECRET, login_attrs(user="carol", password="carol-pw",
                                                      station="2"))
    assert (ok.code, carol.code) == ("Access-Accept", "Access-Reject")


@pytest_twisted.inlineCallbacks
def test_retransmits_during_a_10s_approval_bind_once_push_once(run, slapd, tmp_path):
    """radclient retries every 2 s while the phone takes 10 s: one bind, one push."""
    provider = ScriptedProvider(mode="approve", delay=10, clock=reactor)
    daemon, addr = yield run(provider, push="timeout: 20")
    binds_before = daemon.counters.get("ldap_user_binds")
    result = yield radclient(addr, SECRET, login_attrs(), timeout=2, retries=8)
    assert result.code == "Access-Accept"
    assert daemon.counters.get("ldap_user_binds") - binds_before == 1
    assert len(provider.requests) == 1
    assert daemon.counters.get("radius_retransmits", client="test-nas",
                               state="in_flight") >= 4
    assert len(audit(tmp_path)) == 1


def udp_exchange(data: bytes, port: int, source: str = "127.0.0.1", wait: float = 1.0):
    """Send one datagram from ``source``; return the reply or None (blocking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(wait)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recv(4096)
        except socket.timeout:
            return None


def access_request(user="alice", password="alice-pw", secret=SECRET, ma=True, ident=1):
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=ident,
                             secret=secret.encode(), dict=DICT)
    pkt["User-Name"] = user
    pkt["User-Password"] = pkt.PwCrypt(password)
    pkt.AddAttribute("Proxy-State", b"ps-1")
    if ma:
        pkt.add_message_authenticator()
    return pkt, pkt.RequestPacket()


def exchange(addr, data, **kw):
    return threads.deferToThread(udp_exchange, data, int(addr.rsplit(":", 1)[1]), **kw)


@pytest_twisted.inlineCallbacks
def test_replies_carry_a_valid_message_authenticator_first_and_retransmits_get_identical_bytes(run):
    daemon, addr = yield run(ScriptedProvider(mode="approve"))
    pkt, raw = access_request()
    first = yield exchange(addr, raw)
    again = yield exchange(addr, raw)
    assert first is not None and first == again
    reply = pkt.CreateReply(packet=first)
    assert first[20] == 80
    assert pkt.VerifyReply(reply, first, enforce_ma=True)
    assert reply.code == rpacket.AccessAccept
    assert dict.get(reply, 33) == [b"ps-1"]


@pytest_twisted.inlineCallbacks
def test_missing_or_wrong_message_authenticator_and_wrong_secret_are_dropped(run):
    provider = ScriptedProvider(mode="approve")
    daemon, addr = yield run(provider)
    _, no_ma = access_request(ma=False, ident=2)
    _, wrong_secret = access_request(secret="some-other-secret-xyz", ident=3)
    _, good = access_request(ident=4)
    tampered = good[:-1] + bytes([good[-1] ^ 0x55])
    for data in (no_ma, wrong_secret, tampered):
        reply = yield exchange(addr, data, wait=0.5)
        assert reply is None
    assert daemon.counters.get("radius_drops", reason="missing_message_authenticator") == 1
    assert daemon.counters.get("radius_drops", reason="bad_message_authenticator") == 2
    assert provider.requests == []
    result = yield radclient(addr, SECRET, login_attrs())
    assert result.code == "Access-Accept"


@pytest_twisted.inlineCallbacks
def test_unknown_clients_and_garbage_are_dropped_and_counted_and_service_continues(run):
    daemon, addr = yield run(ScriptedProvider(mode="approve"))
    _, good = access_request(ident=9)
    reply = yield exchange(addr, good, source="127.0.0.2", wait=0.5)
    assert reply is None
    assert daemon.counters.get("radius_drops", reason="unknown_client") == 1
    garbage = [b"", b"\x01", good[:19], good[:2] + b"\xff\xff" + good[4:],
               good[:20] + b"\x01\x00" + good[22:], b"\x01\x07\x00\x14" + b"\x00" * 16 + b"x"]
    for data in garbage:
        reply = yield exchange(addr, data, wait=0.3)
        assert reply is None
    assert daemon.counters.get("radius_drops") >= len(garbage)
    result = yield radclient(addr, SECRET, login_attrs())
    assert result.code == "Access-Accept"


@pytest.mark.parametrize("user,password", [
    ("*", "alice-pw"), ("a)(uid=*", "alice-pw"), ("alice)(|(uid=*", "x"),
    ("alice\\00", "alice-pw"), ("alice\x00", "alice-pw"), ("alice", ""), ("*)(uid=*))(|(uid=*", "x"),
    # slapd folds these to alice (LDAP string preparation) while devices are keyed on the
    # typed name: without the check in decision.check_credentials they were accepted here
    ("alice ", "alice-pw"), (" alice", "alice-pw"), ("\uff41lice", "alice-pw"),
])
@pytest_twisted.inlineCallbacks
def test_hostile_usernames_and_empty_passwords_never_accept(run, tmp_path, user, password):
    provider = ScriptedProvider(mode="approve")
    daemon, addr = yield run(provider)
    pkt, raw = access_request(user=user, password=password)
    data = yield exchange(addr, raw, wait=3)
    assert data is not None and data[0] == rpacket.AccessReject
    assert provider.requests == []


@pytest_twisted.inlineCallbacks
def test_first_ldap_server_refusing_fails_over_to_the_second_quickly(run, slapd):
    daemon, addr = yield run(ScriptedProvider(mode="approve"),
                             servers=[f"ldap://127.0.0.1:{closed_port()}", slapd.url])
    started = time.monotonic()
    result = yield radclient(addr, SECRET, login_attrs())
    assert result.code == "Access-Accept"
    assert time.monotonic() - started < 2.0  # well inside connect_timeout
    # The dead server is now in backoff: the next login does not even try it.
    errors = daemon.counters.get("ldap_server_errors")
    result = yield radclient(addr, SECRET, login_attrs(station="2"))
    assert result.code == "Access-Accept"
    assert daemon.counters.get("ldap_server_errors") == errors


@pytest_twisted.inlineCallbacks
def test_first_ldap_server_hanging_fails_over_within_the_response_timeout(run, slapd):
    silent = SilentServer()
    try:
        daemon, addr = yield run(ScriptedProvider(mode="approve"),
                                 servers=[f"ldap://127.0.0.1:{silent.port}", slapd.url])
        started = time.monotonic()
        result = yield radclient(addr, SECRET, login_attrs(), timeout=10)
        elapsed = time.monotonic() - started
        assert result.code == "Access-Accept"
        assert elapsed < 2 + 2 + 1.5, elapsed  # connect/response timeouts are 2 s
    finally:
        silent.close()


@pytest.mark.parametrize("kind", ["ldaps", "starttls"])
@pytest_twisted.inlineCallbacks
def test_tls_to_the_directory_with_ca_validation(run, slapd, kind, tmp_path):
    url = slapd.ldaps_url if kind == "ldaps" else slapd.starttls_url
    extra = f"ca_file: {slapd.ca_file}\n" + ("start_tls: true\n" if kind == "starttls" else "")
    daemon, addr = yield run(ScriptedProvider(mode="approve"), servers=[url], ldap_extra=extra)
    result = yield radclient(addr, SECRET, login_attrs())
    assert result.code == "Access-Accept"


@pytest_twisted.inlineCallbacks
def test_tls_with_the_wrong_ca_is_refused(run, slapd, tmp_path):
    from tests.integration.slapd import _write_tls_material
    other = tmp_path / "other-ca"
    other.mkdir()
    _write_tls_material(other)
    daemon, addr = yield run(ScriptedProvider(mode="approve"), servers=[slapd.ldaps_url],
                             ldap_extra=f"ca_file: {other / 'ca.pem'}\n")
    result = yield radclient(addr, SECRET, login_attrs())
    assert result.code == "Access-Reject"
    assert daemon.counters.get("decisions", client="test-nas", outcome="reject",
                               reason="directory_unavailable") == 1


@pytest_twisted.inlineCallbacks
def test_direct_bind_template(run, slapd):
    template = f"uid={{username}},{slapd.people_dn}"
    daemon, addr = yield run(ScriptedProvider(mode="approve"),
                             ldap_extra=f'bind_template: "{template}"\n')
    ok = yield radclient(addr, SECRET, login_attrs())
    bad = yield radclient(addr, SECRET, login_attrs(password="nope", station="2"))
    assert (ok.code, bad.code) == ("Access-Accept", "Access-Reject")


#: Filter and DN metacharacters, wildcards, escapes, encodings and folding tricks.
INJECTION_CORPUS = [
    "*", "**", "alice*", "*lice", "a*e", "al*ce", "alice)(uid=*", "*)(|(objectClass=*",
    "alice)(|(userPassword=*)", "alice)(&", ")(", "(", ")", "\\2a", "\\2a\\29", "alice\\",
    "alice\\5c", "alice\\00", "uid=alice,ou=people,dc=example,dc=org", "alice,ou=people",
    "alice+cn=x", "alice;binary", 'alice"', "<alice>", "#alice", "alice=", "(uid=alice)",
    "alice)\x00", "alice\x00bob", "alice\t", "alice\n", "alice\r", "\u202ealice",
    "alice\u200b", "alice\u00ad", "\uff41lice", "\u0430lice", "ALICE\u0130", "alice%00",
    "%2a", "alice' OR '1'='1", "${jndi:ldap://127.0.0.1/a}", "a" * 253, "alice" * 40 + "\u00e9",
]


@pytest_twisted.inlineCallbacks
def test_ldap_injection_corpus_never_accepts_and_never_pushes(run, slapd):
    """Every hostile name with alice's real password: Reject, no push, the daemon keeps serving."""
    provider = ScriptedProvider(mode="approve")
    daemon, addr = yield run(provider)
    for i, user in enumerate(INJECTION_CORPUS):
        pkt, raw = access_request(user=user, ident=i % 256)
        data = yield exchange(addr, raw, wait=3)
        assert data is not None and data[0] == rpacket.AccessReject, repr(user)
    assert provider.requests == []
    pkt, raw = access_request(ident=255)
    data = yield exchange(addr, raw, wait=3)
    assert data[0] == rpacket.AccessAccept and [r.username for r in provider.requests] == ["alice"]
