"""HTTP read deadlines that trickling bytes cannot extend.

Twisted's HTTPChannel has one idle timer that every received byte restarts,
so a client sending one header line every 25 s keeps its connection (and a
descriptor) forever (issue 14, finding 3). `DeadlineChannel` adds absolute
deadlines, one per phase of a request:

    connected / first byte of a keep-alive request --head--> headers complete
      --body (only when a body follows)--> body complete
      --(no deadline: the response is ours to produce; long-polls wait here)-->
    response finished --idle--> first byte of the next request

A deadline that passes closes the connection at once (no answer: a client
that cannot send a request head in ``head`` seconds gets none), counted in
``http_deadline_closed{listener, phase}``. The first deadline starts when the
TCP connection is accepted, so a TLS handshake (TLS sits under this channel)
is bounded by it too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from twisted.web import http

from pushproxy import logs

log = logging.getLogger("pushproxy.http")


@dataclass(frozen=True)
class Deadlines:
    """Seconds allowed for each phase of reading a request."""

    head: float = 10.0  # request line + headers (and a TLS handshake before them)
    body: float = 30.0  # the body, once the headers are in
    idle: float = 60.0  # between a finished response and the next request's first byte


_DEFAULTS = Deadlines()


class DeadlineChannel(http.HTTPChannel):
    """An HTTP/1.1 channel with absolute read deadlines (see the module docstring).

    Reads ``site.deadlines`` (a `Deadlines`), ``site.deadline_name`` (the
    counter label), ``site.counters`` and ``site.budget`` (optional, the
    listener's `ConnectionBudget`, told whether we wait on the peer) from
    the Site it serves.
    """

    _deadline = None  # the armed IDelayedCall
    phase = "head"  # head | body | handling | idle

    def connectionMade(self) -> None:
        """Start the head deadline at accept time (covers a TLS handshake)."""
        super().connectionMade()
        self._arm("head")

    def dataReceived(self, data: bytes) -> None:
        """A keep-alive connection's first byte starts the next request's head deadline."""
        if self.phase == "idle" and data:
            self._arm("head")
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        """Headers in: the body deadline, when a body follows (length unknown or > 0)."""
        super().allHeadersReceived()
        if self.length != 0 and self.phase == "head":
            self._arm("body")

    def allContentReceived(self) -> None:
        """The request is whole: no deadline while we produce the answer (long-polls)."""
        self._arm("handling")
        super().allContentReceived()

    def requestDone(self, request) -> None:
        """Answered: wait ``idle`` seconds for the next request (buffered bytes count).

        Also when the connection is to close: a client that does not read the
        answer would otherwise hold the socket until the output drains.
        """
        self._arm("idle")
        super().requestDone(request)

    def connectionLost(self, reason) -> None:
        """Nothing to time out any more."""
        self._cancel()
        budget = self._budget()
        if budget is not None:
            budget.working(self)
        super().connectionLost(reason)

    def _arm(self, phase: str) -> None:
        # Three or four times per request: the site is looked up once here.
        self._cancel()
        self.phase = phase
        site = getattr(self, "site", None)
        seconds = getattr(getattr(site, "deadlines", None) or _DEFAULTS, phase, None)
        if seconds:
            self._deadline = self.callLater(seconds, self._expired, phase)
        budget = getattr(site, "budget", None)
        if budget is not None:
            # Reading a request or between requests: we wait on the peer, and
            # a full listener may evict us. Answering (a long-poll): never.
            if phase == "handling":
                budget.working(self)
            else:
                reactor = getattr(site, "reactor", None)
                budget.waiting(self, reactor.seconds() if reactor is not None else 0.0,
                               self._evicted)

    def _budget(self):
        return getattr(getattr(self, "site", None), "budget", None)

    def _evicted(self) -> bool:
        """Closed to make room for a new connection (the listener is full)."""
        if self.transport is None or self.phase == "handling":
            return False
        self._cancel()
        self.transport.abortConnection()
        return True

    def _cancel(self) -> None:
        deadline = self._deadline
        if deadline is not None:
            if deadline.active():
                deadline.cancel()
            self._deadline = None

    def _expired(self, phase: str) -> None:
        self._deadline = None
        site = getattr(self, "site", None)
        name = getattr(site, "deadline_name", "http")
        counters = getattr(site, "counters", None)
        if counters is not None:
            counters.inc("http_deadline_closed", listener=name, phase=phase)
        if phase != "idle":
            # Idle keep-alive connections closing is routine; a request that
            # did not arrive in time is worth a (debug) line.
            logs.event(log, logging.DEBUG, "http.deadline", listener=name, phase=phase)
        if self.transport is not None:
            # Not loseConnection: a client that does not read would keep the
            # socket until its buffered output drains.
            self.transport.abortConnection()
