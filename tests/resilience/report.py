"""Renders the fault table and the soak figures into docs/resilience.md.

The suite writes its rows to ``docs/resilience-faults.json`` (see conftest.py)
and the soak writes ``docs/resilience-soak.json``; this module turns both into
Markdown between marker comments, leaving the hand-written text alone:

    python -m tests.resilience           # runs the fault suite, writes both parts
    python -m tests.resilience.report    # re-renders docs/resilience.md from the JSON
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests.resilience.soak import slope_per_minute

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "resilience.md"
FAULTS_JSON = REPO / "docs" / "resilience-faults.json"
SOAK_JSON = REPO / "docs" / "resilience-soak.json"
SUITE_COMMAND = "python -m tests.resilience"

# Faults covered by tests that already existed elsewhere: their rows show
# the outcome and duration from the same run (they are part of SUITE_COMMAND).
REFERENCED = {
    "tests/integration/test_radius_ldap.py::"
    "test_first_ldap_server_refusing_fails_over_to_the_second_quickly": (
        "first LDAP server refuses connections (second one up)",
        "fail over to the second server well inside connect_timeout; the dead one is "
        "skipped (backoff) on the next login"),
    "tests/integration/test_radius_ldap.py::"
    "test_first_ldap_server_hanging_fails_over_within_the_response_timeout": (
        "first LDAP server accepts TCP, never answers (second one up)",
        "Accept via the second server within connect + response timeout (< 5.5 s)"),
    "tests/integration/test_radius_ldap.py::test_provider_down_follows_failmode": (
        "push provider raises ProviderUnavailable (both failmodes)",
        "secure: Reject push_unavailable_secure; safe: Accept"),
    "tests/integration/test_operations.py::"
    "test_metrics_move_and_healthz_follows_the_directory": (
        "slapd stopped and started (idle daemon)",
        "/healthz 503 with the directory named, 200 again after the restart"),
    "tests/integration/test_operations.py::"
    "test_sigterm_lets_pending_logins_finish_within_the_grace_then_rejects_and_exits_0": (
        "SIGTERM with 3 logins pending",
        "answers within stop_grace, the rest Reject shutting_down, exit 0"),
    "tests/integration/test_approval_e2e.py::"
    "test_restart_keeps_devices_and_rejects_the_login_pending_during_it": (
        "graceful restart with a login pending",
        "pending login rejected, its request closed; device kept and usable"),
}


ORDER = ("directory", "push", "store", "burst", "audit", "kill", "soak")


def _order(row: dict) -> int:
    name = row["nodeid"].split("::")[0].rsplit("/", 1)[-1]
    return next((i for i, key in enumerate(ORDER) if key in name), len(ORDER))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def faults_table(data: dict) -> str:
    """The Markdown table of every fault row and every referenced test."""
    outcomes = data["outcomes"]
    lines = [f"Produced by `{data['command']}` on {data['when']}.", "",
             "| Fault | Expected | Measured | Test | Result |", "|---|---|---|---|---|"]
    for row in sorted(data["rows"], key=_order):
        result = outcomes.get(row["nodeid"], {"outcome": "not run", "seconds": 0})
        test = row["nodeid"].split("::")[-1]
        lines.append(f"| {_cell(row['fault'])} | {_cell(row['expected'])} | "
                     f"{_cell(row['measured'])} | `{test}` | "
                     f"{result['outcome']} ({result['seconds']:g} s) |")
    for nodeid, (fault, expected) in REFERENCED.items():
        result = outcomes.get(nodeid)
        if result is None:
            # parametrized tests: every variant that ran
            variants = [v for k, v in outcomes.items() if k.startswith(nodeid + "[")]
            if variants:
                worst = "passed" if all(v["outcome"] == "passed" for v in variants) else "failed"
                result = {"outcome": f"{worst} x{len(variants)}",
                          "seconds": sum(v["seconds"] for v in variants)}
            else:
                result = {"outcome": "not run", "seconds": 0}
        path, test = nodeid.split("::")
        lines.append(f"| {_cell(fault)} | {_cell(expected)} | (the test's assertions) | "
                     f"`{Path(path).name}::{test}` | {result['outcome']} "
                     f"({result['seconds']:g} s) |")
    return "\n".join(lines)


def _fmt(value, digits=1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def soak_section(soak: dict) -> str:
    """The soak figures as Markdown."""
    total, rss, fds = soak["total"], soak["rss_kib"], soak["fds"]
    lines = [
        f"Produced by `{soak['command']}`, started {soak['started']}: "
        f"{soak['seconds'] / 60:g} minutes at {soak['rate']:g} logins/s, "
        f"samples every {soak['sample_s']:g} s, slopes over the samples after the first "
        f"{soak['warmup_s']:g} s ({soak['samples_used']} samples).", "",
        "| Kind | Sent | Accept | Reject | Unanswered | Unexpected | p50 (s) | p99 (s) | max (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, c in soak["by_kind"].items():
        lat = soak["latency_s"][kind]
        lines.append(f"| {kind} | {c['sent']} | {c['accept']} | {c['reject']} | "
                     f"{c['unanswered']} | {c['unexpected']} | {_fmt(lat['p50'], 3)} | "
                     f"{_fmt(lat['p99'], 3)} | {_fmt(lat['max'], 3)} |")
    lines.append(f"| **all** | {total['sent']} | {total['accept']} | {total['reject']} | "
                 f"{total['unanswered']} | {total['unexpected']} | | | |")
    daemon = soak["daemon"]
    steady = [x for x in soak["samples"] if x["t"] >= soak["warmup_s"]]
    half = steady[len(steady) // 2:]
    late = slope_per_minute([(x["t"], x["rss_kib"]) for x in half])
    lines += [
        "",
        f"- RSS: {rss['first']} KiB after the warm-up, {rss['last']} KiB at the end "
        f"(min {rss['min']}, max {rss['max']}); slope **{_fmt(rss['slope_kib_per_min'])} "
        f"KiB/min** (over the second half of the samples, from t = {half[0]['t']:g} s: "
        f"**{_fmt(late)} KiB/min**).",
        f"- Open file descriptors: {fds['first']} -> {fds['last']} (min {fds['min']}, "
        f"max {fds['max']}); slope **{_fmt(fds['slope_per_min'], 3)} fds/min**. Threads: "
        f"{soak['threads']['min']}-{soak['threads']['max']}.",
        f"- Daemon counters at the end: internal_errors {daemon['internal_errors']:g}, "
        f"push_provider_errors {daemon['push_provider_errors']:g}, audit_write_errors "
        f"{daemon['audit_write_errors']:g}; decisions " + ", ".join(
            f"{k} {v:g}" for k, v in daemon["decisions"].items()) + ".",
        f"- Phones: {soak['phones']['answered']} answers sent, errors "
        f"{soak['phones']['errors'] or 'none'}; logins skipped because every user of a "
        f"kind was busy: {total['skipped']}.",
    ]
    return "\n".join(lines)


def replace_section(text: str, name: str, body: str) -> str:
    """Put ``body`` between ``<!-- name:begin -->`` and ``<!-- name:end -->``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{name} markers missing from the document")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def render(doc: Path = DOC) -> None:
    """Re-render both generated parts of ``doc`` from the JSON files."""
    text = doc.read_text()
    if FAULTS_JSON.exists():
        text = replace_section(text, "faults", faults_table(json.loads(FAULTS_JSON.read_text())))
    if SOAK_JSON.exists():
        text = replace_section(text, "soak", soak_section(json.loads(SOAK_JSON.read_text())))
    doc.write_text(text)


def write_faults(target: str, rows: list[dict], outcomes: dict, *, when: str) -> None:
    """Called at the end of a suite run: save the rows, re-render ``target``."""
    FAULTS_JSON.write_text(json.dumps({"command": SUITE_COMMAND, "when": when, "rows": rows,
                                       "outcomes": outcomes}, indent=1) + "\n")
    render(Path(target))


if __name__ == "__main__":
    render(Path(sys.argv[1]) if len(sys.argv) > 1 else DOC)
