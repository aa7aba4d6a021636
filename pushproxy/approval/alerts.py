"""Alerts when a user denies a push or reports it as fraud.

A denial is often the first sign that someone else has the user's password.
Every alert is logged; it also goes to a webhook (JSON POST, Twisted-native
HTTP with a timeout, so a slow receiver never holds a reactor thread) and/or
to syslog (LOG_AUTH) as configured.
"""

from __future__ import annotations

import json
import logging
import syslog

import treq
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.web.client import Agent

from pushproxy import logs
from pushproxy.audit import utc_stamp
from pushproxy.metrics import Counters
from pushproxy.tlsnames import NameCheckedPolicy

log = logging.getLogger("pushproxy.alerts")

# A fraud report means someone else has the password: page someone.
SEVERITY = {"denied": "medium", "number_mismatch": "medium", "fraud": "high",
            "pushes_paused": "high", "user_locked": "high", "passcodes_paused": "high",
            "passcodes_paused_source": "high"}


class Alerter:
    """Sends one alert per denied or fraud-reported push."""

    def __init__(self, reactor, counters: Counters, *, webhook: str | None = None,
                 use_syslog: bool = False, timeout: float = 10.0, http_client=None):
        self.reactor = reactor
        self.counters = counters
        self.webhook = webhook
        self.use_syslog = use_syslog
        self.timeout = timeout
        if http_client is None:
            # Agent's default HTTPS policy lets a certificate without usable
            # subjectAltNames through (see pushproxy.tlsnames).
            http_client = HTTPClient(Agent(reactor, contextFactory=NameCheckedPolicy()))
        self.http = http_client

    def alert(self, kind: str, tx, device, now: float) -> defer.Deferred:
        """Raise the alert for transaction ``tx`` answered ``kind`` by ``device``."""
        body = {"event": "push_" + kind, "time": utc_stamp(now), "user": tx.username,
                "severity": SEVERITY.get(kind, "medium"),
                "application": tx.context.get("application"),
                "client_ip": tx.context.get("client_ip"), "nas": tx.context.get("nas"),
                "txid": tx.id, "device": device.id, "device_name": device.name}
        return self._send(body)

    def user_alert(self, event: str, username: str, now: float, **details) -> defer.Deferred:
        """Raise an alert about a user rather than one push (pushes or passcodes paused,
        user locked); ``details`` (reason, source) go into the body."""
        body = {"event": event, "time": utc_stamp(now), "user": username,
                "severity": SEVERITY.get(event, "high"), **details}
        return self._send(body)

    def _send(self, body: dict) -> defer.Deferred:
        kind = body["event"]
        self.counters.inc("alerts", kind=kind)
        logs.event(log, logging.WARNING, "alert." + kind, severity=body["severity"],
                   user=body.get("user"), application=body.get("application"),
                   client_ip=body.get("client_ip"), txid=body.get("txid"),
                   device=body.get("device"), reason=body.get("reason"),
                   source=body.get("source"))
        if self.use_syslog:
            syslog.syslog(syslog.LOG_AUTH | syslog.LOG_WARNING,
                          "pushproxy " + json.dumps(body, ensure_ascii=True))
        if not self.webhook:
            return defer.succeed(None)
        d = self.http.post(self.webhook, data=json.dumps(body).encode("utf-8"),
                           headers={"Content-Type": ["application/json"]})
        d.addCallback(lambda response: treq.content(response).addCallback(
            lambda _: response.code))
        d.addTimeout(self.timeout, self.reactor)

        def done(code):
            ok = 200 <= code < 300
            self.counters.inc("alert_webhooks", outcome="ok" if ok else "failed")
            if not ok:
                logs.event(log, logging.WARNING, "alert.webhook_failed", status=code)

        def failed(failure):
            self.counters.inc("alert_webhooks", outcome="failed")
            logs.event(log, logging.WARNING, "alert.webhook_failed",
                       error=failure.getErrorMessage())

        return d.addCallbacks(done, failed)
