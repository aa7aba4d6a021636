"""``pushproxy test-connection``: check, step by step, everything the daemon talks to.

Each LDAP server is checked in order, one line per step -- DNS, TCP, StartTLS,
TLS, certificate, host name, service bind, searches -- with OK/WARN/FAIL, the
time it took and, when it fails, what usually causes that failure. A failing
step skips the steps that need it; the next server is still checked. Then the
approval store (read only: never created or migrated from here), the public
URL of the approval API, and the RADIUS timeout each gateway needs.

The TLS and bind steps connect the way the daemon does (`pushproxy.ldapauth`):
certificates always verified, against ``ldap.ca_file`` or else the system
store, the host name checked by ldap3, no SNI. So a pass here means the daemon
can connect too, and a failure names the step that would break its logins.

Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed,
2 when the configuration does not load.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import ipaddress
import os
import socket
import sqlite3
import ssl
import stat
import sys
import time
import warnings
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import ldap3
import requests
from cryptography import x509
from ldap3.core import exceptions as lexc

from pushproxy.config import Config, GroupMode, LdapConfig, LdapServer, load_config_or_report
from pushproxy.ldapauth import group_query, normalize_dn, user_filter

DEFAULT_CONFIG = "/etc/pushproxy/config.yaml"
EXPIRY_WARNING_DAYS = 30
HTTP_TIMEOUT = 5.0

# The StartTLS extended request (RFC 4511 4.14.1), message id 1, BER-encoded by
# hand: the raw exchange lets the TLS step report the handshake and the
# certificate separately, which ldap3's start_tls() folds into one error.
_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
_STARTTLS_REQUEST = (b"\x30" + bytes([5 + 2 + len(_STARTTLS_OID)]) + b"\x02\x01\x01"
                     + b"\x77" + bytes([2 + len(_STARTTLS_OID)])
                     + b"\x80" + bytes([len(_STARTTLS_OID)]) + _STARTTLS_OID)

# LDAP result codes an administrator meets when a bind or search fails (RFC 4511 A.1).
_RESULT_NAMES = {
    0: "success", 1: "operationsError", 2: "protocolError", 3: "timeLimitExceeded",
    4: "sizeLimitExceeded", 7: "authMethodNotSupported", 8: "strongerAuthRequired",
    10: "referral", 13: "confidentialityRequired", 32: "noSuchObject",
    34: "invalidDNSyntax", 48: "inappropriateAuthentication", 49: "invalidCredentials",
    50: "insufficientAccessRights", 51: "busy", 52: "unavailable", 53: "unwillingToPerform",
    80: "other",
}

# Active Directory puts a "data NNN" sub-code in the message of a failed bind;
# it is the only place that says *why* (wrong password vs. locked vs. expired).
_AD_BIND_CODES = {
    "525": "the account does not exist (check ldap.bind_dn)",
    "52e": "wrong password (check the bind password file / variable)",
    "530": "the account may not log on at this time",
    "531": "the account may not log on from this host",
    "532": "the account's password has expired",
    "533": "the account is disabled",
    "701": "the account has expired",
    "773": "the account must change its password first",
    "775": "the account is locked out",
}


class Report:
    """Prints one line per step and remembers the failures for the summary and exit code."""

    def __init__(self, out: TextIO):
        self.out = out
        self.failures: list[str] = []
        self.warnings = 0

    def section(self, title: str) -> None:
        """Start a block of steps (one LDAP server, the store, ...)."""
        print(f"\n{title}", file=self.out, flush=True)

    def step(self, status: str, name: str, message: str, ms: float | None = None,
             where: str = "") -> None:
        """One step's verdict: status OK, WARN, FAIL, SKIP or INFO; FAILs count."""
        timing = "" if ms is None else f" ({ms:.0f} ms)"
        print(f"  {status:<4}  {name:<11} {message}{timing}", file=self.out, flush=True)
        if status == "FAIL":
            self.failures.append(f"{where}: {name}: {message}" if where else f"{name}: {message}")
        elif status == "WARN":
            self.warnings += 1

    def detail(self, text: str) -> None:
        """A supporting line under the previous step (what the server presented, ...)."""
        print(f"{'':19}{text}", file=self.out, flush=True)

    def skip(self, names: list[str], because: str) -> None:
        """The steps that cannot run because ``because`` failed."""
        if names:
            self.step("SKIP", ", ".join(names), f"(skipped: {because} failed)")


def _since(started: float) -> float:
    """Milliseconds since ``started`` (a perf_counter reading)."""
    return (time.perf_counter() - started) * 1000


# ---------------------------------------------------------------- LDAP steps


def _resolve(host: str, port: int) -> tuple[list[tuple], str]:
    """The addresses to try for host:port, and a description; raises socket.gaierror."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen, addrs = set(), []
    for family, _, _, _, sockaddr in infos:
        if sockaddr[:2] not in seen:
            seen.add(sockaddr[:2])
            addrs.append((family, sockaddr))
    shown = ", ".join(a[1][0] for a in addrs)
    return addrs, shown


def _dns_problem(host: str, exc: socket.gaierror) -> str:
    """Why a name does not resolve, in the words an administrator needs."""
    code = exc.args[0] if exc.args else None
    if code == socket.EAI_NONAME:
        return (f"{host} does not resolve (no such name): check the spelling in ldap.servers "
                "and this host's DNS servers (/etc/resolv.conf)")
    if code == socket.EAI_AGAIN:
        return ("temporary DNS failure: the DNS server did not answer; check /etc/resolv.conf "
                "and that the DNS server is reachable from here")
    if code == getattr(socket, "EAI_NODATA", object()):
        return f"{host} exists in DNS but has no address (A/AAAA) record"
    return f"{host} does not resolve: {exc}"


def _address(sockaddr: tuple) -> str:
    """host:port, with IPv6 addresses in brackets."""
    host, port = sockaddr[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect_problem(exc: OSError, timeout: float) -> str:
    """Tell refused, timed out and unreachable apart: each points at a different culprit."""
    if isinstance(exc, ConnectionRefusedError):
        return ("connection refused: nothing listens on that port (server down, wrong port) "
                "or a firewall rejects the connection")
    if isinstance(exc, TimeoutError):
        return (f"no answer within {timeout:g} s (ldap.connect_timeout): a firewall silently "
                "drops the packets, or the host is down")
    if exc.errno == errno.ENETUNREACH:
        return ("network unreachable: this host has no route to that address (routing, VPN, "
                "or IPv6 without a route)")
    if exc.errno == errno.EHOSTUNREACH:
        return ("host unreachable: nothing answers at that address (host down, or a firewall "
                "rejects with ICMP host-unreachable)")
    return exc.strerror or str(exc)


def _tcp_connect(addrs: list[tuple], timeout: float) -> tuple[socket.socket | None, list[str]]:
    """Connect to the first address that accepts, as ldap3 tries them in order."""
    problems = []
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            return sock, problems
        except OSError as exc:
            sock.close()
            problems.append(f"{_address(sockaddr)}: {_connect_problem(exc, timeout)}")
    return None, problems


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes, or EOFError when the server closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the server closed the connection")
        data += chunk
    return data


def _ber_length(sock: socket.socket) -> int:
    """Read a BER length (short or long form) from the socket."""
    first = _recv_exact(sock, 1)[0]
    if first < 0x80:
        return first
    count = first & 0x7F
    if not 1 <= count <= 4:
        raise ValueError("not an LDAP message")
    return int.from_bytes(_recv_exact(sock, count), "big")


def _ber_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, value) elements at one level of a BER encoding."""
    items, i = [], 0
    while i < len(data):
        tag, length = data[i], data[i + 1]
        i += 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[i:i + count], "big")
            i += count
        items.append((tag, data[i:i + length]))
        i += length
    return items


def _start_tls(sock: socket.socket) -> tuple[int, str]:
    """Ask for StartTLS on a plain connection; (LDAP result code, server's message)."""
    sock.sendall(_STARTTLS_REQUEST)
    if _recv_exact(sock, 1) != b"\x30":
        raise ValueError("the answer is not an LDAP message")
    body = _recv_exact(sock, _ber_length(sock))
    for tag, value in _ber_items(body):
        if tag == 0x78:  # [APPLICATION 24] ExtendedResponse
            parts = _ber_items(value)
            code = int.from_bytes(parts[0][1], "big") if parts and parts[0][0] == 0x0A else 80
            message = parts[2][1].decode("utf-8", "replace") if len(parts) > 2 else ""
            return code, message
    raise ValueError("the answer is not an extended response")


def _tls_context(ca_file: str | None, verify: bool = True) -> ssl.SSLContext:
    """The daemon's TLS settings: CA file or system store, chain verified, name checked apart."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # ldap3 (and so the daemon) checks the host name itself after the handshake:
    # do the same, so "untrusted" and "wrong name" are separate steps.
    ctx.check_hostname = False
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca_file:
        ctx.load_verify_locations(ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx


def _verify_problem(exc: ssl.SSLCertVerificationError, ca_file: str | None) -> str:
    """Why certificate verification failed, and what to change."""
    code = exc.verify_code
    if code in (18, 19, 20, 21, 2):  # self-signed, unknown issuer, unverifiable chain
        if ca_file:
            return (f"certificate not trusted ({exc.verify_message}): it is not signed by the CA "
                    f"in ldap.ca_file ({ca_file}); wrong CA file, or the directory's "
                    "certificate was renewed by another CA")
        return (f"certificate not trusted ({exc.verify_message}): it is not signed by a CA in "
                "the system trust store; set ldap.ca_file to the CA certificate (PEM) that "
                "signed the directory's certificate")
    if code == 10:
        return "certificate has expired: renew it on the directory server"
    if code == 9:
        return ("certificate is not valid yet: check this host's clock (timedatectl) and the "
                "certificate's start date")
    return f"certificate verification failed: {exc.verify_message or exc}"


def _handshake_problem(exc: Exception, timeout: float) -> str:
    """Why a TLS handshake failed (other than an untrusted certificate)."""
    if isinstance(exc, TimeoutError):
        return (f"no TLS answer within {timeout:g} s (ldap.response_timeout): the port accepts "
                "connections but does not speak TLS, or the server hangs")
    reason = getattr(exc, "reason", None) or ""
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                  "HTTP_REQUEST", "UNKNOWN_PROTOCOL"):
        return (f"TLS handshake failed ({reason}): the server does not speak TLS on this port "
                "(a plain ldap:// port, 389, written as ldaps://?)")
    if reason in ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "TLSV1_ALERT_PROTOCOL_VERSION"):
        return (f"TLS handshake failed ({reason}): no TLS version in common; the server only "
                "offers versions this host disables (TLS 1.0/1.1)")
    if reason in ("SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER"):
        return (f"TLS handshake failed ({reason}): no cipher suite in common, or the server "
                "demands a client certificate")
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, EOFError)):
        return ("the server closed the connection during the TLS handshake: it may not speak "
                "TLS on this port, or it refuses this host's TLS versions or ciphers")
    return f"TLS handshake failed: {exc}"


def _names(cert: x509.Certificate) -> list[str]:
    """The certificate's subjectAltName entries, as DNS:... and IP:..."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
            + [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)])


def describe_certificate(der: bytes) -> tuple[str, datetime.datetime]:
    """One line about a DER certificate (subject, names, issuer, expiry) and its expiry time."""
    cert = x509.load_der_x509_certificate(der)
    not_after = cert.not_valid_after_utc
    names = ", ".join(_names(cert)) or "none (no subjectAltName)"
    text = (f"subject {cert.subject.rfc4514_string()}; names {names}; issued by "
            f"{cert.issuer.rfc4514_string()}; valid until {not_after:%Y-%m-%d %H:%M} UTC")
    return text, not_after


def _peek_certificate(addrs: list[tuple], cfg: LdapConfig) -> str | None:
    """What the server presents, fetched without verification, to explain a failed verify."""
    sock, _ = _tcp_connect(addrs, cfg.connect_timeout)
    if sock is None:
        return None
    try:
        sock.settimeout(cfg.response_timeout)
        if cfg.start_tls and _start_tls(sock)[0] != 0:
            return None
        with _tls_context(None, verify=False).wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
        return describe_certificate(der)[0] if der else None
    except (OSError, ValueError, EOFError):
        return None
    finally:
        sock.close()


def _hostname_problem(tls: ssl.SSLSocket, host: str) -> str | None:
    """None when the certificate names ``host`` by ldap3's own rule, else what it names."""
    from ldap3.core.tls import check_hostname

    try:
        with warnings.catch_warnings():
            # Python 3.11's ssl.match_hostname, which ldap3 calls, is deprecated.
            warnings.simplefilter("ignore", DeprecationWarning)
            check_hostname(tls, host, None)
        return None
    except lexc.LDAPCertificateError:
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        names = ", ".join(_names(cert)) or f"only {cert.subject.rfc4514_string()}"
        hint = ""
        try:
            ipaddress.ip_address(host)
            hint = " (an IP address matches only an IP: entry)"
        except ValueError:
            pass
        return (f"the certificate does not name {host}{hint}; it names {names}: use one of "
                f"those names in ldap.servers, or have the certificate reissued for {host}")


def _ldap_connection(cfg: LdapConfig, server: LdapServer, user: str | None,
                     password: str | None) -> ldap3.Connection:
    """An open connection made exactly like the daemon's (ldapauth._connection), not bound."""
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=cfg.ca_file,
                    version=ssl.PROTOCOL_TLS_CLIENT)
    srv = ldap3.Server(server.host, port=server.port, use_ssl=server.use_ssl, tls=tls,
                       connect_timeout=cfg.connect_timeout, get_info=ldap3.NONE)
    conn = ldap3.Connection(srv, user=user, password=password, auto_bind=ldap3.AUTO_BIND_NONE,
                            read_only=True, raise_exceptions=False,
                            receive_timeout=cfg.response_timeout, client_strategy=ldap3.SYNC)
    conn.open(read_server_info=False)
    conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if cfg.start_tls and not conn.start_tls(read_server_info=False):
        raise lexc.LDAPStartTLSError("StartTLS failed")
    return conn


def _result(conn: ldap3.Connection) -> str:
    """The last LDAP result as "name (code): server message"."""
    res = conn.result or {}
    code = res.get("result")
    name = res.get("description") or _RESULT_NAMES.get(code, "error")
    message = (res.get("message") or "").strip()
    return f"{name} ({code})" + (f": {message}" if message else "")


def _bind_problem(conn: ldap3.Connection, bind_dn: str) -> str:
    """Why the service account bind failed, and what to check."""
    res = conn.result or {}
    code, message = res.get("result"), res.get("message") or ""
    if code == 49:
        for sub, meaning in _AD_BIND_CODES.items():
            if f"data {sub}" in message.lower():
                return f"{_result(conn)}: Active Directory says {meaning}"
        return (f"{_result(conn)}: the directory rejected {bind_dn}'s password; check "
                "ldap.bind_password_file / bind_password_env, and whether the account is "
                "locked, disabled or its password expired")
    if code in (8, 13):
        return (f"{_result(conn)}: the server demands TLS for binds; use ldaps:// servers or "
                "ldap.start_tls: true")
    if code == 53:
        return f"{_result(conn)}: the server refuses this simple bind (policy or empty password)"
    return f"{_result(conn)}"


def _exception_problem(exc: Exception, cfg: LdapConfig) -> str:
    """An ldap3/socket exception during bind or search, explained."""
    text = str(exc)
    if "timed out" in text.lower() or isinstance(exc, TimeoutError):
        return (f"no answer within {cfg.response_timeout:g} s (ldap.response_timeout): the port "
                "accepts connections but nothing answers LDAP (hung server, overloaded "
                "directory, or another service on this port)")
    return f"{type(exc).__name__}: {text}"


def _check_ldap_server(report: Report, config: Config, index: int,
                       sample_user: str | None) -> None:
    """Every step for one directory server, in dependency order."""
    cfg = config.ldap
    server = cfg.servers[index]
    where = f"ldap.servers[{index}] {server.url}"
    report.section(f"LDAP server {index + 1} of {len(cfg.servers)}: {server.url} "
                   f"({server.host} port {server.port})")
    direct = cfg.bind_template is not None
    tls_steps = (["starttls"] if cfg.start_tls else []) + \
        (["tls", "certificate", "hostname"] if server.use_ssl or cfg.start_tls else [])
    later = ["bind"] + ([] if direct else ["base"]) + \
        (["user"] if sample_user and not direct else []) + \
        (["groups"] if sample_user and cfg.required_groups and not direct else [])

    def fail(name, message, ms, skipped):
        report.step("FAIL", name, message, ms, where)
        report.skip(skipped, name)

    # DNS
    started = time.perf_counter()
    try:
        ipaddress.ip_address(server.host)
        literal = True
    except ValueError:
        literal = False
    try:
        addrs, shown = _resolve(server.host, server.port)
    except socket.gaierror as exc:
        return fail("dns", _dns_problem(server.host, exc), _since(started),
                    ["tcp"] + tls_steps + later)
    report.step("OK", "dns", f"{server.host} is an IP address (no lookup)" if literal
                else f"{server.host} -> {shown}", _since(started))

    # TCP
    started = time.perf_counter()
    sock, problems = _tcp_connect(addrs, cfg.connect_timeout)
    if sock is None:
        return fail("tcp", "; ".join(problems), _since(started), tls_steps + later)
    peer = _address(sock.getpeername())
    extra = f" (before that: {'; '.join(problems)})" if problems else ""
    report.step("OK", "tcp", f"connected to {peer}{extra}", _since(started))

    try:
        if tls_steps:
            if not _check_tls(report, cfg, server, sock, addrs, where, tls_steps, later):
                return
        else:
            loopback = peer.startswith(("127.", "[::1]"))
            if not loopback:
                report.step("WARN", "tls", "plain ldap:// without start_tls: user passwords "
                            "cross the network unencrypted; use ldaps:// or start_tls: true")
    finally:
        sock.close()
    _check_directory(report, config, server, where, later, sample_user)


def _check_tls(report: Report, cfg: LdapConfig, server: LdapServer, sock: socket.socket,
               addrs: list[tuple], where: str, tls_steps: list[str], later: list[str]) -> bool:
    """StartTLS, handshake + chain, certificate expiry, host name; whether all passed."""

    def fail(name, message, ms, detail=None):
        report.step("FAIL", name, message, ms, where)
        if detail:
            report.detail(detail)
        report.skip(tls_steps[tls_steps.index(name) + 1:] + later, name)
        return False

    sock.settimeout(cfg.response_timeout)
    if cfg.start_tls:
        started = time.perf_counter()
        try:
            code, message = _start_tls(sock)
        except TimeoutError:
            return fail("starttls", f"no answer within {cfg.response_timeout:g} s "
                        "(ldap.response_timeout): the port accepts connections but nothing "
                        "answers LDAP", _since(started))
        except (OSError, EOFError, ValueError, IndexError) as exc:
            return fail("starttls", f"StartTLS failed: {exc} (is this an LDAP port? ldaps:// "
                        "ports need ldaps:// URLs, not start_tls)", _since(started))
        if code != 0:
            name = _RESULT_NAMES.get(code, "error")
            return fail("starttls", f"the server refused StartTLS: {name} ({code})"
                        + (f": {message}" if message else "")
                        + "; it may have no certificate configured", _since(started))
        report.step("OK", "starttls", "the server accepted StartTLS", _since(started))

    started = time.perf_counter()
    trust = f"ldap.ca_file {cfg.ca_file}" if cfg.ca_file else "the system trust store"
    try:
        ctx = _tls_context(cfg.ca_file)
    except (ssl.SSLError, OSError) as exc:
        return fail("tls", f"cannot use ldap.ca_file {cfg.ca_file}: {exc} (it must hold PEM "
                    "CA certificates)", _since(started))
    tls = ctx.wrap_socket(sock, do_handshake_on_connect=False)
    try:
        try:
            tls.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            ms = _since(started)
            presented = _peek_certificate(addrs, cfg)
            return fail("tls", _verify_problem(exc, cfg.ca_file), ms,
                        presented and f"the server presents: {presented}")
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
            return fail("tls", _handshake_problem(exc, cfg.response_timeout), _since(started))
        report.step("OK", "tls", f"{tls.version()} handshake, certificate chain verified "
                    f"against {trust}", _since(started))

        started = time.perf_counter()
        text, not_after = describe_certificate(tls.getpeercert(binary_form=True))
        left = not_after - datetime.datetime.now(datetime.timezone.utc)
        if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
            report.step("WARN", "certificate", f"{text}; expires in {left.days} days: renew it "
                        "before then (every login fails once it has expired)", _since(started))
        else:
            report.step("OK", "certificate", f"{text} ({left.days} days left)", _since(started))

        started = time.perf_counter()
        problem = _hostname_problem(tls, server.host)
        if problem:
            return fail("hostname", problem, _since(started))
        report.step("OK", "hostname", f"the certificate names {server.host}", _since(started))
        return True
    finally:
        tls.close()


def _check_directory(report: Report, config: Config, server: LdapServer, where: str,
                     later: list[str], sample_user: str | None) -> None:
    """Service bind, user_base, the sample user and its groups, through ldap3 as the daemon."""
    cfg = config.ldap
    if cfg.bind_template is not None:
        report.step("INFO", "bind", f"direct-bind mode (ldap.bind_template {cfg.bind_template}"
                    "): no service account; users bind as themselves and search as "
                    "themselves, so test a real login with `pushproxy radius-test USER`")
        return

    def fail(name, message, ms):
        report.step("FAIL", name, message, ms, where)
        report.skip(later[later.index(name) + 1:], name)

    started = time.perf_counter()
    try:
        conn = _ldap_connection(cfg, server, cfg.bind_dn, cfg.bind_password)
    except (lexc.LDAPException, OSError) as exc:
        return fail("bind", f"could not open the connection: {_exception_problem(exc, cfg)}",
                    _since(started))
    try:
        try:
            bound = conn.bind()
        except (lexc.LDAPException, OSError) as exc:
            return fail("bind", _exception_problem(exc, cfg), _since(started))
        if not bound:
            return fail("bind", _bind_problem(conn, cfg.bind_dn), _since(started))
        report.step("OK", "bind", f"service account {cfg.bind_dn} bound", _since(started))

        started = time.perf_counter()
        try:
            conn.search(cfg.user_base, "(objectClass=*)", search_scope=ldap3.BASE,
                        attributes=ldap3.NO_ATTRIBUTES)
        except (lexc.LDAPException, OSError) as exc:
            return fail("base", _exception_problem(exc, cfg), _since(started))
        found = any(e.get("type") == "searchResEntry" for e in conn.response or [])
        if not found:
            res = conn.result or {}
            if res.get("result") == 32:
                known = res.get("dn") or "nothing"
                message = (f"ldap.user_base {cfg.user_base} does not exist (noSuchObject; the "
                           f"server has {known}): check the spelling of user_base")
            elif res.get("result") == 0:
                message = (f"ldap.user_base {cfg.user_base} is not visible to {cfg.bind_dn} "
                           "(the directory's access rules hide it)")
            else:
                message = f"searching ldap.user_base {cfg.user_base} failed: {_result(conn)}"
            return fail("base", message, _since(started))
        report.step("OK", "base", f"ldap.user_base {cfg.user_base} exists", _since(started))

        if sample_user:
            _check_user(report, cfg, conn, sample_user, where, fail)
    finally:
        try:
            conn.unbind()
        except Exception:  # closing after a failure: nothing left to report
            pass


def _check_user(report: Report, cfg: LdapConfig, conn: ldap3.Connection, username: str,
                where: str, fail) -> None:
    """Find the sample user with the configured filter; show its required-group membership."""
    flt = user_filter(cfg.user_filter, username)
    started = time.perf_counter()
    try:
        conn.search(cfg.user_base, flt, search_scope=ldap3.SUBTREE, attributes=["memberOf"],
                    size_limit=2)
    except (lexc.LDAPException, OSError) as exc:
        return fail("user", _exception_problem(exc, cfg), _since(started))
    code = (conn.result or {}).get("result", 0)
    entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
    if code not in (0, 4) and not entries:
        return fail("user", f"the user search failed: {_result(conn)}", _since(started))
    if not entries:
        return fail("user", f"user {username!r} not found under {cfg.user_base} with {flt}: "
                    "check the name, ldap.user_filter and ldap.user_base (logins of this user "
                    "are rejected as unknown)", _since(started))
    if len(entries) > 1:
        return fail("user", f"{flt} matches more than one entry under {cfg.user_base}: logins "
                    "of this user are rejected as ambiguous; make ldap.user_filter unique",
                    _since(started))
    dn = entries[0]["dn"]
    member_of = entries[0].get("attributes", {}).get("memberOf", []) or []
    report.step("OK", "user", f"found {dn} with {flt}", _since(started))
    if not cfg.required_groups:
        return

    started = time.perf_counter()
    if cfg.group_mode is GroupMode.MEMBER_OF:
        have = {normalize_dn(g) for g in member_of}
        matched = [g for g in cfg.required_groups if normalize_dn(g) in have]
        shown = "; ".join(member_of) if member_of else "none"
        how = f"memberOf: {shown}"
    else:
        matched = []
        try:
            for group in cfg.required_groups:
                base, gflt = group_query(cfg.group_mode, dn, username, group)
                conn.search(base, gflt, search_scope=ldap3.BASE, attributes=ldap3.NO_ATTRIBUTES)
                if any(e.get("type") == "searchResEntry" for e in conn.response or []):
                    matched.append(group)
        except (lexc.LDAPException, OSError) as exc:
            return fail("groups", _exception_problem(exc, cfg), _since(started))
        how = f"checked with ldap.group_membership {cfg.group_mode.value}"
    if matched:
        report.step("OK", "groups", f"member of required group {'; '.join(matched)} ({how})",
                    _since(started))
    else:
        report.step("FAIL", "groups", f"{username} is in none of ldap.required_groups "
                    f"({'; '.join(cfg.required_groups)}): logins are rejected (not_in_group); "
                    f"{how}", _since(started), where)


# ---------------------------------------------------------------- store


def _known_schema() -> int:
    """The newest schema version this pushproxy's migrations create."""
    from pushproxy.approval.store import _load_migrations

    migrations = _load_migrations()
    return migrations[-1][0] if migrations else 0


def _check_store(report: Report, config: Config) -> None:
    """The approval database: present, readable, a schema this pushproxy knows, devices."""
    from pushproxy.approval.store import SQLiteStore, StoreError

    path = config.approval.database
    report.section(f"Approval store: {path}")
    where = "approval.database"
    if path in ("", ":memory:"):
        report.step("WARN", "database", "in memory: devices and enrollments are lost whenever "
                    "the daemon stops; set approval.database to a file")
        return
    started = time.perf_counter()
    if not os.path.exists(path):
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            report.step("FAIL", "database", f"neither the database nor its folder {folder} "
                        "exists: the daemon cannot create it (create the folder, owned by the "
                        "daemon's user; under systemd StateDirectory=pushproxy makes "
                        "/var/lib/pushproxy)", _since(started), where)
        else:
            report.step("WARN", "database", "does not exist yet (the daemon creates it at "
                        "first start)", _since(started))
        return
    # Peek read-only before SQLiteStore, which would migrate an older schema (a
    # write) and must not be opened on a schema it does not know. With a -wal
    # file present (the daemon is running) the newest data may be only in the
    # WAL: read through it with mode=ro. Without one, immutable=1 reads the
    # file alone and creates no -wal/-shm files beside it.
    live = os.path.exists(f"{path}-wal")
    try:
        peek = sqlite3.connect(f"{Path(path).resolve().as_uri()}?"
                               f"{'mode=ro' if live else 'immutable=1'}", uri=True, timeout=5)
        try:
            version = peek.execute("PRAGMA user_version").fetchone()[0]
        finally:
            peek.close()
        # immutable=1 reports journal mode "delete" whatever the file says; the
        # header's read/write version bytes (offsets 18, 19) are 2 for WAL.
        # (The header is written when the WAL mode is set, never only in the WAL.)
        with open(path, "rb") as fh:
            wal = fh.read(20)[18:20] == b"\x02\x02"
    except (sqlite3.Error, OSError) as exc:
        hint = ""
        if not os.access(path, os.R_OK):
            hint = (": permission denied; run as root or as the daemon's user "
                    "(runuser -u pushproxy -- pushproxy test-connection)")
        elif "not a database" in str(exc):
            hint = ": this file is not an SQLite database"
        report.step("FAIL", "database", f"cannot read {path}: {exc}{hint}", _since(started), where)
        return
    known = _known_schema()
    if version > known:
        report.step("FAIL", "database", f"schema version {version}, but this pushproxy knows "
                    f"only up to {known}: a newer pushproxy wrote it, and the daemon will refuse "
                    "it (upgrade pushproxy)", _since(started), where)
        return
    if version < known:
        report.step("WARN", "database", f"schema version {version}; the daemon migrates it to "
                    f"{known} at its next start", _since(started))
        return
    if not wal:
        # Opening it through SQLiteStore would convert it to WAL: a write.
        report.step("WARN", "database", f"schema version {version} but not in WAL mode: the "
                    "daemon switches it to WAL at its next start", _since(started))
        return
    try:
        # The schema is current and in WAL mode, so opening the store writes nothing.
        store = SQLiteStore(path)
        try:
            devices = store.devices()
        finally:
            store.close()
    except StoreError as exc:
        report.step("FAIL", "database", str(exc), _since(started), where)
        return
    users = len({d.username for d in devices})
    report.step("OK", "database", f"schema version {version} (current), {len(devices)} "
                f"device(s) of {users} user(s)", _since(started))
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        report.step("WARN", "permissions", f"mode {mode:04o}: other users can read device keys "
                    f"and enrollment hashes; chmod 600 {path}")


# ---------------------------------------------------------------- approval API


def _system_trust() -> str | bool:
    """The system's CA bundle, as phones trust public CAs rather than requests' certifi."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return paths.cafile
    if paths.capath and os.path.isdir(paths.capath):
        return paths.capath
    return True  # no system store found: requests' own bundle


def _check_public_url(report: Report, config: Config) -> None:
    """GET {public_url}/v1/info from here and expect pushproxy's answer (version 1)."""
    public = config.approval.public_url
    url = f"{public}/v1/info"
    listen = "%s:%d" % config.approval.listen
    report.section(f"Approval API: {public} (checked from this host)")
    where = "approval.public_url"
    host = urlsplit(public).hostname or public
    started = time.perf_counter()
    try:
        resp = requests.get(url, timeout=HTTP_TIMEOUT, verify=_system_trust(),
                            headers={"Accept": "application/json"})
    except requests.exceptions.SSLError as exc:
        if isinstance(_innermost(exc), ssl.SSLCertVerificationError):
            message = (f"TLS error: {_short(exc)}: the certificate is not trusted by this "
                       "host's trust store (phones will likely refuse it too), has expired, "
                       f"or does not name {host}")
        else:
            message = (f"TLS handshake failed: {_short(exc)}: the server broke off the "
                       "handshake; look at the log of the daemon (approval.tls_cert / "
                       "tls_key) or of the reverse proxy")
        report.step("FAIL", "api", message, _since(started), where)
        return
    except requests.exceptions.ConnectTimeout:
        report.step("FAIL", "api", f"no connection within {HTTP_TIMEOUT:g} s to {host}: a "
                    "firewall drops it, or the name resolves to an address not reachable from "
                    "here", _since(started), where)
        return
    except requests.exceptions.ReadTimeout:
        report.step("FAIL", "api", f"connected, but no answer within {HTTP_TIMEOUT:g} s: the "
                    "daemon or the reverse proxy's backend hangs", _since(started), where)
        return
    except requests.exceptions.ConnectionError as exc:
        text = str(exc)
        if "refused" in text.lower():
            message = (f"connection refused at {url}: is the daemon running (systemctl status "
                       "pushproxy)? Behind a reverse proxy: is the proxy running and listening "
                       f"there? Without one, public_url must point at approval.listen ({listen})")
        elif "resolution" in text.lower() or "name or service not known" in text.lower():
            message = f"{host} does not resolve from this host (check DNS)"
        else:
            message = f"cannot connect to {url}: {_short(exc)}"
        report.step("FAIL", "api", message, _since(started), where)
        return
    except requests.exceptions.RequestException as exc:
        report.step("FAIL", "api", f"request to {url} failed: {_short(exc)}", _since(started),
                    where)
        return
    ms = _since(started)
    if resp.status_code == 404:
        report.step("FAIL", "api", f"404 Not Found at {url}: something answers at {host} but "
                    "not pushproxy's API at this path; check that the reverse proxy forwards "
                    f"{public}/v1/ to approval.listen ({listen}) without rewriting the path",
                    ms, where)
        return
    if resp.status_code in (502, 503, 504):
        report.step("FAIL", "api", f"HTTP {resp.status_code} at {url}: the reverse proxy "
                    f"cannot reach pushproxy at approval.listen ({listen}); is the daemon "
                    "running?", ms, where)
        return
    if resp.status_code != 200:
        report.step("FAIL", "api", f"HTTP {resp.status_code} at {url}: expected 200 from "
                    "pushproxy's API", ms, where)
        return
    try:
        body = resp.json()
    except ValueError:
        report.step("FAIL", "api", f"HTTP 200 at {url} but not JSON: another application "
                    "serves this URL", ms, where)
        return
    if not isinstance(body, dict) or body.get("version") != 1:
        report.step("FAIL", "api", f"{url} answers JSON without \"version\": 1: not "
                    "pushproxy's approval API, or an incompatible version", ms, where)
        return
    report.step("OK", "api", f"pushproxy approval API version 1 answers at {url}", ms)
    if resp.history:
        report.step("WARN", "redirect", f"{url} redirects to {resp.url}: set "
                    "approval.public_url to the final address (devices may not follow it)")
    if urlsplit(public).scheme == "http" and not _is_loopback(host):
        report.step("WARN", "api", "public_url is plain http://: devices send their answers "
                    "unencrypted; publish it over https")


def _innermost(exc: BaseException) -> BaseException:
    """The real error inside a requests exception.

    requests wraps urllib3's MaxRetryError, which wraps the real error in
    ``reason``; printing the outer one buries it under "Max retries exceeded".
    """
    inner = exc
    for _ in range(6):
        nested = getattr(inner.args[0], "reason", None) if inner.args else None
        if isinstance(nested, BaseException):
            inner = nested
        elif inner.args and isinstance(inner.args[0], BaseException):
            inner = inner.args[0]
        else:
            break
    return inner


def _short(exc: Exception) -> str:
    """The innermost useful words of a requests/urllib3 exception chain."""
    inner = _innermost(exc)
    if isinstance(inner, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {inner.verify_message}"
    text = str(inner)
    return text if len(text) <= 300 else text[:297] + "..."


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- entry points


def run_checks(config: Config, *, sample_user: str | None, out: TextIO) -> bool:
    """Run every check, printing one line per step to ``out``; True when nothing failed."""
    report = Report(out)
    print(f"pushproxy test-connection: {config.source}", file=out, flush=True)
    for index in range(len(config.ldap.servers)):
        _check_ldap_server(report, config, index, sample_user)
    _check_store(report, config)
    _check_public_url(report, config)
    report.section("RADIUS clients: the timeout each gateway needs")
    for advice in config.timeout_advice():
        report.step("INFO", "advice", advice)
    print(file=out)
    if report.failures:
        print(f"FAILED: {len(report.failures)} check(s) failed:", file=out)
        for failure in report.failures:
            print(f"  {failure}", file=out)
    else:
        print(f"OK: every check passed ({report.warnings} warning(s))", file=out)
    out.flush()
    return not report.failures


def _configure(p: argparse.ArgumentParser) -> None:
    """The options, shared by the subcommand and ``python -m pushproxy.connectivity``."""
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                   help="path to config.yaml (default %(default)s)")
    p.add_argument("--user", metavar="NAME",
                   help="also look this user up with ldap.user_filter and show its groups")
    p.set_defaults(func=cmd_test_connection)


def cmd_test_connection(args) -> int:
    """Load the config (2 if it does not load), run the checks, 0 if all passed else 1."""
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    return 0 if run_checks(config, sample_user=args.user, out=sys.stdout) else 1


def add_parser(sub) -> None:
    """Register ``test-connection`` on the CLI's subparsers."""
    p = sub.add_parser("test-connection",
                       help="check DNS, TCP, TLS, bind and search for every LDAP server, the "
                            "approval store and the public URL")
    _configure(p)


def main(argv: list[str] | None = None) -> int:
    """``python -m pushproxy.connectivity``: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog="pushproxy test-connection",
                                     description="Check every connection the daemon needs.")
    _configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
