"""The admin HTTP listener: Prometheus metrics at /metrics and health at /healthz.

Metrics are rendered at scrape time from the daemon's `Counters` by a
prometheus-client collector, so the hot path only bumps plain counters. The
health check asks the directory and the store right now (cached for a second,
so a scraper cannot turn it into load) and answers 200 or 503 with JSON:
``status`` is "ok" (200), "down" (503: the directory or the store fails) or
"busy" (200: new requests are being shed, see `pushproxy.overload`; nothing is
probed then, so the answer never waits in the full queues).
"""

from __future__ import annotations

import json
import logging
from typing import Callable

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet import defer
from twisted.web import resource, server

from pushproxy.httpdeadline import DeadlineChannel, Deadlines
from pushproxy.metrics import Counters

log = logging.getLogger("pushproxy.metrics")

HELP = {
    "radius_requests": "RADIUS requests accepted for processing, by client",
    "radius_drops": "Datagrams dropped without an answer, by reason",
    "radius_retransmits": "Retransmitted requests, by client and state (in_flight: dropped; "
                          "answered: cached reply resent)",
    "radius_replies": "RADIUS replies sent",
    "radius_accounting": "Accounting-Requests answered (radius.accounting_listen), by client "
                         "and Acct-Status-Type",
    "radius_accounting_drops": "Accounting datagrams dropped without an answer, by reason",
    "radius_accounting_retransmits": "Accounting retransmits answered from the cache, by client",
    "decisions": "Login decisions, by client, outcome and reason",
    "logins_joined": "Logins that joined an identical pending login",
    "pushes_requested": "Push approvals requested",
    "pushes_joined": "Logins that joined a pending push",
    "push_provider_errors": "Push requests the provider could not take",
    "push_deliveries": "Web Push deliveries, by outcome",
    "ldap_user_binds": "LDAP binds as a user",
    "ldap_server_errors": "LDAP server failures, by server",
    "ldap_busy": "Logins refused because the LDAP queue was full",
    "ldap_account_refusals": "Accounts the directory refused (AD account states), by state",
    "ldap_incomplete_answers": "Logins refused on a partial directory answer (referral, range)",
    "ldap_op_timeouts": "LDAP operations that timed out alone while the server answered "
                        "others (retried once; the server is not marked failed), by server",
    "audit_events": "Audit events written",
    "audit_write_errors": "Audit events that could not be written",
    "approval_transactions": "Approval transactions opened",
    "approval_joins": "Logins that joined a pending push of any node (cluster mode)",
    "bus_events": "Cluster notification bus events, by outcome (received, dropped, unsent, "
                  "disconnected, retry_failed)",
    "bus_reconnects": "Times the cluster notification bus came back after being lost",
    "bus_polls": "Store re-reads made because the notification bus was down",
    "answers": "Device answers, by outcome",
    "enrollments": "Device enrollments, by outcome",
    "enroll_mails": "Enrollment mails of no_device: enroll, by outcome (sent, rate_limited, "
                    "failed, no_address, dropped, error)",
    "device_auth_failures": "Device requests refused (signature, time window, replay)",
    "alerts": "Alerts raised, by kind",
    "alert_webhooks": "Alert webhook posts, by outcome",
    "radius_replies_too_large": "Replies over 4096 octets with the attributes relayed or "
                                "mapped, answered with a plain Access-Reject instead",
    "store_calls": "Calls the approval store answered, by method",
    "store_commits": "Transactions the approval store committed, by method",
    "store_call_timeouts": "Store calls failed as a fault (stuck, failing or queued too "
                           "long), by method",
    "radius_overloaded": "New requests shed (not answered) while the daemon was busy, by "
                         "reason (the NAS retransmits or fails over)",
    "internal_errors": "Unexpected errors (bugs); each is logged with a traceback",
    "connections_refused": "TCP connections closed on accept: over a listener's total or "
                           "per-source cap, by listener and reason",
    "connections_evicted": "TCP connections closed to make room at a listener's total cap "
                           "(the one waiting longest on its peer), by listener",
    "http_deadline_closed": "HTTP connections closed because a request (head, body) or the "
                            "next one (idle) did not arrive in time, by listener and phase",
    "geoip_lookup_errors": "Location lookups that failed in the database (a corrupt file, "
                           "an IPv6 address in an IPv4-only one); shown as unknown",
    "geoip_reload_failed": "Location databases that did not open on reload (the old one "
                           "stays in use)",
    "context_errors": "Baselines that could not be read or written (the login went on "
                      "without risk signals)",
    "context_denials": "Logins denied by a risk signal (context.signals ... deny)",
    "decision_seconds": "Time from request to decision, by outcome",
    "ldap_seconds": "Time of one LDAP conversation (search + bind + groups), by server",
}


class CountersCollector:
    """Renders `Counters` and live gauges for prometheus-client."""

    def __init__(self, counters: Counters, gauges: dict[str, tuple[str, Callable[[], float]]]):
        self.counters = counters
        self.gauges = gauges

    def collect(self):
        """Called by prometheus-client at every scrape."""
        families: dict[str, CounterMetricFamily] = {}
        for name, labels, value in self.counters.counters():
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(
                    f"pushproxy_{name}", HELP.get(name, name), labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()
        hist_families: dict[str, HistogramMetricFamily] = {}
        for name, labels, hist in self.counters.histograms():
            family = hist_families.get(name)
            if family is None:
                family = hist_families[name] = HistogramMetricFamily(
                    f"pushproxy_{name}", HELP.get(name, name), labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], hist.cumulative(), hist.sum)
        yield from hist_families.values()
        for name, (doc, read) in self.gauges.items():
            gauge = GaugeMetricFamily(f"pushproxy_{name}", doc)
            gauge.add_metric([], read())
            yield gauge


class MetricsResource(resource.Resource):
    """GET /metrics: the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class HealthResource(resource.Resource):
    """GET /healthz: 200 when the directory and the store answer, else 503; JSON details."""

    isLeaf = True

    def __init__(self, check: Callable[[], defer.Deferred], clock, cache_seconds: float = 1.0):
        super().__init__()
        self.check = check
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, dict] | None = None

    def _result(self) -> defer.Deferred:
        now = self.clock.seconds()
        if self._cached and now - self._cached[0] < self.cache_seconds:
            return defer.succeed(self._cached[1])

        def keep(result):
            self._cached = (self.clock.seconds(), result)
            return result

        return self.check().addCallback(keep)

    def render_GET(self, request):
        def answer(result):
            request.setResponseCode(200 if result.get("healthy") else 503)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-store")
            request.write(json.dumps(result, sort_keys=True).encode("utf-8") + b"\n")
            request.finish()

        def failed(failure):
            log.error("health.check_failed %s", failure.getTraceback())
            answer({"healthy": False, "error": "health check failed"})

        self._result().addCallbacks(answer, failed)
        return server.NOT_DONE_YET


def registry(counters: Counters, gauges: dict) -> CollectorRegistry:
    """A prometheus-client registry rendering ``counters`` and ``gauges``."""
    found = CollectorRegistry(auto_describe=False)
    found.register(CountersCollector(counters, gauges))
    return found


class AdminSite(server.Site):
    """The admin listener's Site: HTTP/1.1 with read deadlines (`DeadlineChannel`)."""

    protocol = DeadlineChannel
    deadline_name = "metrics"


def build_site(counters: Counters, gauges: dict, health: Callable[[], defer.Deferred],
               clock, deadlines: Deadlines = Deadlines()) -> server.Site:
    """The admin site: /metrics and /healthz on the event loop (the daemon serves them
    from a process of its own, `pushproxy.metrics_thread`, with the same registry and
    health check)."""
    registry_ = registry(counters, gauges)
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(registry_))
    root.putChild(b"healthz", HealthResource(health, clock))
    site = AdminSite(root, reactor=clock)
    site.deadlines = deadlines
    site.counters = counters
    site.noisy = False
    site.log = lambda request: None  # scrapes every few seconds: no access log
    return site
