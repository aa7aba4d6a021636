"""Twisted's own log lines come out as structured pushproxy events (issue 17).

Run in a child process: Twisted lets a process choose its log target once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""\
    import sys
    from twisted.internet import defer
    from twisted.logger import Logger
    from twisted.python import log as legacy
    from pushproxy import logs

    logs.setup("debug", stream=sys.stdout, fmt=sys.argv[1])
    Logger(namespace="twisted.internet.base").info("Received SIGTERM, shutting down.")
    Logger().info("Starting factory {factory!r}", factory="<Site>")
    legacy.msg("a legacy\\nline with key=value")
    try:
        1 / 0
    except ZeroDivisionError:
        legacy.err(None, "Unhandled error in Deferred:")
    try:
        {}["missing"]
    except KeyError:
        Logger().failure("lost a {what}", what="key")
    """)


def run(fmt):
    out = subprocess.run([sys.executable, "-c", CHILD, fmt], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_text_lines_are_events_with_quoted_messages_and_one_line_tracebacks():
    lines = run("text")
    assert len(lines) == 5, lines
    assert lines[0].endswith('info twisted.log message="Received SIGTERM, shutting down." '
                             "source=twisted.internet.base")
    assert " debug twisted.log message=\"Starting factory '<Site>'\"" in lines[1]
    # a newline and a key=value inside the text cannot forge a field or a line
    assert 'twisted.log message="a legacy\\nline with key=value"' in lines[2]
    assert " twisted.error message=" in lines[3] and "ZeroDivisionError" in lines[3]
    assert " critical twisted.error message=\"lost a key\"" in lines[4]
    assert "KeyError" in lines[4]


def test_json_lines_carry_the_event_and_the_message():
    records = [json.loads(line) for line in run("json")]
    assert [r["event"] for r in records] == ["twisted.log"] * 3 + ["twisted.error"] * 2
    assert records[0]["message"] == "Received SIGTERM, shutting down."
    assert "ZeroDivisionError" in json.dumps(records[3])
    assert records[4]["message"] == "lost a key" and "KeyError" in records[4]["traceback"]
