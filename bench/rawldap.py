"""The raw directory work one login stands for, for the proxy-overhead scenario."""

from __future__ import annotations

import time

import ldap3


class RawLdap:
    """What pushproxy asks the directory for one login, done directly with ldap3.

    Two kept connections, like one pushproxy LDAP worker: the service account
    searches (reading memberOf), a second connection binds as the user.
    """

    def __init__(self, slapd):
        import socket

        self.slapd = slapd
        server = ldap3.Server("127.0.0.1", port=slapd.port, get_info=ldap3.NONE)
        self.search = ldap3.Connection(server, slapd.service_dn, slapd.service_password,
                                       auto_bind=ldap3.AUTO_BIND_NO_TLS, read_only=True)
        self.user = ldap3.Connection(server, read_only=True)
        self.user.open(read_server_info=False)
        for conn in (self.search, self.user):
            conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def login(self, user: str, password: str) -> float:
        """Seconds for search + bind of one user."""
        started = time.monotonic()
        self.search.search(self.slapd.people_dn,
                           f"(&(objectClass=inetOrgPerson)(uid={user}))",
                           search_scope=ldap3.SUBTREE, attributes=["memberOf"], size_limit=2)
        dn = self.search.response[0]["dn"]
        self.user.authentication = ldap3.SIMPLE
        self.user.user, self.user.password = dn, password
        if not self.user.bind():
            raise RuntimeError(f"raw LDAP bind failed for {user}")
        return time.monotonic() - started

    def close(self) -> None:
        self.search.unbind()
        self.user.unbind()
