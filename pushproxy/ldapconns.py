"""Kept LDAP connections per directory server, for `pushproxy.ldapauth`.

Two kinds, because a bind changes who a connection is and RFC 4511 4.2.1
forbids other operations on a connection while a bind is in flight:

- search connections, bound once as the service account and shared: every
  user search is pipelined onto them (message ids tell the answers apart);
- user connections, each lent to one login at a time for its bind (and, in
  direct-bind mode, the searches it then makes as the user), at most
  ``pool_size`` per server; further logins wait for one to come back.

Opening a connection is TCP (connect timeout), TLS (ldaps:// or StartTLS,
the certificate verified against ``ldap.ca_file`` or the system trust store,
and the host name checked), then the service bind for search connections.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer, endpoints, ssl
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from pushproxy.config import LdapConfig, LdapServer
from pushproxy.ldapclient import (LdapClientProtocol, LdapConnectionLost, LdapError,
                                  ServerActivity)
from pushproxy.ldapfront import ber
from pushproxy.tlsnames import NameCheckedTLS

# A search connection takes this many operations in flight before a second
# one is opened beside it (slapd reads one connection in one thread).
PIPELINE_SPREAD = 16
SEARCH_CONNECTIONS = 2


def tls_options(config: LdapConfig, host: str):
    """Client TLS options: the certificate verified (ca_file or system store), the name checked."""
    if config.ca_file:
        with open(config.ca_file, "rb") as f:
            pem = f.read()
        certs = [ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
                 for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]]
        trust = ssl.trustRootFromCertificates(certs)
    else:
        trust = ssl.platformTrust()
    # Not optionsForClientTLS itself: its name check lets a certificate without
    # usable subjectAltNames through (see tlsnames.NameCheckedTLS).
    return NameCheckedTLS(host, trust)


class ServerFailedError(LdapError):
    """A connection to the server could not be set up (connect, TLS or service bind)."""



def confirmed_timeout(reactor, d: defer.Deferred, seconds: float) -> defer.Deferred:
    """``d``, cancelled if it has not fired ``seconds`` later *and* after one more
    turn of the event loop.

    A timer that runs late because the process itself stood still (a full garbage
    collection, an event loop seconds behind under a burst) runs before the loop
    polls the sockets, so a connection that completed meanwhile would be counted
    as a connect timeout and the server marked failed: a busy daemon read as a
    broken directory (issue 22). The extra turn lets the loop see it first.
    """
    def expired():
        nonlocal timer
        timer = reactor.callLater(0, confirm)

    def confirm():
        nonlocal timer
        timer = None
        if not d.called:
            d.cancel()

    timer = reactor.callLater(seconds, expired)

    def settled(result):
        if timer is not None and timer.active():
            timer.cancel()
        return result

    return d.addBoth(settled)

class ServerConnections:
    """The kept connections to one server."""

    def __init__(self, reactor, server: LdapServer, config: LdapConfig):
        self.reactor = reactor
        self.server = server
        self.config = config
        self._tls = None
        self._search: list[LdapClientProtocol] = []
        self._search_waiters: list[defer.Deferred] = []  # while a search connection opens
        # What the server answered, on all its connections: an operation that
        # timed out while the server answered others is slow, not hung.
        self.activity = ServerActivity()
        self._idle: list[LdapClientProtocol] = []
        self._lent = 0  # user connections lent out or being opened
        self._waiting: deque[defer.Deferred] = deque()
        self.closing = False

    def _options(self):
        if self._tls is None:
            self._tls = tls_options(self.config, self.server.host)
        return self._tls

    @defer.inlineCallbacks
    def open(self, service: bool):
        """A new connection: TCP (+TLS), and the service bind when ``service``."""
        cfg = self.config
        # Twisted's own connect timeout is only the backstop: `confirmed_timeout`
        # gives up on the connection (see there why not Twisted's timer).
        endpoint = endpoints.HostnameEndpoint(self.reactor, self.server.host,
                                              self.server.port,
                                              timeout=2 * cfg.connect_timeout + 1)
        try:
            options = self._options() if self.server.use_ssl or cfg.start_tls else None
        except Exception as exc:  # an unreadable or malformed ca_file
            raise ServerFailedError(f"TLS setup failed: {type(exc).__name__}: {exc}") from None
        if self.server.use_ssl:
            endpoint = endpoints.wrapClientTLS(options, endpoint)
        factory = Factory.forProtocol(lambda: LdapClientProtocol(
            self.reactor, cfg.response_timeout, activity=self.activity))
        try:
            proto = yield confirmed_timeout(self.reactor, endpoint.connect(factory),
                                            cfg.connect_timeout)
        except defer.CancelledError:
            raise ServerFailedError(f"connect failed: no connection within "
                                    f"{cfg.connect_timeout:g} s") from None
        except Exception as exc:  # refused, unreachable, DNS
            raise ServerFailedError(f"connect failed: {type(exc).__name__}: {exc}") from None
        if hasattr(proto, "wrappedProtocol"):  # under wrapClientTLS
            proto = proto.wrappedProtocol
        try:
            if cfg.start_tls:
                yield proto.start_tls(options)
            if service and cfg.bind_dn is not None:
                result = yield proto.bind(cfg.bind_dn, cfg.bind_password or "")
                if result.code != ber.SUCCESS:
                    raise ServerFailedError(f"service account bind failed: {result.code} "
                                            f"{result.message}")
        except BaseException:
            proto.abort(LdapConnectionLost("setup failed"))
            raise
        return proto

    # -- search connections (shared, pipelined) --

    def search_connection(self) -> defer.Deferred:
        """A service-bound connection to pipeline a search on."""
        if self.closing:
            return defer.fail(LdapConnectionLost("directory connections are closing"))
        best = self.ready_search_connection()
        if best is not None:
            return defer.succeed(best)
        waiter = defer.Deferred()
        self._search_waiters.append(waiter)
        if len(self._search_waiters) == 1:  # the first asks for the connection, all share it
            self.open(service=True).addBoth(self._search_opened)
        return waiter

    def ready_search_connection(self) -> LdapClientProtocol | None:
        """`search_connection`'s answer when it needs no wait (a kept connection takes
        the search), without a Deferred: the usual case of every login; else None."""
        if self.closing:
            return None
        self._search = [p for p in self._search if not p.closed]
        # A retiring connection (an operation timed out on it alone) takes no new work.
        live = [p for p in self._search if not p.retiring]
        best = min(live, key=lambda p: p.in_flight, default=None)
        if best is not None and (best.in_flight < PIPELINE_SPREAD
                                 or len(live) >= SEARCH_CONNECTIONS or self._search_waiters):
            return best
        return None

    def _search_opened(self, result) -> None:
        waiters, self._search_waiters = self._search_waiters, []
        if isinstance(result, LdapClientProtocol):
            if self.closing:
                result.close()
                result = Failure(LdapConnectionLost("directory connections are closing"))
            else:
                self._search.append(result)
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    # -- user connections (one login at a time) --

    def borrow(self) -> defer.Deferred:
        """A connection for one login's bind; give it back with `give_back`."""
        if self.closing:
            return defer.fail(LdapConnectionLost("directory connections are closing"))
        proto = self.borrow_idle()
        if proto is not None:
            return defer.succeed(proto)
        if self._lent < self.config.pool_size:
            self._lent += 1
            return self.open(service=False).addErrback(self._open_failed)
        waiter = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def borrow_idle(self) -> LdapClientProtocol | None:
        """An idle connection lent at once, without a Deferred (give it back with
        `give_back`); None when none is idle or the connections are closing."""
        if self.closing:
            return None
        while self._idle:
            proto = self._idle.pop()
            if not proto.closed:
                self._lent += 1
                return proto
        return None

    def _open_failed(self, failure):
        self._lent -= 1
        self._wake()
        return failure

    def give_back(self, proto: LdapClientProtocol, healthy: bool = True) -> None:
        """Return a lent connection (closed unless ``healthy`` and idle)."""
        if not healthy or proto.closed or proto.in_flight or self.closing:
            if not proto.closed:
                proto.close()
            self._lent -= 1
            self._wake()
            return
        if self._waiting:
            self._waiting.popleft().callback(proto)
            return
        self._lent -= 1
        self._idle.append(proto)

    def _wake(self) -> None:
        """A slot freed up: open a connection for the first waiter."""
        if self._waiting and self._lent < self.config.pool_size:
            waiter = self._waiting.popleft()
            self._lent += 1
            self.open(service=False).addErrback(self._open_failed).chainDeferred(waiter)

    def drop(self, error: LdapError | None = None) -> None:
        """Close every connection (the server failed): what is in flight fails."""
        error = error or LdapConnectionLost("server marked failed")
        for proto in self._search + self._idle:
            proto.abort(error)
        self._search, self._idle = [], []
        # Logins queued for a user connection would otherwise wait out the
        # timeouts one after another on a hung server: they fail over now.
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            waiter.errback(LdapConnectionLost("server marked failed while waiting for a "
                                              "connection"))

    def close(self) -> None:
        """Close idle connections now, lent ones when they come back; refuse new work."""
        self.closing = True
        for proto in self._idle:
            proto.close()
        self._idle = []
        for proto in self._search:
            if proto.in_flight:  # answered or timed out by then: no login cut short
                self.reactor.callLater(self.config.response_timeout + 1, proto.close)
            else:
                proto.close()
        self._search = []
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            waiter.errback(LdapConnectionLost("directory connections are closing"))

