"""Service wiring: the only place that builds the pieces and touches the reactor.

`Daemon` takes a validated `Config`, a reactor and a push provider, and owns
the start and stop order: the directory pool and provider before the
listeners, and on stop the engine first (pending logins are rejected and
answered) before the listeners close.
"""

from __future__ import annotations

import logging
import time

from twisted.internet import defer

from pushproxy import logs
from pushproxy.audit import AuditLog
from pushproxy.config import Config
from pushproxy.engine import Engine
from pushproxy.ldapauth import LdapDirectory
from pushproxy.metrics import Counters
from pushproxy.push import PushProvider
from pushproxy.radius import codec
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.server import ClientTable, RadiusProtocol

log = logging.getLogger("pushproxy.service")


class Daemon:
    """The running proxy: RADIUS listeners, engine, directory and provider."""

    def __init__(self, config: Config, reactor, provider: PushProvider, *,
                 counters: Counters | None = None, directory=None, wallclock=time.time):
        self.config = config
        self.reactor = reactor
        self.counters = counters or Counters()
        self.provider = provider
        self.audit = AuditLog(config.audit.path, self.counters)
        self.directory = directory or LdapDirectory(config.ldap, reactor, self.counters)
        self.engine = Engine(clock=reactor, directory=self.directory, provider=provider,
                             push=config.push, audit=self.audit, counters=self.counters,
                             wallclock=wallclock)
        self.table = RetransmitTable(hold=config.radius.reply_cache_seconds)
        self.dictionary = codec.load_dictionary()
        self.ports = []
        self.components = []  # started before and stopped after the listeners

    def protocol(self) -> RadiusProtocol:
        """A RADIUS protocol instance sharing this daemon's state."""
        return RadiusProtocol(
            clients=ClientTable(self.config.radius.clients), engine=self.engine,
            dictionary=self.dictionary, table=self.table, clock=self.reactor,
            counters=self.counters, default_no_device=self.config.push.no_device,
            receive_buffer=self.config.radius.receive_buffer)

    @defer.inlineCallbacks
    def start(self):
        """Start components (approval service), the directory pool, then RADIUS listeners."""
        for component in self.components:
            yield component.start()
        if hasattr(self.directory, "start"):
            self.directory.start()
        for host, port in self.config.radius.listen:
            listening = self.reactor.listenUDP(port, self.protocol(), interface=host)
            self.ports.append(listening)
            bound = listening.getHost()
            logs.event(log, logging.INFO, "radius.listening", address=bound.host, port=bound.port)

    @defer.inlineCallbacks
    def stop(self):
        """Reject and answer pending logins, then close listeners, components and pools."""
        self.engine.stop()
        for port in self.ports:
            yield port.stopListening()
        self.ports = []
        for component in reversed(self.components):
            yield component.stop()
        if hasattr(self.directory, "stop"):
            self.directory.stop()
        self.audit.close()
