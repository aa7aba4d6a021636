"""``pushproxy rollout status``: who has a device, an open enrollment link, or nothing.

Rows come from the directory (a group's members, with their mail address) joined
with the store's `rollout_overview`; without a group, from every user the store
knows. Output as an aligned table, CSV (for a spreadsheet) or JSON.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from typing import TextIO

from pushproxy.approval.rolloutstore import UserRollout
from pushproxy.audit import utc_stamp
from pushproxy.rollout.directory import DirectoryUser, UserStatus

FIELDS = ("user", "status", "devices", "last_used", "link_expires", "last_mail", "mail",
          "directory")


@dataclass(frozen=True)
class StatusRow:
    """One user's rollout state; times are UTC ISO 8601 strings or None."""

    user: str
    status: str  # "device" | "pending_link" | "none"
    devices: int
    last_used: str | None
    link_expires: str | None
    last_mail: str | None
    mail: str | None  # from the directory (None without --group, or no address)
    directory: str  # "found", "unknown", ... ("-" without --group)


def _stamp(t: float | None) -> str | None:
    return None if t is None else utc_stamp(t)


def row(name: str, state: UserRollout | None, user: DirectoryUser | None) -> StatusRow:
    """The row of one user from what the store and the directory know."""
    devices = state.devices if state else 0
    link = state.link_expires if state else None
    return StatusRow(
        user=name, status="device" if devices else ("pending_link" if link else "none"),
        devices=devices, last_used=_stamp(state.last_used if state else None),
        link_expires=_stamp(link), last_mail=_stamp(state.last_mail if state else None),
        mail=user.mail if user else None,
        directory=user.status.value if user else "-")


def rows(users: list[DirectoryUser] | None, overview: dict[str, UserRollout]) -> list[StatusRow]:
    """Rows for the directory users given (each account once), else every stored user."""
    if users is None:
        return [row(name, overview[name], None) for name in sorted(overview)]
    result, seen = [], set()
    for user in users:
        name = user.account if user.status is UserStatus.FOUND and user.account else user.name
        if name in seen:
            continue
        seen.add(name)
        result.append(row(name, overview.get(name) if user.account else None, user))
    return result


def write(table: list[StatusRow], fmt: str, out: TextIO) -> None:
    """Print the rows as text, csv or json, with a count per status for text."""
    if fmt == "json":
        json.dump([asdict(r) for r in table], out, indent=1)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in table:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
        return
    out.write(f"{'USER':20} {'STATUS':13} {'DEV':>3} {'LAST USED':21} {'LINK EXPIRES':21} "
              "MAIL\n")
    for r in table:
        out.write(f"{r.user:20} {r.status:13} {r.devices:3} {r.last_used or '-':21} "
                  f"{r.link_expires or '-':21} {r.mail or '-'}\n")
    counts = {s: sum(1 for r in table if r.status == s) for s in ("device", "pending_link",
                                                                  "none")}
    out.write(f"{len(table)} user(s): {counts['device']} with a device, "
              f"{counts['pending_link']} with an open link, {counts['none']} with neither\n")
