"""Builds the daemon from a validated config: the built-in approval service by default."""

from __future__ import annotations

import logging

from twisted.internet import defer, ssl, task, threads

from pushproxy.approval.presence import RelyingParty
from pushproxy import connlimit, logs
from pushproxy.approval.alerts import Alerter
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.pushtarget import EndpointRules
from pushproxy.approval.runner import ThreadRunner
from pushproxy.approval.service import ApprovalService
from pushproxy.approval.backends import open_store
from pushproxy.approval.webpush import VapidKeys, WebPushSender
from pushproxy.cluster import ClusterContext, build_context, cluster_mode
from pushproxy.config import ApprovalConfig, Config
from pushproxy.httpdeadline import Deadlines
from pushproxy.loginstate import StoreState
from pushproxy.metrics import Counters
from pushproxy.metrics_thread import MetricsServer
from pushproxy.service import Daemon

log = logging.getLogger("pushproxy.wiring")


class ApprovalComponent:
    """The approval service with its store thread, Web Push sender and HTTP listener."""

    def __init__(self, config: ApprovalConfig, reactor, counters: Counters, *,
                 insecure_push_endpoints: bool = False, reuse_port: bool = False,
                 cluster: ClusterContext | None = None):
        self.config = config
        self.reuse_port = reuse_port  # several workers share the listener (SO_REUSEPORT)
        self.reactor = reactor
        self.counters = counters
        self.insecure_push_endpoints = insecure_push_endpoints
        # insecure_push_endpoints (tests on loopback): http:// and private addresses.
        self.push_rules = EndpointRules(
            allow_private=config.allow_private_push_endpoints or insecure_push_endpoints,
            allow_http=insecure_push_endpoints)
        # A short timeout (SQLite's busy timeout, PostgreSQL's statement and lock
        # timeouts): a login must not wait long on another process's lock
        # (push.failmode decides instead); see ThreadRunner.
        self.runner = ThreadRunner(reactor, lambda: open_store(
            config.database, password=config.database_password, timeout=1.0,
            background_checkpoints=True), counters=counters)
        self.store = AsyncStore(self.runner)
        self.service = ApprovalService(
            store=self.store, reactor=reactor, counters=counters, vapid_public_key="",
            alerter=Alerter(reactor, counters, webhook=config.alert_webhook,
                            use_syslog=config.alert_syslog),
            wallclock=reactor.seconds, push_rules=self.push_rules,
            resolver=getattr(reactor, "nameResolver", None), cluster=cluster,
            relying_party=RelyingParty.from_public_url(config.public_url))
        self.port = None

    @defer.inlineCallbacks
    def start(self):
        """Open the store, retire transactions of a previous run, load keys, listen."""
        from pushproxy.approval.api import build_site

        yield self.runner.start()
        if self.service.cluster is not None:
            # other nodes' pushes stay: retire only this node's own stale work
            yield self.service.start_cluster()
        else:
            now = self.reactor.seconds()
            cancelled = yield self.store.cancel_pending(now)
            if cancelled:
                logs.event(log, logging.INFO, "approval.cancelled_stale", count=cancelled)
        pem = yield self.store.setting_or_create(
            "vapid_private_pem", lambda: VapidKeys.generate().to_pem().decode("ascii"))
        keys = VapidKeys.from_pem(pem.encode("ascii"))
        self.service.vapid_public_key = keys.public_key_b64url
        self.service.sender = WebPushSender(
            self.reactor, keys, self.config.vapid_subject,
            rules=self.push_rules)
        site = build_site(self.service, max_body=self.config.max_body, reactor=self.reactor,
                          counters=self.counters, max_failures=self.config.max_failures,
                          failure_window=self.config.failure_window,
                          trusted_proxies=self.config.trusted_proxies,
                          device_links=(self.config.public_url, self.config.enrollment_ttl),
                          deadlines=Deadlines(head=self.config.header_timeout,
                                              body=self.config.body_timeout,
                                              idle=self.config.keepalive_timeout))
        host, port = self.config.listen
        options = None
        if self.config.tls_cert:
            with open(self.config.tls_cert, "rb") as cert_file, \
                    open(self.config.tls_key, "rb") as key_file:
                cert = ssl.PrivateCertificate.loadPEM(cert_file.read() + key_file.read())
            options = cert.options()
        # The per-source cap sees the TCP peer: a trusted reverse proxy is held
        # only to the total and must limit its own clients (docs/security.md).
        budget = connlimit.ConnectionBudget(
            "approval", total=self.config.max_connections,
            per_source=self.config.max_connections_per_source,
            exempt=self.config.trusted_proxies)
        site.budget = budget  # channels report whether they wait on the peer (eviction)
        self.port = connlimit.listen(self.reactor, port, site, budget, self.counters,
                                     interface=host, tls_options=options,
                                     reuse_port=self.reuse_port)
        bound = self.port.getHost()
        logs.event(log, logging.INFO, "approval.listening", address=bound.host, port=bound.port,
                   public_url=self.config.public_url)

    @defer.inlineCallbacks
    def stop(self):
        """Close the listener, then the store thread."""
        if self.port is not None:
            yield self.port.stopListening()
        yield self.service.flush_expired()
        if self.service.cluster is not None:
            self.service.stop_cluster()
        self.runner.stop()


class LoginStateComponent:
    """Cluster mode: the engine's decision state in the store, its shared key read at
    start, and its expired rows deleted every ``PURGE_EVERY`` seconds (by every node:
    the deletes are idempotent, and a dead node's rows go too)."""

    PURGE_EVERY = 300.0

    def __init__(self, state, reactor):
        self.state = state
        self.reactor = reactor
        self._purge = None

    @defer.inlineCallbacks
    def start(self):
        """Read (first node: create) the key every node derives digests and join keys from."""
        yield self.state.start()
        self._purge = task.LoopingCall(self.state.purge, self.reactor.seconds)
        self._purge.clock = self.reactor
        self._purge.start(self.PURGE_EVERY, now=False)

    def stop(self):
        """Stop purging; the store runner belongs to the approval component."""
        if self._purge is not None and self._purge.running:
            self._purge.stop()
        return defer.succeed(None)


class MetricsComponent:
    """The admin listener: /metrics (Prometheus) and /healthz."""

    def __init__(self, listen: tuple[str, int], daemon: Daemon, approval: ApprovalComponent):
        self.listen = listen
        settings = daemon.config.daemon
        self.budget = connlimit.ConnectionBudget(
            "metrics", total=settings.metrics_max_connections,
            per_source=settings.metrics_max_connections_per_source)
        self.daemon = daemon
        self.approval = approval
        self.server = None

    def start(self):
        """Listen; the gauges read live state at scrape time."""
        from pushproxy import metrics_http

        gauges = {
            "pending_logins": ("Logins waiting for a decision", lambda: self.daemon.engine.pending),
            "pending_approvals": ("Approval requests waiting for a device answer",
                                  lambda: self.approval.service.waiting),
        }
        # Admission control's inputs (pushproxy.overload): read without waiting on
        # the store thread, so a scrape stays fast however long its queue is.
        admission = self.daemon.admission
        for name, doc, field in (
                ("store_queue", "Store calls queued or running", "store_queue"),
                ("store_queue_age_seconds", "Age of the oldest unfinished store call",
                 "store_age"),
                ("store_running_seconds", "How long the current store call has run",
                 "store_running"),
                ("ldap_queue", "LDAP conversations queued or running", "ldap_queue"),
                ("loop_lag_seconds", "How late the event loop runs its timers", "loop_lag")):
            gauges[name] = (doc, lambda field=field: getattr(admission.load(), field))
        gauges["overloaded"] = ("1 while new requests are shed (busy), else 0",
                                lambda: int(admission.check() is not None))
        cluster = self.approval.service.cluster
        if cluster is not None:
            gauges["bus_connected"] = ("1 while the cluster notification bus listens, else 0",
                                       lambda: int(bool(getattr(cluster.bus, "connected", 1))))
        gauges["shed_waiting"] = ("Shed requests remembered so that their resends are "
                                  "served before newcomers", lambda: admission.waiting)
        from pushproxy.gcwatch import FREEZER, WATCH  # collector pauses (issue 16)
        gauges.update(WATCH.install().gauges())
        gauges.update(FREEZER.gauges())
        # Served by a process of its own: a scrape must not wait for a busy daemon.
        self.server = MetricsServer(
            self.listen, metrics_http.registry(self.daemon.counters, gauges),
            metrics_http.HealthResource(self.daemon.health, self.daemon.reactor),
            self.daemon.reactor, budget=self.budget, counters=self.daemon.counters)
        host, port = self.server.start()
        logs.event(log, logging.INFO, "metrics.listening", address=host, port=port)
        return defer.succeed(None)

    def stop(self):
        """Close the listener (its thread is joined off the event loop)."""
        server, self.server = self.server, None
        return threads.deferToThread(server.stop) if server is not None \
            else defer.succeed(None)


def build_daemon(config: Config, reactor, *, counters: Counters | None = None,
                 directory=None, insecure_push_endpoints: bool = False,
                 worker_index: int = 0) -> Daemon:
    """The daemon for ``config`` with the built-in approval service as its provider.

    ``worker_index``: which of ``daemon.workers`` processes this is (its node id's
    suffix in a cluster). With several, the RADIUS and approval ports are shared
    (SO_REUSEPORT), each worker serves /metrics and /healthz on metrics_listen's
    port + its index, and only worker 0 runs the LDAP front end (see pushproxy.workers).
    """
    counters = counters or Counters()
    several = config.daemon.workers > 1
    cluster = build_context(config, reactor, worker=worker_index, counters=counters)
    approval = ApprovalComponent(config.approval, reactor, counters,
                                 insecure_push_endpoints=insecure_push_endpoints,
                                 reuse_port=several, cluster=cluster)
    daemon = Daemon(config, reactor, approval.service, counters=counters, directory=directory,
                    worker_index=worker_index)
    daemon.components.append(approval)
    if cluster_mode(config):
        # Fatigue limits, challenges and remembered logins shared through the store,
        # so every node and worker decides a login the same way.
        state = StoreState(approval.store, config.push.limits, counters=counters)
        daemon.engine.state = state
        daemon.components.append(LoginStateComponent(state, reactor))
    if config.mail is not None:  # no_device: enroll (pushproxy.rollout.loginmail)
        from pushproxy.rollout.loginmail import LoginEnrollMailer

        mailer = LoginEnrollMailer(config, reactor, approval.store, counters)
        daemon.engine.enroll_mail = mailer.request
        daemon.components.append(mailer)
    if config.context is not None:  # location, baselines, risk signals (issue 21)
        from pushproxy.contextcheck import ContextChecks

        daemon.engine.context = ContextChecks(
            config.context, store=approval.store, counters=counters,
            timezone=lambda: daemon.engine.policy.timezone,
            alerter=getattr(approval.service, "alerter", None))
    if config.daemon.metrics_listen:
        host, port = config.daemon.metrics_listen
        daemon.components.append(MetricsComponent((host, port + worker_index), daemon,
                                                  approval))
    if config.radius.radsec is not None:
        from pushproxy.radsec.listener import RadsecListener

        daemon.components.append(RadsecListener(daemon, reuse_port=several))
    if config.ldap_front is not None and worker_index == 0:
        from pushproxy.ldapfront.front import LdapFront

        daemon.components.append(LdapFront(daemon))
    return daemon

