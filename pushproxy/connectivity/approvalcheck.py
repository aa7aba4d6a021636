"""The approval-service checks of ``pushproxy test-connection``: store and public URL."""

from __future__ import annotations

import os
import sqlite3
import ssl
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from pushproxy.config import Config
from pushproxy.connectivity.net import innermost, short, system_trust
from pushproxy.netaddr import is_loopback
from pushproxy.connectivity.report import Report, since


HTTP_TIMEOUT = 5.0


def _known_schema() -> int:
    """The newest schema version this pushproxy's migrations create."""
    from pushproxy.approval.store import _load_migrations

    migrations = _load_migrations()
    return migrations[-1][0] if migrations else 0


def schema_is_current(report: Report, step: str, version: int, known: int, started: float,
                      where: str) -> bool:
    """Report a schema older (WARN) or newer (FAIL) than this pushproxy's; True if current."""
    if version > known:
        report.step("FAIL", step, f"schema version {version}, but this pushproxy knows "
                    f"only up to {known}: a newer pushproxy wrote it, and the daemon will refuse "
                    "it (upgrade pushproxy)", since(started), where)
        return False
    if version < known:
        report.step("WARN", step, f"schema version {version}; the daemon migrates it to "
                    f"{known} at its next start", since(started))
        return False
    return True


def check_store(report: Report, config: Config) -> None:
    """The approval database: present, readable, a schema this pushproxy knows, devices
    (a PostgreSQL one: see pgcheck)."""
    from pushproxy.approval.backends import is_postgres_url
    from pushproxy.approval.store import SQLiteStore, StoreError

    path = config.approval.database
    report.section(f"Approval store: {path}")
    if is_postgres_url(path):
        from pushproxy.connectivity.pgcheck import check_postgres_store

        return check_postgres_store(report, config)
    where = "approval.database"
    if path in ("", ":memory:"):
        report.step("WARN", "database", "in memory: devices and enrollments are lost whenever "
                    "the daemon stops; set approval.database to a file")
        return
    started = time.perf_counter()
    if not os.path.exists(path):
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            report.step("FAIL", "database", f"neither the database nor its folder {folder} "
                        "exists: the daemon cannot create it (create the folder, owned by the "
                        "daemon's user; under systemd StateDirectory=pushproxy makes "
                        "/var/lib/pushproxy)", since(started), where)
        else:
            report.step("WARN", "database", "does not exist yet (the daemon creates it at "
                        "first start)", since(started))
        return
    # Peek read-only before SQLiteStore, which would migrate an older schema (a
    # write) and must not be opened on a schema it does not know. With a -wal
    # file present (the daemon is running) the newest data may be only in the
    # WAL: read through it with mode=ro. Without one, immutable=1 reads the
    # file alone and creates no -wal/-shm files beside it.
    live = os.path.exists(f"{path}-wal")
    try:
        peek = sqlite3.connect(f"{Path(path).resolve().as_uri()}?"
                               f"{'mode=ro' if live else 'immutable=1'}", uri=True, timeout=5)
        try:
            version = peek.execute("PRAGMA user_version").fetchone()[0]
        finally:
            peek.close()
        # immutable=1 reports journal mode "delete" whatever the file says; the
        # header's read/write version bytes (offsets 18, 19) are 2 for WAL.
        # (The header is written when the WAL mode is set, never only in the WAL.)
        with open(path, "rb") as fh:
            wal = fh.read(20)[18:20] == b"\x02\x02"
    except (sqlite3.Error, OSError) as exc:
        hint = ""
        if not os.access(path, os.R_OK):
            hint = (": permission denied; run as root or as the daemon's user "
                    "(runuser -u pushproxy -- pushproxy test-connection)")
        elif "not a database" in str(exc):
            hint = ": this file is not an SQLite database"
        report.step("FAIL", "database", f"cannot read {path}: {exc}{hint}", since(started), where)
        return
    if not schema_is_current(report, "database", version, _known_schema(), started, where):
        return
    if not wal:
        # Opening it through SQLiteStore would convert it to WAL: a write.
        report.step("WARN", "database", f"schema version {version} but not in WAL mode: the "
                    "daemon switches it to WAL at its next start", since(started))
        return
    try:
        # The schema is current and in WAL mode, so opening the store writes nothing.
        store = SQLiteStore(path)
        try:
            devices = store.devices()
        finally:
            store.close()
    except StoreError as exc:
        report.step("FAIL", "database", str(exc), since(started), where)
        return
    users = len({d.username for d in devices})
    report.step("OK", "database", f"schema version {version} (current), {len(devices)} "
                f"device(s) of {users} user(s)", since(started))
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        report.step("WARN", "permissions", f"mode {mode:04o}: other users can read device keys "
                    f"and enrollment hashes; chmod 600 {path}")


def check_public_url(report: Report, config: Config) -> None:
    """GET {public_url}/v1/info from here and expect pushproxy's answer (version 1)."""
    public = config.approval.public_url
    url = f"{public}/v1/info"
    listen = "%s:%d" % config.approval.listen
    report.section(f"Approval API: {public} (checked from this host)")
    where = "approval.public_url"
    host = urlsplit(public).hostname or public
    started = time.perf_counter()
    try:
        resp = requests.get(url, timeout=HTTP_TIMEOUT, verify=system_trust(),
                            headers={"Accept": "application/json"})
    except requests.exceptions.SSLError as exc:
        if isinstance(innermost(exc), ssl.SSLCertVerificationError):
            message = (f"TLS error: {short(exc)}: the certificate is not trusted by this "
                       "host's trust store (phones will likely refuse it too), has expired, "
                       f"or does not name {host}")
        else:
            message = (f"TLS handshake failed: {short(exc)}: the server broke off the "
                       "handshake; look at the log of the daemon (approval.tls_cert / "
                       "tls_key) or of the reverse proxy")
        report.step("FAIL", "api", message, since(started), where)
        return
    except requests.exceptions.ConnectTimeout:
        report.step("FAIL", "api", f"no connection within {HTTP_TIMEOUT:g} s to {host}: a "
                    "firewall drops it, or the name resolves to an address not reachable from "
                    "here", since(started), where)
        return
    except requests.exceptions.ReadTimeout:
        report.step("FAIL", "api", f"connected, but no answer within {HTTP_TIMEOUT:g} s: the "
                    "daemon or the reverse proxy's backend hangs", since(started), where)
        return
    except requests.exceptions.ConnectionError as exc:
        text = str(exc)
        if "refused" in text.lower():
            message = (f"connection refused at {url}: is the daemon running (systemctl status "
                       "pushproxy)? Behind a reverse proxy: is the proxy running and listening "
                       f"there? Without one, public_url must point at approval.listen ({listen})")
        elif "resolution" in text.lower() or "name or service not known" in text.lower():
            message = f"{host} does not resolve from this host (check DNS)"
        else:
            message = f"cannot connect to {url}: {short(exc)}"
        report.step("FAIL", "api", message, since(started), where)
        return
    except requests.exceptions.RequestException as exc:
        report.step("FAIL", "api", f"request to {url} failed: {short(exc)}", since(started),
                    where)
        return
    ms = since(started)
    if resp.status_code == 404:
        report.step("FAIL", "api", f"404 Not Found at {url}: something answers at {host} but "
                    "not pushproxy's API at this path; check that the reverse proxy forwards "
                    f"{public}/v1/ to approval.listen ({listen}) without rewriting the path",
                    ms, where)
        return
    if resp.status_code in (502, 503, 504):
        report.step("FAIL", "api", f"HTTP {resp.status_code} at {url}: the reverse proxy "
                    f"cannot reach pushproxy at approval.listen ({listen}); is the daemon "
                    "running?", ms, where)
        return
    if resp.status_code != 200:
        report.step("FAIL", "api", f"HTTP {resp.status_code} at {url}: expected 200 from "
                    "pushproxy's API", ms, where)
        return
    try:
        body = resp.json()
    except ValueError:
        report.step("FAIL", "api", f"HTTP 200 at {url} but not JSON: another application "
                    "serves this URL", ms, where)
        return
    if not isinstance(body, dict) or body.get("version") != 1:
        report.step("FAIL", "api", f"{url} answers JSON without \"version\": 1: not "
                    "pushproxy's approval API, or an incompatible version", ms, where)
        return
    report.step("OK", "api", f"pushproxy approval API version 1 answers at {url}", ms)
    if resp.history:
        report.step("WARN", "redirect", f"{url} redirects to {resp.url}: set "
                    "approval.public_url to the final address (devices may not follow it)")
    if urlsplit(public).scheme == "http" and not is_loopback(host):
        report.step("WARN", "api", "public_url is plain http://: devices send their answers "
                    "unencrypted; publish it over https")
