"""A private FreeRADIUS 3.2 as the upstream RADIUS server of ``primary: radius`` tests.

The Debian package's ``/etc/freeradius/3.0`` is copied into the test's folder
(as ``bench/freeradius.py`` does; the system copy is never touched), every
stock module and site is switched off, and one virtual server on a free
loopback port checks PAP, CHAP and MS-CHAP(v2) against a users file the test
writes. It runs in the foreground with ``-f`` as the invoking user.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bench.freeradius import (FREERADIUS_BIN, SYSTEM_RADDB, _comment_out, _free_udp_port,
                              _set, _udp_bound)

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


class UpstreamRadius:
    """FreeRADIUS on 127.0.0.1 with ``users`` (a FreeRADIUS users file text)."""

    def __init__(self, base_dir: Path, secret: str, users: str):
        self.base_dir = Path(base_dir)
        self.raddb = self.base_dir / "raddb"
        self.secret = secret
        self.users = users
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def configure(self) -> None:
        """Copy the system raddb and edit the copy."""
        shutil.copytree(SYSTEM_RADDB, self.raddb, symlinks=True)
        for sub in ("log", "run"):
            (self.base_dir / sub).mkdir(exist_ok=True)
        conf = (self.raddb / "radiusd.conf").read_text()
        conf = _set(conf, "raddbdir", str(self.raddb))
        conf = _set(conf, "logdir", str(self.base_dir / "log"))
        conf = _set(conf, "run_dir", str(self.base_dir / "run"))
        conf = _set(conf, "reject_delay", "0")
        conf = _set(conf, "proxy_requests", "no")
        conf = _set(conf, "start_servers", "2")
        conf = _comment_out(conf, "user")
        conf = _comment_out(conf, "group")
        (self.raddb / "radiusd.conf").write_text(conf)
        for folder in ("mods-enabled", "sites-enabled"):
            for entry in (self.raddb / folder).iterdir():
                entry.unlink()
        for module in ("always", "files", "pap", "chap", "mschap"):
            (self.raddb / "mods-enabled" / module).symlink_to(f"../mods-available/{module}")
        (self.raddb / "mods-enabled" / "eap").write_text(EAP)
        authorize = self.raddb / "mods-config" / "files" / "authorize"
        authorize.unlink()
        authorize.write_text(self.users)
        self.port = _free_udp_port()
        (self.raddb / "sites-enabled" / "upstream").write_text(SITE.format(port=self.port))
        (self.raddb / "clients.conf").write_text(CLIENTS.format(secret=self.secret))

    def start(self, timeout: float = 20.0) -> "UpstreamRadius":
        """Run ``freeradius -f -d DIR`` and wait until its port is bound."""
        if not self.port:
            self.configure()
        log = open(self.base_dir / "log" / "stdout.log", "ab")
        self.proc = subprocess.Popen([FREERADIUS_BIN, "-f", "-d", str(self.raddb)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"freeradius exited ({self.proc.returncode}): "
                                   + (self.base_dir / "log" / "stdout.log").read_text()[-2000:]
                                   + self.log())
            if _udp_bound(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"freeradius did not bind {self.address} in {timeout} s")

    def log(self) -> str:
        """radius.log so far."""
        path = self.base_dir / "log" / "radius.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
