"""The command-line authenticator's prompt with location and warnings from a server that
may be hostile or old: text only, printable, bounded, and wrong types ignored."""

from __future__ import annotations

from pushproxy.approval.authenticator_cli import describe

BASE = {"txid": "t1", "username": "alice", "application": "vpn", "client_ip": "198.51.100.7",
        "nas": "gw", "created": 1_800_000_000.0, "expires": 1_800_000_060.0}


def test_location_and_warnings_are_shown():
    text = describe({**BASE, "location": {"label": "Lisbon, Portugal · AS64501 X"},
                     "warnings": ["First login from Portugal"]}, 1_800_000_001.0)
    assert "  location:    Lisbon, Portugal · AS64501 X" in text
    assert "  WARNING:     First login from Portugal" in text


def test_an_old_server_without_them_shows_a_dash():
    text = describe(BASE, 1_800_000_001.0)
    assert "  location:    -" in text and "WARNING" not in text


def test_hostile_values_are_escaped_bounded_or_ignored():
    text = describe({**BASE, "location": {"label": "\x1b[2J\u202eevil" + "x" * 10_000},
                     "warnings": ["\x1b]0;pwned\x07", 42, None, {"a": 1}] + ["w"] * 50},
                    1_800_000_001.0)
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert max(len(line) for line in text.splitlines()) < 200
    assert text.count("WARNING") == 2  # two strings among the first five entries
    for location in ("Berlin", ["x"], 7, {"label": 5}, None):
        assert "  location:    -" in describe({**BASE, "location": location}, 1.0)
    assert "WARNING" not in describe({**BASE, "warnings": "First login"}, 1.0)
