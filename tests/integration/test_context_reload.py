"""`pushproxy serve` and the location databases on SIGHUP, as a real child process.

A new database file (rewritten in place, as a careless copy would) is used
after SIGHUP; a broken one is refused with a log line naming it, and the
database in use keeps answering -- its private copy is not the file on disk.
"""

from __future__ import annotations

import json
import signal
import textwrap

from tests.geodb import LOOK_UP, write_city
from tests.integration.harness import SECRET, ServeProcess
from tests.integration.radclient import radclient_sync
from tests.integration.test_operations import MA, served_config


def login_location(server: str, tmp_path) -> dict:
    """One login (carol is in no required group: rejected) and its audit record's location."""
    attrs = [("User-Name", "carol"), ("User-Password", "carol-pw"),
             ("Calling-Station-Id", "192.0.2.10"), MA]
    assert radclient_sync(server, SECRET, attrs, timeout=3).code == "Access-Reject"
    return json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])["location"]


def test_sighup_reloads_the_database_and_a_broken_one_keeps_the_old(slapd, tmp_path):
    path, radius_port, _ = served_config(tmp_path, slapd)
    city = write_city(tmp_path / "city.mmdb")
    path.write_text(path.read_text() + textwrap.dedent(f"""\
        context:
          geoip:
            city_database: {city}
            look_up: [{", ".join(LOOK_UP)}]
        """))
    serve = ServeProcess(path)
    server = f"127.0.0.1:{radius_port}"
    try:
        serve.wait_for("daemon.ready")
        assert login_location(server, tmp_path)["city"] == "Berlin"
        # a new database, written over the old file in place
        paris = [("192.0.2.0/24", "FR", "France", "Paris", 48.85, 2.35, 64510, "Example Paris")]
        city.write_bytes(write_city(tmp_path / "new.mmdb", places=paris).read_bytes())
        mark = len(serve.lines)
        serve.proc.send_signal(signal.SIGHUP)
        serve.wait_for("reload.applied", start=mark)
        assert login_location(server, tmp_path)["city"] == "Paris"
        # a broken file: refused, named in the log, and the database in use still answers
        city.write_bytes(b"\x00not a maxmind database\xff" * 200)
        mark = len(serve.lines)
        serve.proc.send_signal(signal.SIGHUP)
        line = serve.wait_for("reload.refused", start=mark)
        assert "context.geoip.city_database" in line and "not a MaxMind-format" in line
        serve.wait_for("reload.kept_old_config", start=mark)
        location = login_location(server, tmp_path)
        assert (location["city"], location["country_code"]) == ("Paris", "FR")
        assert serve.proc.poll() is None
    finally:
        serve.close()
