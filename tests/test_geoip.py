"""Locating client addresses in MaxMind-format databases built by the test (mmdb-writer).

Special-purpose addresses are named, never looked up; unknown ones are
"unknown", never guessed; hostile database contents come out bounded and
printable; a broken file is refused at start and kept out on reload.
"""

from __future__ import annotations

import ipaddress
import logging

import pytest

from pushproxy.geoip import (MAX_TEXT, AddressKind, GeoConfig, GeoIP, GeoIPError, classify,
                             clean_text)
from tests.geodb import LOOK_UP, write_asn, write_city


@pytest.fixture
def geo(tmp_path):
    city, asn = write_city(tmp_path / "city.mmdb"), write_asn(tmp_path / "asn.mmdb")
    return GeoIP(GeoConfig(str(city), str(asn), tuple(map(ipaddress.ip_network, LOOK_UP))))


def test_a_listed_test_range_is_looked_up_with_city_country_and_asn(geo):
    loc = geo.locate("198.51.100.7")
    assert (loc.kind, loc.found, loc.country_code, loc.country, loc.city, loc.asn) == \
        (AddressKind.PUBLIC, True, "PT", "Portugal", "Lisbon", 64501)
    assert loc.label() == "Lisbon, Portugal · AS64501 Example Lisboa"
    assert loc.as_dict()["country_code"] == "PT" and loc.latitude == pytest.approx(38.7223)


def test_ipv6_and_ipv4_mapped_addresses(geo):
    assert geo.locate("2001:db8:1::5").city == "Berlin"
    assert geo.locate("::ffff:192.0.2.9").country_code == "DE"
    assert geo.locate("  203.0.113.4 ").country_code == "JP"  # as the policy reads it


@pytest.mark.parametrize("text, kind", [
    ("10.1.2.3", AddressKind.PRIVATE), ("192.168.0.1", AddressKind.PRIVATE),
    ("100.64.0.1", AddressKind.PRIVATE), ("fd00::1", AddressKind.PRIVATE),
    ("127.0.0.1", AddressKind.LOOPBACK), ("::1", AddressKind.LOOPBACK),
    ("169.254.1.1", AddressKind.LINK_LOCAL), ("fe80::1", AddressKind.LINK_LOCAL),
    ("192.0.2.1", AddressKind.DOCUMENTATION), ("2001:db8::1", AddressKind.DOCUMENTATION),
    ("224.0.0.1", AddressKind.MULTICAST), ("0.0.0.0", AddressKind.RESERVED),
    ("240.0.0.1", AddressKind.RESERVED), ("198.18.0.1", AddressKind.RESERVED),
    ("aa:bb:cc:dd:ee:ff", AddressKind.NOT_AN_ADDRESS), ("AA-BB-CC-DD-EE-FF",
                                                        AddressKind.NOT_AN_ADDRESS),
    ("+4930123456", AddressKind.NOT_AN_ADDRESS), ("1.2.3.4\x00", AddressKind.NOT_AN_ADDRESS),
    ("1.2.3.4/24", AddressKind.NOT_AN_ADDRESS), ("fe80::1%eth0", AddressKind.LINK_LOCAL),
    ("１.２.３.４", AddressKind.NOT_AN_ADDRESS), ("", AddressKind.ABSENT),
    (None, AddressKind.ABSENT), ("8.8.8.8", AddressKind.PUBLIC),
    ("2606:4700::1111", AddressKind.PUBLIC)])
def test_address_kinds(text, kind):
    assert classify(text)[1] is kind


def test_special_addresses_are_named_never_looked_up_even_if_the_database_has_them(tmp_path):
    """A database with an entry for 10.0.0.0/8 or the documentation ranges is wrong, not
    informative: without look_up the prompt says "private address", not "Germany"."""
    city = write_city(tmp_path / "c.mmdb", extra={
        "10.0.0.0/8": {"country": {"iso_code": "DE", "names": {"en": "Germany"}}}})
    geo = GeoIP(GeoConfig(str(city)))
    for text, label in (("10.9.9.9", "private address"), ("192.0.2.5", "documentation address"),
                        ("127.0.0.1", "loopback address"), ("de:ad:be:ef:00:01",
                                                            "not an IP address"),
                        (None, "none sent")):
        loc = geo.locate(text)
        assert not loc.found and loc.country_code is None and loc.label() == label


def test_an_address_the_database_does_not_know_is_unknown(geo):
    loc = geo.locate("8.8.8.8")
    assert loc.kind is AddressKind.PUBLIC and not loc.found and loc.label() == "unknown location"


HOSTILE = {
    # odd Unicode: a right-to-left override, zero-width joiners, control characters
    "2001:db8:bad:1::/64": {"country": {"iso_code": "D\u202eE", "names": {"en": "Ger\u202emany\x1b[31m"}},
                            "city": {"names": {"en": "\u200bBer\u200dlin\n\r\t"}}},
    # huge strings
    "2001:db8:bad:2::/64": {"country": {"iso_code": "X" * 100_000,
                                        "names": {"en": "N" * 1_000_000}},
                            "city": {"names": {"en": "é" * 50_000}}},
    # wrong types everywhere
    "2001:db8:bad:3::/64": {"country": ["DE"], "city": {"names": ["Berlin"]},
                            "location": {"latitude": "52.5", "longitude": True}},
    "2001:db8:bad:4::/64": {"country": {"iso_code": 49, "names": {"en": 7}},
                            "location": {"latitude": 1e308, "longitude": -999.0,
                                         "accuracy_radius": -5}},
    "2001:db8:bad:5::/64": {"city": "Berlin", "location": [1, 2]},
}
HOSTILE_ASN = {
    "2001:db8:bad:1::/64": {"autonomous_system_number": -1,
                            "autonomous_system_organization": "\u202eevil\x07" + "o" * 10_000},
    "2001:db8:bad:2::/64": {"autonomous_system_number": "64500",
                            "autonomous_system_organization": ["x"]},
    "2001:db8:bad:3::/64": {"autonomous_system_number": 2 ** 40},
}


@pytest.fixture
def hostile(tmp_path):
    city = write_city(tmp_path / "h.mmdb", extra=HOSTILE)
    asn = write_asn(tmp_path / "ha.mmdb", extra=HOSTILE_ASN)
    return GeoIP(GeoConfig(str(city), str(asn), (ipaddress.ip_network("2001:db8::/32"),)))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_hostile_database_contents_come_out_bounded_and_printable(hostile, n):
    loc = hostile.locate(f"2001:db8:bad:{n}::1")
    for text in (loc.country, loc.city, loc.org, loc.country_code, loc.label()):
        assert text is None or (len(text) <= 3 * MAX_TEXT + 20 and text.isprintable()
                                and "\u202e" not in text and "\u200b" not in text)
    assert loc.country_code is None or (len(loc.country_code) == 2
                                        and loc.country_code.isalpha())
    assert loc.latitude is None or -90 <= loc.latitude <= 90
    assert loc.asn is None or 0 < loc.asn < 2 ** 32
    assert loc.accuracy_km is None or loc.accuracy_km >= 0


def test_clean_text_drops_format_and_control_characters():
    assert clean_text("Ber\u202elin\u200b\x00 \t city") == "Berlin city"
    assert clean_text(b"bytes") is None and clean_text(None) is None and clean_text("\u200b") is None
    assert len(clean_text("x" * 10_000)) == MAX_TEXT


def test_a_corrupt_or_missing_file_is_refused_at_start(tmp_path):
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"\x00garbage" * 1000)
    for path in (bad, tmp_path / "missing.mmdb"):
        with pytest.raises(GeoIPError):
            GeoIP(GeoConfig(str(path)))


def test_a_truncated_database_never_breaks_a_lookup(tmp_path):
    """A file cut short after its metadata checked out: lookups fail soft (unknown)."""
    good = write_city(tmp_path / "c.mmdb").read_bytes()
    cut = tmp_path / "cut.mmdb"
    # keep the metadata (at the end) but garble the search tree
    cut.write_bytes(b"\xff" * (len(good) // 2) + good[len(good) // 2:])
    try:
        geo = GeoIP(GeoConfig(str(cut), None, (ipaddress.ip_network("192.0.2.0/24"),)))
    except GeoIPError:
        return  # refused whole: also fine
    loc = geo.locate("192.0.2.1")
    assert loc.kind is AddressKind.PUBLIC and loc.label()


def test_reload_with_a_broken_file_keeps_the_old_database(tmp_path, caplog):
    path = write_city(tmp_path / "c.mmdb")
    geo = GeoIP(GeoConfig(str(path), None, (ipaddress.ip_network("192.0.2.0/24"),)))
    path.write_bytes(b"not a database")
    with caplog.at_level(logging.ERROR, logger="pushproxy.geoip"):
        assert geo.reload() is False
    assert "geoip.reload_failed" in caplog.text
    assert geo.locate("192.0.2.1").country_code == "DE"  # the old one answers
    write_city(path, places=[("192.0.2.0/24", "FR", "France", "Paris", 48.85, 2.35, 1, "x")])
    assert geo.reload() is True
    assert geo.locate("192.0.2.1").country_code == "FR"


def test_an_ipv4_only_database_gives_unknown_for_ipv6(tmp_path):
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-City")
    writer.insert_network(IPSet(["192.0.2.0/24"]), {"country": {"iso_code": "DE"}})
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    geo = GeoIP(GeoConfig(str(tmp_path / "v4.mmdb"), None,
                          tuple(map(ipaddress.ip_network, LOOK_UP))))
    assert geo.locate("192.0.2.1").country_code == "DE"
    assert geo.locate("2001:db8:1::1").label() == "unknown location"


def test_any_record_shape_gives_a_bounded_printable_location(tmp_path):
    """Hypothesis: whatever a database holds for an address (nested maps, lists, numbers
    of any size, any text), `locate` neither raises nor returns unbounded text."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    text = st.text(max_size=300)
    leaf = st.one_of(text, st.integers(min_value=-2 ** 63, max_value=2 ** 64 - 1),
                     st.floats(allow_nan=False), st.booleans())
    value = st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)), max_leaves=12)
    keys = st.sampled_from(["country", "city", "location", "names", "en", "iso_code",
                            "latitude", "longitude", "accuracy_radius",
                            "autonomous_system_number", "autonomous_system_organization"])
    shaped = st.recursive(st.one_of(leaf, value), lambda inner: st.dictionaries(
        keys, inner, max_size=5), max_leaves=20)
    records = st.dictionaries(keys, shaped, min_size=1, max_size=5)
    counter = iter(range(10 ** 6))

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(city=records, asn=records)
    def check(city, asn):
        n = next(counter)
        try:
            c = write_city(tmp_path / f"c{n}.mmdb", places=[], extra={"192.0.2.0/24": city})
            a = write_asn(tmp_path / f"a{n}.mmdb", places=[], extra={"192.0.2.0/24": asn})
        except Exception:  # noqa: BLE001 - a shape mmdb-writer cannot encode: not our input
            return
        geo = GeoIP(GeoConfig(str(c), str(a), (ipaddress.ip_network("192.0.2.0/24"),)))
        loc = geo.locate("192.0.2.7")
        for field in (loc.country, loc.city, loc.org, loc.label()):
            assert field is None or (field.isprintable() and len(field) <= 3 * MAX_TEXT + 20)
        assert loc.latitude is None or -90 <= loc.latitude <= 90
        assert loc.asn is None or 0 < loc.asn < 2 ** 32
        import json
        json.dumps(loc.as_dict())

    check()


def test_reload_with_new_paths_and_look_up_networks(tmp_path):
    first = write_city(tmp_path / "a.mmdb")
    second = write_city(tmp_path / "b.mmdb", places=[
        ("198.51.100.0/24", "FR", "France", "Paris", 48.85, 2.35, 1, "x")])
    geo = GeoIP(GeoConfig(str(first), None, (ipaddress.ip_network("192.0.2.0/24"),)))
    assert geo.reload(GeoConfig(str(second), None,
                                (ipaddress.ip_network("198.51.100.0/24"),))) is True
    assert geo.locate("198.51.100.1").country_code == "FR"
    assert geo.locate("192.0.2.1").label() == "documentation address"  # no longer listed
    assert geo.reload() is True and geo.config.city_database == str(second)
