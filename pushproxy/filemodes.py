"""Permissions of the files that hold secrets: checked at start-up, created private.

`serve` (and a SIGHUP reload) refuses to use a secret file (every ``*_file``
secret), a private key (``approval.tls_key``, ``ldap_front.tls_key``) or the
approval database (and its ``-wal``/``-shm`` files, if present) that other
users could read or change. The rule, on the permission bits only (the daemon
often runs as root in tests and containers, where ``access()`` says yes to
everything):

- readable or writable by others (``o+r``, ``o+w``), or writable by the group
  (``g+w``): refused;
- readable by the group (``g+r``, e.g. 0640): refused, except when the file
  belongs to root or to the daemon's own user *and* its group is the daemon's
  own group (the ``root:pushproxy 0640`` pattern docs/systemd.md uses for the
  config file): then a loud warning and the ``insecure_file_modes`` counter,
  because only the service itself can read it;
- execute bits are ignored (harmless on a data file).

`check-config` reports the same findings as warnings (its exit status stays 0:
the example config's placeholder secrets come out of git as 0644), so an admin
sees every one before `serve` refuses.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

REFUSE_BITS = stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP
GROUP_READ = stat.S_IRGRP
_BITS = ((stat.S_IROTH, "readable by other users"), (stat.S_IWOTH, "writable by other users"),
         (stat.S_IRGRP, "readable by its group"), (stat.S_IWGRP, "writable by its group"))


@dataclass(frozen=True)
class ModeFinding:
    """One file whose permissions are too open; ``refuse`` or only warn."""

    config_path: str  # where the config names it, e.g. radius.clients[0].secret_file
    path: str  # the file itself (a database's -wal/-shm included)
    kind: str  # secret | private key | database
    mode: int
    refuse: bool

    @property
    def message(self) -> str:
        """What is wrong, what happens and the fix, in one line (no file contents)."""
        what = ", ".join(text for bit, text in _BITS if self.mode & bit)
        outcome = ("serve refuses to start" if self.refuse
                   else "tolerated (the group is the daemon's own), but")
        return (f"{self.config_path}: {self.kind} file {self.path} is mode {self.mode:04o}, "
                f"{what}; {outcome}: chmod 600 {self.path} (owned by the service user)")


def database_files(database: str) -> list[str]:
    """The approval database and the -wal/-shm files SQLite keeps beside it (none for a
    database in memory or on a PostgreSQL server)."""
    from pushproxy.approval.backends import is_postgres_url

    if database in ("", ":memory:") or is_postgres_url(database):
        return []
    return [database, database + "-wal", database + "-shm"]


def candidates(config) -> list[tuple[str, str, str]]:
    """(config path, file, kind) of everything in ``config`` whose mode is checked."""
    found = list(config.sensitive_files)
    found += [("approval.database", path, "database")
              for path in database_files(config.approval.database)]
    return found


def check_file(config_path: str, path: str, kind: str, *, uid: int | None = None,
               gid: int | None = None) -> ModeFinding | None:
    """The finding for one file, or None when it is private enough (or absent).

    ``uid``/``gid``: the daemon's effective ids (default: this process's).
    """
    try:
        info = os.stat(path)
    except OSError:
        return None  # absent: nothing to leak (the config check reports unreadable secrets)
    if not stat.S_ISREG(info.st_mode):
        return None
    mode = stat.S_IMODE(info.st_mode)
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    if mode & REFUSE_BITS:
        return ModeFinding(config_path, path, kind, mode, refuse=True)
    if mode & GROUP_READ:
        own_group = info.st_gid == gid and info.st_uid in (0, uid)
        return ModeFinding(config_path, path, kind, mode, refuse=not own_group)
    return None


def check_config_files(config, *, uid: int | None = None,
                       gid: int | None = None) -> list[ModeFinding]:
    """Every finding for ``config``'s secrets, keys and database files."""
    findings = []
    for config_path, path, kind in candidates(config):
        finding = check_file(config_path, path, kind, uid=uid, gid=gid)
        if finding is not None:
            findings.append(finding)
    return findings
