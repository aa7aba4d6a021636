"""The engine's context step: locate the login, assess it against the user's baseline, learn.

The I/O edge around the pure parts (`pushproxy.geoip` for the lookup,
`pushproxy.risk` for the signals): `ContextChecks.prepare` reads the user's
baseline from the store and hands the engine a `LoginRisk`; `learn` records
an approved login; `alert` raises the alert of a login a signal denied, on
the approval service's alert path (log, syslog, webhook).

A baseline that cannot be read costs the login its signals, not the login:
the push still decides (logged and counted as ``context_errors``). The
LDAP front end's peer is the application server, not the user: its location
is shown but never assessed or learned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred

from pushproxy import logs
from pushproxy.approval.baselinestore import Baseline
from pushproxy.geoip import GeoIP, GeoIPError, Location, classify
from pushproxy.risk import Assessment, ContextConfig, SignalHit, assess, observation

log = logging.getLogger("pushproxy.context")


@dataclass(frozen=True)
class LoginRisk:
    """What the context step found for one login: where, and the signals (None: not assessed)."""

    location: Location
    assessment: Assessment | None = None

    @property
    def signals(self) -> tuple[str, ...]:
        """The audit trail's ``signals``."""
        return self.assessment.signals if self.assessment else ()

    @property
    def warnings(self) -> tuple[str, ...]:
        """The lines the prompt shows."""
        return self.assessment.warnings if self.assessment else ()


class ContextChecks:
    """Location, baselines and signals for the engine (``Engine.context``).

    ``store``: the `AsyncStore` holding baselines (None: location only);
    ``timezone``: returns the policy's time zone (hours of day are local);
    ``alerter``: the approval service's `Alerter`, or None.
    """

    def __init__(self, config: ContextConfig, *, store=None, counters=None,
                 timezone: Callable[[], str] = lambda: "UTC", alerter=None):
        self.config = config
        self.store = store
        self.counters = counters
        self.timezone = timezone
        self.alerter = alerter
        self.geo = GeoIP(config.geoip, counters) if config.geoip is not None else None

    def reload(self, config: ContextConfig | None) -> list[str]:
        """Apply a new ``context:`` section; the databases are opened again (SIGHUP).

        A database that no longer opens keeps the old one (logged). Returns what
        needs a restart (adding or removing the section).
        """
        if config is None:
            return ["context (removed): restart to apply"]
        self.config = config
        if config.geoip is None:
            self.geo = None
        elif self.geo is None:
            try:
                self.geo = GeoIP(config.geoip, self.counters)
            except GeoIPError as exc:
                logs.event(log, logging.ERROR, "geoip.reload_failed", detail=str(exc)[:200],
                           kept="no database")
        else:
            self.geo.reload(config.geoip)
        return []

    def _count(self, name: str) -> None:
        if self.counters is not None:
            self.counters.inc(name)

    def locate(self, address: str | None) -> Location:
        """The location of ``address`` (without databases: only its kind); never raises."""
        if self.geo is None:
            ip, kind = classify(address)
            return Location(str(ip) if ip is not None else None, kind)
        return self.geo.locate(address)

    def prepare(self, req, now: float) -> Deferred[LoginRisk]:
        """Locate the login and assess it against the user's baseline; never errbacks."""
        location = self.locate(req.calling_station)
        risk = self.config.risk
        if risk is None or self.store is None or req.peer_is_application:
            return defer.succeed(LoginRisk(location))
        user = req.username.casefold()

        def assessed(baseline: Baseline) -> LoginRisk:
            return LoginRisk(location, assess(risk, baseline, location, now, self.timezone()))

        def failed(failure) -> LoginRisk:
            self._count("context_errors")
            logs.event(log, logging.WARNING, "context.baseline_unreadable", user=user,
                       detail=str(failure.value)[:200])
            return LoginRisk(location)

        return self.store.user_baseline(user).addCallback(assessed).addErrback(failed)

    def learn(self, req, now: float) -> None:
        """Record an approved login in the user's baseline (off the login's path)."""
        risk = self.config.risk
        if risk is None or self.store is None or req.peer_is_application:
            return
        context = getattr(req, "context", None)
        location = context.location if context is not None else self.locate(req.calling_station)
        items, place = observation(location, now, risk, self.timezone())

        def failed(failure) -> None:
            self._count("context_errors")
            logs.event(log, logging.WARNING, "context.learn_failed", user=req.username,
                       detail=str(failure.value)[:200])

        self.store.learn_login(req.username.casefold(), now, items, place,
                               risk.keep).addErrback(failed)

    def alert(self, req, hit: SignalHit, location: Location, now: float) -> None:
        """A signal denied this login: alert like a fraud report (log, syslog, webhook)."""
        self._count("context_denials")
        if self.alerter is None:
            logs.event(log, logging.WARNING, "alert.risk_deny", user=req.username,
                       signal=hit.signal.value, message=hit.message)
            return
        self.alerter.user_alert("risk_deny", req.username, now, reason=hit.signal.value,
                                message=hit.message, client_ip=req.calling_station,
                                application=req.client_name, location=location.as_dict())
