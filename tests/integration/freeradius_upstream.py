"""A private FreeRADIUS 3.2 as the upstream RADIUS server of ``primary: radius`` tests.

The Debian package's ``/etc/freeradius/3.0`` is copied into the test's folder
(as ``bench/freeradius.py`` does; the system copy is never touched), every
stock module and site is switched off, and one virtual server on a free
loopback port checks PAP, CHAP and MS-CHAP(v2) against a users file the test
writes. It runs in the foreground with ``-f`` as the invoking user.
"""

from __future__ import annotations

from pathlib import Path

from bench.freeradius import FREERADIUS_BIN, SYSTEM_RADDB, PrivateFreeRadius

SITE = """\
server upstream {{
	listen {{
		type = auth
		ipaddr = 127.0.0.1
		port = {port}
	}}
	authorize {{
		# erin gets a token prompt first (Access-Challenge with a State).
		if (&User-Name == "erin" && !&State) {{
			update reply {{
				&State := 0x6572696e2d7374617465
				&Reply-Message := "Token code?"
			}}
			update control {{
				&Response-Packet-Type := Access-Challenge
			}}
			handled
		}}
		eap {{
			ok = return
		}}
		files
		chap
		mschap
		pap
	}}
	authenticate {{
		Auth-Type PAP {{
			pap
		}}
		Auth-Type CHAP {{
			chap
		}}
		Auth-Type MS-CHAP {{
			mschap
		}}
		Auth-Type eap {{
			eap
		}}
	}}
	post-auth {{
		# EAP: tell the proxy whom the login proved (its push goes there);
		# rlm_eap adds it already, except for mallory, whose Accept has none.
		if (&EAP-Message) {{
			if (&User-Name == "mallory") {{
				update reply {{
					&User-Name !* ANY
				}}
			}}
			else {{
				update reply {{
					&User-Name := &request:User-Name
				}}
			}}
		}}
	}}
}}
"""

# EAP-MD5 only: enough for several Access-Challenge rounds without certificates.
EAP = """\
eap {
	default_eap_type = md5
	timer_expire = 60
	ignore_unknown_eap_types = no
	max_sessions = 1024
	md5 {
	}
}
"""

CLIENTS = """\
client pushproxy {{
	ipaddr = 127.0.0.1
	secret = {secret}
	require_message_authenticator = no
	shortname = pushproxy
}}
"""


def available() -> bool:
    """Whether the freeradius daemon is installed."""
    return Path(FREERADIUS_BIN).exists() and (SYSTEM_RADDB / "radiusd.conf").exists()


class UpstreamRadius(PrivateFreeRadius):
    """FreeRADIUS on 127.0.0.1 with ``users`` (a FreeRADIUS users file text)."""

    def __init__(self, base_dir: Path, secret: str, users: str):
        super().__init__(base_dir, secret)
        self.users = users

    def server_settings(self) -> dict[str, str]:
        """Two threads are plenty for the tests."""
        return {"start_servers": "2"}

    def configure_site(self) -> None:
        """PAP, CHAP, MS-CHAP and EAP-MD5 against the users file; the test as the client."""
        for module in ("always", "files", "pap", "chap", "mschap"):
            (self.raddb / "mods-enabled" / module).symlink_to(f"../mods-available/{module}")
        (self.raddb / "mods-enabled" / "eap").write_text(EAP)
        authorize = self.raddb / "mods-config" / "files" / "authorize"
        authorize.unlink()
        authorize.write_text(self.users)
        (self.raddb / "sites-enabled" / "upstream").write_text(SITE.format(port=self.port))
        (self.raddb / "clients.conf").write_text(CLIENTS.format(secret=self.secret))

    def log(self) -> str:
        """radius.log so far."""
        path = self.base_dir / "log" / "radius.log"
        return path.read_text() if path.exists() else ""
