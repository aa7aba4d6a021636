"""Per-user login baselines in the store: where and when a user's approved logins came from.

Shared by every node of a cluster (PostgreSQL), so the node that sees a login
from a new country knows what the others learned. One implementation serves
both backends, like `pushproxy.approval.rolloutstore`: `SQLiteBaselineMethods`
and `PostgresBaselineMethods` differ only in placeholders.

A baseline is a user's count of approved logins, the first and last of them,
the last one that had a location (for impossible travel), and the countries,
ASNs, networks and hours of day seen, each with how often and when it was
last seen. Each kind keeps at most ``keep`` values, the least recently seen
going first, so a user roaming across many networks cannot grow a row set
without bound. Risk decisions over it are pure (`pushproxy.risk`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

KINDS = ("country", "asn", "network", "hour")


@dataclass(frozen=True)
class Baseline:
    """What the store knows of one user's approved logins (``approved`` 0: nothing yet)."""

    username: str
    approved: int = 0
    first_at: float | None = None
    last_at: float | None = None
    # the last approved login that had coordinates (impossible travel)
    located_at: float | None = None
    latitude: float | None = None
    longitude: float | None = None
    located_country: str | None = None
    countries: frozenset[str] = frozenset()
    asns: frozenset[str] = frozenset()
    networks: frozenset[str] = frozenset()
    hours: frozenset[int] = frozenset()


class BaselineStore(Protocol):
    """The store methods of login baselines. Time is always passed in as ``now``."""

    def user_baseline(self, username: str) -> Baseline:
        """The user's baseline (an empty one when nothing was learned)."""

    def learn_login(self, username: str, now: float, items: list[tuple[str, str]],
                    place: tuple[float, float, str | None] | None, keep: int) -> None:
        """Record one approved login at ``now``: each (kind, value) of ``items`` (kinds in
        `KINDS`), and ``place`` (latitude, longitude, country) if it had one; each kind
        keeps its ``keep`` most recently seen values."""

    def forget_baseline(self, username: str) -> int:
        """Drop what was learned of the user (a move, a new job); rows deleted."""


class _BaselineSQL:
    """The shared implementation; subclasses set the dialect (``_q``)."""

    def _q(self, sql: str) -> str:
        return sql

    def user_baseline(self, username: str) -> Baseline:
        row = self._one(self._q(
            "SELECT approved, first_at, last_at, located_at, latitude, longitude, "
            "located_country FROM baseline_users WHERE username = ?"), (username,))
        if row is None:
            return Baseline(username)
        items = self._all(self._q("SELECT kind, value FROM baseline_items WHERE username = ?"),
                          (username,))
        by_kind: dict[str, set[str]] = {k: set() for k in KINDS}
        for kind, value in items:
            if kind in by_kind:
                by_kind[kind].add(value)
        return Baseline(username, row[0], row[1], row[2], row[3], row[4], row[5], row[6],
                        countries=frozenset(by_kind["country"]),
                        asns=frozenset(by_kind["asn"]), networks=frozenset(by_kind["network"]),
                        hours=frozenset(int(h) for h in by_kind["hour"] if h.isdigit()))

    def learn_login(self, username: str, now: float, items: list[tuple[str, str]],
                    place: tuple[float, float, str | None] | None, keep: int) -> None:
        for kind, _ in items:
            if kind not in KINDS:
                raise ValueError(f"unknown baseline kind {kind!r}")
        lat, lon, country = place if place is not None else (None, None, None)
        with self._write() as db:
            db.execute(self._q(
                "INSERT INTO baseline_users (username, approved, first_at, last_at, located_at, "
                "latitude, longitude, located_country) VALUES (?, 1, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (username) DO UPDATE SET approved = baseline_users.approved + 1, "
                "last_at = excluded.last_at, "
                "located_at = COALESCE(excluded.located_at, baseline_users.located_at), "
                "latitude = CASE WHEN excluded.located_at IS NULL THEN baseline_users.latitude "
                "ELSE excluded.latitude END, "
                "longitude = CASE WHEN excluded.located_at IS NULL THEN baseline_users.longitude "
                "ELSE excluded.longitude END, "
                "located_country = CASE WHEN excluded.located_at IS NULL "
                "THEN baseline_users.located_country ELSE excluded.located_country END"),
                (username, now, now, now if place is not None else None, lat, lon, country))
            for kind, value in items:
                db.execute(self._q(
                    "INSERT INTO baseline_items (username, kind, value, hits, first_seen, "
                    "last_seen) VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (username, kind, value) "
                    "DO UPDATE SET hits = baseline_items.hits + 1, "
                    "last_seen = excluded.last_seen"), (username, kind, value, now, now))
            for kind in {k for k, _ in items}:
                db.execute(self._q(
                    "DELETE FROM baseline_items WHERE username = ? AND kind = ? AND value NOT IN "
                    "(SELECT value FROM baseline_items WHERE username = ? AND kind = ? "
                    "ORDER BY last_seen DESC, value LIMIT ?)"),
                    (username, kind, username, kind, keep))

    def forget_baseline(self, username: str) -> int:
        with self._write() as db:
            items = db.execute(self._q("DELETE FROM baseline_items WHERE username = ?"),
                               (username,)).rowcount
            users = db.execute(self._q("DELETE FROM baseline_users WHERE username = ?"),
                               (username,)).rowcount
        return items + users


class SQLiteBaselineMethods(_BaselineSQL):
    """The baseline methods on SQLite (BEGIN IMMEDIATE in `_write` serializes writers)."""


class PostgresBaselineMethods(_BaselineSQL):
    """The baseline methods on PostgreSQL: the upserts are atomic per row."""

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")
