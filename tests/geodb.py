"""Small MaxMind-format databases for the location tests, built with mmdb-writer.

Documentation and test ranges only (RFC 5737, RFC 3849), so a test never
implies anything about a real network; the config's ``context.geoip.look_up``
lets the daemon look them up.
"""

from __future__ import annotations

from pathlib import Path

# (network, country code, country, city, latitude, longitude, ASN, organisation)
PLACES = [
    ("192.0.2.0/24", "DE", "Germany", "Berlin", 52.52, 13.405, 64500, "Example Berlin Net"),
    ("198.51.100.0/24", "PT", "Portugal", "Lisbon", 38.7223, -9.1393, 64501, "Example Lisboa"),
    ("203.0.113.0/24", "JP", "Japan", "Tokyo", 35.6762, 139.6503, 64502, "Example Tokyo KK"),
    ("2001:db8:1::/48", "DE", "Germany", "Berlin", 52.52, 13.405, 64500, "Example Berlin Net"),
]
LOOK_UP = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]


def city_record(code, country, city, lat, lon) -> dict:
    """A GeoLite2-City-shaped record."""
    return {"country": {"iso_code": code, "names": {"en": country}},
            "city": {"names": {"en": city}},
            "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 20}}


def write_city(path: Path, places=PLACES, extra: dict | None = None) -> Path:
    """A city database with ``places`` and ``extra`` {network: raw record}."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    for net, code, country, city, lat, lon, _, _ in places:
        writer.insert_network(IPSet([net]), city_record(code, country, city, lat, lon))
    for net, record in (extra or {}).items():
        writer.insert_network(IPSet([net]), record)
    writer.to_db_file(str(path))
    return path


def write_asn(path: Path, places=PLACES, extra: dict | None = None) -> Path:
    """An ASN database with ``places`` and ``extra`` {network: raw record}."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    for net, *_, asn, org in places:
        writer.insert_network(IPSet([net]), {"autonomous_system_number": asn,
                                             "autonomous_system_organization": org})
    for net, record in (extra or {}).items():
        writer.insert_network(IPSet([net]), record)
    writer.to_db_file(str(path))
    return path
