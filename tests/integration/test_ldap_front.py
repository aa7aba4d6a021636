"""Issue 9 acceptance: the LDAP front end between the real OpenLDAP clients and a real slapd.

    ldapwhoami / ldapsearch (ldap-utils) --StartTLS/LDAPS--> pushproxy --> slapd
                                                  `--> built-in approval service <-- CLI authenticator

The clients verify the front end's certificate against the test CA
(LDAPTLS_CACERT, LDAPTLS_REQCERT=demand); devices are the real command-line
authenticator answering over HTTP.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet.utils import getProcessOutputAndValue

from pushproxy.approval import authenticator as auth
from pushproxy.ldapfront import ber
from pushproxy.config import parse_config
from tests.integration.harness import ServeProcess, closed_port, write_config
from tests.integration.slapd import free_port
from tests.integration.slapd import _write_tls_material
from tests.integration.test_approval_e2e import first_request

pytestmark = pytest.mark.skipif(shutil.which("ldapwhoami") is None,
                                reason="ldap-utils not installed")
FRONT = "ldap-apps"


def front_section(slapd, **extra) -> str:
    d = slapd.directory
    lines = [
        "ldap_front:",
        f"  name: {FRONT}",
        '  listen: ["127.0.0.1:0"]',
        '  listen_ldaps: ["127.0.0.1:0"]',
        f"  tls_cert: {d / 'server.pem'}",
        f"  tls_key: {d / 'server.key'}",
    ] + [f"  {k}: {v}" for k, v in {"service_dns": f'["{slapd.service_dn}"]', **extra}.items()]
    return "\n".join(lines) + "\n"


class Front:
    """A running daemon with the LDAP front end, and the OpenLDAP clients pointed at it."""

    def __init__(self, stack, slapd, tmp_path):
        self.stack = stack
        self.slapd = slapd
        self.component = next(c for c in stack.daemon.components if hasattr(c, "cache"))
        self.port = self.component.port(ldaps=False)
        self.ldaps_port = self.component.port(ldaps=True)
        self.env = dict(os.environ, HOME=str(tmp_path), LDAPTLS_CACERT=slapd.ca_file,
                        LDAPTLS_REQCERT="demand", LDAPCONF="/dev/null")

    def run(self, tool, *args, ldaps=False, starttls=True, env=None, simple=True):
        """Run an ldap-utils tool; fires with (exit code, stdout, stderr) as text."""
        # By address: libldap checks a name it got by reverse lookup ("localhost"
        # may come back as another name here); the certificate names IP:127.0.0.1.
        url = f"ldaps://127.0.0.1:{self.ldaps_port}" if ldaps \
            else f"ldap://127.0.0.1:{self.port}"
        argv = (["-x"] if simple else []) + ["-H", url, "-o", "nettimeout=20"] + (["-ZZ"] if starttls and not ldaps
                                                           else []) + list(args)
        d = getProcessOutputAndValue(shutil.which(tool), argv, env=env or self.env)
        return d.addCallback(lambda r: (r[2], r[0].decode(), r[1].decode()))

    def whoami(self, user, password, **kw):
        return self.run("ldapwhoami", "-D", self.slapd.user_dn(user), "-w", password, **kw)

    def counter(self, name, **labels):
        return self.stack.daemon.counters.get(name, **labels)

    def audit(self):
        path = self.stack.tmp_path / "audit.jsonl"
        return self.stack.audit() if path.exists() else []


@pytest.fixture
def fronts(stacks, slapd, tmp_path):
    @pytest_twisted.inlineCallbacks
    def make(timeout=20, **extra):
        stack = yield stacks(timeout=timeout, extra=front_section(slapd, **extra))
        return Front(stack, slapd, tmp_path)

    return make


def pushes(front) -> int:
    return front.counter("pushes_requested")


@pytest_twisted.inlineCallbacks
def test_user_bind_and_approve_then_the_search_returns_the_users_entry(fronts):
    front = yield fronts()
    state = yield front.stack.device("alice")
    started = time.monotonic()
    search = front.run("ldapsearch", "-LLL", "-D", front.slapd.user_dn("alice"), "-w",
                       "alice-pw", "-b", front.slapd.user_dn("alice"), "-s", "base", "uid",
                       "mail")
    request = yield threads.deferToThread(first_request, state)
    assert (request["username"], request["application"], request["client_ip"]) == \
        ("alice", FRONT, "127.0.0.1")
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    code, out, err = yield search
    print(f"bind + approve + search round trip: {time.monotonic() - started:.3f} s")
    assert code == 0, err
    assert f"dn: {front.slapd.user_dn('alice')}" in out
    assert "uid: alice" in out and "mail: alice@example.com" in out
    (event,) = front.audit()
    assert (event["protocol"], event["client"], event["user"], event["reason"]) == \
        ("ldap", FRONT, "alice", "push_approved")


@pytest_twisted.inlineCallbacks
def test_deny_gives_invalid_credentials(fronts):
    front = yield fronts()
    state = yield front.stack.device("bob")
    login = front.whoami("bob", "bob-pw")
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "deny")
    code, out, err = yield login
    assert code == 49 and "Invalid credentials (49)" in err
    assert front.audit()[0]["reason"] == "push_denied"


@pytest_twisted.inlineCallbacks
def test_no_answer_gives_invalid_credentials_at_the_timeout(fronts):
    front = yield fronts(timeout=5)
    yield front.stack.device("alice")
    started = time.monotonic()
    code, out, err = yield front.whoami("alice", "alice-pw")
    assert code == 49, err
    assert 4.9 <= time.monotonic() - started < 10
    assert front.audit()[0]["reason"] == "push_timeout"


@pytest_twisted.inlineCallbacks
def test_wrong_password_gives_49_without_a_push(fronts):
    front = yield fronts()
    state = yield front.stack.device("alice")
    code, out, err = yield front.whoami("alice", "not-the-password")
    assert code == 49, err
    assert pushes(front) == 0
    left = yield threads.deferToThread(auth.pending, state)
    assert left == []
    assert front.audit()[0]["reason"] == "bad_credentials"


@pytest_twisted.inlineCallbacks
def test_service_account_binds_without_a_push(fronts):
    front = yield fronts()
    code, out, err = yield front.run("ldapwhoami", "-D", front.slapd.service_dn, "-w",
                                     front.slapd.service_password)
    assert code == 0, err
    assert out.strip().lower() == f"dn:{front.slapd.service_dn}".lower()
    assert pushes(front) == 0 and front.audit() == []
    # ... and it can search as itself (the application's lookups).
    code, out, err = yield front.run("ldapsearch", "-LLL", "-D", front.slapd.service_dn, "-w",
                                     front.slapd.service_password, "-b",
                                     front.slapd.people_dn, "(uid=bob)", "mail")
    assert code == 0 and "mail: bob@example.com" in out, err


@pytest_twisted.inlineCallbacks
def test_five_binds_in_a_row_cost_one_push(fronts):
    front = yield fronts()
    state = yield front.stack.device("alice")
    first = front.whoami("alice", "alice-pw")
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    results = [(yield first)]
    for _ in range(4):
        results.append((yield front.whoami("alice", "alice-pw")))
    assert [r[0] for r in results] == [0] * 5, results
    print(f"pushes for 5 binds: {pushes(front)}")
    assert pushes(front) == 1
    assert front.counter("ldap_front_bind_cache_hits") == 4
    # A wrong password is not let in by the cache (and costs no push).
    code, _, _ = yield front.whoami("alice", "alice-pwX")
    assert code == 49 and pushes(front) == 1


@pytest_twisted.inlineCallbacks
def test_concurrent_binds_on_two_connections_never_share_one_approval(fronts):
    """Two binds as alice at once (two connections): one approval accepts one bind only.

    Issue 14, finding 4: both used to join one push and both got success. A
    bind joins a pending one only on the same client connection; here the
    second is refused while the first is on the phone (one pending push per user).
    """
    front = yield fronts(bind_cache_seconds=0)
    state = yield front.stack.device("alice")
    logins = [front.whoami("alice", "alice-pw") for _ in range(2)]
    request = yield threads.deferToThread(first_request, state)
    # Approve only once the other bind has been decided, so it cannot ride on it.
    yield defer.DeferredList(logins, fireOnOneCallback=True)
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    results = yield defer.gatherResults(logins)
    assert sorted(r[0] for r in results) == [0, 49], results
    assert pushes(front) == 1
    events = front.audit()
    assert sorted(e["reason"] for e in events) == ["push_approved", "too_many_pending_pushes"]
    assert not any(e["joined"] for e in events)


@pytest_twisted.inlineCallbacks
def test_ldaps_verifies_and_a_wrong_ca_fails(fronts, tmp_path):
    front = yield fronts()
    code, out, err = yield front.run("ldapwhoami", "-D", front.slapd.service_dn, "-w",
                                     front.slapd.service_password, ldaps=True)
    assert code == 0, err
    other = tmp_path / "other-ca"
    other.mkdir()
    _write_tls_material(other)
    wrong = dict(front.env, LDAPTLS_CACERT=str(other / "ca.pem"))
    for ldaps in (True, False):  # LDAPS, and StartTLS on the plain port
        code, out, err = yield front.run("ldapwhoami", "-D", front.slapd.service_dn, "-w",
                                         front.slapd.service_password, ldaps=ldaps, env=wrong)
        assert code != 0 and "dn:" not in out, (ldaps, out, err)


@pytest_twisted.inlineCallbacks
def test_anonymous_unauthenticated_cleartext_and_sasl_binds_are_refused(fronts):
    """Each refusal has its own result code and counter, and none costs a push."""
    front = yield fronts()
    code, _, err = yield front.run("ldapwhoami")  # anonymous
    assert code == 48, err
    code, _, err = yield front.run("ldapwhoami", "-D", front.slapd.user_dn("alice"), "-w", "")
    assert code == 53, err
    code, _, err = yield front.whoami("alice", "alice-pw", starttls=False)
    assert code == 13, err  # confidentialityRequired: no password without TLS
    code, _, err = yield front.run("ldapwhoami", "-Y", "CRAM-MD5", "-U", "alice", "-w", "x",
                                   simple=False)
    assert code == 7, err  # authMethodNotSupported (sasl: refuse)
    for kind in ("refused_anonymous", "refused_unauthenticated", "refused_cleartext",
                 "refused_sasl"):
        assert front.counter("ldap_front_binds_refused", kind=kind) == 1
    assert pushes(front) == 0


def raw_exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a plain connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return data


@pytest_twisted.inlineCallbacks
def test_malformed_and_huge_messages_are_refused_and_others_are_served(fronts):
    front = yield fronts(max_message_size=65536)
    bad = [
        b"GET / HTTP/1.1\r\n\r\n",  # not LDAP at all
        b"\x30\x84\x7f\xff\xff\xff" + b"\x02\x01\x01",  # declares 2 GiB
        b"\x30\x80\x02\x01\x01\x42\x00\x00\x00",  # indefinite length
        b"\x30\x89" + b"\x01" * 9,  # a 9-byte length
        b"\x30\x05\x02\x01\x01\x60\x05",  # bind longer than its message
        ber.message(1, ber.BIND_REQUEST, ber.integer(3) + ber.octets("cn=x") + b"\xa9\x00"),
    ]
    for payload in bad:
        answer = yield threads.deferToThread(raw_exchange, front.port, payload)
        assert ber.NOTICE_OF_DISCONNECTION_OID.encode() in answer, payload
    # A huge message is refused from its header, before its body arrives.
    answer = yield threads.deferToThread(
        raw_exchange, front.port, b"\x30\x83\x10\x00\x00" + b"\x00" * 4096)
    assert b"exceeds the limit" in answer
    assert front.counter("ldap_front_protocol_errors") == len(bad) + 1
    # The listener still serves everyone else.
    code, out, err = yield front.run("ldapwhoami", "-D", front.slapd.service_dn, "-w",
                                     front.slapd.service_password)
    assert code == 0, err


@pytest_twisted.inlineCallbacks
def test_passcodes_in_the_bind_password(fronts):
    front = yield fronts(bind_cache_seconds=0)
    state = yield front.stack.device("alice")
    code_now, _ = auth.current_code(state)
    code, _, err = yield front.whoami("alice", f"alice-pw,{code_now}")
    assert code == 0, err
    assert front.audit()[-1]["reason"] == "passcode_totp" and pushes(front) == 0
    code, _, err = yield front.whoami("alice", "wrong-pw,123456")
    assert code == 49 and front.audit()[-1]["reason"] == "bad_credentials"
    login = front.whoami("alice", "alice-pw,push")
    request = yield threads.deferToThread(first_request, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    code, _, err = yield login
    assert code == 0 and front.audit()[-1]["reason"] == "push_approved", err


@pytest_twisted.inlineCallbacks
def test_exempt_groups_and_ous_bind_without_a_push(fronts, slapd):
    front = yield fronts(exempt_groups=f'["{slapd.group_dn("admins")}"]',
                         exempt_ous=f'["ou=services,{slapd.base_dn}"]',
                         service_dns="[]")
    code, out, err = yield front.run("ldapsearch", "-LLL", "-D", slapd.user_dn("dave"), "-w",
                                     "dave-pw", "-b", slapd.user_dn("dave"), "-s", "base", "uid")
    assert code == 0 and "uid: dave" in out, err
    code, _, err = yield front.run("ldapwhoami", "-D", slapd.service_dn, "-w",
                                   slapd.service_password)
    assert code == 0, err
    code, _, _ = yield front.whoami("dave", "wrong")
    assert code == 49
    assert pushes(front) == 0
    assert front.counter("ldap_front_binds_passed", kind="exempt_group") == 1
    assert front.counter("ldap_front_binds_passed", kind="exempt_ou") == 1


@pytest_twisted.inlineCallbacks
def test_other_clients_are_served_while_a_push_waits(fronts):
    front = yield fronts()
    state = yield front.stack.device("alice")
    waiting = front.whoami("alice", "alice-pw")
    request = yield threads.deferToThread(first_request, state)
    # Deeply nested filter: forwarded as bytes, never decoded by the proxy.
    deep = "(!" * 201 + "(uid=nobody)" + ")" * 201  # an odd count: true for bob
    code, out, err = yield front.run("ldapsearch", "-LLL", "-D", front.slapd.service_dn, "-w",
                                     front.slapd.service_password, "-b",
                                     front.slapd.people_dn, f"(&(uid=bob){deep})", "uid")
    assert code == 0 and "uid: bob" in out, err
    assert not waiting.called
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    code, out, err = yield waiting
    assert code == 0, err


def reload_with_servers(front, servers, ldap_extra=""):
    """Reload the daemon with other ldap.servers (and more ldap: keys)."""
    stack = front.stack
    text = stack.config_path.read_text().replace(
        f'servers: ["{front.slapd.url}"]', "servers: [" + ", ".join(f'"{s}"' for s in servers)
        + "]" + "".join(f"\n  {line}" for line in ldap_extra.splitlines()))
    new = parse_config(text, base_dir=stack.config_path.parent, env={})
    return stack.daemon.reload(new)


@pytest_twisted.inlineCallbacks
def test_failover_to_the_next_server_and_unavailable_when_none_answers(fronts):
    front = yield fronts()
    yield front.stack.device("alice")
    dead = f"ldap://127.0.0.1:{closed_port()}"
    assert reload_with_servers(front, [dead, front.slapd.url]) == []
    code, _, err = yield front.run("ldapwhoami", "-D", front.slapd.service_dn, "-w",
                                   front.slapd.service_password)
    assert code == 0, err
    assert front.counter("ldap_front_upstream_failures", server=dead) == 1
    reload_with_servers(front, [dead])
    code, _, err = yield front.whoami("alice", "alice-pw")
    assert code == 52, err  # unavailable, and no push
    assert front.audit()[-1]["reason"] == "directory_unavailable" and pushes(front) == 0


@pytest_twisted.inlineCallbacks
def test_stopping_closes_the_listeners_and_answers_a_pending_bind(fronts):
    front = yield fronts()
    state = yield front.stack.device("alice")
    waiting = front.whoami("alice", "alice-pw")
    yield threads.deferToThread(first_request, state)
    stopped = front.stack.stop()
    code, _, err = yield waiting  # stop_grace 1 s, then the push is withdrawn
    assert code == 52, err
    yield stopped
    code, _, _ = yield front.run("ldapwhoami", "-D", front.slapd.service_dn, "-w",
                                 front.slapd.service_password)
    assert code != 0  # nothing listens any more


@pytest_twisted.inlineCallbacks
def test_the_directory_is_reached_over_ldaps_or_starttls_with_its_certificate_verified(
        fronts, tmp_path):
    front = yield fronts(bind_cache_seconds=0)  # each login here must reach the phone
    slapd = front.slapd
    state = yield front.stack.device("alice")
    other = tmp_path / "wrong-ca"
    other.mkdir()
    _write_tls_material(other)
    for servers, extra in (([slapd.ldaps_url], ""), ([slapd.starttls_url], "start_tls: true")):
        reload_with_servers(front, servers, f"ca_file: {slapd.ca_file}\n{extra}")
        login = front.run("ldapsearch", "-LLL", "-D", slapd.user_dn("alice"), "-w", "alice-pw",
                          "-b", slapd.user_dn("alice"), "-s", "base", "uid")
        request = yield threads.deferToThread(first_request, state)
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        code, out, err = yield login
        assert code == 0 and "uid: alice" in out, (servers, err)
        # The same server with a CA that did not sign its certificate: unavailable.
        reload_with_servers(front, servers, f"ca_file: {other / 'ca.pem'}\n{extra}")
        code, _, err = yield front.run("ldapwhoami", "-D", slapd.user_dn("bob"), "-w",
                                       "bob-pw")
        assert code == 52, (servers, err)
    assert front.counter("ldap_front_upstream_failures") == 2


def test_serve_reloads_in_place_names_what_needs_a_restart_and_refuses_a_bad_certificate(
        slapd, tmp_path):
    """The real `pushproxy serve`: SIGHUP applies the section, listener changes need a restart."""
    import signal

    config = write_config(tmp_path, slapd)
    base = config.read_text()
    port = free_port()
    config.write_text(base + front_section(slapd).replace("127.0.0.1:0", f"127.0.0.1:{port}", 1))
    serve = ServeProcess(config)
    try:
        serve.wait_for(f"ldap_front.listening address=127.0.0.1 port={port}")
        serve.wait_for("daemon.ready")
        config.write_text(base + front_section(slapd, bind_cache_seconds=5))
        serve.proc.send_signal(signal.SIGHUP)
        assert "ldap_front.listen changed" in serve.wait_for("reload.needs_restart")
        serve.wait_for("reload.applied")
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(15) == 0
    finally:
        serve.close()
    placeholder = tmp_path / "placeholder.pem"
    placeholder.write_text("not a certificate\n")
    config.write_text(base + front_section(slapd).replace(str(slapd.directory / "server.pem"),
                                                          str(placeholder)))
    serve = ServeProcess(config)
    try:
        # Refused while the config is checked (as check-config refuses it), naming the key.
        line = serve.wait_for("holds no PEM certificate")
        assert line.strip().startswith("ldap_front.tls_cert:"), line
        assert serve.proc.wait(15) != 0
    finally:
        serve.close()
