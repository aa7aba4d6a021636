"""Risk signals against a user's baseline: pure, with ``now`` passed in."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushproxy.approval.baselinestore import Baseline
from pushproxy.checker import Checker
from pushproxy.geoip import AddressKind, Location
from pushproxy import yamlsource
from pushproxy.risk import (RiskAction, RiskSettings, Signal, assess, distance_km, observation,
                            parse_context)

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
BERLIN = Location("192.0.2.10", AddressKind.PUBLIC, True, "DE", "Germany", "Berlin",
                  52.52, 13.405, 20, 64500, "Example Berlin Net")
LISBON = Location("198.51.100.7", AddressKind.PUBLIC, True, "PT", "Portugal", "Lisbon",
                  38.7223, -9.1393, 20, 64501, "Example Lisboa")
TOKYO = Location("203.0.113.5", AddressKind.PUBLIC, True, "JP", "Japan", "Tokyo",
                 35.6762, 139.6503, 20, 64502, "Example Tokyo KK")
PRIVATE = Location("10.0.0.1", AddressKind.PRIVATE)
SETTINGS = RiskSettings(learning_logins=3, learning_days=7)


def learned(**kw) -> Baseline:
    """Three approved logins from Berlin over ten days, at 08:00-09:00 UTC."""
    base = dict(username="alice", approved=3, first_at=T0 - 10 * 86400, last_at=T0 - 86400,
                located_at=T0 - 86400, latitude=52.52, longitude=13.405, located_country="DE",
                countries=frozenset({"DE"}), asns=frozenset({"64500"}),
                networks=frozenset({"192.0.2.0/24"}), hours=frozenset({8, 9}))
    base.update(kw)
    return Baseline(**base)


def test_distances_are_great_circle():
    assert distance_km(52.52, 13.405, 35.6762, 139.6503) == pytest.approx(8920, rel=0.01)
    assert distance_km(52.52, 13.405, 38.7223, -9.1393) == pytest.approx(2310, rel=0.01)
    assert distance_km(0, 0, 0, 180) == pytest.approx(20015, rel=0.001)


def test_the_usual_place_and_hour_raise_nothing():
    result = assess(SETTINGS, learned(), BERLIN, T0)
    assert result.hits == () and result.action is RiskAction.IGNORE and not result.learning


def test_a_new_country_steps_up_and_says_where():
    result = assess(SETTINGS, learned(), LISBON, T0)
    assert result.signals == ("new_country", "new_asn", "new_network")
    assert result.action is RiskAction.STEP_UP
    assert "First login from Portugal" in result.warnings
    assert result.deciding().signal is Signal.NEW_COUNTRY


def test_two_logins_ten_minutes_apart_nine_thousand_km_apart_is_impossible_travel():
    base = learned(located_at=T0 - 600)
    result = assess(SETTINGS, base, TOKYO, T0)
    assert result.action is RiskAction.DENY
    assert result.deciding().signal is Signal.IMPOSSIBLE_TRAVEL
    assert "8,9" in result.deciding().message and "10 minutes" in result.deciding().message


def test_the_same_trip_a_day_later_is_only_a_new_country():
    result = assess(SETTINGS, learned(located_at=T0 - 86400), TOKYO, T0)
    assert Signal.IMPOSSIBLE_TRAVEL.value not in result.signals
    assert result.action is RiskAction.STEP_UP


def test_impossible_travel_needs_no_learned_baseline_but_the_rest_do():
    base = Baseline("alice", approved=1, first_at=T0 - 600, last_at=T0 - 600,
                    located_at=T0 - 600, latitude=52.52, longitude=13.405,
                    located_country="DE", countries=frozenset({"DE"}))
    result = assess(SETTINGS, base, TOKYO, T0)
    assert result.learning and result.signals == ("impossible_travel",)
    assert assess(SETTINGS, base, LISBON, T0 + 86400).hits == ()  # learning, no travel


def test_nearby_cities_a_minute_apart_are_not_impossible_travel():
    """City coordinates are rough: under min_distance_km nothing is called travel."""
    near = Location("198.51.100.9", AddressKind.PUBLIC, True, "DE", "Germany", "Potsdam",
                    52.39, 13.06, 20, 64500, None)
    assert assess(SETTINGS, learned(located_at=T0 - 60), near, T0).signals == ("new_network",)


def test_unknown_or_private_locations_raise_no_location_signal():
    result = assess(SETTINGS, learned(), PRIVATE, T0)
    assert set(result.signals) <= {"new_network"}
    assert assess(SETTINGS, learned(), Location("8.8.8.8", AddressKind.PUBLIC), T0).signals \
        == ("new_network",)


def test_an_unusual_hour_in_the_policy_time_zone():
    night = T0 + 15 * 3600  # 23:00 UTC
    assert "unusual_hour" in assess(SETTINGS, learned(), BERLIN, night).signals
    # 08:00 in New York is 13:00 UTC: with hours learned in New York time it is usual
    ny = learned(hours=frozenset({8}))
    assert "unusual_hour" not in assess(SETTINGS, ny, BERLIN, T0 + 5 * 3600,
                                        "America/New_York").signals
    assert "unusual_hour" not in assess(SETTINGS, learned(), BERLIN, T0 + 2 * 3600).signals


def test_observation_records_what_the_baseline_learns():
    items, place = observation(LISBON, T0, SETTINGS, "UTC")
    assert dict(items) == {"hour": "8", "country": "PT", "asn": "64501",
                           "network": "198.51.100.0/24"}
    assert place == (38.7223, -9.1393, "PT")
    items, place = observation(Location("2001:db8:1::5", AddressKind.PUBLIC), T0, SETTINGS,
                               "UTC")
    assert dict(items)["network"] == "2001:db8:1::/48" and place is None
    items, _ = observation(Location(None, AddressKind.NOT_AN_ADDRESS), T0, SETTINGS, "UTC")
    assert dict(items) == {"hour": "8"}


def _parse(text: str):
    doc = yamlsource.load(text)
    c = Checker(doc, base_dir=Path("."), env={})
    return parse_context(c, doc.data.get("context")), c.problems


def test_config_defaults_and_per_signal_actions(tmp_path):
    from tests.geodb import write_city

    db = write_city(tmp_path / "c.mmdb")
    ctx, problems = _parse(f"""
context:
  geoip: {{city_database: {db}, look_up: [192.0.2.0/24]}}
  baselines: {{learning_logins: 2, max_speed_kmh: 900}}
  signals: {{new_asn: deny, unusual_hour: ignore}}
""")
    assert problems == []
    assert ctx.risk.learning_logins == 2 and ctx.risk.max_speed_kmh == 900
    assert ctx.risk.action(Signal.NEW_ASN) is RiskAction.DENY
    assert ctx.risk.action(Signal.NEW_COUNTRY) is RiskAction.STEP_UP
    assert ctx.risk.action(Signal.UNUSUAL_HOUR) is RiskAction.IGNORE


def test_config_problems_name_their_path(tmp_path):
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"junk")
    _, problems = _parse(f"""
context:
  geoip: {{city_database: {bad}, look_up: [192.0.2.1/24], colour: red}}
  baselines: {{learning_logins: 0, speed: 3}}
  signals: {{new_country: block, new_planet: deny}}
""")
    text = "\n".join(problems)
    for needle in ("context.geoip.city_database: not a MaxMind-format database",
                   "context.geoip.look_up[0]", "context.geoip.colour: unknown key",
                   "context.baselines.learning_logins: must be at least 1",
                   "context.baselines.speed: unknown key",
                   "context.signals.new_country: must be one of",
                   "context.signals.new_planet: unknown key"):
        assert needle in text, needle
    _, problems = _parse("context:\n  signals: {new_country: warn}\n")
    assert any("context.geoip: missing" in p for p in problems)
