"""Connection budgets for every TCP listener: a total cap and a per-source cap, at accept time.

One slow client must not take the daemon to its descriptor limit (issue 14,
finding 3): 1,100 connections that each send a header line every 25 s
stopped every push, the LDAP front end and /healthz. A listener's factory is
wrapped in `LimitedFactory`; a connection over a cap is closed at once
(Twisted closes the socket when ``buildProtocol`` returns None), counted in
``connections_refused{listener, reason}`` and logged at most once a minute
per listener, reason and source (`LogLimiter`). At the total cap, the
connection that has waited longest on its peer is closed instead
(``connections_evicted``; see `ConnectionBudget`).

A *source* is the peer's IP address (IPv4-mapped IPv6 unmapped); an IPv6
peer counts by its /64, since one host usually holds a whole /64 and could
otherwise pick a fresh address per connection. Sources in ``exempt``
(``approval.trusted_proxies``) are held only to the total: the per-source
cap cannot see behind a reverse proxy, which then needs limits of its own.

    budget = ConnectionBudget("approval", total=2000, per_source=32)
    reactor.listenTCP(port, LimitedFactory(site, budget, counters, reactor))
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections import Counter, OrderedDict
from typing import Callable

from twisted.internet.interfaces import IReactorTCP
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from pushproxy import logs
from pushproxy.netaddr import holds, peer_address
from pushproxy.radius.loglimit import LogLimiter

log = logging.getLogger("pushproxy.connlimit")


class Admission(enum.Enum):
    """What the budget says about a new connection."""

    ADMITTED = "admitted"
    TOTAL = "total"  # the listener is at its total cap
    PER_SOURCE = "per_source"  # this source is at its cap


def source_key(host: str | None) -> str:
    """The key a peer is counted under: its IPv4 address, or its IPv6 /64."""
    address = peer_address(host or "")
    if address is None:
        return host or "?"  # not an IP peer (UNIX socket, test transport): one key each
    if address.version == 6:
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)


class ConnectionBudget:
    """Open connections of one listener (or a group of listeners), by source.

    Bookkeeping: `admit` decides and counts, `release` gives the slot back.
    ``per_source`` 0 turns the per-source cap off.

    Protocols also report which connections are *waiting on their peer*
    (`waiting`: an HTTP request not yet read, a keep-alive gap, an LDAP
    connection between messages) and which are not (`working`: a long-poll
    or a bind waiting for a phone). When the total is reached, `evict`
    closes the connection that has waited longest, so attackers from more
    addresses than ``total / per_source`` cannot lock devices out by
    holding slots with slow requests; a long-poll is never chosen.
    """

    def __init__(self, name: str, *, total: int, per_source: int, exempt: tuple = (),
                 min_wait: float = 1.0):
        self.name = name
        self.total = total
        self.per_source = per_source
        self.exempt = tuple(exempt)  # networks held only to the total
        self.min_wait = min_wait  # a connection younger than this in its wait is kept
        self.open = 0
        self._by_source: Counter[str] = Counter()
        self._waiting: OrderedDict[object, tuple[float, Callable[[], bool]]] = OrderedDict()

    def admit(self, host: str | None, *, over_total: bool = False) -> tuple[Admission, str]:
        """Decide on a new connection from ``host``; an admitted one is counted.

        ``over_total``: a slot was just freed by `evict` (its release comes a
        moment later), so the total is not checked again.
        """
        key = source_key(host)
        if self.per_source and self._by_source[key] >= self.per_source \
                and not self._exempt(host):
            return Admission.PER_SOURCE, key
        if self.open >= self.total and not over_total:
            return Admission.TOTAL, key
        self.open += 1
        self._by_source[key] += 1
        return Admission.ADMITTED, key

    def waiting(self, conn: object, now: float, close: Callable[[], bool]) -> None:
        """``conn`` now waits on its peer (since ``now``); ``close`` evicts it (False: it may not)."""
        self._waiting.pop(conn, None)
        self._waiting[conn] = (now, close)

    def working(self, conn: object) -> None:
        """``conn`` is busy on our side (or gone): never evict it."""
        self._waiting.pop(conn, None)

    def evict(self, now: float) -> bool:
        """Close the connection waiting longest (at least ``min_wait``); whether one was."""
        while self._waiting:
            conn, (since, close) = next(iter(self._waiting.items()))
            if now - since < self.min_wait:
                return False
            del self._waiting[conn]
            if close():
                return True
        return False

    def release(self, key: str) -> None:
        """An admitted connection closed."""
        self.open -= 1
        self._by_source[key] -= 1
        if self._by_source[key] <= 0:
            del self._by_source[key]

    def from_source(self, host: str | None) -> int:
        """Open connections counted for ``host``'s source."""
        return self._by_source.get(source_key(host), 0)

    def _exempt(self, host: str | None) -> bool:
        address = peer_address(host or "")
        return address is not None and any(holds(net, address) for net in self.exempt)


class _Slot(ProtocolWrapper):
    """The admitted connection's wrapper: gives the slot back when it closes."""

    slot_key = ""

    def connectionLost(self, reason):
        """Release the slot once, then let the wrapped protocol know."""
        key, self.slot_key = self.slot_key, ""
        if key:
            self.factory.budget.release(key)
        ProtocolWrapper.connectionLost(self, reason)


class LimitedFactory(WrappingFactory):
    """Wraps a listener's factory: connections over the budget are closed on accept."""

    protocol = _Slot
    noisy = False

    def __init__(self, wrapped, budget: ConnectionBudget, counters, clock,
                 logs_limit: LogLimiter | None = None):
        super().__init__(wrapped)
        self.budget = budget
        self.counters = counters
        self.clock = clock
        self.log_limit = logs_limit or LogLimiter(every=60.0, max_lines=20)

    def buildProtocol(self, addr):
        """The wrapped protocol, or None (the socket is closed at once) over a cap."""
        host = getattr(addr, "host", None)
        verdict, key = self.budget.admit(host)
        if verdict is Admission.TOTAL and self.budget.evict(self.clock.seconds()):
            self.counters.inc("connections_evicted", listener=self.budget.name)
            verdict, key = self.budget.admit(host, over_total=True)
        if verdict is not Admission.ADMITTED:
            self.counters.inc("connections_refused", listener=self.budget.name,
                              reason=verdict.value)
            suppressed = self.log_limit.note((verdict, key), self.clock.seconds())
            if suppressed is not None:
                logs.event(log, logging.WARNING, "connection.refused",
                           listener=self.budget.name, reason=verdict.value, source=key,
                           open=self.budget.open, total=self.budget.total,
                           per_source=self.budget.per_source, suppressed=suppressed or None)
            return None
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            self.budget.release(key)
            return None
        wrapper = self.protocol(self, inner)
        wrapper.slot_key = key
        return wrapper


def listen(reactor: IReactorTCP, port: int, factory, budget: ConnectionBudget, counters, *,
           interface: str = "", tls_options=None, reuse_port: bool = False):
    """Listen on ``port`` with ``budget`` checked before anything else (TLS included).

    TLS sits inside the limiter so a refused connection costs no handshake,
    and the handshake itself runs under the protocol's read deadline.
    ``reuse_port``: other worker processes share the port (`pushproxy.reuseport`);
    the budget is then this process's, so a node holds up to workers x the caps.
    """
    if tls_options is not None:
        factory = TLSMemoryBIOFactory(tls_options, False, factory)
    limited = LimitedFactory(factory, budget, counters, reactor)
    if reuse_port:
        from pushproxy import reuseport

        return reuseport.listen_tcp(reactor, port, limited, interface=interface)
    return reactor.listenTCP(port, limited, interface=interface)
