"""ocserv and an openconnect client in two private network namespaces (issue 17).

Layout (nothing is added to the host's network)::

    netns "srv": ocserv on 10.213.0.1:4443 (TLS), its tun vpns0 = 10.214.0.1,
                 a RADIUS relay on 127.0.0.1:1812
    netns "cli": openconnect -> https://10.213.0.1:4443, its tun = 10.214.0.x
    a veth pair joins the two namespaces (10.213.0.1/30 <-> 10.213.0.2/30)

ocserv's RADIUS client (radcli) cannot reach the daemon on the host's
loopback from its namespace, so a relay carries each datagram over a UNIX
socket (a file: visible across network namespaces) to the host, where it goes
to pushproxy from 127.0.0.1 (one UDP socket per ocserv source port, so
retransmits keep their identity). pushproxy thus sees an ordinary loopback
client.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SERVER_ADDR, CLIENT_ADDR = "10.213.0.1", "10.213.0.2"
TUN_SERVER = "10.214.0.1"
PORT = 4443

RELAY_IN_NAMESPACE = r'''
import os, select, socket, struct, sys
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", int(sys.argv[3])))
unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
unix.bind(sys.argv[1])
print("ready", flush=True)
while True:
    ready, _, _ = select.select([udp, unix], [], [])
    if udp in ready:
        data, (host, port) = udp.recvfrom(65535)
        unix.sendto(struct.pack("!H", port) + data, sys.argv[2])
    if unix in ready:
        data = unix.recv(65535)
        udp.sendto(data[2:], ("127.0.0.1", struct.unpack("!H", data[:2])[0]))
'''


def unavailable() -> str | None:
    """Why ocserv + openconnect cannot run here (None: they can)."""
    for tool, package in (("ocserv", "ocserv"), ("openconnect", "openconnect"),
                          ("ip", "iproute2"), ("ping", "iputils-ping")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {package})"
    if os.geteuid() != 0:
        return "needs root (network namespaces, tun devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    probe = f"pp-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _tls_files(folder: Path) -> None:
    """ca.pem, server.pem (IP SAN 10.213.0.1) and server.key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject, pub, extensions):
        builder = (x509.CertificateBuilder().subject_name(name(subject))
                   .issuer_name(name("vpn test CA")).public_key(pub)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2)))
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    ca = build("vpn test CA", ca_key.public_key(), [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)])
    server = build(SERVER_ADDR, key.public_key(), [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(SERVER_ADDR))]),
         False),
        (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)])
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(folder / "server.key", 0o600)


def _run(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


class HostRelay(threading.Thread):
    """The host half of the RADIUS relay: UNIX datagrams <-> UDP to pushproxy."""

    def __init__(self, own_path: str, peer_path: str, radius: tuple[str, int]):
        super().__init__(daemon=True)
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.unix.bind(own_path)
        self.peer_path = peer_path
        self.radius = radius
        self.by_port: dict[int, socket.socket] = {}
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            sockets = [self.unix, *self.by_port.values()]
            ready, _, _ = select.select(sockets, [], [], 0.5)
            for sock in ready:
                if sock is self.unix:
                    data = self.unix.recv(65535)
                    port = struct.unpack("!H", data[:2])[0]
                    if port not in self.by_port:
                        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        udp.bind(("127.0.0.1", 0))
                        self.by_port[port] = udp
                    self.by_port[port].sendto(data[2:], self.radius)
                else:
                    data = sock.recv(65535)
                    port = next(p for p, s in self.by_port.items() if s is sock)
                    try:
                        self.unix.sendto(struct.pack("!H", port) + data, self.peer_path)
                    except OSError:
                        pass

    def close(self) -> None:
        self.stopping = True
        self.join(5)
        for sock in [self.unix, *self.by_port.values()]:
            sock.close()


class OcservPair:
    """ocserv (RADIUS to pushproxy at ``radius``) and a place to run openconnect."""

    def __init__(self, radius: tuple[str, int], secret: str, *, radius_timeout: int = 30,
                 radius_retries: int = 1):
        tag = secrets.token_hex(3)
        self.srv, self.cli = f"ppsrv-{tag}", f"ppcli-{tag}"
        # Not under pytest's 0700 folders: ocserv's workers run as nobody.
        self.dir = Path(tempfile.mkdtemp(prefix="pushproxy-ocserv-"))
        os.chmod(self.dir, 0o755)
        self.radius = radius
        self.secret = secret
        self.radius_timeout, self.radius_retries = radius_timeout, radius_retries
        self.procs: list[subprocess.Popen] = []
        self.relay: HostRelay | None = None
        self.log = self.dir / "ocserv.log"

    # -- set-up

    def start(self) -> "OcservPair":
        self._tls_and_namespaces()
        self._start_relay()
        self._write_configs()
        ocserv = subprocess.Popen(
            ["ip", "netns", "exec", self.srv, "ocserv", "-f", "-d", "2", "-c",
             str(self.dir / "ocserv.conf")],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        self.procs.append(ocserv)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if ocserv.poll() is not None:
                raise RuntimeError("ocserv exited:\n" + self.log.read_text())
            probe = subprocess.run(["ip", "netns", "exec", self.cli, "python3", "-c",
                                    f"import socket; socket.create_connection(('{SERVER_ADDR}', "
                                    f"{PORT}), 1).close()"], capture_output=True)
            if probe.returncode == 0:
                return self
            time.sleep(0.3)
        raise RuntimeError("ocserv did not listen:\n" + self.log.read_text())

    def _tls_and_namespaces(self) -> None:
        """The test CA and server certificate; the two namespaces and their veth pair."""
        _tls_files(self.dir)
        for ns in (self.srv, self.cli):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        veth_s, veth_c = f"vs{self.srv[-6:]}", f"vc{self.cli[-6:]}"
        _run("ip", "link", "add", veth_s, "netns", self.srv, "type", "veth", "peer", "name",
             veth_c, "netns", self.cli)
        _run("ip", "-n", self.srv, "addr", "add", f"{SERVER_ADDR}/30", "dev", veth_s)
        _run("ip", "-n", self.cli, "addr", "add", f"{CLIENT_ADDR}/30", "dev", veth_c)
        _run("ip", "-n", self.srv, "link", "set", veth_s, "up")
        _run("ip", "-n", self.cli, "link", "set", veth_c, "up")

    def _start_relay(self) -> None:
        inner, outer = str(self.dir / "relay-ns.sock"), str(self.dir / "relay-host.sock")
        self.relay = HostRelay(outer, inner, self.radius)
        self.relay.start()
        proc = subprocess.Popen(["ip", "netns", "exec", self.srv, sys.executable, "-c",
                                 RELAY_IN_NAMESPACE, inner, outer, "1812"],
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    def _write_configs(self) -> None:
        d = self.dir
        servers = d / "servers"
        servers.write_text(f"127.0.0.1 {self.secret}\n")
        os.chmod(servers, 0o600)
        # As docs/gateways/ocserv.md says: one long wait covers the push.
        (d / "radiusclient.conf").write_text(
            "nas-identifier ocserv-gw\nauthserver 127.0.0.1:1812\n"
            "acctserver 127.0.0.1:1813\n"
            f"servers {servers}\ndictionary /etc/radcli/dictionary\ndefault_realm\n"
            f"radius_timeout {self.radius_timeout}\nradius_retries {self.radius_retries}\n"
            "bindaddr *\n")
        (d / "ocserv.conf").write_text(f"""\
auth = "radius[config={d / 'radiusclient.conf'}]"
tcp-port = {PORT}
listen-host = {SERVER_ADDR}
run-as-user = nobody
run-as-group = nogroup
socket-file = {d / 'ocserv.sock'}
pid-file = {d / 'ocserv.pid'}
server-cert = {d / 'server.pem'}
server-key = {d / 'server.key'}
isolate-workers = false
max-clients = 8
max-same-clients = 8
keepalive = 300
dpd = 90
mobile-dpd = 300
try-mtu-discovery = false
tls-priorities = "NORMAL:%SERVER_PRECEDENCE"
auth-timeout = 240
min-reauth-time = 1
max-ban-score = 0
cookie-timeout = 300
deny-roaming = false
rekey-time = 172800
rekey-method = ssl
use-occtl = false
device = vpns
predictable-ips = true
ipv4-network = 10.214.0.0
ipv4-netmask = 255.255.255.0
route = 10.214.0.0/255.255.255.0
cisco-client-compat = true
""")
        script = d / "vpnc-script"
        script.write_text("""#!/bin/sh
# Just the tunnel: address and the VPN's own network, nothing else of the namespace.
case "$reason" in
  connect)
    ip link set dev "$TUNDEV" up mtu "${INTERNAL_IP4_MTU:-1300}"
    ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
    ip route add 10.214.0.0/24 dev "$TUNDEV"
    ;;
esac
exit 0
""")
        os.chmod(script, 0o755)

    # -- the client

    def connect(self, user: str, password: str) -> subprocess.Popen:
        """openconnect in the client namespace (background); the password on stdin."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.cli, "openconnect", "--protocol=anyconnect",
             "--non-inter", "--passwd-on-stdin", "--user", user, "--cafile",
             str(self.dir / "ca.pem"), "--script", str(self.dir / "vpnc-script"),
             "--no-dtls", f"https://{SERVER_ADDR}:{PORT}/"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        proc.stdin.write(password + "\n")
        proc.stdin.close()
        proc.stdin = None  # answered: communicate() must not flush it again
        self.procs.append(proc)
        return proc

    def ping_through_tunnel(self, count: int = 2) -> subprocess.CompletedProcess:
        """Ping ocserv's end of the tunnel from the client namespace."""
        return subprocess.run(["ip", "netns", "exec", self.cli, "ping", "-c", str(count),
                               "-W", "3", TUN_SERVER], capture_output=True, text=True,
                              timeout=30)

    def client_has_tunnel(self) -> bool:
        out = subprocess.run(["ip", "-n", self.cli, "-o", "-4", "addr"], capture_output=True,
                             text=True).stdout
        return "10.214.0." in out

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if self.relay is not None:
            self.relay.close()
        for ns in (self.cli, self.srv):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
