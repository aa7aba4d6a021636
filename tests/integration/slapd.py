"""A private, throw-away OpenLDAP ``slapd`` for integration tests.

:class:`Slapd` builds a temporary directory with an old-style ``slapd.conf``,
a freshly generated CA and server certificate, and an ``mdb`` database seeded
with ``slapadd``; it then runs ``slapd`` in the foreground on two free
loopback ports (plain LDAP with StartTLS, and LDAPS).

Directory layout (``dc=example,dc=com``)::

    ou=people     alice, bob, carol, dave, o'brien(x), plus any extra users
    ou=groups     vpn-users   (groupOfNames: alice, bob, o'brien(x))
                  admins      (groupOfNames: dave)
                  nested-outer (groupOfNames: cn=admins,ou=groups,...)
    ou=services   svc-pushproxy (service account, password "svc-secret")

carol is in no group.  The ``memberof`` overlay is loaded so that changes made
over LDAP keep ``memberOf`` up to date.  ``slapadd`` bypasses overlays, so the
seed LDIF carries precomputed ``memberOf`` values that mirror what the overlay
would produce: direct memberships only (dave is ``memberOf`` admins, the admins
group entry is ``memberOf`` nested-outer; dave is *not* ``memberOf``
nested-outer).

ACLs: ``userPassword`` may only be used to authenticate (anonymous ``auth``);
nobody but the rootdn can read it.  Every other attribute is readable by the
service account and by any authenticated user; anonymous users can read
nothing unless ``anonymous_read=True``.
"""

from __future__ import annotations

import atexit
import base64
import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

SLAPD_BIN = "/usr/sbin/slapd"
SLAPADD_BIN = "/usr/sbin/slapadd"
SCHEMA_DIR = "/etc/ldap/schema"
MODULE_DIR = "/usr/lib/ldap"

BASE_DN = "dc=example,dc=com"
DEFAULT_USERS: dict[str, str] = {
    "alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw",
    "o'brien(x)": "ob-pw",
}
_DISPLAY_NAMES = {"o'brien(x)": ("O'Brien (X)", "O'Brien")}
_START_ATTEMPTS = 3  # retries when a chosen port was taken in the meantime


def slapd_available() -> bool:
    """Return True when the slapd and slapadd binaries are installed."""
    return os.access(SLAPD_BIN, os.X_OK) and os.access(SLAPADD_BIN, os.X_OK)


def ssha(password: str) -> str:
    """Return an RFC 2307 ``{SSHA}`` hash of *password* (random 8-byte salt)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def escape_rdn_value(value: str) -> str:
    """Escape *value* for use as an RDN attribute value (RFC 4514)."""
    out = re.sub(r'([\\,+"<>;=])', r"\\\1", value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def _ldif_line(attr: str, value: str) -> str:
    """Format one LDIF line, base64-encoding values that are not SAFE-STRINGs."""
    if value.isascii() and value.isprintable() and value.strip() == value \
            and not value.startswith((":", "<")):
        return f"{attr}: {value}"
    return f"{attr}:: {base64.b64encode(value.encode('utf-8')).decode('ascii')}"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on *host* that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _write_tls_material(directory: Path) -> None:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (EC P-256) to *directory*.

    The server certificate is signed by the CA and names DNS:localhost and
    IP:127.0.0.1; both are valid from an hour ago for 30 days.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, issuer: str, key, signer, extensions) -> x509.Certificate:
        """Build a certificate for *key*, signed by *signer*."""
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    # KeyUsage on both: Python 3.13's default context verifies with
    # VERIFY_X509_STRICT, which refuses a CA without keyCertSign.
    ca_cert = cert("pushproxy test CA", "pushproxy test CA", ca_key, ca_key, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False),
        (x509.KeyUsage(digital_signature=False, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                       key_cert_sign=True, crl_sign=True, encipher_only=False,
                       decipher_only=False), True),
    ])
    server_cert = cert("localhost", "pushproxy test CA", key, ca_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        (x509.KeyUsage(digital_signature=True, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=True,
                       key_cert_sign=False, crl_sign=False, encipher_only=False,
                       decipher_only=False), True),
    ])
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (directory / "server.pem").write_bytes(server_cert.public_bytes(pem))
    key_path = directory / "server.key"
    key_path.write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)


class SlapdError(RuntimeError):
    """slapd (or slapadd) failed; the message includes its output."""


class Slapd:
    """A private slapd on 127.0.0.1 with seeded users, groups and a service account.

    :param extra_users: additional ``(uid, password)`` pairs added under
        ``ou=people`` (e.g. thousands of users for benchmarks).
    :param extra_users_groups: cns of seeded groups (e.g. ``["vpn-users"]``)
        that the extra users become members of.
    :param loglevel: slapd debug level passed as ``-d`` (slapd always runs in
        the foreground); the output goes to :attr:`log_file`.  The default
        ``"none"`` logs only uncategorised/critical messages (e.g. a failed
        listener bind), ``"stats"`` logs every operation, ``"0"`` nothing.
        The ``loglevel`` (syslog) line in ``slapd.conf`` is always ``0``.
    :param anonymous_read: let anonymous clients read entries (never
        ``userPassword``).
    :param base_dir: parent directory for the private state directory
        (default: the system temp directory).
    :param start_timeout: seconds :meth:`start` waits for slapd to answer.

    Use as a context manager (``with Slapd() as ldap: ...``) or call
    :meth:`start` / :meth:`stop` / :meth:`cleanup`.  A running slapd is also
    stopped at interpreter exit.
    """

    root_dn = f"cn=admin,{BASE_DN}"
    base_dn = BASE_DN
    people_dn = f"ou=people,{BASE_DN}"
    groups_dn = f"ou=groups,{BASE_DN}"
    service_dn = f"cn=svc-pushproxy,ou=services,{BASE_DN}"
    service_password = "svc-secret"

    def __init__(
        self,
        extra_users: Iterable[tuple[str, str]] = (),
        *,
        extra_users_groups: Sequence[str] = (),
        loglevel: str = "none",
        anonymous_read: bool = False,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        #: rootdn password; random per instance so the readiness probe can tell
        #: this slapd from another one that grabbed the same port.
        self.root_password = "admin-" + secrets.token_hex(8)
        extra = dict(extra_users)
        if set(extra) & set(DEFAULT_USERS):
            raise ValueError(f"extra_users clash with seeded uids {set(extra) & set(DEFAULT_USERS)}")
        self._users = {**DEFAULT_USERS, **extra}
        self._extra_uids = list(extra)
        self._extra_groups = list(extra_users_groups)
        self.loglevel = str(loglevel)
        self.anonymous_read = anonymous_read
        self.start_timeout = start_timeout
        self.directory = Path(tempfile.mkdtemp(prefix="pushproxy-slapd-", dir=base_dir))
        self._owns_tmp = base_dir is None
        self.port = self.ldaps_port = 0  # chosen by the first start()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle = None
        self._log_offset = 0
        self._prepared = False
        atexit.register(self._at_exit)

    # ------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        """Plain LDAP URL, ``ldap://127.0.0.1:PORT``."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def starttls_url(self) -> str:
        """Plain-port URL by host name (matches the certificate) for StartTLS."""
        return f"ldap://localhost:{self.port}"

    @property
    def ldaps_url(self) -> str:
        """LDAP-over-TLS URL, ``ldaps://localhost:PORT2``."""
        return f"ldaps://localhost:{self.ldaps_port}"

    @property
    def ca_file(self) -> str:
        """Path of the PEM CA certificate that signed the server certificate."""
        return str(self.directory / "ca.pem")

    @property
    def log_file(self) -> Path:
        """File receiving slapd's stderr (debug/stats log)."""
        return self.directory / "slapd.log"

    @property
    def users(self) -> dict[str, str]:
        """All seeded users as ``{uid: password}`` (a copy)."""
        return dict(self._users)

    @property
    def running(self) -> bool:
        """True while the slapd process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the running slapd, or None."""
        return self._proc.pid if self.running else None

    def user_dn(self, uid: str) -> str:
        """Return the DN of the user with *uid* (RDN-escaped)."""
        return f"uid={escape_rdn_value(uid)},{self.people_dn}"

    def group_dn(self, cn: str) -> str:
        """Return the DN of the group with *cn*."""
        return f"cn={escape_rdn_value(cn)},{self.groups_dn}"

    # ------------------------------------------------------------ setup
    def build_ldif(self) -> str:
        """Return the seed LDIF (entries in parent-before-child order)."""
        groups = {
            "vpn-users": [self.user_dn(u) for u in ("alice", "bob", "o'brien(x)")],
            "admins": [self.user_dn("dave")],
            "nested-outer": [self.group_dn("admins")],
        }
        for cn in self._extra_groups:
            if cn not in groups:
                raise ValueError(f"unknown group {cn!r} in extra_users_groups")
            groups[cn].extend(self.user_dn(u) for u in self._extra_uids)
        member_of: dict[str, list[str]] = {}
        for cn, members in groups.items():
            for dn in members:
                member_of.setdefault(dn.lower(), []).append(self.group_dn(cn))
        entries: list[list[tuple[str, str]]] = [
            [("dn", BASE_DN), ("objectClass", "top"), ("objectClass", "dcObject"),
             ("objectClass", "organization"), ("dc", "example"), ("o", "Example")],
        ]
        for ou in ("people", "groups", "services"):
            entries.append([("dn", f"ou={ou},{BASE_DN}"),
                            ("objectClass", "organizationalUnit"), ("ou", ou)])
        entries.append([("dn", self.service_dn), ("objectClass", "applicationProcess"),
                        ("objectClass", "simpleSecurityObject"), ("cn", "svc-pushproxy"),
                        ("userPassword", ssha(self.service_password))])
        for uid, password in self._users.items():
            cn, sn = _DISPLAY_NAMES.get(uid, (uid.capitalize(), uid.capitalize()))
            dn = self.user_dn(uid)
            entry = [("dn", dn), ("objectClass", "inetOrgPerson"), ("uid", uid),
                     ("cn", cn), ("sn", sn),
                     ("mail", f"{re.sub(r'[^a-z0-9.-]', '', uid.lower())}@example.com"),
                     ("userPassword", ssha(password))]
            entry += [("memberOf", g) for g in member_of.get(dn.lower(), [])]
            entries.append(entry)
        for cn, members in groups.items():
            dn = self.group_dn(cn)
            entry = [("dn", dn), ("objectClass", "groupOfNames"), ("cn", cn)]
            entry += [("member", m) for m in members]
            entry += [("memberOf", g) for g in member_of.get(dn.lower(), [])]
            entries.append(entry)
        return "\n".join("\n".join(_ldif_line(a, v) for a, v in e) + "\n" for e in entries)

    def _config(self) -> str:
        d = self.directory
        schemas = "\n".join(
            f"include {SCHEMA_DIR}/{name}.schema"
            for name in ("core", "cosine", "nis", "inetorgperson")
        )
        anon = "    by anonymous read\n" if self.anonymous_read else ""
        return f"""\
{schemas}
pidfile {d}/run/slapd.pid
argsfile {d}/run/slapd.args
modulepath {MODULE_DIR}
moduleload back_mdb
moduleload memberof
loglevel 0
TLSCACertificateFile {d}/ca.pem
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key

database mdb
maxsize 1073741824
suffix "{BASE_DN}"
rootdn "{self.root_dn}"
rootpw {ssha(self.root_password)}
directory {d}/db
index objectClass eq
index uid,cn,member eq

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE

access to attrs=userPassword
    by anonymous auth
    by * none
access to *
    by dn.exact="{self.service_dn}" read
    by self read
    by users read
{anon}    by * none
"""

    def _prepare(self) -> None:
        """Write config and certificates and load the seed LDIF (once)."""
        if self._prepared:
            return
        d = self.directory
        (d / "db").mkdir(exist_ok=True)
        (d / "run").mkdir(exist_ok=True)
        _write_tls_material(d)
        (d / "slapd.conf").write_text(self._config())
        (d / "seed.ldif").write_text(self.build_ldif(), encoding="utf-8")
        result = subprocess.run(
            [SLAPADD_BIN, "-q", "-f", str(d / "slapd.conf"), "-l", str(d / "seed.ldif")],
            capture_output=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise SlapdError(f"slapadd failed ({result.returncode}):\n{output}")
        self._prepared = True

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "Slapd":
        """Start slapd and wait (bounded) until it answers an LDAP bind."""
        if self.running:
            return self
        if not slapd_available():
            raise SlapdError(f"{SLAPD_BIN} / {SLAPADD_BIN} not installed")
        self._prepare()
        fixed_ports = bool(self.port)
        last_error: Exception | None = None
        for _ in range(_START_ATTEMPTS):
            if not fixed_ports:
                self.port, self.ldaps_port = free_port(), free_port()
            try:
                self._spawn_and_wait()
                return self
            except SlapdError as exc:
                last_error = exc
                self.stop()
                if fixed_ports or "Address already in use" not in str(exc):
                    break
        assert last_error is not None
        raise last_error

    def _spawn_and_wait(self) -> None:
        urls = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        self._log_handle = open(self.log_file, "ab")
        self._log_offset = self._log_handle.tell()
        self._proc = subprocess.Popen(
            [SLAPD_BIN, "-d", self.loglevel, "-f", str(self.directory / "slapd.conf"), "-h", urls],
            stdin=subprocess.DEVNULL, stdout=self._log_handle, stderr=self._log_handle,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                problem = f"slapd exited with status {self._proc.returncode}"
            elif self._answers():
                return
            elif time.monotonic() > deadline:
                problem = f"slapd did not answer within {self.start_timeout}s"
            else:
                time.sleep(0.02)
                continue
            raise SlapdError(f"{problem}; {self.log_file}:\n{self._log_tail()}")

    def _answers(self) -> bool:
        """True if the plain port answers a rootdn bind with this instance's password.

        The per-instance password proves the answer comes from *our* slapd,
        not from another server on a reused port.  slapd binds all listeners
        before it serves any, so the LDAPS port is up as well.  The probe
        appears in the stats log as a ``BIND`` of :attr:`root_dn`.
        """
        import ldap3

        try:
            server = ldap3.Server(self.url, connect_timeout=1, get_info=ldap3.NONE)
            conn = ldap3.Connection(server, self.root_dn, self.root_password, receive_timeout=2)
            ok = conn.bind()
            conn.unbind()
            return bool(ok)
        except ldap3.core.exceptions.LDAPException:
            return False

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(self._log_offset)
                data = fh.read()
        except OSError as exc:
            return f"<cannot read {self.log_file}: {exc}>"
        return data[-limit:].decode(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop slapd: SIGTERM, then SIGKILL if it has not exited in *timeout* s."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def restart(self) -> "Slapd":
        """Stop and start again on the same ports, keeping the database."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop slapd and delete its state directory."""
        self.stop()
        atexit.unregister(self._at_exit)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _at_exit(self) -> None:
        """Interpreter exit: stop slapd; drop the directory if it is ours in /tmp."""
        self.stop()
        if self._owns_tmp:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "Slapd":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------ log helpers
    def bind_count(self, dn: str | None = None) -> int:
        """Count BIND requests in the stats log (needs ``loglevel="stats"``).

        Counts every ``BIND dn="..." method=`` line, i.e. one per bind request
        regardless of outcome; restrict to one (case-insensitive) *dn* if given.
        Without *dn* the readiness probes of :meth:`start` (rootdn binds) are
        included.
        """
        if self.loglevel in ("0", "none"):
            raise SlapdError('bind_count() needs Slapd(loglevel="stats")')
        found = re.findall(r' BIND dn="([^"]*)" method=',
                           self.log_file.read_text(encoding="utf-8", errors="replace"))
        return sum(1 for d in found if dn is None or d.lower() == dn.lower())
