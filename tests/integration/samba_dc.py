"""A private, throw-away Samba Active Directory domain controller for integration tests.

:class:`SambaDC` provisions a domain with ``samba-tool domain provision`` in a
temporary folder (nothing under /etc or /var is written: the DC gets its own
smb.conf, private, state, lock, cache and pid directories), seeds it offline
with ``samba_seed.py`` (users, nested groups, account states), and runs
``samba -i -M single`` with only the LDAP server, bound to one dedicated
loopback address (Samba's LDAP ports are fixed: 389, 636, 3268 and 3269, so
each DC gets an address of its own, 127.x.y.z, instead of a port). LDAPS uses
a certificate from a test CA (:attr:`SambaDC.ca_file`) naming the address,
``dc1.corp.example`` and ``corp.example``.

Domain ``CORP.EXAMPLE`` (NetBIOS ``CORP``, base ``DC=corp,DC=example``), extra
UPN suffix ``alt.example``.  Users (in ``CN=Users``; passwords in :data:`USERS`):

==============  ======================  =====================================
sAMAccountName  UPN                     state
==============  ======================  =====================================
alice           alice@corp.example      member of vpn-team (3 levels: vpn-team
                                        in vpn-staff in vpn-users)
bob             bob@alt.example         member of vpn-users (alternate suffix)
carol           carol@corp.example      in no group (the non-member)
alicia          alice@alt.example       another account whose UPN's first part
                                        is alice's sAMAccountName
disabled        disabled@corp.example   ACCOUNTDISABLE (data 533)
pwexpired       pwexpired@corp.example  password set 400 days ago (data 532)
mustchange      mustchange@corp.example pwdLastSet=0 (data 773)
acctexpired     acctexpired@corp.example accountExpires in the past (data 701)
locked          locked@corp.example     locked out at start (data 775)
nohours         nohours@corp.example    no logon hours (data 530)
dora            dora@corp.example       primary group vpn-users (primaryGroupID
                                        its RID): in no group's ``member``
svc-pushproxy   svc-pushproxy@corp.example the proxy's search account
==============  ======================  =====================================

The domain-wide lockout threshold stays 0 (no lockout), so wrong passwords in
one test cannot lock another test's user; only ``locked`` has a PSO that locks
it after two wrong passwords.  Starting takes about 25-35 s on this machine
(provisioning is most of it): use the session-scoped ``samba_dc`` fixture.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SAMBA_BIN = "/usr/sbin/samba"
SAMBA_TOOL = "/usr/bin/samba-tool"
SYSTEM_PYTHON = "/usr/bin/python3"  # Samba's Python bindings live in the system Python
SEED_SCRIPT = Path(__file__).with_name("samba_seed.py")

REALM = "CORP.EXAMPLE"
NETBIOS = "CORP"
DNS_DOMAIN = "corp.example"
ALT_SUFFIX = "alt.example"
BASE_DN = "DC=corp,DC=example"
USERS_DN = f"CN=Users,{BASE_DN}"
HOST_NAME = "dc1"
DC_DNS_NAME = f"{HOST_NAME}.{DNS_DOMAIN}"
ADMIN_PASSWORD = "Admin-Pass-1!"
SERVICE_ACCOUNT = "svc-pushproxy"
LDAP_PORTS = (389, 636, 3268, 3269)


@dataclass(frozen=True)
class AdUser:
    """One seeded account: its sAMAccountName, password, UPN and state flags."""

    name: str
    password: str
    upn: str
    disabled: bool = False
    must_change: bool = False
    password_expired: bool = False
    account_expired: bool = False
    no_logon_hours: bool = False
    lockout_after: int = 0  # a PSO locks the account after this many wrong passwords
    primary_group: str | None = None  # primaryGroupID: this group's RID (AD hides it in member)

    def spec(self) -> dict:
        """The seed script's JSON form of this user."""
        out = {"name": self.name, "password": self.password, "upn": self.upn,
               "given_name": self.name.capitalize()}
        for flag in ("disabled", "must_change", "password_expired", "account_expired",
                     "no_logon_hours", "lockout_after", "primary_group"):
            if getattr(self, flag):
                out[flag] = getattr(self, flag)
        return out


USERS: dict[str, AdUser] = {u.name: u for u in (
    AdUser("alice", "Tea-Party-41", f"alice@{DNS_DOMAIN}"),
    AdUser("bob", "Can-We-Fix-42", f"bob@{ALT_SUFFIX}"),
    AdUser("carol", "Xmas-Song-43", f"carol@{DNS_DOMAIN}"),
    AdUser("alicia", "Other-One-44", f"alice@{ALT_SUFFIX}"),
    AdUser("disabled", "Turned-Off-45", f"disabled@{DNS_DOMAIN}", disabled=True),
    AdUser("pwexpired", "Too-Old-46", f"pwexpired@{DNS_DOMAIN}", password_expired=True),
    AdUser("mustchange", "First-Day-47", f"mustchange@{DNS_DOMAIN}", must_change=True),
    AdUser("acctexpired", "Contract-Over-48", f"acctexpired@{DNS_DOMAIN}",
           account_expired=True),
    AdUser("locked", "Shut-Out-49", f"locked@{DNS_DOMAIN}", lockout_after=2),
    AdUser("nohours", "Night-Shift-50", f"nohours@{DNS_DOMAIN}", no_logon_hours=True),
    AdUser("dora", "Main-Group-52", f"dora@{DNS_DOMAIN}", primary_group="vpn-users"),
    AdUser(SERVICE_ACCOUNT, "Svc-Search-51", f"{SERVICE_ACCOUNT}@{DNS_DOMAIN}"),
)}

# Outermost first: alice is a member of vpn-users only through two nested groups.
GROUPS: tuple[dict, ...] = (
    {"name": "vpn-users", "users": ["bob"], "groups": ["vpn-staff"]},
    {"name": "vpn-staff", "groups": ["vpn-team"]},
    {"name": "vpn-team", "users": ["alice"]},
)


def samba_unavailable() -> str | None:
    """Why a Samba AD DC cannot run here (None: it can)."""
    for path, package in ((SAMBA_BIN, "samba"), (SAMBA_TOOL, "samba"),
                          (SYSTEM_PYTHON, "python3")):
        if not os.access(path, os.X_OK):
            return f"{path} missing (apt-get install samba samba-ad-provision)"
    if os.geteuid() != 0:
        return "a Samba AD DC runs as root only"
    return None


class SambaError(RuntimeError):
    """The DC could not be provisioned, seeded or started."""


def _ports_free(address: str) -> bool:
    """True if the DC's four LDAP ports can be bound on *address* right now."""
    for port in LDAP_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def pick_address() -> str:
    """A loopback address 127.x.y.z (not 127.0.0.1) whose LDAP ports are free."""
    rng = random.Random()
    for _ in range(50):
        address = f"127.{rng.randint(100, 250)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        if _ports_free(address):
            return address
    raise SambaError("no loopback address with free LDAP ports 389/636/3268/3269")


class SambaDC:
    """A provisioned Samba AD DC in *base_dir*, serving LDAP(S) on its own loopback address."""

    def __init__(self, base_dir: Path, *, address: str | None = None,
                 start_timeout: float = 60.0):
        self.base_dir = Path(base_dir)
        self.directory = self.base_dir / "dc"
        self.address = address or pick_address()
        self.start_timeout = start_timeout
        self.users = dict(USERS)
        self.groups = GROUPS
        self._proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    # ----------------------------------------------------------------- names
    @property
    def smb_conf(self) -> Path:
        """This DC's own smb.conf (pass it to samba-tool with ``-s``)."""
        return self.directory / "etc" / "smb.conf"

    @property
    def ca_file(self) -> str:
        """The PEM file of the test CA that signed the DC's LDAPS certificate."""
        return str(self.base_dir / "tls" / "ca.pem")

    @property
    def ldaps_url(self) -> str:
        """``ldaps://<address>`` (port 636)."""
        return f"ldaps://{self.address}"

    @property
    def ldap_url(self) -> str:
        """``ldap://<address>`` (port 389: simple binds need StartTLS there)."""
        return f"ldap://{self.address}"

    @property
    def gc_ldaps_url(self) -> str:
        """The Global Catalog over TLS, ``ldaps://<address>:3269``."""
        return f"ldaps://{self.address}:3269"

    @property
    def service_dn(self) -> str:
        """The DN of the proxy's search account."""
        return self.user_dn(SERVICE_ACCOUNT)

    @property
    def service_password(self) -> str:
        """The search account's password."""
        return self.users[SERVICE_ACCOUNT].password

    @property
    def log_file(self) -> Path:
        """Samba's log file."""
        return self.directory / "log" / "samba.log"

    def user_dn(self, name: str) -> str:
        """The DN of the seeded user *name* (``CN=<name>,CN=Users,DC=corp,DC=example``)."""
        return f"CN={name},{USERS_DN}"

    def group_dn(self, name: str) -> str:
        """The DN of the seeded group *name*."""
        return f"CN={name},{USERS_DN}"

    def password(self, name: str) -> str:
        """The password of the seeded user *name*."""
        return self.users[name].password

    @property
    def running(self) -> bool:
        """True while the samba process runs."""
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "SambaDC":
        """Provision, seed, start and wait (bounded) until LDAPS answers; lock ``locked``."""
        if self.running:
            return self
        problem = samba_unavailable()
        if problem:
            raise SambaError(problem)
        began = time.monotonic()
        self._provision()
        self._write_tls()
        self._write_conf()
        self._seed()
        self._spawn_and_wait()
        self._lock_out("locked")
        self.startup_seconds = time.monotonic() - began
        return self

    def _run(self, argv: list[str], what: str, timeout: float = 120.0) -> None:
        """Run one setup command; a failure raises with its output."""
        env = dict(os.environ, PYTHONPATH="", PYTHONNOUSERSITE="1")
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            raise SambaError(f"{what} did not finish in {timeout}s") from exc
        if done.returncode != 0:
            raise SambaError(f"{what} failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    def _provision(self) -> None:
        """``samba-tool domain provision`` into :attr:`directory` (an empty smb.conf template)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        (self.directory / "etc").mkdir(parents=True)
        template = self.base_dir / "provision.conf"  # keeps /etc/samba/smb.conf out of it
        template.write_text("[global]\n")
        self._run([SYSTEM_PYTHON, SAMBA_TOOL, "domain", "provision", "-s", str(template),
                   f"--targetdir={self.directory}", f"--realm={REALM}",
                   f"--domain={NETBIOS}", "--server-role=dc", "--dns-backend=NONE",
                   f"--host-name={HOST_NAME}", f"--adminpass={ADMIN_PASSWORD}",
                   f"--option=interfaces={self.address}/8",
                   "--option=bind interfaces only=yes"], "samba-tool domain provision")

    def _write_tls(self) -> None:
        """A test CA and the DC's certificate (address, dc1.corp.example, corp.example)."""
        try:
            from tests.radsec_pki import TestCA
        except ImportError:  # rootdir-relative import mode
            from radsec_pki import TestCA
        tls = self.base_dir / "tls"
        tls.mkdir(exist_ok=True)
        ca = TestCA(tls, "AD Test CA")
        os.replace(ca.path, self.ca_file)
        ca.issue("dc", cn=DC_DNS_NAME, dns=[DC_DNS_NAME, DNS_DOMAIN], ips=[self.address],
                 server=True)

    def _write_conf(self) -> None:
        """Replace the provisioned smb.conf by a minimal one: LDAP only, own dirs, TLS."""
        d, tls = self.directory, self.base_dir / "tls"
        for sub in ("run", "log"):
            (d / sub).mkdir(exist_ok=True)
        self.smb_conf.write_text(f"""[global]
\tnetbios name = {HOST_NAME.upper()}
\trealm = {REALM}
\tworkgroup = {NETBIOS}
\tserver role = active directory domain controller
\tserver services = ldap
\tinterfaces = {self.address}/8
\tbind interfaces only = yes
\tprivate dir = {d}/private
\tlock directory = {d}
\tstate directory = {d}/state
\tcache directory = {d}/cache
\tpid directory = {d}/run
\tncalrpc dir = {d}/run/ncalrpc
\tbinddns dir = {d}/bind-dns
\twinbindd socket directory = {d}/run/winbindd
\tlog file = {self.log_file}
\tlogging = file
\tlog level = 1
\ttls enabled = yes
\ttls keyfile = {tls}/dc.key
\ttls certfile = {tls}/dc.pem
\ttls cafile = {self.ca_file}
""")

    def _seed(self) -> None:
        """Write users, groups and states into sam.ldb with ``samba_seed.py``."""
        spec = {"upn_suffixes": [ALT_SUFFIX],
                "users": [user.spec() for user in self.users.values()],
                "groups": list(self.groups)}
        spec_file = self.base_dir / "seed.json"
        spec_file.write_text(json.dumps(spec, indent=1))
        self._run([SYSTEM_PYTHON, str(SEED_SCRIPT), str(self.smb_conf), str(spec_file)],
                  "samba_seed.py")

    def _spawn_and_wait(self) -> None:
        """Start ``samba -i -M single``; wait until the service account binds over LDAPS."""
        out = open(self.directory / "log" / "stdout", "ab")
        try:
            self._proc = subprocess.Popen(
                [SAMBA_BIN, "-i", "-M", "single", "-s", str(self.smb_conf)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        finally:
            out.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                problem = f"samba exited with status {self._proc.returncode}"
            elif self.bind(self.service_dn, self.service_password).ok:
                return
            elif time.monotonic() > deadline:
                problem = f"samba did not answer LDAPS within {self.start_timeout}s"
            else:
                time.sleep(0.2)
                continue
            tail = self._log_tail()
            self.stop()
            raise SambaError(f"{problem}; {self.log_file}:\n{tail}")

    def _lock_out(self, name: str) -> None:
        """Wrong passwords until *name*'s PSO locks it (the DC answers data 775)."""
        for _ in range(self.users[name].lockout_after + 1):
            if self.bind(self.users[name].upn, "Wrong-Password-0").diagnostic_code == "775":
                return
        raise SambaError(f"{name} was not locked out: {self.bind(name, 'x')}")

    def _log_tail(self, limit: int = 4000) -> str:
        """The end of Samba's log and stdout, for a start failure's message."""
        parts = []
        for path in (self.log_file, self.directory / "log" / "stdout"):
            try:
                parts.append(path.read_text(errors="replace")[-limit:])
            except OSError as exc:
                parts.append(f"<cannot read {path}: {exc}>")
        return "\n".join(parts)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop samba and its children: SIGTERM to its process group, then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
        try:  # children that outlived the parent
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cleanup(self) -> None:
        """Stop the DC and delete its database (logs and certificates stay for post-mortems)."""
        self.stop()
        shutil.rmtree(self.directory / "private", ignore_errors=True)
        shutil.rmtree(self.directory / "state", ignore_errors=True)

    def __enter__(self) -> "SambaDC":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # --------------------------------------------------------------- probes
    def bind(self, who: str, password: str, *, url: str | None = None) -> "BindResult":
        """One simple bind over LDAPS (CA verified) as *who* (DN, UPN or DOMAIN\\user)."""
        import ssl

        import ldap3

        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=self.ca_file)
        server = ldap3.Server(url or self.ldaps_url, use_ssl=True, tls=tls,
                              connect_timeout=2, get_info=ldap3.NONE)
        conn = ldap3.Connection(server, who, password, receive_timeout=5)
        try:
            ok = bool(conn.bind())
        except ldap3.core.exceptions.LDAPException as exc:
            return BindResult(False, -1, str(exc))
        result = conn.result or {}
        conn.unbind()
        return BindResult(ok, int(result.get("result", -1)), str(result.get("message", "")))


@dataclass(frozen=True)
class BindResult:
    """The outcome of :meth:`SambaDC.bind`: result code and AD's diagnostic message."""

    ok: bool
    code: int
    message: str

    @property
    def diagnostic_code(self) -> str | None:
        """AD's ``data NNN`` sub-code (``52e``, ``775``, ...) or None."""
        marker = ", data "
        at = self.message.find(marker)
        if at < 0:
            return None
        return self.message[at + len(marker):].split(",")[0].strip()
