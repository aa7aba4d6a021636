"""`pushproxy test-connection` as a process against the real slapd and the real approval API.

The command runs as ``python -m pushproxy.connectivity`` so these tests do not
depend on how cli.py registers it. Tests that need the approval API serve it
on the test's reactor and run the command in a thread, so the reactor keeps
answering while the command waits.
"""

from __future__ import annotations

import datetime
import socket
import sqlite3
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, threads

from pushproxy.approval.api import build_site
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.service import ApprovalService
from pushproxy.approval.store import Device, SQLiteStore
from pushproxy.approval.webpush import VapidKeys
from pushproxy.connectivity.approvalcheck import _known_schema
from pushproxy.metrics import Counters
from tests.integration.harness import SilentServer, closed_port, write_config


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m pushproxy.connectivity ARGS`` with a bound on its time."""
    return subprocess.run([sys.executable, "-m", "pushproxy.connectivity", *args],
                          capture_output=True, text=True, timeout=timeout)


def approval_block(public_url: str, database: str = ":memory:") -> str:
    """The approval: section of a test config."""
    return textwrap.dedent(f"""\
        approval:
          listen: "127.0.0.1:0"
          public_url: "{public_url}"
          database: "{database}"
    """)


def section(output: str, title_start: str) -> str:
    """The lines of one block of the report (from its title to the next blank line)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(title_start):
            block = []
            for rest in lines[i + 1:]:
                if not rest.strip():
                    break
                block.append(rest)
            return "\n".join(block)
    raise AssertionError(f"no section {title_start!r} in:\n{output}")


def step(block: str, name: str) -> str:
    """The line of step ``name`` in a block."""
    for line in block.splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[1].rstrip(",") == name:
            return line
    raise AssertionError(f"no step {name!r} in:\n{block}")


def statuses(block: str) -> dict[str, str]:
    """{step name: status} for the step lines of a block."""
    found = {}
    for line in block.splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[0] in ("OK", "WARN", "FAIL", "SKIP", "INFO"):
            found[parts[1].rstrip(",")] = parts[0]
    return found


def make_ca(common_name: str):
    """A fresh self-signed CA (key, certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(ca, dns_names: list[str], days: int = 365):
    """A server certificate for ``dns_names`` signed by ``ca``; (key, certificate)."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def write_pem(path: Path, cert) -> str:
    """Write ``cert`` as PEM to ``path``; return the path as a string."""
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


class TlsServer:
    """A loopback TLS listener that completes handshakes with a given certificate, then idles."""

    def __init__(self, tmp: Path, key, cert):
        (tmp / "tls-server.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        write_pem(tmp / "tls-server.pem", cert)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(tmp / "tls-server.pem", tmp / "tls-server.key")
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.held = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(5)
            try:
                self.held.append(self.ctx.wrap_socket(conn, server_side=True))
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def api():
    """The real approval API on 127.0.0.1 (real ApprovalService on an in-memory store)."""
    from twisted.internet import reactor

    store = SQLiteStore(":memory:")
    service = ApprovalService(store=AsyncStore.inline(store), reactor=reactor, counters=Counters(),
                              vapid_public_key=VapidKeys.generate().public_key_b64url)
    port = reactor.listenTCP(0, build_site(service, max_body=16384, reactor=reactor),
                             interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
    store.close()


def in_thread(*args: str):
    """Run the command off the reactor thread (the API must keep answering)."""
    return threads.deferToThread(run_cli, *args)


# -- LDAP servers


@pytest_twisted.ensureDeferred
async def test_a_bad_server_fails_by_name_and_the_good_one_passes_every_step(slapd, tmp_path,
                                                                             api):
    refused = f"ldap://127.0.0.1:{closed_port()}"
    silent = SilentServer()
    hung = f"ldap://127.0.0.1:{silent.port}"
    try:
        config = write_config(tmp_path, slapd, servers=[slapd.url, refused, hung],
                              approval=approval_block(api))
        started = time.monotonic()
        out = await in_thread("--config", str(config), "--user", "alice")
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert out.returncode == 1, out.stdout + out.stderr
    good = section(out.stdout, f"LDAP server 1 of 3: {slapd.url}")
    assert statuses(good) == {"dns": "OK", "tcp": "OK", "bind": "OK", "base": "OK",
                              "user": "OK", "groups": "OK"}
    assert "vpn-users" in step(good, "groups")
    assert all(line.rstrip().endswith(" ms)") for line in good.splitlines())

    bad = section(out.stdout, f"LDAP server 2 of 3: {refused}")
    assert "connection refused" in step(bad, "tcp") and step(bad, "tcp").lstrip().startswith("FAIL")
    assert statuses(bad)["bind"] == "SKIP"  # the skip line lists the dependent steps

    hung_block = section(out.stdout, f"LDAP server 3 of 3: {hung}")
    assert statuses(hung_block)["tcp"] == "OK"
    assert step(hung_block, "bind").lstrip().startswith("FAIL")
    assert "no answer within 2 s (ldap.response_timeout)" in step(hung_block, "bind")
    assert elapsed < 20  # the hung server costs one response_timeout, not more

    summary = out.stdout.split("FAILED:")[1]
    assert "2 check(s) failed" in out.stdout
    assert f"ldap.servers[1] {refused}: tcp: " in summary and "connection refused" in summary
    assert f"ldap.servers[2] {hung}: bind: no answer" in summary
    api_block = section(out.stdout, "Approval API:")
    assert statuses(api_block) == {"api": "OK"}


def test_a_listener_that_never_accepts_in_time_is_a_connect_timeout(slapd, tmp_path):
    # A full accept queue on a socket that never accepts: further SYNs go unanswered.
    # Linux drops them once the backlog is full, so the connect step times out.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            fillers.append(s)
        time.sleep(0.2)
        url = f"ldap://127.0.0.1:{listener.getsockname()[1]}"
        config = write_config(tmp_path, slapd, servers=[url],
                              approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
        text = config.read_text().replace("connect_timeout: 2", "connect_timeout: 1")
        config.write_text(text)
        out = run_cli("--config", str(config))
    finally:
        for s in fillers:
            s.close()
        listener.close()
    block = section(out.stdout, "LDAP server 1 of 1")
    tcp = step(block, "tcp")
    if tcp.lstrip().startswith("OK"):
        pytest.skip("this kernel accepted past the backlog; no connect timeout to observe")
    assert "no answer within 1 s (ldap.connect_timeout)" in tcp, out.stdout


def test_ldaps_with_the_right_ca_passes_and_warns_of_near_expiry(slapd, tmp_path):
    config = write_config(tmp_path, slapd, servers=[slapd.ldaps_url],
                          ldap_extra=f"ca_file: {slapd.ca_file}\n",
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
    out = run_cli("--config", str(config), "--user", "alice")
    block = section(out.stdout, f"LDAP server 1 of 1: {slapd.ldaps_url}")
    assert statuses(block) == {"dns": "OK", "tcp": "OK", "tls": "OK", "certificate": "WARN",
                               "hostname": "OK", "bind": "OK", "base": "OK", "user": "OK",
                               "groups": "OK"}, out.stdout
    assert "verified against ldap.ca_file" in step(block, "tls")
    cert = step(block, "certificate")
    # The fixture's certificate lives 30 days: inside the warning window.
    assert "subject CN=localhost" in cert and "DNS:localhost" in cert and "IP:127.0.0.1" in cert
    assert "expires in 29 days" in cert
    assert "the certificate names localhost" in step(block, "hostname")


def test_ldaps_with_a_wrong_ca_fails_at_the_certificate_and_shows_what_is_presented(
        slapd, tmp_path):
    wrong = write_pem(tmp_path / "other-ca.pem", make_ca("some other CA")[1])
    config = write_config(tmp_path, slapd, servers=[slapd.ldaps_url],
                          ldap_extra=f"ca_file: {wrong}\n",
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
    out = run_cli("--config", str(config))
    assert out.returncode == 1
    block = section(out.stdout, f"LDAP server 1 of 1: {slapd.ldaps_url}")
    tls = step(block, "tls")
    assert tls.lstrip().startswith("FAIL")
    assert "certificate not trusted" in tls
    assert f"not signed by the CA in ldap.ca_file ({wrong})" in tls
    assert "the server presents: subject CN=localhost" in block
    assert "issued by CN=pushproxy test CA" in block
    assert statuses(block)["certificate"] == "SKIP"  # "certificate, hostname, bind, base"
    assert "bind" in block.splitlines()[-1] and "(skipped: tls failed)" in block


def test_ldaps_without_ca_file_is_checked_against_the_system_store(slapd, tmp_path):
    config = write_config(tmp_path, slapd, servers=[slapd.ldaps_url],
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
    out = run_cli("--config", str(config))
    tls = step(section(out.stdout, "LDAP server 1 of 1"), "tls")
    assert tls.lstrip().startswith("FAIL") and "system trust store" in tls


def test_starttls_passes_with_the_right_ca(slapd, tmp_path):
    config = write_config(tmp_path, slapd, servers=[slapd.starttls_url],
                          ldap_extra=f"ca_file: {slapd.ca_file}\nstart_tls: true\n",
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
    out = run_cli("--config", str(config))
    block = section(out.stdout, f"LDAP server 1 of 1: {slapd.starttls_url}")
    assert statuses(block) == {"dns": "OK", "tcp": "OK", "starttls": "OK", "tls": "OK",
                               "certificate": "WARN", "hostname": "OK", "bind": "OK",
                               "base": "OK"}, out.stdout


def test_a_certificate_for_another_name_fails_at_the_hostname_step(slapd, tmp_path):
    ca = make_ca("hostname test CA")
    server = TlsServer(tmp_path, *make_leaf(ca, ["other.example"]))
    try:
        ca_file = write_pem(tmp_path / "ca.pem", ca[1])
        url = f"ldaps://localhost:{server.port}"
        config = write_config(tmp_path, slapd, servers=[url], ldap_extra=f"ca_file: {ca_file}\n",
                              approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
        out = run_cli("--config", str(config))
    finally:
        server.close()
    block = section(out.stdout, f"LDAP server 1 of 1: {url}")
    assert statuses(block)["tls"] == "OK" and statuses(block)["certificate"] == "OK"
    hostname = step(block, "hostname")
    assert hostname.lstrip().startswith("FAIL")
    assert "does not name localhost" in hostname and "DNS:other.example" in hostname
    assert statuses(block)["bind"] == "SKIP"


def test_a_wrong_service_password_fails_at_the_bind_step(slapd, tmp_path):
    config = write_config(tmp_path, slapd, servers=[slapd.url],
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
    (tmp_path / "ldap.secret").write_text("not-the-password\n")
    out = run_cli("--config", str(config), "--user", "alice")
    block = section(out.stdout, "LDAP server 1 of 1")
    bind = step(block, "bind")
    assert bind.lstrip().startswith("FAIL")
    assert "invalidCredentials (49)" in bind and slapd.service_dn in bind
    assert statuses(block)["base"] == "SKIP"
    assert f"ldap.servers[0] {slapd.url}: bind: invalidCredentials" in out.stdout


def test_a_missing_user_base_fails_at_the_base_step(slapd, tmp_path):
    config = write_config(tmp_path, slapd, servers=[slapd.url],
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
    config.write_text(config.read_text().replace("ou=people,", "ou=peeple,"))
    out = run_cli("--config", str(config), "--user", "alice")
    block = section(out.stdout, "LDAP server 1 of 1")
    base = step(block, "base")
    assert base.lstrip().startswith("FAIL") and "does not exist (noSuchObject" in base
    assert statuses(block)["user"] == "SKIP"


def test_user_nobody_is_reported_not_found(slapd, tmp_path):
    config = write_config(tmp_path, slapd, servers=[slapd.url],
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
    out = run_cli("--config", str(config), "--user", "nobody")
    block = section(out.stdout, "LDAP server 1 of 1")
    user = step(block, "user")
    assert user.lstrip().startswith("FAIL") and "user 'nobody' not found" in user
    assert "(uid=nobody)" in user


def test_group_search_mode_and_a_user_outside_the_required_groups(slapd, tmp_path):
    config = write_config(tmp_path, slapd, servers=[slapd.url],
                          ldap_extra="group_membership: group_search\n",
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
    alice = section(run_cli("--config", str(config), "--user", "alice").stdout, "LDAP server")
    assert step(alice, "groups").lstrip().startswith("OK")
    assert "group_search" in step(alice, "groups")
    carol = section(run_cli("--config", str(config), "--user", "carol").stdout, "LDAP server")
    assert step(carol, "user").lstrip().startswith("OK")
    groups = step(carol, "groups")
    assert groups.lstrip().startswith("FAIL") and "none of ldap.required_groups" in groups


def test_direct_bind_mode_has_no_service_account(slapd, tmp_path):
    config = write_config(tmp_path, slapd, servers=[slapd.url],
                          ldap_extra=f'bind_template: "uid={{username}},{slapd.people_dn}"\n',
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
    block = section(run_cli("--config", str(config), "--user", "alice").stdout, "LDAP server")
    assert statuses(block) == {"dns": "OK", "tcp": "OK", "bind": "INFO"}
    assert "direct-bind mode" in step(block, "bind")


# -- the store


def test_the_store_is_never_created_and_an_existing_one_is_described(slapd, tmp_path):
    db = tmp_path / "state" / "pushproxy.db"
    db.parent.mkdir()
    config = write_config(tmp_path, slapd, servers=[slapd.url],
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}", str(db)))
    out = run_cli("--config", str(config))
    line = step(section(out.stdout, "Approval store:"), "database")
    assert line.lstrip().startswith("WARN") and "does not exist yet" in line
    assert not db.exists() and list(db.parent.iterdir()) == []

    known = _known_schema()
    # The daemon running: a fresh store keeps its schema and the device only in
    # the WAL until a checkpoint, so the check must read through the WAL.
    store = SQLiteStore(str(db))
    store.create_enrollment("alice", "h" * 64, now=1.0, expires=1e12)
    store.redeem_enrollment("h" * 64, 2.0, Device("dev1", "alice", "phone", "pk", None, 2.0,
                                                  None, None))
    try:
        out = run_cli("--config", str(config))
    finally:
        store.close()
    line = step(section(out.stdout, "Approval store:"), "database")
    assert f"schema version {known} (current), 1 device(s) of 1 user(s)" in line, out.stdout
    # The daemon stopped: everything is in the file.
    out = run_cli("--config", str(config))
    line = step(section(out.stdout, "Approval store:"), "database")
    assert line.lstrip().startswith("OK")
    assert f"schema version {known} (current), 1 device(s) of 1 user(s)" in line
    # Nothing left behind: the store's -wal/-shm files go with its last connection.
    assert sorted(p.name for p in db.parent.iterdir()) == ["pushproxy.db"]

    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 99")
    out = run_cli("--config", str(config))
    line = step(section(out.stdout, "Approval store:"), "database")
    assert line.lstrip().startswith("FAIL") and "a newer pushproxy wrote it" in line
    assert out.returncode == 1


def test_a_missing_store_folder_fails(slapd, tmp_path):
    db = tmp_path / "no-such-dir" / "pushproxy.db"
    config = write_config(tmp_path, slapd, servers=[slapd.url],
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}", str(db)))
    out = run_cli("--config", str(config))
    line = step(section(out.stdout, "Approval store:"), "database")
    assert line.lstrip().startswith("FAIL") and "neither the database nor its folder" in line
    assert not db.parent.exists()


# -- the approval API and the overall verdict


@pytest_twisted.ensureDeferred
async def test_everything_good_exits_0(slapd, tmp_path, api):
    db = tmp_path / "pushproxy.db"
    SQLiteStore(str(db)).close()
    config = write_config(tmp_path, slapd, servers=[slapd.url, slapd.ldaps_url],
                          ldap_extra=f"ca_file: {slapd.ca_file}\n",
                          approval=approval_block(api, str(db)))
    out = await in_thread("--config", str(config), "--user", "alice")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK: every check passed (1 warning(s))" in out.stdout  # the 30-day certificate
    line = step(section(out.stdout, "Approval API:"), "api")
    assert f"pushproxy approval API version 1 answers at {api}/v1/info" in line
    advice = section(out.stdout, "RADIUS clients")
    assert "radius.clients[0] (test-nas)" in advice and "at least 7 s" in advice


@pytest_twisted.ensureDeferred
async def test_a_wrong_public_path_is_a_404_explained(slapd, tmp_path, api):
    config = write_config(tmp_path, slapd, servers=[slapd.url],
                          approval=approval_block(f"{api}/mfa"))
    out = await in_thread("--config", str(config))
    line = step(section(out.stdout, "Approval API:"), "api")
    assert line.lstrip().startswith("FAIL") and "404 Not Found" in line
    assert "reverse proxy forwards" in line
    assert out.returncode == 1


def test_a_refused_public_url_asks_whether_the_daemon_runs(slapd, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    config = write_config(tmp_path, slapd, servers=[slapd.url], approval=approval_block(url))
    out = run_cli("--config", str(config))
    line = step(section(out.stdout, "Approval API:"), "api")
    assert line.lstrip().startswith("FAIL") and "connection refused" in line
    assert "is the daemon running" in line
    assert out.returncode == 1
    assert "approval.public_url: api: connection refused" in out.stdout


def test_a_config_that_does_not_load_exits_2_with_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("radius:\n  clients: []\nldap: {}\n")
    out = run_cli("--config", str(bad))
    assert out.returncode == 2
    assert f"{bad}: " in out.stderr and "problem(s):" in out.stderr
    assert "radius.clients: needs at least 1 entry" in out.stderr
    assert "approval: missing" in out.stderr
    assert out.stdout == ""


def test_unresolvable_host_fails_at_dns(slapd, tmp_path):
    config = write_config(tmp_path, slapd, servers=["ldap://no-such-host.invalid"],
                          approval=approval_block(f"http://127.0.0.1:{closed_port()}"))
    block = section(run_cli("--config", str(config)).stdout, "LDAP server 1 of 1")
    assert step(block, "dns").lstrip().startswith("FAIL")
    assert "does not resolve" in step(block, "dns")
    assert statuses(block)["tcp"] == "SKIP"



def test_an_https_public_url_is_verified_against_the_system_store(slapd, tmp_path):
    ca = make_ca("private web CA")
    server = TlsServer(tmp_path, *make_leaf(ca, ["localhost"]))
    try:
        url = f"https://localhost:{server.port}"
        config = write_config(tmp_path, slapd, servers=[slapd.url], approval=approval_block(url))
        out = run_cli("--config", str(config))
    finally:
        server.close()
    line = step(section(out.stdout, "Approval API:"), "api")
    assert line.lstrip().startswith("FAIL")
    assert "certificate verify failed: unable to get local issuer certificate" in line
    assert "not trusted by this host's trust store" in line
