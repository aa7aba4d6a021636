"""The blocking user lookup of the command-line tools, with ldap3.

The daemon's logins go through the reactor-native client (`pushproxy.ldapauth`);
a command-line tool (``pushproxy admin``) has no reactor running and asks
once, so it keeps ldap3: one connection per server, the same filter, the same
failover order and the same result as `LdapDirectory.lookup`.
"""

from __future__ import annotations

import math
import socket
import ssl

import ldap3
from ldap3.core import exceptions as lexc

from pushproxy import adgroups
from pushproxy.config import GroupMode, LdapConfig, LdapServer
from pushproxy.decision import PrimaryResult, PrimaryStatus
from pushproxy.adnames import ForeignDomain, foreign_domain, user_search
from pushproxy.ldapnames import conclude, group_query, normalize_dn, user_filter, values_of
from pushproxy.ldaptls import ldap3_tls


class ServerUnusable(Exception):
    """This server could not answer; try the next one."""


def receive_timeout(seconds: float) -> int:
    """``ldap.response_timeout`` as ldap3 can take it: whole seconds, rounded up.

    ldap3 packs it into SO_RCVTIMEO as an integer: 1.5 raised struct.error out
    of every lookup (a crash, not a failed server).
    """
    return max(1, math.ceil(seconds))


def open_search(config: LdapConfig, server: LdapServer) -> ldap3.Connection:
    """A connection to ``server`` bound as the service account (TLS verified as the daemon)."""
    # Python's ssl checks the name in the handshake (ldap3's own check, the
    # one deciding on Python 3.12+, ignores IP-address names): see ldaptls.
    tls = ldap3_tls(config.ca_file, server.host)
    srv = ldap3.Server(server.host, port=server.port, use_ssl=server.use_ssl, tls=tls,
                       connect_timeout=config.connect_timeout, get_info=ldap3.NONE)
    conn = ldap3.Connection(srv, user=config.bind_dn, password=config.bind_password,
                            auto_bind=ldap3.AUTO_BIND_NONE, read_only=True,
                            raise_exceptions=False,
                            receive_timeout=receive_timeout(config.response_timeout),
                            client_strategy=ldap3.SYNC)
    conn.open(read_server_info=False)
    conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if config.start_tls and not conn.start_tls(read_server_info=False):
        raise ServerUnusable("StartTLS failed")
    if config.bind_dn is not None and not conn.bind():
        raise ServerUnusable(f"service account bind failed: {conn.result.get('description')}")
    return conn


def lookup(config: LdapConfig, username: str, candidates: frozenset[str],
           required: frozenset[str], conns: dict | None = None) -> PrimaryResult:
    """The user's entry and groups, servers tried in order; UNAVAILABLE if none answers.

    ``conns`` (server URL -> connection) keeps each server's connection for the
    caller's next lookup (`close_all` ends them); without it each lookup opens
    and closes its own."""
    errors = []
    for server in config.servers:
        try:
            conn = conns.get(server.url) if conns is not None else None
            if conn is None or conn.closed:
                conn = open_search(config, server)
                if conns is not None:
                    conns[server.url] = conn
            try:
                return _lookup_on(config, conn, server, username, candidates, required)
            finally:
                if conns is None:
                    conn.unbind()
        except (ServerUnusable, lexc.LDAPException, OSError, ssl.SSLError) as exc:
            if conns is not None:
                _close(conns.pop(server.url, None))
            errors.append(f"{server.url}: {type(exc).__name__}: {exc}")
    return PrimaryResult(PrimaryStatus.UNAVAILABLE, detail="; ".join(errors))


def close_all(conns: dict) -> None:
    """Close and forget the connections ``lookup`` kept in ``conns``."""
    while conns:
        _close(conns.popitem()[1])


def _close(conn) -> None:
    if conn is None:
        return
    try:
        conn.unbind()
    except (lexc.LDAPException, OSError, ssl.SSLError):
        pass  # closing a broken socket: nothing left to do


def _lookup_on(config, conn, server, username, candidates, required) -> PrimaryResult:
    wanted = [config.username_attribute, adgroups.PRIMARY_GROUP_ID]
    if config.group_mode is GroupMode.MEMBER_OF:
        wanted.append("memberOf")
    search = user_search(config, username)
    if isinstance(search, ForeignDomain):
        return foreign_domain(search)
    base, template, value = search
    ok = conn.search(base, user_filter(template, value),
                     search_scope=ldap3.SUBTREE, attributes=wanted, size_limit=2)
    code = conn.result.get("result", 0)
    if not ok and code not in (0, 4, 32):  # success, sizeLimitExceeded, noSuchObject
        raise ServerUnusable(f"user search failed: {conn.result.get('description')}")
    entries = [(e["dn"], e.get("attributes", {})) for e in conn.response or []
               if e.get("type") == "searchResEntry"]
    if not entries:
        return PrimaryResult(PrimaryStatus.UNKNOWN_USER, server=server.url)
    if len(entries) > 1:
        return PrimaryResult(PrimaryStatus.AMBIGUOUS_USER, server=server.url)
    dn, attrs = entries[0]
    groups: frozenset[str] = frozenset()
    if candidates and config.group_mode is GroupMode.MEMBER_OF:
        groups = candidates & {normalize_dn(g) for g in values_of(attrs, "memberOf")}
    elif candidates:
        found = set()
        for group in sorted(candidates):
            base, flt = group_query(config.group_mode, dn, username, group)
            conn.search(base, flt, search_scope=ldap3.BASE, attributes=ldap3.NO_ATTRIBUTES)
            if any(e.get("type") == "searchResEntry" for e in conn.response or []):
                found.add(group)
        groups = frozenset(found)
    groups |= _primary_groups(conn, dn, attrs, candidates - groups)
    return conclude(config, required, server.url, dn, attrs, groups)


def _primary_groups(conn, dn: str, attrs: dict, candidates: frozenset[str]) -> frozenset[str]:
    """Which of ``candidates`` is the user's AD primary group, which no member list
    names (`pushproxy.adgroups`): the group whose primaryGroupToken is the user's
    primaryGroupID. The daemon's logins count it too (`pushproxy.ldapauth`)."""
    rid = adgroups.primary_group_id(attrs)
    token_attrs = adgroups.primary_group_query()[1]
    for group in adgroups.primary_group_candidates(normalize_dn(dn), sorted(candidates), rid):
        conn.search(group, "(objectClass=*)", search_scope=ldap3.BASE, attributes=token_attrs)
        entries = [(e["dn"], e.get("attributes", {})) for e in conn.response or []
                   if e.get("type") == "searchResEntry"]
        if adgroups.is_primary_group(rid, entries):
            return frozenset({group})  # a user has one primary group
    return frozenset()
