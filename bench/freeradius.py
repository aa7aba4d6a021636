"""FreeRADIUS 3.2 + rlm_ldap as the reference server, from a private raddb copy.

The Debian package's ``/etc/freeradius/3.0`` is copied into the benchmark's
temporary folder and edited there (the system copy is never touched):

- ``radiusd.conf``: paths point into the copy; it runs as the invoking user;
  ``reject_delay = 0``; ``max_requests`` and the thread pool are raised.
- every stock module and site is switched off; what is left is one LDAP module
  and one virtual server that does what pushproxy does before its push:
  search the user as the service account (reading ``memberOf``), require the
  same group, then check the password by binding as the user
  (``Auth-Type := LDAP``; the stock ``userPassword`` mapping, which would
  compare the hash locally, is not there).

The server runs in the foreground with ``-f`` (never ``-X``: that is one
thread and full debug output).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SYSTEM_RADDB = Path("/etc/freeradius/3.0")
FREERADIUS_BIN = "/usr/sbin/freeradius"
RLM_LDAP = "/usr/lib/freeradius/rlm_ldap.so"


def available() -> bool:
    """Whether the freeradius daemon and its LDAP module are installed."""
    return (os.access(FREERADIUS_BIN, os.X_OK) and os.path.exists(RLM_LDAP)
            and (SYSTEM_RADDB / "radiusd.conf").exists())


def version() -> str | None:
    """``FreeRADIUS Version 3.2.1`` or None."""
    try:
        out = subprocess.run([FREERADIUS_BIN, "-v"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"FreeRADIUS Version (\S+)", out)
    return match.group(1).rstrip(",") if match else None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _set(text: str, key: str, value: str) -> str:
    """Replace the first uncommented ``key = ...`` line of a FreeRADIUS config file."""
    pattern = re.compile(rf"^(\s*){re.escape(key)}\s*=.*$", re.MULTILINE)
    new, count = pattern.subn(lambda m: f"{m.group(1)}{key} = {value}", text, count=1)
    if count != 1:
        raise RuntimeError(f"radiusd.conf: no '{key} =' line to edit")
    return new


def _comment_out(text: str, key: str) -> str:
    """Comment out every uncommented ``key = ...`` line."""
    return re.sub(rf"^(\s*)({re.escape(key)}\s*=.*)$", r"\1# \2", text, flags=re.MULTILINE)


LDAP_MODULE = """\
# Written by the pushproxy benchmark: search as the service account, then
# PAP by binding as the user (no userPassword mapping: nothing is compared
# locally, slapd checks the password).
ldap {{
	server = '127.0.0.1'
	port = {port}
	identity = '{identity}'
	password = '{password}'
	base_dn = '{base_dn}'
	user_dn = "LDAP-UserDn"
	user {{
		base_dn = '{people_dn}'
		filter = "(&(objectClass=inetOrgPerson)(uid=%{{%{{Stripped-User-Name}}:-%{{User-Name}}}}))"
		scope = 'sub'
	}}
	group {{
		base_dn = '{groups_dn}'
		filter = '(objectClass=groupOfNames)'
		membership_attribute = 'memberOf'
		# memberOf is read with the user search, as pushproxy does
		cacheable_name = 'no'
		cacheable_dn = 'yes'
	}}
	options {{
		chase_referrals = no
		rebind = no
		res_timeout = 5
		srv_timelimit = 3
		net_timeout = 2
		idle = 60
		probes = 3
		interval = 3
		ldap_debug = 0x0000
	}}
	pool {{
		start = {connections}
		min = {connections}
		max = {max_connections}
		spare = {connections}
		uses = 0
		retry_delay = 30
		lifetime = 0
		idle_timeout = 0
	}}
}}
"""

SITE = """\
# Written by the pushproxy benchmark: the same checks pushproxy makes before
# its push (user found, in the required group, password right), nothing more.
server bench {{
	listen {{
		type = auth
		ipaddr = 127.0.0.1
		port = {port}
	}}
	authorize {{
		ldap
		if (!ok && !updated) {{
			reject
		}}
		if (!(LDAP-Group == '{group_dn}')) {{
			reject
		}}
		update control {{
			&Auth-Type := LDAP
		}}
	}}
	authenticate {{
		Auth-Type LDAP {{
			ldap
		}}
	}}
}}
"""

CLIENTS = """\
# Written by the pushproxy benchmark: the load generator on loopback.
client bench {{
	ipaddr = 127.0.0.1
	secret = {secret}
	require_message_authenticator = no
	shortname = bench
}}
"""


class PrivateFreeRadius:
    """A FreeRADIUS of our own: a copy of the system raddb in ``base_dir``, on a free port.

    Subclasses write their modules, site and clients in `configure_site`; this
    class copies and edits ``radiusd.conf`` (our folders, no reject delay, no
    proxying, run as the invoking user), starts ``freeradius -f`` and stops it.
    """

    def __init__(self, base_dir: Path, secret: str):
        self.base_dir = Path(base_dir)
        self.raddb = self.base_dir / "raddb"
        self.secret = secret
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def server_settings(self) -> dict[str, str]:
        """radiusd.conf settings beyond the common ones (threads, request limits)."""
        return {}

    def configure(self) -> None:
        """Copy the system raddb, edit radiusd.conf, empty the module and site folders."""
        if self.raddb.exists():
            shutil.rmtree(self.raddb)
        shutil.copytree(SYSTEM_RADDB, self.raddb, symlinks=True)
        for sub in ("log", "run"):
            (self.base_dir / sub).mkdir(exist_ok=True)
        conf = (self.raddb / "radiusd.conf").read_text()
        settings = {"raddbdir": str(self.raddb), "logdir": str(self.base_dir / "log"),
                    "run_dir": str(self.base_dir / "run"), "reject_delay": "0",
                    "proxy_requests": "no", **self.server_settings()}
        for key, value in settings.items():
            conf = _set(conf, key, value)
        conf = _comment_out(conf, "user")  # run as whoever starts it (the copy is ours)
        conf = _comment_out(conf, "group")
        (self.raddb / "radiusd.conf").write_text(conf)
        for folder in ("mods-enabled", "sites-enabled"):
            for entry in (self.raddb / folder).iterdir():
                entry.unlink()
        self.port = _free_udp_port()
        self.configure_site()

    def configure_site(self) -> None:
        """Write the modules, the virtual server on ``self.port`` and clients.conf."""
        raise NotImplementedError

    def check(self) -> None:
        """``freeradius -C``: the edited configuration parses and loads."""
        result = subprocess.run([FREERADIUS_BIN, "-C", "-d", str(self.raddb)],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError("freeradius -C failed:\n" + result.stdout[-3000:]
                               + result.stderr[-3000:])

    def start(self, timeout: float = 20.0):
        """Run it in the foreground (``-f``, multi-threaded) and wait until the port is bound."""
        if not self.port:
            self.configure()
        log = open(self.base_dir / "log" / "stdout.log", "ab")
        self.proc = subprocess.Popen([FREERADIUS_BIN, "-f", "-d", str(self.raddb)],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"freeradius exited ({self.proc.returncode}):\n"
                                   + self._tail("stdout.log") + self._tail("radius.log"))
            if _udp_bound(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"freeradius did not bind {self.address} in {timeout} s")

    def _tail(self, name: str, limit: int = 2000) -> str:
        path = self.base_dir / "log" / name
        return path.read_text(errors="replace")[-limit:] if path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class FreeRadius(PrivateFreeRadius):
    """The benchmark's FreeRADIUS: rlm_ldap against the bench slapd (module docstring)."""

    def __init__(self, base_dir: Path, slapd, secret: str, *, threads: int = 32,
                 max_threads: int = 64):
        super().__init__(base_dir, secret)
        self.slapd = slapd
        self.threads = threads
        self.max_threads = max_threads

    def server_settings(self) -> dict[str, str]:
        """Enough threads and requests for the load generator."""
        return {"max_requests": "65536", "start_servers": str(self.threads),
                "max_servers": str(self.max_threads),
                "min_spare_servers": str(self.threads),
                "max_spare_servers": str(self.max_threads)}

    def configure_site(self) -> None:
        """The ldap module, the bench site and the load generator as the client."""
        (self.raddb / "mods-enabled" / "ldap").write_text(LDAP_MODULE.format(
            port=self.slapd.port, identity=self.slapd.service_dn,
            password=self.slapd.service_password, base_dn=self.slapd.base_dn,
            people_dn=self.slapd.people_dn, groups_dn=self.slapd.groups_dn,
            connections=self.threads, max_connections=self.max_threads))
        (self.raddb / "mods-enabled" / "always").symlink_to("../mods-available/always")
        (self.raddb / "sites-enabled" / "bench").write_text(SITE.format(
            port=self.port, group_dn=self.slapd.group_dn("vpn-users")))
        (self.raddb / "clients.conf").write_text(CLIENTS.format(secret=self.secret))


def _udp_bound(port: int) -> bool:
    """Whether something holds UDP 127.0.0.1:port (binding it ourselves fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
