"""A private FreeRADIUS 3.2 as a RadSec client: UDP in, proxied to pushproxy over TLS.

radclient -> FreeRADIUS (UDP, a free loopback port) -> home server "pushproxy"
(``proto = tcp`` with a ``tls`` section: RADIUS/TLS with a client certificate,
the secret "radsec") -> pushproxy's RadSec listener. Built on
`bench.freeradius.PrivateFreeRadius` (a copy of the system raddb; the system
copy is never touched).
"""

from __future__ import annotations

from pathlib import Path

from bench.freeradius import PrivateFreeRadius

SITE = """\
server front {{
	listen {{
		type = auth
		ipaddr = 127.0.0.1
		port = {port}
	}}
	authorize {{
		update control {{
			&Proxy-To-Realm := "pushproxy"
		}}
	}}
	authenticate {{
	}}
	pre-proxy {{
	}}
	post-proxy {{
	}}
}}
"""

PROXY = """\
proxy server {{
	default_fallback = no
}}
home_server pushproxy {{
	type = auth
	ipaddr = 127.0.0.1
	port = {home_port}
	proto = tcp
	secret = radsec
	status_check = none
	response_window = 30
	tls {{
		private_key_file = {key}
		certificate_file = {cert}
		ca_file = {ca}
		fragment_size = 8192
		cipher_list = "DEFAULT"
		connect_timeout = 10
	}}
}}
home_server_pool pushproxy {{
	type = fail-over
	home_server = pushproxy
}}
realm pushproxy {{
	auth_pool = pushproxy
}}
"""

CLIENTS = """\
client nas {{
	ipaddr = 127.0.0.1
	secret = {secret}
	require_message_authenticator = no
	shortname = nas
}}
"""


class RadsecFreeRadius(PrivateFreeRadius):
    """FreeRADIUS proxying every Access-Request to pushproxy over RADIUS/TLS."""

    def __init__(self, base_dir: Path, secret: str, *, home_port: int, cert: Path, key: Path,
                 ca: Path):
        super().__init__(base_dir, secret)
        self.home_port, self.cert, self.key, self.ca = home_port, cert, key, ca

    def server_settings(self) -> dict[str, str]:
        """Proxying on (PrivateFreeRadius turns it off); two threads are plenty."""
        return {"proxy_requests": "yes", "start_servers": "2"}

    def configure_site(self) -> None:
        """The UDP front site, the TLS home server and the test as the NAS."""
        (self.raddb / "mods-enabled" / "always").symlink_to("../mods-available/always")
        (self.raddb / "sites-enabled" / "front").write_text(SITE.format(port=self.port))
        (self.raddb / "proxy.conf").write_text(PROXY.format(
            home_port=self.home_port, cert=self.cert, key=self.key, ca=self.ca))
        (self.raddb / "clients.conf").write_text(CLIENTS.format(secret=self.secret))

    def log(self) -> str:
        """radius.log and stdout so far."""
        out = ""
        for name in ("radius.log", "stdout.log"):
            path = self.base_dir / "log" / name
            out += path.read_text(errors="replace") if path.exists() else ""
        return out
