"""Risk signals: a login compared with the user's baseline, and what the policy does about it.

Pure: `assess` takes the settings, the user's `Baseline` (from the store), the
login's `Location` and ``now``, and returns an `Assessment` -- the signals
that fired, each with the action the config gives it, and the strongest of
those actions. The engine turns a DENY into a rejected login and an alert,
a STEP_UP into number matching, and every signal it acts on into a line on
the prompt ("First login from Portugal").

Signals:

- ``new_country`` / ``new_asn`` / ``new_network``: the login's country, ASN or
  network (/24, /48 by default) is not among those of the user's approved
  logins;
- ``unusual_hour``: no approved login within ``hour_margin`` hours of this
  login's hour of day (in the policy's time zone);
- ``impossible_travel``: the distance (great circle, less both places'
  accuracy radii) from the last approved login with coordinates, over the time
  since it, is faster than ``max_speed_kmh``, and the distance is at least
  ``min_distance_km`` (city-level coordinates are rough).

All but impossible travel wait for the learning period: ``learning_logins``
approved logins and ``learning_days`` since the first. Impossible travel needs
only one earlier login. A login with no location (private address, unknown
to the database) raises no location signal: nothing is guessed.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import zoneinfo
from dataclasses import dataclass
from datetime import datetime

from pushproxy.approval.baselinestore import Baseline
from pushproxy.geoip import AddressKind, Location

EARTH_RADIUS_KM = 6371.0088


class Signal(enum.Enum):
    """Why a login looks unlike the user's usual ones."""

    NEW_COUNTRY = "new_country"
    IMPOSSIBLE_TRAVEL = "impossible_travel"
    UNUSUAL_HOUR = "unusual_hour"
    NEW_ASN = "new_asn"
    NEW_NETWORK = "new_network"


class RiskAction(enum.Enum):
    """What a signal makes the login do; ordered weakest to strongest."""

    IGNORE = "ignore"  # recorded in the audit trail only
    WARN = "warn"  # shown on the prompt
    STEP_UP = "step_up"  # number matching (unless the login already has a verification)
    DENY = "deny"  # rejected without a push, and an alert

    @property
    def strength(self) -> int:
        """Order for picking the strongest action of several signals."""
        return list(RiskAction).index(self)


DEFAULT_ACTIONS = {Signal.NEW_COUNTRY: RiskAction.STEP_UP,
                   Signal.IMPOSSIBLE_TRAVEL: RiskAction.DENY,
                   Signal.UNUSUAL_HOUR: RiskAction.WARN,
                   Signal.NEW_ASN: RiskAction.WARN,
                   Signal.NEW_NETWORK: RiskAction.IGNORE}


@dataclass(frozen=True)
class RiskSettings:
    """The validated ``context.baselines`` and ``context.signals`` blocks."""

    learning_logins: int = 10
    learning_days: float = 14.0
    max_speed_kmh: float = 1000.0
    min_distance_km: float = 300.0
    hour_margin: int = 1
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    keep: int = 64  # values kept per kind and user
    actions: tuple[tuple[Signal, RiskAction], ...] = tuple(DEFAULT_ACTIONS.items())

    def action(self, signal: Signal) -> RiskAction:
        """The configured action for ``signal``."""
        return dict(self.actions).get(signal, RiskAction.IGNORE)


@dataclass(frozen=True)
class SignalHit:
    """One signal that fired: what, the prompt's words for it, and the configured action."""

    signal: Signal
    message: str
    action: RiskAction


@dataclass(frozen=True)
class Assessment:
    """The risk of one login. ``action`` is the strongest of the hits (IGNORE: none)."""

    hits: tuple[SignalHit, ...] = ()
    learning: bool = False  # the baseline is still in its learning period
    detail: str = ""  # the learning progress, or why nothing was assessed

    @property
    def action(self) -> RiskAction:
        """The strongest action among the hits."""
        return max((h.action for h in self.hits), key=lambda a: a.strength,
                   default=RiskAction.IGNORE)

    @property
    def signals(self) -> tuple[str, ...]:
        """The names of the signals that fired (the audit trail's ``signals``)."""
        return tuple(h.signal.value for h in self.hits)

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the prompt shows: the message of every hit that is not ignored."""
        return tuple(h.message for h in self.hits if h.action is not RiskAction.IGNORE)

    def deciding(self) -> SignalHit | None:
        """The first hit with the strongest action (what ``policy explain`` names)."""
        return next((h for h in self.hits if h.action is self.action), None) \
            if self.hits else None


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) between two points, in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def network_of(location: Location, settings: RiskSettings) -> str | None:
    """The login's network (/24 or /48 by default) as text, or None without an address."""
    if location.address is None or location.kind in (AddressKind.NOT_AN_ADDRESS,
                                                     AddressKind.ABSENT):
        return None
    ip = ipaddress.ip_address(location.address)
    prefix = settings.ipv4_prefix if ip.version == 4 else settings.ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def local_hour(now: float, timezone: str) -> int:
    """The hour of day of ``now`` in ``timezone``."""
    return datetime.fromtimestamp(now, zoneinfo.ZoneInfo(timezone)).hour


def observation(location: Location, now: float, settings: RiskSettings,
                timezone: str) -> tuple[list[tuple[str, str]], tuple[float, float, str | None]
                                        | None]:
    """What an approved login adds to the baseline: (kind, value) items and its place."""
    items = [("hour", str(local_hour(now, timezone)))]
    if location.country_code:
        items.append(("country", location.country_code))
    if location.asn is not None:
        items.append(("asn", str(location.asn)))
    network = network_of(location, settings)
    if network is not None:
        items.append(("network", network))
    place = None
    if location.latitude is not None and location.longitude is not None:
        place = (location.latitude, location.longitude, location.country_code)
    return items, place


def _country(location: Location) -> str:
    return location.country or location.country_code or "an unknown country"


def _hour_near(hour: int, hours: frozenset[int], margin: int) -> bool:
    return any(min((hour - h) % 24, (h - hour) % 24) <= margin for h in hours)


def assess(settings: RiskSettings, baseline: Baseline, location: Location, now: float,
           timezone: str = "UTC") -> Assessment:
    """The signals this login raises against ``baseline``; see the module docstring."""
    hits: list[SignalHit] = []

    def hit(signal: Signal, message: str) -> None:
        hits.append(SignalHit(signal, message, settings.action(signal)))

    # Impossible travel needs only the last located login, not a learned baseline.
    if (baseline.located_at is not None and location.latitude is not None
            and baseline.latitude is not None and location.longitude is not None):
        km = distance_km(baseline.latitude, baseline.longitude,
                         location.latitude, location.longitude)
        km_net = max(0.0, km - (location.accuracy_km or 0.0))
        hours = max(now - baseline.located_at, 1.0) / 3600.0
        if km >= settings.min_distance_km and km_net / hours > settings.max_speed_kmh:
            minutes = max(0, round((now - baseline.located_at) / 60))
            hit(Signal.IMPOSSIBLE_TRAVEL,
                f"Impossible travel: {km:,.0f} km from the last login "
                f"({baseline.located_country or 'unknown country'}) {minutes} minutes ago")
    learned = baseline.approved >= settings.learning_logins and baseline.first_at is not None \
        and now - baseline.first_at >= settings.learning_days * 86400
    if not learned:
        days = 0.0 if baseline.first_at is None else max(0.0, now - baseline.first_at) / 86400
        return Assessment(tuple(hits), learning=True,
                          detail=f"learning: {baseline.approved} of {settings.learning_logins} "
                                 f"approved logins, {days:.1f} of {settings.learning_days:g} "
                                 "days")
    if location.country_code and location.country_code not in baseline.countries:
        hit(Signal.NEW_COUNTRY, f"First login from {_country(location)}")
    if location.asn is not None and str(location.asn) not in baseline.asns:
        org = f" ({location.org})" if location.org else ""
        hit(Signal.NEW_ASN, f"First login from network AS{location.asn}{org}")
    network = network_of(location, settings)
    if network is not None and network not in baseline.networks:
        hit(Signal.NEW_NETWORK, f"First login from {network}")
    hour = local_hour(now, timezone)
    if baseline.hours and not _hour_near(hour, baseline.hours, settings.hour_margin):
        hit(Signal.UNUSUAL_HOUR, f"Unusual time: no earlier login around {hour:02d}:00")
    return Assessment(tuple(hits), detail=f"learned from {baseline.approved} approved logins")


@dataclass(frozen=True)
class ContextConfig:
    """The validated ``context:`` section: the location databases and the baselines."""

    geoip: object | None = None  # pushproxy.geoip.GeoConfig
    risk: RiskSettings | None = None  # None: no baselines, no signals


def parse_context(c, value, path: str = "context") -> ContextConfig | None:
    """Validate the ``context:`` section (absent: None, no location and no signals)."""
    if value is None:
        return None
    from pushproxy.geoip import parse_geoip

    m = c.mapping(value, path, optional=("geoip", "baselines", "signals"))
    if m is None:
        return None
    geo = parse_geoip(c, m["geoip"], f"{path}.geoip") if "geoip" in m else None
    risk = None
    if "baselines" in m or "signals" in m:
        risk = _risk(c, m.get("baselines"), m.get("signals"), path)
        if "geoip" not in m:
            c.problem(f"{path}.geoip", "missing: baselines need a location database")
    return ContextConfig(geoip=geo, risk=risk)


def _risk(c, baselines, signals, path: str) -> RiskSettings:
    b = c.mapping(baselines, f"{path}.baselines", optional=(
        "learning_logins", "learning_days", "max_speed_kmh", "min_distance_km", "hour_margin",
        "ipv4_prefix", "ipv6_prefix", "keep")) or {}
    p = f"{path}.baselines"
    d = RiskSettings()
    settings = dict(
        learning_logins=int(c.number(b, "learning_logins", f"{p}.learning_logins",
                                     d.learning_logins, minimum=1, maximum=10000)),
        learning_days=c.number(b, "learning_days", f"{p}.learning_days", d.learning_days,
                               minimum=0, maximum=3650),
        max_speed_kmh=c.number(b, "max_speed_kmh", f"{p}.max_speed_kmh", d.max_speed_kmh,
                               minimum=1, maximum=100000),
        min_distance_km=c.number(b, "min_distance_km", f"{p}.min_distance_km",
                                 d.min_distance_km, minimum=0, maximum=20038),
        hour_margin=int(c.number(b, "hour_margin", f"{p}.hour_margin", d.hour_margin,
                                 minimum=0, maximum=11)),
        ipv4_prefix=int(c.number(b, "ipv4_prefix", f"{p}.ipv4_prefix", d.ipv4_prefix,
                                 minimum=8, maximum=32)),
        ipv6_prefix=int(c.number(b, "ipv6_prefix", f"{p}.ipv6_prefix", d.ipv6_prefix,
                                 minimum=16, maximum=128)),
        keep=int(c.number(b, "keep", f"{p}.keep", d.keep, minimum=1, maximum=1000)))
    s = c.mapping(signals, f"{path}.signals", optional=[x.value for x in Signal]) or {}
    actions = []
    for signal in Signal:
        choice = c.choice(s, signal.value, f"{path}.signals.{signal.value}",
                          [a.value for a in RiskAction], DEFAULT_ACTIONS[signal].value)
        actions.append((signal, RiskAction(choice)))
    return RiskSettings(actions=tuple(actions), **settings)
