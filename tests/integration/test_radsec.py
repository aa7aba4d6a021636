"""Issue 20: RadSec (RADIUS over TLS) against real peers.

radclient -> radsecproxy (Debian's package; UDP in, TLS out with a client
certificate) -> the in-process daemon's RadSec listener -> engine -> scripted
push -> reply back the same way; the same with FreeRADIUS 3.2 proxying to a
TLS home server. The other peers are Python's ssl module
speaking RADIUS/TLS from a thread: a certificate from another CA, an unknown
name, garbage, an idle connection, Status-Server, and RADIUS/1.1 built from
RFC 9765's text (no packaged peer offers radius/1.1: radsecproxy 1.9 sends no ALPN).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import subprocess
import textwrap
import time

import pytest
import pytest_twisted
from pyrad import packet as rpacket
from twisted.internet import defer, reactor, task, threads

from pushproxy.radius import codec
from pushproxy.radsec.listener import RadsecListener
from pushproxy.service import Daemon
from tests.integration.harness import load, write_config
from tests.integration.radclient import radclient
from tests.radsec_pki import TestCA
from tests.support import ScriptedProvider

DICT = codec.load_dictionary()
RADSECPROXY = shutil.which("radsecproxy") or "/usr/sbin/radsecproxy"
UDP_SECRET = "radsecproxy-udp-secret-01"


def free_port(kind=socket.SOCK_DGRAM) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Pki:
    """CA, server certificate, radsecproxy's and a test client's certificates."""

    def __init__(self, tmp):
        self.ca = TestCA(tmp)
        self.server = self.ca.issue("server", cn="pushproxy.test", dns=["pushproxy.test"],
                                    ips=["127.0.0.1"], server=True)
        self.proxy = self.ca.issue("proxy", cn="radsecproxy.test", dns=["proxy.test"])
        self.tool = self.ca.issue("tool", cn="tool.test", dns=["tool.test"])
        self.stranger = self.ca.issue("stranger", cn="stranger.test", dns=["stranger.test"])
        self.other_ca = TestCA(tmp, name="Other CA")
        self.forged = self.other_ca.issue("forged", cn="tool.test", dns=["tool.test"])


def radsec_section(pki: Pki, **extra) -> str:
    """The ``radius.radsec`` block (indented to sit under ``radius:``)."""
    opts = {"idle_timeout": 60, "max_connections_per_client": 4, **extra}
    lines = [
        "radsec:",
        '  listen: ["127.0.0.1:0"]',
        f"  cert_file: {pki.server.cert}",
        f"  key_file: {pki.server.key}",
        f"  ca_file: {pki.ca.path}",
        *(f"  {k}: {v}" for k, v in opts.items()),
        "  clients:",
        "    - name: proxy",
        "      match: {dns: proxy.test}",
        "    - name: tool",
        "      match: {dns: tool.test, cn: tool.test}",
        "      address: 127.0.0.0/8",
    ]
    return "".join(f"  {line}\n" for line in lines)


@defer.inlineCallbacks
def eventually(condition, within: float = 15.0):
    """Let the reactor run until ``condition()`` holds, at most ``within`` seconds."""
    end = time.monotonic() + within
    while not condition() and time.monotonic() < end:
        yield task.deferLater(reactor, 0.05, lambda: None)


def udp_bound(port: int) -> bool:
    """Whether a UDP socket is bound to 127.0.0.1:``port`` (from /proc/net/udp)."""
    with open("/proc/net/udp") as table:
        return any(line.split()[1] == f"0100007F:{port:04X}" for line in list(table)[1:])


class Stack:
    """The daemon with its RadSec listener, and radsecproxy in front of it."""

    def __init__(self, tmp, slapd, provider, **radsec):
        self.tmp = tmp
        self.pki = Pki(tmp)
        path = write_config(tmp, slapd, push="timeout: 30")
        text = path.read_text().replace(
            "radius:\n", "radius:\n" + radsec_section(self.pki, **radsec), 1)
        path.write_text(text)
        self.config = load(path)
        self.provider = provider
        self.daemon = Daemon(self.config, reactor, provider)
        self.listener = RadsecListener(self.daemon)
        self.daemon.components.append(self.listener)
        self.proxy = None

    @defer.inlineCallbacks
    def start(self):
        yield self.daemon.start()
        self.port = self.listener.ports[0].getHost().port
        return self

    def start_radsecproxy(self) -> str:
        """radsecproxy listening on UDP, forwarding over TLS to us; returns host:port."""
        udp = free_port()
        conf = self.tmp / "radsecproxy.conf"
        conf.write_text(textwrap.dedent(f"""\
            ListenUDP 127.0.0.1:{udp}
            LogLevel 4
            LogDestination file://{self.tmp}/radsecproxy.log
            tls default {{
                CACertificateFile {self.pki.ca.path}
                CertificateFile {self.pki.proxy.cert}
                CertificateKeyFile {self.pki.proxy.key}
            }}
            client nas {{
                host 127.0.0.1
                type udp
                secret {UDP_SECRET}
            }}
            server pushproxy {{
                host 127.0.0.1
                port {self.port}
                type tls
                tls default
                StatusServer on
                # radsecproxy gives a TLS server RetryInterval seconds per request
                # (default 10, at most 60): a login waiting for a phone needs the most.
                RetryInterval 60
            }}
            realm * {{
                server pushproxy
            }}
        """))
        self.proxy = subprocess.Popen([RADSECPROXY, "-f", "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Until it listens (a single radclient attempt sent before is lost), bounded.
        end = time.monotonic() + 20
        while not udp_bound(udp) and time.monotonic() < end:
            assert self.proxy.poll() is None, self.proxy.stderr.read().decode()
            time.sleep(0.05)
        assert self.proxy.poll() is None, self.proxy.stderr.read().decode()
        assert udp_bound(udp), "radsecproxy did not listen within 20 s: " + self.proxy_log()
        return f"127.0.0.1:{udp}"

    def proxy_log(self) -> str:
        path = self.tmp / "radsecproxy.log"
        return path.read_text() if path.exists() else ""

    @defer.inlineCallbacks
    def stop(self):
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.terminate()
            self.proxy.wait(10)
        yield self.daemon.stop()


@pytest.fixture
def stack(slapd, tmp_path):
    started = []

    @pytest_twisted.inlineCallbacks
    def make(provider=None, **radsec):
        s = yield Stack(tmp_path, slapd, provider or ScriptedProvider(mode="approve"),
                        **radsec).start()
        started.append(s)
        return s

    yield make
    for s in started:
        pytest_twisted.blockon(s.stop())


def login_attrs(user="alice", password="alice-pw"):
    return [("User-Name", user), ("User-Password", password),
            ("Calling-Station-Id", "198.51.100.7"), ("NAS-Identifier", "gw-radsec"),
            ("Message-Authenticator", "0x00")]


# -- a RadSec client built on Python's ssl module -------------------------------

def tls_connect(stack, issued, *, alpn=None, ca=None) -> ssl.SSLSocket:
    """A TLS connection to the listener presenting ``issued`` (blocking; run in a thread)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca or stack.pki.ca.path)
    ctx.load_cert_chain(issued.cert, issued.key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="pushproxy.test")


def read_packet(sock) -> bytes:
    """One RADIUS packet from the stream; b"" when the server closed it."""
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return b""
        head += chunk
    length = struct.unpack("!H", head[2:4])[0]
    body = head
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return b""
        body += chunk
    return body


def closed_by_server(sock, wait=15.0) -> bool:
    """Whether the server ends the connection within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except (ssl.SSLError, ConnectionResetError):
        return True
    except socket.timeout:
        return False


def v10_request(code=rpacket.AccessRequest, ident=7, secret=b"radsec", **attrs) -> bytes:
    """A RADIUS/1.0 request with the RFC 6614 secret "radsec" and a Message-Authenticator."""
    pkt = rpacket.AuthPacket(code=code, id=ident, secret=secret, dict=DICT,
                             authenticator=rpacket.Packet.CreateAuthenticator())
    for name, value in attrs.items():
        if name == "User_Password":
            pkt["User-Password"] = pkt.PwCrypt(value)
        else:
            pkt[name.replace("_", "-")] = value
    pkt.add_message_authenticator()
    return pkt.RequestPacket()


def v11_request(token: bytes, user: str, password: str) -> bytes:
    """RFC 9765 section 4: Reserved-1 0, Token, Reserved-2 zeros; User-Password in clear."""
    attrs = b""
    for atype, value in ((1, user.encode()), (2, password.encode()),
                         (31, b"198.51.100.7"), (32, b"gw-v11")):
        attrs += bytes([atype, len(value) + 2]) + value
    return struct.pack("!BBH", 1, 0, 20 + len(attrs)) + token + bytes(12) + attrs


# -- radsecproxy in front -----------------------------------------------------

@pytest.mark.skipif(not shutil.which(RADSECPROXY) and not shutil.os.path.exists(RADSECPROXY),
                    reason="radsecproxy not installed (apt-get install radsecproxy)")
@pytest.mark.parametrize("mode,expected", [("approve", "Access-Accept"),
                                           ("deny", "Access-Reject")])
@pytest_twisted.inlineCallbacks
def test_radsecproxy_login_through_tls_gets_the_push_decision(stack, mode, expected):
    """radclient -> radsecproxy (UDP) -> pushproxy (mutual TLS): one push, its answer back."""
    provider = ScriptedProvider(mode=mode)
    s = yield stack(provider)
    addr = s.start_radsecproxy()
    result = yield radclient(addr, UDP_SECRET, login_attrs(), timeout=10, retries=1)
    assert result.code == expected, (result, s.proxy_log())
    assert len(provider.requests) == 1
    assert provider.requests[0].application == "proxy"  # the client named by the certificate
    assert s.daemon.counters.get("radsec_connections") >= 1


@pytest_twisted.inlineCallbacks
def test_garbage_connection_is_closed_while_a_radsecproxy_login_succeeds(stack):
    """A peer sending a bad Length loses its own connection only."""
    s = yield stack()
    addr = s.start_radsecproxy()

    def garbage():
        sock = tls_connect(s, s.pki.tool)
        sock.sendall(b"\x01\x02\xff\xff" + b"x" * 60)  # Length 65535: not RADIUS
        return closed_by_server(sock)

    closed, result = yield defer.gatherResults([
        threads.deferToThread(garbage),
        radclient(addr, UDP_SECRET, login_attrs(), timeout=10, retries=1)])
    assert closed
    assert result.code == "Access-Accept", s.proxy_log()
    assert s.daemon.counters.get("radsec_closed", reason="framing") == 1


# -- certificates ---------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_certificate_from_another_ca_is_refused_at_the_handshake(stack):
    s = yield stack()

    def attempt():
        try:
            sock = tls_connect(s, s.pki.forged)  # same names, issued by another CA
            sock.sendall(v10_request(code=rpacket.StatusServer))
        except (ssl.SSLError, OSError):
            return True  # TLS 1.2 fails in the handshake, 1.3 right after it
        return closed_by_server(sock)

    assert (yield threads.deferToThread(attempt))
    # the server side notices the close (a loaded machine: a while after the client)
    yield eventually(lambda: s.daemon.counters.get("radsec_refused", reason="tls_handshake"))
    assert s.daemon.counters.get("radsec_connections") == 1
    assert s.daemon.counters.get("radsec_refused", reason="tls_handshake") == 1
    assert not any("radius_requests" in str(k) for k in s.daemon.counters.snapshot())


@pytest_twisted.inlineCallbacks
def test_certificate_naming_no_configured_client_is_refused_and_counted(stack):
    s = yield stack()

    def attempt():
        sock = tls_connect(s, s.pki.stranger)  # our CA, but no client matches its names
        try:
            sock.sendall(v10_request(code=rpacket.StatusServer))
        except (ssl.SSLError, OSError):
            return True  # already closed
        return closed_by_server(sock)

    assert (yield threads.deferToThread(attempt))
    assert s.daemon.counters.get("radsec_refused", reason="unknown_client") == 1


# -- watchdog, limits, timeouts -------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_status_server_is_answered_with_access_accept(stack):
    s = yield stack()

    def watchdog():
        sock = tls_connect(s, s.pki.tool)
        sock.sendall(v10_request(code=rpacket.StatusServer, ident=42))
        return read_packet(sock)

    reply = yield threads.deferToThread(watchdog)
    assert reply[0] == rpacket.AccessAccept and reply[1] == 42


@pytest_twisted.inlineCallbacks
def test_connections_over_the_per_client_cap_are_refused(stack):
    s = yield stack(max_connections_per_client=2)

    def answered(sock) -> bool:
        try:
            sock.sendall(v10_request(code=rpacket.StatusServer))
            return bool(read_packet(sock))
        except (ssl.SSLError, OSError):
            return False  # refused: closed before or while we wrote

    def three():
        socks = [tls_connect(s, s.pki.tool) for _ in range(3)]
        return [answered(sock) for sock in socks]

    assert (yield threads.deferToThread(three)) == [True, True, False]
    assert s.daemon.counters.get("radsec_refused", reason="per_client") == 1


@pytest_twisted.inlineCallbacks
def test_idle_connection_is_closed_after_idle_timeout(stack):
    s = yield stack(idle_timeout=5)

    def idle():
        sock = tls_connect(s, s.pki.tool)
        sock.sendall(v10_request(code=rpacket.StatusServer))
        assert read_packet(sock)
        started = time.monotonic()
        closed = closed_by_server(sock, wait=20)
        return closed, time.monotonic() - started

    closed, waited = yield threads.deferToThread(idle)
    assert closed and 4 <= waited < 15, waited
    assert s.daemon.counters.get("radsec_closed", reason="idle") == 1


@pytest_twisted.inlineCallbacks
def test_an_idle_timeout_does_not_cut_a_login_waiting_for_the_phone(stack):
    provider = ScriptedProvider(mode="manual")
    s = yield stack(provider, idle_timeout=5)

    def login():
        sock = tls_connect(s, s.pki.tool)
        sock.sendall(v10_request(ident=3, User_Name="alice", User_Password="alice-pw"))
        sock.settimeout(30)
        return read_packet(sock)

    d = threads.deferToThread(login)
    while not provider.requests:
        yield task.deferLater(reactor, 0.2, lambda: None)
    yield task.deferLater(reactor, 7, lambda: None)  # past the idle timeout
    provider.answer()
    reply = yield d
    assert reply and reply[0] == rpacket.AccessAccept


# -- RADIUS/1.1 ------------------------------------------------------------------

@pytest_twisted.inlineCallbacks
def test_radius_1_1_negotiated_by_alpn_token_echoed_password_in_clear(stack):
    provider = ScriptedProvider(mode="approve")
    s = yield stack(provider)

    def v11():
        sock = tls_connect(s, s.pki.tool, alpn=["radius/1.1", "radius/1.0"])
        assert sock.selected_alpn_protocol() == "radius/1.1"
        sock.sendall(v11_request(b"\x00\x00\x00\x2a", "alice", "alice-pw"))
        return read_packet(sock)

    reply = yield threads.deferToThread(v11)
    assert reply[0] == rpacket.AccessAccept
    assert reply[1] == 0 and reply[4:8] == b"\x00\x00\x00\x2a" and reply[8:20] == bytes(12)
    assert b"\x50\x12" not in reply[20:22]  # no Message-Authenticator first
    assert len(provider.requests) == 1


@pytest_twisted.inlineCallbacks
def test_radius_1_0_by_alpn_uses_the_radsec_secret(stack):
    s = yield stack()

    def v10():
        sock = tls_connect(s, s.pki.tool, alpn=["radius/1.0"])
        assert sock.selected_alpn_protocol() == "radius/1.0"
        sock.sendall(v10_request(ident=9, User_Name="alice", User_Password="alice-pw"))
        return read_packet(sock)

    reply = yield threads.deferToThread(v10)
    assert reply[0] == rpacket.AccessAccept and reply[1] == 9


@pytest_twisted.inlineCallbacks
def test_alpn_without_a_radius_version_fails_the_handshake(stack):
    s = yield stack()

    def other():
        try:
            sock = tls_connect(s, s.pki.tool, alpn=["h2"])
        except ssl.SSLError:
            return True
        return closed_by_server(sock)

    assert (yield threads.deferToThread(other))


# -- FreeRADIUS 3.2 as the RadSec client ------------------------------------------------

@pytest.mark.parametrize("mode,expected", [("approve", "Access-Accept"),
                                           ("deny", "Access-Reject")])
@pytest_twisted.inlineCallbacks
def test_freeradius_home_server_over_tls_gets_the_push_decision(stack, tmp_path, mode,
                                                                 expected):
    """radclient -> FreeRADIUS (UDP) -> pushproxy over RADIUS/TLS: one push, its answer."""
    from tests.integration.freeradius_radsec import RadsecFreeRadius
    from tests.integration.freeradius_upstream import available

    if not available():
        pytest.skip("freeradius not installed")
    provider = ScriptedProvider(mode=mode)
    s = yield stack(provider)
    fr = RadsecFreeRadius(tmp_path / "freeradius", UDP_SECRET, home_port=s.port,
                          cert=s.pki.proxy.cert, key=s.pki.proxy.key, ca=s.pki.ca.path)
    (tmp_path / "freeradius").mkdir()
    yield threads.deferToThread(fr.start)
    try:
        result = yield radclient(fr.address, UDP_SECRET, login_attrs(), timeout=15, retries=1)
        assert result.code == expected, fr.log()[-3000:]
        assert [r.application for r in provider.requests] == ["proxy"]
        assert s.daemon.counters.get("radius_requests", client="proxy") == 1
    finally:
        yield threads.deferToThread(fr.stop)


# -- RADIUS/DTLS, with openssl s_client as the peer ----------------------------------------

def dtls_exchange(port: int, issued, ca, request: bytes, *, alpn="radius/1.0",
                  wait: float = 15.0) -> bytes:
    """One request through ``openssl s_client -dtls1_2`` (a DTLS peer independent of
    pyOpenSSL's server side); returns what came back (b"" if nothing)."""
    return s_client(["-dtls1_2", "-connect", f"127.0.0.1:{port}", "-cert", str(issued.cert),
                     "-key", str(issued.key), "-CAfile", str(ca), "-verify_return_error",
                     "-alpn", alpn, "-mtu", "1200"], request, wait)


def s_client(args: list[str], request: bytes, wait: float = 15.0) -> bytes:
    """``openssl s_client`` with ``args``: send ``request`` once the handshake is done,
    return the reply (b"" if none came)."""
    import select

    proc = subprocess.Popen(["openssl", "s_client", "-quiet", "-ign_eof", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # the handshake (s_client sends stdin once it is done)
        try:
            proc.stdin.write(request)
            proc.stdin.flush()
        except BrokenPipeError:
            return b""  # s_client gave up: the handshake failed
        out, end = b"", time.monotonic() + wait
        while time.monotonic() < end and (len(out) < 4 or
                                          len(out) < struct.unpack("!H", out[2:4])[0]):
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        return out
    finally:
        proc.kill()
        proc.wait(10)


@pytest_twisted.inlineCallbacks
def test_dtls_status_server_and_login_with_the_radius_dtls_secret(stack):
    provider = ScriptedProvider(mode="approve")
    s = yield stack(provider, dtls_listen='["127.0.0.1:0"]')
    port = s.listener.ports[-1].getHost().port
    status = v10_request(code=rpacket.StatusServer, ident=11, secret=b"radius/dtls")
    reply = yield threads.deferToThread(dtls_exchange, port, s.pki.tool, s.pki.ca.path, status)
    assert reply[:2] == bytes([rpacket.AccessAccept, 11]), reply
    login = v10_request(ident=12, secret=b"radius/dtls", User_Name="alice",
                        User_Password="alice-pw")
    reply = yield threads.deferToThread(dtls_exchange, port, s.pki.tool, s.pki.ca.path, login)
    assert reply[:2] == bytes([rpacket.AccessAccept, 12]), reply
    assert [r.application for r in provider.requests] == ["tool"]


@pytest_twisted.inlineCallbacks
def test_dtls_certificate_from_another_ca_gets_nothing(stack):
    s = yield stack(dtls_listen='["127.0.0.1:0"]')
    port = s.listener.ports[-1].getHost().port
    status = v10_request(code=rpacket.StatusServer, ident=11, secret=b"radius/dtls")
    reply = yield threads.deferToThread(dtls_exchange, port, s.pki.forged, s.pki.ca.path,
                                        status, wait=4)
    assert reply == b""
    assert s.daemon.counters.get("radsec_refused", reason="dtls_handshake") == 1


# -- `pushproxy serve`: the listener comes from the config (wiring) ------------------------

def test_serve_starts_the_radsec_listener_from_the_config(slapd, tmp_path):
    """The real daemon process: radius.radsec in the config -> a TLS port answering
    Status-Server; a world-readable key is refused like any private key."""
    from tests.integration.harness import ServeProcess

    pki = Pki(tmp_path)
    port = free_port(socket.SOCK_STREAM)
    path = write_config(tmp_path, slapd)
    section = radsec_section(pki).replace('listen: ["127.0.0.1:0"]',
                                          f'listen: ["127.0.0.1:{port}"]')
    path.write_text(path.read_text().replace("radius:\n", "radius:\n" + section, 1))
    proc = ServeProcess(path)
    try:
        proc.wait_for("radsec.listening", deadline=30)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(pki.ca.path)
        ctx.load_cert_chain(pki.tool.cert, pki.tool.key)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="pushproxy.test") as sock:
                sock.sendall(v10_request(code=rpacket.StatusServer, ident=77))
                reply = read_packet(sock)
        assert reply[:2] == bytes([rpacket.AccessAccept, 77])
    finally:
        proc.close()
    pki.server.key.chmod(0o644)
    proc = ServeProcess(path)
    try:
        assert proc.proc.wait(30) != 0
        assert "radius.radsec.key_file" in proc.output()
    finally:
        proc.close()


# -- TLS-PSK, with openssl s_client as the peer -------------------------------------------

PSK_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


@pytest.fixture
def psk_stack(stack, tmp_path):
    @pytest_twisted.inlineCallbacks
    def make(provider=None):
        (tmp_path / "gw.psk").write_text(PSK_KEY + "\n")
        (tmp_path / "gw.psk").chmod(0o600)
        s = yield stack(provider, psk_listen='["127.0.0.1:0"]',
                        psk_clients=f'[{{name: psk-gw, identity: gw-1, '
                                    f'key_file: {tmp_path / "gw.psk"}}}]')
        return s

    return make


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest_twisted.inlineCallbacks
def test_psk_identity_and_key_give_a_radsec_client(psk_stack, version):
    provider = ScriptedProvider(mode="approve")
    s = yield psk_stack(provider)
    port = s.listener.ports[-1].getHost().port
    login = v10_request(ident=21, User_Name="alice", User_Password="alice-pw")
    reply = yield threads.deferToThread(
        s_client, [version, "-connect", f"127.0.0.1:{port}", "-psk_identity", "gw-1",
                   "-psk", PSK_KEY, "-alpn", "radius/1.0"], login)
    assert reply[:2] == bytes([rpacket.AccessAccept, 21]), reply
    assert [r.application for r in provider.requests] == ["psk-gw"]


@pytest.mark.parametrize("identity, key", [("gw-2", PSK_KEY), ("gw-1", "ff" * 32)])
@pytest_twisted.inlineCallbacks
def test_a_wrong_psk_identity_or_key_is_refused(psk_stack, identity, key):
    s = yield psk_stack()
    port = s.listener.ports[-1].getHost().port
    reply = yield threads.deferToThread(
        s_client, ["-tls1_2", "-connect", f"127.0.0.1:{port}", "-psk_identity", identity,
                   "-psk", key], v10_request(code=rpacket.StatusServer), 4)
    assert reply == b""
    assert s.daemon.counters.get("radius_requests", client="psk-gw") == 0
    (psk_factory,) = s.listener.extra_factories
    yield eventually(lambda: psk_factory.psk.identities == {})  # the server notices the close
    assert psk_factory.psk.identities == {}  # nothing left behind by the failed handshake
