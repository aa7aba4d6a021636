"""Fault-injection suite plumbing: each test records what it measured, and
``--resilience-report docs/resilience.md`` renders the table into that file.

A test asks for the ``resilience`` fixture and calls ``record(fault=...,
expected=..., measured=...)`` before it asserts, so a failing run still shows
what was seen. At the end of the session the rows, with each test's outcome
and duration (also of the referenced integration tests, when they ran in the
same session: see `tests.resilience.report.REFERENCED`), go to
docs/resilience-faults.json and the Markdown table in the report file.
"""

from __future__ import annotations

import time

import pytest

from tests.integration import conftest as integration
from tests.resilience import report

slapd = integration.slapd  # the session's private slapd
ROWS: list[dict] = []


def pytest_addoption(parser):
    parser.addoption("--resilience-report", metavar="MARKDOWN", default=None,
                     help="write the fault table (and the soak figures) into this file")


class Recorder:
    """Collects one test's measured results."""

    def __init__(self, nodeid: str):
        self.nodeid = nodeid

    def record(self, *, fault: str, expected: str, measured: str) -> None:
        """One row of the fault table."""
        ROWS.append({"nodeid": self.nodeid, "fault": fault, "expected": expected,
                     "measured": measured})
        print(f"measured: {measured}")  # shown with -s, and in a failing test's output


@pytest.fixture
def resilience(request) -> Recorder:
    """Record what this test measured, for docs/resilience.md."""
    return Recorder(request.node.nodeid)


def pytest_sessionfinish(session, exitstatus):
    target = session.config.getoption("--resilience-report", None)
    if not target:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    outcomes = {}
    for kind, reports in (reporter.stats.items() if reporter else []):
        for rep in reports:
            if getattr(rep, "when", None) == "call" or (kind in ("failed", "error", "skipped")
                                                         and hasattr(rep, "nodeid")):
                outcomes[rep.nodeid] = {"outcome": kind,
                                        "seconds": round(getattr(rep, "duration", 0.0), 1)}
    report.write_faults(target, ROWS, outcomes, when=time.strftime("%Y-%m-%d %H:%M UTC",
                                                                      time.gmtime()))
