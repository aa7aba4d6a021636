"""The LDAP checks of ``pushproxy test-connection``: one server, step by step.

DNS, TCP, StartTLS, TLS, certificate, host name, service bind, then the
searches the daemon makes, with what usually causes each failure.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import time

import ldap3
from ldap3.core import exceptions as lexc

from pushproxy.config import Config, GroupMode, LdapConfig, LdapServer
from pushproxy.ldapnames import account_of, group_query, normalize_dn, user_filter
from pushproxy.ldapsync import receive_timeout
from pushproxy.ldaptls import ldap3_tls
from pushproxy.connectivity.net import (address, describe_certificate, dns_problem,
                                        handshake_problem, hostname_problem, peek_certificate,
                                        resolve, start_tls, tcp_connect, tls_context,
                                        verify_problem)
from pushproxy.connectivity.report import Report, since


EXPIRY_WARNING_DAYS = 30


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


def _ldap_connection(cfg: LdapConfig, server: LdapServer, user: str | None,
                     password: str | None) -> ldap3.Connection:
    """An open connection made exactly like the daemon's (ldapauth._connection), not bound."""
    tls = ldap3_tls(cfg.ca_file, server.host)  # the name checked by Python's ssl
    srv = ldap3.Server(server.host, port=server.port, use_ssl=server.use_ssl, tls=tls,
                       connect_timeout=cfg.connect_timeout, get_info=ldap3.NONE)
    conn = ldap3.Connection(srv, user=user, password=password, auto_bind=ldap3.AUTO_BIND_NONE,
                            read_only=True, raise_exceptions=False,
                            receive_timeout=receive_timeout(cfg.response_timeout),
                            client_strategy=ldap3.SYNC)
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


def check_ldap_server(report: Report, config: Config, index: int,
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
        addrs, shown = resolve(server.host, server.port)
    except socket.gaierror as exc:
        return fail("dns", dns_problem(server.host, exc), since(started),
                    ["tcp"] + tls_steps + later)
    report.step("OK", "dns", f"{server.host} is an IP address (no lookup)" if literal
                else f"{server.host} -> {shown}", since(started))

    # TCP
    started = time.perf_counter()
    sock, problems = tcp_connect(addrs, cfg.connect_timeout)
    if sock is None:
        return fail("tcp", "; ".join(problems), since(started), tls_steps + later)
    peer = address(sock.getpeername())
    extra = f" (before that: {'; '.join(problems)})" if problems else ""
    report.step("OK", "tcp", f"connected to {peer}{extra}", since(started))

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
            code, message = start_tls(sock)
        except TimeoutError:
            return fail("starttls", f"no answer within {cfg.response_timeout:g} s "
                        "(ldap.response_timeout): the port accepts connections but nothing "
                        "answers LDAP", since(started))
        except (OSError, EOFError, ValueError, IndexError) as exc:
            return fail("starttls", f"StartTLS failed: {exc} (is this an LDAP port? ldaps:// "
                        "ports need ldaps:// URLs, not start_tls)", since(started))
        if code != 0:
            name = _RESULT_NAMES.get(code, "error")
            return fail("starttls", f"the server refused StartTLS: {name} ({code})"
                        + (f": {message}" if message else "")
                        + "; it may have no certificate configured", since(started))
        report.step("OK", "starttls", "the server accepted StartTLS", since(started))

    started = time.perf_counter()
    trust = f"ldap.ca_file {cfg.ca_file}" if cfg.ca_file else "the system trust store"
    try:
        ctx = tls_context(cfg.ca_file)
    except (ssl.SSLError, OSError) as exc:
        return fail("tls", f"cannot use ldap.ca_file {cfg.ca_file}: {exc} (it must hold PEM "
                    "CA certificates)", since(started))
    tls = ctx.wrap_socket(sock, do_handshake_on_connect=False)
    try:
        try:
            tls.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            ms = since(started)
            presented = peek_certificate(addrs, cfg)
            return fail("tls", verify_problem(exc, cfg.ca_file), ms,
                        presented and f"the server presents: {presented}")
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
            return fail("tls", handshake_problem(exc, cfg.response_timeout), since(started))
        report.step("OK", "tls", f"{tls.version()} handshake, certificate chain verified "
                    f"against {trust}", since(started))

        started = time.perf_counter()
        der = tls.getpeercert(binary_form=True)
        text, not_after = describe_certificate(der)
        left = not_after - datetime.datetime.now(datetime.timezone.utc)
        if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
            report.step("WARN", "certificate", f"{text}; expires in {left.days} days: renew it "
                        "before then (every login fails once it has expired)", since(started))
        else:
            report.step("OK", "certificate", f"{text} ({left.days} days left)", since(started))

        started = time.perf_counter()
        problem = hostname_problem(addrs, cfg, server.host, der)
        if problem:
            return fail("hostname", problem, since(started))
        report.step("OK", "hostname", f"the certificate names {server.host}", since(started))
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
                    since(started))
    try:
        try:
            bound = conn.bind()
        except (lexc.LDAPException, OSError) as exc:
            return fail("bind", _exception_problem(exc, cfg), since(started))
        if not bound:
            return fail("bind", _bind_problem(conn, cfg.bind_dn), since(started))
        report.step("OK", "bind", f"service account {cfg.bind_dn} bound", since(started))

        started = time.perf_counter()
        try:
            conn.search(cfg.user_base, "(objectClass=*)", search_scope=ldap3.BASE,
                        attributes=ldap3.NO_ATTRIBUTES)
        except (lexc.LDAPException, OSError) as exc:
            return fail("base", _exception_problem(exc, cfg), since(started))
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
            return fail("base", message, since(started))
        report.step("OK", "base", f"ldap.user_base {cfg.user_base} exists", since(started))

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
        conn.search(cfg.user_base, flt, search_scope=ldap3.SUBTREE,
                    attributes=["memberOf", cfg.username_attribute], size_limit=2)
    except (lexc.LDAPException, OSError) as exc:
        return fail("user", _exception_problem(exc, cfg), since(started))
    code = (conn.result or {}).get("result", 0)
    entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
    if code not in (0, 4) and not entries:
        return fail("user", f"the user search failed: {_result(conn)}", since(started))
    if not entries:
        return fail("user", f"user {username!r} not found under {cfg.user_base} with {flt}: "
                    "check the name, ldap.user_filter and ldap.user_base (logins of this user "
                    "are rejected as unknown)", since(started))
    if len(entries) > 1:
        return fail("user", f"{flt} matches more than one entry under {cfg.user_base}: logins "
                    "of this user are rejected as ambiguous; make ldap.user_filter unique",
                    since(started))
    dn = entries[0]["dn"]
    member_of = entries[0].get("attributes", {}).get("memberOf", []) or []
    account = account_of(entries[0].get("attributes", {}), cfg.username_attribute, dn)
    if account is None:
        return fail("user", f"found {dn} with {flt}, but no {cfg.username_attribute} "
                    "(ldap.username_attribute) readable in it: logins of this user are "
                    "rejected as unknown", since(started))
    report.step("OK", "user", f"found {dn} with {flt}; account {account!r} "
                f"({cfg.username_attribute})", since(started))
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
            return fail("groups", _exception_problem(exc, cfg), since(started))
        how = f"checked with ldap.group_membership {cfg.group_mode.value}"
    if matched:
        report.step("OK", "groups", f"member of required group {'; '.join(matched)} ({how})",
                    since(started))
    else:
        report.step("FAIL", "groups", f"{username} is in none of ldap.required_groups "
                    f"({'; '.join(cfg.required_groups)}): logins are rejected (not_in_group); "
                    f"{how}", since(started), where)
