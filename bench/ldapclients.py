"""LDAP client candidates on one workload: CPU per login and logins/s (issue 16).

    python -m bench.ldapclients                  # 2000 users, 64 logins in flight, 3 rounds
    python -m bench.ldapclients -n 500 --rounds 1

One login is what pushproxy asks the directory: search for the user as the
service account (size limit 2, reading uid and memberOf), then a simple bind
as the user's DN on another connection. Every candidate runs the same users
against the same slapd (``loglevel 0``), in interleaved rounds so that load
from elsewhere on the machine hits them alike. CPU is this process's (all
threads) per login; slapd's CPU per login is shown beside it.

Candidates: ldap3 in a pool of 8 threads, each with its own two connections
(pushproxy before issue 16); python-ldap (libldap, C) in the same thread pool,
when installed; ldaptor's Twisted client (pipelined search connection, 8 bind
connections); pushproxy's reactor-native client (`LdapDirectory`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

from twisted.internet import defer, task, threads
from twisted.python.threadpool import ThreadPool

from bench.scenarios import users

FILTER = "(&(objectClass=inetOrgPerson)(uid={username}))"
THREADS = 8


def cpu_of(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Ldap3Threads:
    """ldap3 in a thread pool: each thread keeps a service-bound and a user connection."""

    name = "ldap3, 8 threads"

    def __init__(self, reactor, slapd):
        import socket

        import ldap3

        self.ldap3, self.socket, self.slapd, self.reactor = ldap3, socket, slapd, reactor
        self.pool = ThreadPool(THREADS, THREADS, name="bench-ldap3")
        self.pool.start()
        self.local = threading.local()

    def _conns(self):
        ldap3 = self.ldap3
        if not hasattr(self.local, "search"):
            server = ldap3.Server("127.0.0.1", port=self.slapd.port, get_info=ldap3.NONE)
            self.local.search = ldap3.Connection(server, self.slapd.service_dn,
                                                 self.slapd.service_password,
                                                 auto_bind=ldap3.AUTO_BIND_NO_TLS, read_only=True)
            self.local.user = ldap3.Connection(server, read_only=True)
            self.local.user.open(read_server_info=False)
            for conn in (self.local.search, self.local.user):
                conn.socket.setsockopt(self.socket.IPPROTO_TCP, self.socket.TCP_NODELAY, 1)
        return self.local.search, self.local.user

    def _login(self, user, password):
        from ldap3.utils.conv import escape_filter_chars

        search, conn = self._conns()
        search.search(self.slapd.people_dn, FILTER.replace("{username}",
                                                           escape_filter_chars(user)),
                      search_scope=self.ldap3.SUBTREE, attributes=["uid", "memberOf"],
                      size_limit=2)
        entries = [e for e in search.response if e.get("type") == "searchResEntry"]
        conn.authentication = self.ldap3.SIMPLE
        conn.user, conn.password = entries[0]["dn"], password
        return conn.bind()

    def login(self, user, password):
        return threads.deferToThreadPool(self.reactor, self.pool, self._login, user, password)

    def close(self):
        self.pool.stop()


class PythonLdapThreads(Ldap3Threads):
    """python-ldap (libldap) in the same kind of thread pool."""

    name = "python-ldap, 8 threads"

    def _conns(self):
        import ldap

        if not hasattr(self.local, "search"):
            url = f"ldap://127.0.0.1:{self.slapd.port}"
            self.local.search = ldap.initialize(url)
            self.local.search.simple_bind_s(self.slapd.service_dn, self.slapd.service_password)
            self.local.user = ldap.initialize(url)
        return self.local.search, self.local.user

    def _login(self, user, password):
        import ldap
        from ldap.filter import escape_filter_chars

        search, conn = self._conns()
        found = search.search_ext_s(self.slapd.people_dn, ldap.SCOPE_SUBTREE,
                                    FILTER.replace("{username}", escape_filter_chars(user)),
                                    ["uid", "memberOf"], sizelimit=2)
        conn.simple_bind_s(found[0][0], password)
        return True


class Ldaptor:
    """ldaptor's LDAPClient: searches pipelined on one service connection, 8 bind connections."""

    name = "ldaptor (Twisted)"

    def __init__(self, reactor, slapd):
        self.reactor, self.slapd = reactor, slapd
        self.idle = []
        self.waiting = []

    @defer.inlineCallbacks
    def start(self):
        from ldaptor.protocols.ldap.ldapclient import LDAPClient
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        def connect():
            proto = LDAPClient()
            endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.slapd.port)
            return connectProtocol(endpoint, proto)

        self.search = yield connect()
        self.search.transport.setTcpNoDelay(True)
        yield self.search.bind(self.slapd.service_dn, self.slapd.service_password)
        for _ in range(THREADS):
            proto = yield connect()
            proto.transport.setTcpNoDelay(True)
            self.idle.append(proto)

    @defer.inlineCallbacks
    def login(self, user, password):
        from ldaptor import ldapfilter
        from ldaptor.protocols import pureldap
        from ldap3.utils.conv import escape_filter_chars

        entries = []

        def handler(msg):
            if isinstance(msg, pureldap.LDAPSearchResultEntry):
                entries.append(msg)
                return False
            return isinstance(msg, pureldap.LDAPSearchResultDone)

        done = defer.Deferred()

        def finished(msg):
            if handler(msg):
                done.callback(None)
            return isinstance(msg, pureldap.LDAPSearchResultDone)
        request = pureldap.LDAPSearchRequest(
            baseObject=self.slapd.people_dn, scope=pureldap.LDAP_SCOPE_wholeSubtree,
            sizeLimit=2, attributes=[b"uid", b"memberOf"],
            filter=ldapfilter.parseFilter(FILTER.replace("{username}",
                                                         escape_filter_chars(user))))
        self.search.send_multiResponse(request, finished)
        yield done
        if self.idle:
            conn = self.idle.pop()
        else:
            wait = defer.Deferred()
            self.waiting.append(wait)
            conn = yield wait
        try:
            yield conn.bind(entries[0].objectName, password)
        finally:
            if self.waiting:
                self.waiting.pop(0).callback(conn)
            else:
                self.idle.append(conn)
        return True

    def close(self):
        for proto in [self.search] + self.idle:
            proto.transport.loseConnection()


class Reactor:
    """pushproxy's LdapDirectory (reactor-native client, own BER, pipelined)."""

    name = "pushproxy reactor-native"

    def __init__(self, reactor, slapd):
        from pushproxy.config import GroupMode, LdapConfig, LdapServer
        from pushproxy.ldapauth import LdapDirectory
        from pushproxy.metrics import Counters

        config = LdapConfig(
            servers=(LdapServer(slapd.url, "127.0.0.1", slapd.port, False),), start_tls=False,
            ca_file=None, bind_dn=slapd.service_dn, bind_password=slapd.service_password,
            user_base=slapd.people_dn, user_filter=FILTER, bind_template=None,
            required_groups=(), group_mode=GroupMode.MEMBER_OF, group_base=None,
            connect_timeout=3, response_timeout=5, backoff=30, pool_size=THREADS,
            max_queue=100000)
        self.directory = LdapDirectory(config, reactor, Counters())

    @defer.inlineCallbacks
    def login(self, user, password):
        from pushproxy.decision import PrimaryStatus

        result = yield self.directory.authenticate(user, password)
        if result.status is not PrimaryStatus.OK:
            raise RuntimeError(f"{user}: {result}")
        return True

    def close(self):
        self.directory.stop()


@defer.inlineCallbacks
def run_one(client, logins, concurrency: int, slapd_pid: int):
    """(seconds, process CPU seconds, slapd CPU seconds) for ``logins``."""
    sem = defer.DeferredSemaphore(concurrency)
    cpu0, slapd0, t0 = time.process_time(), cpu_of(slapd_pid), time.monotonic()
    results = yield defer.gatherResults([sem.run(client.login, u, p) for u, p in logins],
                                        consumeErrors=True)
    wall = time.monotonic() - t0
    if not all(results):
        raise RuntimeError("a login failed")
    return wall, time.process_time() - cpu0, cpu_of(slapd_pid) - slapd0


@defer.inlineCallbacks
def main(reactor, args):
    from tests.integration.slapd import Slapd

    people = users("lc", args.n)
    with tempfile.TemporaryDirectory(prefix="bench-ldapclients-") as tmp:
        slapd = Slapd(extra_users=people, extra_users_groups=["vpn-users"], loglevel="0",
                      base_dir=tmp)
        slapd.start()
        try:
            kinds = [Ldap3Threads, Ldaptor, Reactor]
            try:
                import ldap  # noqa: F401

                kinds.insert(1, PythonLdapThreads)
            except ImportError:
                print("python-ldap not installed: skipped")
            clients = [kind(reactor, slapd) for kind in kinds]
            for client in clients:
                if hasattr(client, "start"):
                    yield client.start()
                yield run_one(client, people[:200], args.concurrency, slapd.pid)  # warm up
            figures = {c.name: [] for c in clients}
            for _ in range(args.rounds):
                for client in clients:
                    figures[client.name].append(
                        (yield run_one(client, people, args.concurrency, slapd.pid)))
            print(f"{args.n} logins (search + bind) per round, {args.concurrency} in flight, "
                  f"{args.rounds} rounds, medians; load {os.getloadavg()[0]:.2f}")
            print(f"{'client':28} {'logins/s':>9} {'CPU ms/login':>13} {'slapd ms/login':>15}")
            for name, rows in figures.items():
                wall = statistics.median(r[0] for r in rows)
                cpu = statistics.median(r[1] for r in rows)
                sl = statistics.median(r[2] for r in rows)
                print(f"{name:28} {args.n / wall:9.0f} {cpu / args.n * 1e3:13.3f} "
                      f"{sl / args.n * 1e3:15.3f}")
            for client in clients:
                client.close()
        finally:
            slapd.stop()


def cli(argv=None) -> None:
    """Parse options and run every candidate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="users (one login each) per round")
    parser.add_argument("--concurrency", type=int, default=64, help="logins in flight")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    task.react(main, [args])


if __name__ == "__main__":
    cli()
