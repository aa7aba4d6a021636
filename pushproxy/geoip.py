"""Where a login comes from: the client address in MaxMind-format databases.

The admin points ``context.geoip`` at a city database and/or an ASN database
(GeoLite2 or DB-IP Lite, any file in the MaxMind DB format), read with
``maxminddb``. `GeoIP.locate` turns the login's client address (the
Calling-Station-Id when it is an IP address) into a `Location`:

- private, loopback, link-local, documentation, multicast and other reserved
  addresses are named as such and never looked up (a database that has an
  entry for 10.0.0.0/8 is wrong, not informative), except networks the admin
  lists in ``look_up`` (a lab, the tests' documentation ranges);
- an address the database does not know is "unknown", never guessed;
- everything read from a database is untrusted: strings are cut to a bound,
  stripped of control and format characters (bidi overrides, zero-width),
  numbers must be numbers in range, anything else is ignored.

`GeoIP.reload` (on SIGHUP) opens the files again; a file that does not open
keeps the old database and says so in the log.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import logging
import math
import os
import unicodedata
from dataclasses import dataclass, field

from pushproxy import logs

log = logging.getLogger("pushproxy.geoip")

MAX_TEXT = 64  # characters of a name shown on a prompt or written to the audit trail
_DOCUMENTATION = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not a place
_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


class AddressKind(enum.Enum):
    """What kind of address a login came from; only PUBLIC ones are looked up."""

    PUBLIC = "public"
    PRIVATE = "private"  # RFC 1918, unique local fc00::/7, carrier-grade NAT
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    DOCUMENTATION = "documentation"  # TEST-NET-1/2/3, 2001:db8::/32
    MULTICAST = "multicast"
    RESERVED = "reserved"  # unspecified, 240/4, benchmarking and the rest
    NOT_AN_ADDRESS = "not an IP address"  # a MAC address, a phone number, garbage
    ABSENT = "none sent"


@dataclass(frozen=True)
class Location:
    """The place of one client address, as far as the databases tell (never guessed).

    ``found`` is whether a database had an entry for it. Text fields are
    already cleaned (`clean_text`); coordinates are in range or None.
    """

    address: str | None
    kind: AddressKind
    found: bool = False
    country_code: str | None = None  # ISO 3166-1 alpha-2, upper case
    country: str | None = None
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    accuracy_km: float | None = None
    asn: int | None = None
    org: str | None = None
    looked_up: bool = field(default=False, compare=False)  # a database was consulted

    @property
    def place(self) -> str | None:
        """"City, Country" (or the part known), or None."""
        country = self.country or self.country_code
        parts = [p for p in (self.city, country) if p]
        return ", ".join(parts) or None

    def label(self) -> str:
        """One short line for a prompt: where, or what kind of address and why not."""
        if self.kind is not AddressKind.PUBLIC:
            return f"{self.kind.value} address" if self.kind not in (
                AddressKind.NOT_AN_ADDRESS, AddressKind.ABSENT) else self.kind.value
        if not self.found:
            return "unknown location" if self.looked_up else "no location database"
        network = f"AS{self.asn}" + (f" {self.org}" if self.org else "") \
            if self.asn is not None else None
        return " · ".join(p for p in (self.place, network) if p) or "unknown location"

    def as_dict(self) -> dict:
        """The fields a prompt and the audit trail carry (JSON-ready, bounded)."""
        return {"kind": self.kind.value, "label": self.label(),
                "country_code": self.country_code, "country": self.country, "city": self.city,
                "asn": self.asn, "org": self.org}


def clean_text(value, limit: int = MAX_TEXT) -> str | None:
    """A database string made safe to show: None unless a non-empty str.

    Control characters and format characters (bidi overrides, zero-width
    joiners) go, so a hostile database cannot reorder or hide text on a
    prompt; NFC-normalized and cut to ``limit`` characters.
    """
    if not isinstance(value, str):
        return None
    text = unicodedata.normalize("NFC", value[:limit * 4])  # bounded work first
    if not text.isprintable():  # the usual name needs no character-by-character pass
        text = "".join(ch for ch in text
                       if unicodedata.category(ch)[0] not in ("C", "Z") or ch == " ")
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return text or None


def classify(text: str | None) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None,
                                          AddressKind]:
    """The client address and its kind; only a PUBLIC address is looked up."""
    if text is None or not text.strip():
        return None, AddressKind.ABSENT
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None, AddressKind.NOT_AN_ADDRESS
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped  # an IPv4 client seen through a dual-stack socket
    return ip, kind_of(ip)


@functools.lru_cache(maxsize=4096)  # pure; the stdlib's is_private/is_global scan lists
def kind_of(ip) -> AddressKind:
    """The special-purpose class of ``ip`` (most specific first), or PUBLIC."""
    if ip.is_loopback:
        return AddressKind.LOOPBACK
    if ip.is_link_local:
        return AddressKind.LINK_LOCAL
    if ip.is_multicast:
        return AddressKind.MULTICAST
    if any(ip in net for net in _DOCUMENTATION if net.version == ip.version):
        return AddressKind.DOCUMENTATION
    if ip.version == 4 and ip in _SHARED:
        return AddressKind.PRIVATE
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return AddressKind.PRIVATE
    if ip.is_unspecified or ip.is_reserved or ip.is_private or not ip.is_global:
        return AddressKind.RESERVED
    return AddressKind.PUBLIC


@dataclass(frozen=True)
class GeoConfig:
    """The validated ``context.geoip`` block."""

    city_database: str | None = None
    asn_database: str | None = None
    # special-purpose networks looked up anyway (a lab's addresses, the tests')
    look_up: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


class GeoIPError(Exception):
    """A database file cannot be opened or is not a MaxMind DB."""


def _open(path: str):
    """A reader over a private copy of the file.

    Readers map their file: one rewritten in place (not replaced by a rename,
    as geoipupdate does) would change under the reader in use and corrupt its
    lookups. The copy lives in an anonymous memory file (Linux memfd), which
    keeps the fast mapped reader; elsewhere the file is read into memory.
    """
    import maxminddb

    try:
        with open(path, "rb") as f:
            data = f.read()
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("pushproxy-geoip")
            try:
                with os.fdopen(os.dup(fd), "wb") as out:
                    out.write(data)
                reader = maxminddb.open_database(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)  # the mapping keeps the memory file alive
        else:
            reader = maxminddb.open_database(path, maxminddb.MODE_MEMORY)
        reader.metadata()  # the metadata section parses
        return reader
    except (OSError, ValueError, maxminddb.InvalidDatabaseError, RuntimeError) as exc:
        raise GeoIPError(f"{path}: {exc}") from None


def check_database(path: str) -> str | None:
    """Why ``path`` is not a usable MaxMind DB (None: it opens), read without copying it."""
    import maxminddb

    try:
        reader = maxminddb.open_database(path, maxminddb.MODE_FILE)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError, RuntimeError) as exc:
        return str(exc)[:200]
    try:
        meta = reader.metadata()
        if meta.ip_version not in (4, 6) or meta.node_count <= 0:
            return f"unusable metadata (ip_version {meta.ip_version}, {meta.node_count} nodes)"
        return None
    finally:
        reader.close()


def _number(value, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and low <= value <= high else None


def _name(record: dict, key: str) -> str | None:
    part = record.get(key)
    if not isinstance(part, dict):
        return None
    names = part.get("names")
    if isinstance(names, dict):
        return clean_text(names.get("en"))
    return None


class GeoIP:
    """Open city/ASN databases; `locate` never raises, `reload` keeps what works."""

    def __init__(self, config: GeoConfig, counters=None):
        self.config = config
        self.counters = counters
        self._city = _open(config.city_database) if config.city_database else None
        self._asn = _open(config.asn_database) if config.asn_database else None

    def reload(self, config: GeoConfig | None = None) -> bool:
        """Open the (new) files; each one that fails keeps its old database. True if all opened."""
        config = config or self.config
        ok = True
        for attr, path in (("_city", config.city_database), ("_asn", config.asn_database)):
            if not path:
                setattr(self, attr, None)
                continue
            try:
                setattr(self, attr, _open(path))
            except GeoIPError as exc:
                ok = False
                self._count("geoip_reload_failed")
                logs.event(log, logging.ERROR, "geoip.reload_failed", database=path,
                           detail=str(exc)[:200], kept="the database loaded before")
        self.config = config  # the paths configured; a file that failed keeps its old reader
        if ok:
            logs.event(log, logging.INFO, "geoip.reloaded", city=config.city_database,
                       asn=config.asn_database)
        return ok

    def _count(self, name: str) -> None:
        if self.counters is not None:
            self.counters.inc(name)

    def _get(self, reader, ip) -> dict | None:
        if reader is None:
            return None
        try:
            record = reader.get(ip)
        except (ValueError, TypeError, RuntimeError, OSError, IndexError, KeyError) as exc:
            # an IPv6 address in an IPv4-only database, or a corrupt search tree
            self._count("geoip_lookup_errors")
            logs.event(log, logging.WARNING, "geoip.lookup_failed", detail=str(exc)[:200])
            return None
        except Exception as exc:  # noqa: BLE001 - a hostile file must not break a login
            self._count("geoip_lookup_errors")
            logs.event(log, logging.WARNING, "geoip.lookup_failed",
                       detail=f"{type(exc).__name__}: {str(exc)[:200]}")
            return None
        return record if isinstance(record, dict) else None

    def locate(self, text: str | None) -> Location:
        """The `Location` of a Calling-Station-Id (or peer address); never raises."""
        ip, kind = classify(text)
        address = str(ip) if ip is not None else None
        if kind is not AddressKind.PUBLIC and not (
                ip is not None and any(ip in net for net in self.config.look_up
                                       if net.version == ip.version)):
            return Location(address, kind)
        city, asn = self._get(self._city, ip), self._get(self._asn, ip)
        found = {}
        if city:
            country = city.get("country")
            code = country.get("iso_code") if isinstance(country, dict) else None
            code = clean_text(code, 2)
            found.update(country_code=code.upper() if code and code.isalpha()
                         and code.isascii() else None,
                         country=_name(city, "country"), city=_name(city, "city"))
            where = city.get("location")
            if isinstance(where, dict):
                lat = _number(where.get("latitude"), -90, 90)
                lon = _number(where.get("longitude"), -180, 180)
                if lat is not None and lon is not None:
                    found.update(latitude=lat, longitude=lon,
                                 accuracy_km=_number(where.get("accuracy_radius"), 0, 20038))
        if asn:
            number = asn.get("autonomous_system_number")
            if isinstance(number, int) and not isinstance(number, bool) \
                    and 0 < number < 2 ** 32:
                found["asn"] = number
            found["org"] = clean_text(asn.get("autonomous_system_organization"))
        found = {k: v for k, v in found.items() if v is not None}
        looked = self._city is not None or self._asn is not None
        return Location(address, AddressKind.PUBLIC, found=bool(found), looked_up=looked,
                        **found)


def parse_geoip(c, value, path: str) -> GeoConfig | None:
    """Validate ``context.geoip`` with the config checker (files must be readable)."""
    m = c.mapping(value, path, optional=("city_database", "asn_database", "look_up"))
    if m is None:
        return None
    city = c.readable_file(m, "city_database", f"{path}.city_database") \
        if "city_database" in m else None
    asn = c.readable_file(m, "asn_database", f"{path}.asn_database") \
        if "asn_database" in m else None
    if "city_database" not in m and "asn_database" not in m:
        c.problem(path, "names no database: set city_database and/or asn_database")
    for key, file in (("city_database", city), ("asn_database", asn)):
        if file:
            problem = check_database(file)
            if problem:
                c.problem(f"{path}.{key}", f"not a MaxMind-format database: {problem}")
    nets = tuple(c.network(item, f"{path}.look_up[{i}]")
                 for i, item in enumerate(c.seq(m, "look_up", f"{path}.look_up", [])))
    return GeoConfig(city_database=city, asn_database=asn,
                     look_up=tuple(n for n in nets if n is not None))
