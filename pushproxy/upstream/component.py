"""The daemon's upstream clients: one `UpstreamClient` per ``primary: radius`` RADIUS client.

``by_client`` is shared with the RADIUS listeners. On reload a client whose
upstream settings changed gets a new `UpstreamClient`; the old one keeps its
socket until its exchanges in flight are over (they are bounded by their
timeouts), then closes.
"""

from __future__ import annotations

from twisted.internet import defer, task

from pushproxy.metrics import Counters
from pushproxy.radius.attributes import Names
from pushproxy.upstream.client import UpstreamClient


class UpstreamClients:
    """Creates, swaps on reload and stops the upstream clients."""

    def __init__(self, reactor, counters: Counters, names: Names):
        self.reactor = reactor
        self.counters = counters
        self.names = names
        self.by_client: dict[str, UpstreamClient] = {}
        self.started = False

    def configure(self, clients) -> None:
        """Match ``clients`` (config RadiusClient objects): new, changed and removed ones."""
        wanted = {c.name: c.upstream for c in clients if c.upstream is not None}
        for name in list(self.by_client):
            current = self.by_client[name]
            if wanted.get(name) != current.settings:
                del self.by_client[name]
                if self.started:
                    # Let exchanges in flight finish (bounded by their timeouts).
                    grace = current.settings.worst_case + 1
                    task.deferLater(self.reactor, grace, current.stop)
        for name, settings in wanted.items():
            if name not in self.by_client:
                client = UpstreamClient(settings, clock=self.reactor, counters=self.counters,
                                        names=self.names, client_name=name)
                if self.started:
                    client.start(self.reactor)
                self.by_client[name] = client

    def start(self) -> None:
        """Open every client's socket."""
        self.started = True
        for client in self.by_client.values():
            client.start(self.reactor)

    @defer.inlineCallbacks
    def stop(self):
        """Close every socket."""
        self.started = False
        for client in list(self.by_client.values()):
            yield client.stop()
