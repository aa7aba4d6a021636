"""Service wiring: the only place that builds the pieces and touches the reactor.

`Daemon` takes a validated `Config`, a reactor and a push provider, and owns
the life cycle:

- start: components (approval service, metrics), the directory pool, then the
  RADIUS listeners;
- reload: a new validated config is applied in place (clients and secrets,
  LDAP settings, push policy, audit path) while pending logins carry on;
- stop: new requests are refused, pending logins get ``daemon.stop_grace``
  seconds to finish, the rest are rejected and answered, then everything closes.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from twisted.internet import defer, task, threads

from pushproxy import logs
from pushproxy.audit import AuditLog
from pushproxy.config import Config
from pushproxy.engine import Engine
from pushproxy.ldapauth import LdapDirectory
from pushproxy.metrics import Counters
from pushproxy.overload import Admission, LoopLag
from pushproxy.policy import interesting_groups
from pushproxy.push import PushProvider
from pushproxy.radius import codec
from pushproxy.radius.attributes import Names
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.server import ClientTable, RadiusProtocol
from pushproxy.upstream.component import UpstreamClients
from pushproxy.upstream.primary import UpstreamStates

log = logging.getLogger("pushproxy.service")

POLL = 0.05  # seconds between checks while draining pending logins


class Daemon:
    """The running proxy: RADIUS listeners, engine, directory and provider."""

    def __init__(self, config: Config, reactor, provider: PushProvider, *,
                 counters: Counters | None = None, directory=None, wallclock=time.time,
                 worker_index: int = 0):
        self.config = config
        # which of daemon.workers processes this is (pushproxy.workers); 0 when alone
        self.worker_index = worker_index
        self.reactor = reactor
        self.counters = counters or Counters()
        self.provider = provider
        self.audit = AuditLog(config.audit.path, self.counters)
        self.directory = directory or self._directory(config)
        self.engine = Engine(clock=reactor, directory=self.directory, provider=provider,
                             push=config.push, audit=self.audit, counters=self.counters,
                             wallclock=wallclock, policy=config.policy,
                             factors=provider if hasattr(provider, "verify_passcode") else None,
                             limits=config.push.limits,
                             delimiter=config.push.passcode_delimiter,
                             reply_map=config.reply_attributes)
        self.table = RetransmitTable(hold=config.radius.reply_cache_seconds)
        self.dictionary = codec.load_dictionary()
        self.clients = ClientTable(config.radius.clients)
        # primary: radius clients (issue 10)
        self.upstreams = UpstreamClients(reactor, self.counters, Names(self.dictionary))
        self.upstreams.configure(config.radius.all_clients)  # UDP and RadSec
        self.upstream_states = UpstreamStates()
        self.loop_lag = LoopLag(reactor)
        # Busy is not broken (issue 22): new requests are shed while a queue is over
        # its bound; the store's figures come from its runner, when it has one.
        self.admission = Admission(
            config.daemon.overload, pending=lambda: self.engine.pending,
            store=getattr(getattr(provider, "store", None), "runner", None), lag=self.loop_lag,
            ldap_queue=lambda: getattr(self.directory, "outstanding", 0))
        self.protocols: list[RadiusProtocol] = []
        # Accounting listeners (radius.accounting_listen): same clients, own retransmit table
        self.accounting: list = []  # of pushproxy.radius.accounting.AccountingProtocol
        self.accounting_table = RetransmitTable(hold=config.radius.reply_cache_seconds)
        self.ports = []
        self.components = []  # started before and stopped after the listeners

    def _directory(self, config: Config) -> LdapDirectory:
        groups = interesting_groups(config.policy)
        if config.reply_attributes is not None:
            groups |= config.reply_attributes.groups
        return LdapDirectory(config.ldap, self.reactor, self.counters, policy_groups=groups)

    def protocol(self) -> RadiusProtocol:
        """A RADIUS protocol instance sharing this daemon's state."""
        proto = RadiusProtocol(
            clients=self.clients, engine=self.engine,
            dictionary=self.dictionary, table=self.table, clock=self.reactor,
            counters=self.counters, default_no_device=self.config.push.no_device,
            receive_buffer=self.config.radius.receive_buffer, admission=self.admission,
            max_pending=self.config.daemon.overload.max_pending,
            upstreams=self.upstreams.by_client, upstream_states=self.upstream_states)
        self.protocols.append(proto)
        return proto

    @defer.inlineCallbacks
    def start(self):
        """Start components (approval service), the directory pool, then RADIUS listeners."""
        for component in self.components:
            yield component.start()
        self.loop_lag.start()
        if hasattr(self.directory, "start"):
            self.directory.start()
        self.upstreams.start()
        for host, port in self.config.radius.listen:
            if self.config.daemon.workers > 1:  # the other workers share the port
                from pushproxy import reuseport

                listening = reuseport.listen_udp(self.reactor, port, self.protocol(), host)
            else:
                listening = self.reactor.listenUDP(port, self.protocol(), interface=host)
            self.ports.append(listening)
            bound = listening.getHost()
            logs.event(log, logging.INFO, "radius.listening", address=bound.host, port=bound.port)
        for host, port in self.config.radius.accounting_listen:
            self._listen_accounting(host, port)

    def _listen_accounting(self, host: str, port: int) -> None:
        """One Accounting-Request listener, shared by workers like the auth port."""
        from pushproxy.radius.accounting import AccountingProtocol

        proto = AccountingProtocol(clients=self.clients, table=self.accounting_table,
                                   clock=self.reactor, counters=self.counters,
                                   dictionary=self.dictionary)
        self.accounting.append(proto)
        if self.config.daemon.workers > 1:
            from pushproxy import reuseport

            listening = reuseport.listen_udp(self.reactor, port, proto, host)
        else:
            listening = self.reactor.listenUDP(port, proto, interface=host)
        self.ports.append(listening)
        bound = listening.getHost()
        logs.event(log, logging.INFO, "radius.accounting_listening", address=bound.host,
                   port=bound.port)

    def reload(self, new: Config) -> list[str]:
        """Apply ``new`` in place; returns what still needs a restart to take effect."""
        old = self.config
        restart = [f"{section} changed: restart to apply" for section, a, b in (
            ("radius.listen", old.radius.listen, new.radius.listen),
            ("radius.accounting_listen", old.radius.accounting_listen,
             new.radius.accounting_listen),
            ("radius.radsec", old.radius.radsec, new.radius.radsec),
            ("approval", old.approval, new.approval),
            ("daemon.metrics_listen", old.daemon.metrics_listen, new.daemon.metrics_listen),
            ("daemon.metrics_max_connections(_per_source)",
             (old.daemon.metrics_max_connections, old.daemon.metrics_max_connections_per_source),
             (new.daemon.metrics_max_connections, new.daemon.metrics_max_connections_per_source)),
            ("log.format/log.syslog", (old.log.format, old.log.syslog),
             (new.log.format, new.log.syslog)),
            ("ldap_front (added or removed)", old.ldap_front is None,
             new.ldap_front is None),
            ("mail", old.mail, new.mail)) if a != b]
        for component in self.components:
            if hasattr(component, "reload") and new.ldap_front is not None:
                restart += component.reload(new)
        self.clients = ClientTable(new.radius.clients)
        for proto in self.accounting:
            proto.clients = self.clients
        self.accounting_table.hold = new.radius.reply_cache_seconds
        for proto in self.protocols:
            proto.clients = self.clients
            proto.default_no_device = new.push.no_device
        self.table.hold = new.radius.reply_cache_seconds
        self.upstreams.configure(new.radius.all_clients)
        self.engine.reply_map = new.reply_attributes
        groups_changed = (interesting_groups(new.policy) != interesting_groups(old.policy)
                          or new.reply_attributes != old.reply_attributes)
        if (new.ldap != old.ldap or groups_changed) and isinstance(self.directory, LdapDirectory):
            retired, self.directory = self.directory, self._directory(new)
            self.directory.start()
            self.engine.directory = self.directory
            # Logins already talking to the old directory finish there; its
            # threads are joined off the reactor thread.
            threads.deferToThread(retired.stop)
        self.engine.push = new.push
        self.admission.limits = new.daemon.overload
        for proto in self.protocols:
            proto.max_pending = new.daemon.overload.max_pending
        self.engine.policy = new.policy
        if self.engine.context is not None:  # opens the location databases again
            restart += self.engine.context.reload(new.context)
        elif new.context is not None:
            restart.append("context (added): restart to apply")
        self.engine.delimiter = new.push.passcode_delimiter
        self.engine.fatigue.limits = new.push.limits
        self.audit.path = new.audit.path
        self.audit.reopen()  # also the log-rotation hook
        logging.getLogger().setLevel(new.log.level.upper())
        self.config = new
        return restart

    def health(self) -> defer.Deferred:
        """Whether the directory (any server) and the store answer now, with details."""
        return defer.ensureDeferred(self._health())

    async def _health(self) -> dict:
        shed = self.admission.check()
        if shed is not None:
            # Busy, not down: probing now would wait in the very queues that are
            # full (and add to them). New requests are being shed; answer at once.
            return {"healthy": True, "status": "busy", "busy": shed.value,
                    "load": dataclasses.asdict(self.admission.load()),
                    "pending_logins": self.engine.pending}
        servers = await self.directory.probe() if hasattr(self.directory, "probe") else {}
        directory_ok = any(error is None for error in servers.values())
        store = {"ok": True}
        approval_store = getattr(self.provider, "store", None)
        if approval_store is not None:
            try:
                await approval_store.check_writable()
            except Exception as exc:  # any store failure means unhealthy, with the reason
                store = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        healthy = directory_ok and store["ok"]
        result = {"healthy": healthy, "status": "ok" if healthy else "down",
                  "directory": {"ok": directory_ok,
                                "servers": {url: err or "ok" for url, err in servers.items()}},
                  "store": store, "pending_logins": self.engine.pending}
        bus = self.provider.bus_health() if hasattr(self.provider, "bus_health") else None
        if bus is not None:
            # a node without its bus still decides logins (it polls the store): 200
            result["bus"] = bus
            if healthy and not bus["ok"]:
                result["status"] = "degraded"
        return result

    @defer.inlineCallbacks
    def stop(self):
        """Refuse new requests, let pending logins finish within the grace, reject the rest."""
        for proto in self.protocols:
            proto.accepting = False
        for component in self.components:
            if hasattr(component, "stop_accepting"):  # the LDAP front end's listeners
                yield component.stop_accepting()
        grace = self.config.daemon.stop_grace
        if self.engine.pending:
            logs.event(log, logging.INFO, "daemon.draining", pending=self.engine.pending,
                       grace_s=grace)
        yield self._drain(grace)
        self.engine.stop()  # withdraws pushes: those logins are rejected and answered now
        # Logins still in the directory stage end as soon as their bind returns.
        yield self._drain(self.config.ldap.connect_timeout + self.config.ldap.response_timeout)
        for port in self.ports:
            yield port.stopListening()
        self.ports = []
        yield self.upstreams.stop()
        for component in reversed(self.components):
            yield component.stop()
        if hasattr(self.directory, "stop"):
            yield threads.deferToThread(self.directory.stop)
        self.loop_lag.stop()
        self.audit.close()

    @defer.inlineCallbacks
    def _drain(self, limit: float):
        deadline = self.reactor.seconds() + limit
        while self.engine.pending and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, POLL, lambda: None)
