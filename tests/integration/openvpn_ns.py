"""OpenVPN 2.6 with Debian's radiusplugin, and an OpenVPN client, in two network namespaces.

The same layout as tests/integration/ocserv_ns.py (veth between the
namespaces, RADIUS relayed over a UNIX socket to pushproxy on the host's
loopback), with OpenVPN in place of ocserv: server 10.213.0.1:1194/udp, tunnel
network 10.215.0.0/24 (the server is 10.215.0.1). radiusplugin also sends
Accounting-Requests to the same server's port 1813 and expects answers:
a second relay carries them to pushproxy's own accounting listener
(radius.accounting_listen).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.integration.ocserv_ns import RELAY_IN_NAMESPACE, SERVER_ADDR, HostRelay, OcservPair

TUN_SERVER = "10.215.0.1"
PORT = 1194
PLUGIN = "/usr/lib/openvpn/radiusplugin.so"

def unavailable() -> str | None:
    """Why OpenVPN with radiusplugin cannot run here (None: it can)."""
    import shutil

    from tests.integration.ocserv_ns import unavailable as namespaces_unavailable

    if shutil.which("openvpn") is None:
        return "openvpn not installed (apt-get install openvpn)"
    if not os.path.exists(PLUGIN):
        return "radiusplugin not installed (apt-get install openvpn-auth-radius)"
    problem = namespaces_unavailable()
    if problem and "ocserv" not in problem and "openconnect" not in problem:
        return problem
    return None


class OpenvpnPair(OcservPair):
    """An OpenVPN server (radiusplugin -> pushproxy) and a place to run the client."""

    def __init__(self, radius: tuple[str, int], secret: str, *,
                 accounting: tuple[str, int], **kwargs):
        super().__init__(radius, secret, **kwargs)
        self.accounting = accounting  # pushproxy's radius.accounting_listen address
        self.accounting_relay: HostRelay | None = None

    def start(self) -> "OpenvpnPair":
        self._tls_and_namespaces()
        self._start_relay()
        self._start_accounting_relay()
        self._write_openvpn_configs()
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.srv, "openvpn", "--config",
             str(self.dir / "server.conf")],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, cwd=self.dir)
        self.procs.append(server)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError("openvpn server exited:\n" + self.log.read_text())
            if "Initialization Sequence Completed" in self.log.read_text():
                return self
            time.sleep(0.3)
        raise RuntimeError("openvpn server did not start:\n" + self.log.read_text())

    def _start_accounting_relay(self) -> None:
        """Port 1813 in the server's namespace -> pushproxy's accounting listener."""
        inner, outer = str(self.dir / "acct-ns.sock"), str(self.dir / "acct-host.sock")
        self.accounting_relay = HostRelay(outer, inner, self.accounting)
        self.accounting_relay.start()
        proc = subprocess.Popen(["ip", "netns", "exec", self.srv, sys.executable, "-c",
                                 RELAY_IN_NAMESPACE, inner, outer, "1813"],
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    def close(self) -> None:
        """Stop everything, the accounting relay included."""
        super().close()
        if self.accounting_relay is not None:
            self.accounting_relay.close()

    def _write_openvpn_configs(self) -> None:
        d = self.dir
        # As docs/gateways/openvpn.md says: one RADIUS wait of 30 s covers the
        # push (20 s in the tests); the handshake window is above it.
        plugin_conf = d / "radiusplugin.cnf"
        plugin_conf.write_text(f"""\
NAS-Identifier=openvpn-gw
Service-Type=5
Framed-Protocol=1
NAS-Port-Type=5
NAS-IP-Address=127.0.0.1
OpenVPNConfig={d / 'server.conf'}
subnet=255.255.255.0
overwriteccfiles=true
useauthcontrolfile=true
server
{{
    acctport=1813
    authport=1812
    name=127.0.0.1
    retry=1
    wait={self.radius_timeout}
    sharedsecret={self.secret}
}}
""")
        os.chmod(plugin_conf, 0o600)
        (d / "server.conf").write_text(f"""\
dev tun
proto udp
local {SERVER_ADDR}
port {PORT}
topology subnet
server 10.215.0.0 255.255.255.0
ca {d / 'ca.pem'}
cert {d / 'server.pem'}
key {d / 'server.key'}
dh none
verify-client-cert none
username-as-common-name
plugin {PLUGIN} {plugin_conf}
hand-window 90
reneg-sec 0
keepalive 10 60
status {d / 'status.log'} 1
verb 3
""")
        (d / "client.conf").write_text(f"""\
client
dev tun
proto udp
remote {SERVER_ADDR} {PORT}
nobind
ca {d / 'ca.pem'}
remote-cert-tls server
auth-user-pass {d / 'credentials'}
auth-nocache
hand-window 90
verb 3
""")

    def connect(self, user: str, password: str) -> subprocess.Popen:
        """The OpenVPN client in the client namespace (background)."""
        credentials = self.dir / "credentials"
        fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{user}\n{password}\n")
        proc = subprocess.Popen(["ip", "netns", "exec", self.cli, "openvpn", "--config",
                                 str(self.dir / "client.conf")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=self.dir)
        self.procs.append(proc)
        return proc

    def ping_through_tunnel(self, count: int = 2) -> subprocess.CompletedProcess:
        """Ping the OpenVPN server's tunnel address from the client namespace."""
        return subprocess.run(["ip", "netns", "exec", self.cli, "ping", "-c", str(count),
                               "-W", "3", TUN_SERVER], capture_output=True, text=True,
                              timeout=30)

    def client_has_tunnel(self) -> bool:
        out = subprocess.run(["ip", "-n", self.cli, "-o", "-4", "addr"], capture_output=True,
                             text=True).stdout
        return "10.215.0." in out
