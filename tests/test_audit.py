"""The audit trail under write errors: counted, logged, and never a torn line.

A file-size limit (RLIMIT_FSIZE, in a child process so the test runner is not
affected) makes the kernel take only part of a write, as a full disk does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from pushproxy.audit import AuditEvent, AuditLog, utc_stamp
from pushproxy.metrics import Counters

CHILD = textwrap.dedent("""\
    import json, resource, signal, sys
    from pushproxy.audit import AuditEvent, AuditLog, utc_stamp
    from pushproxy.metrics import Counters

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    path, limit = sys.argv[1], int(sys.argv[2])
    counters = Counters()
    audit = AuditLog(path, counters)
    def event(i):
        return AuditEvent(time="t", protocol="radius", user=f"user{i}", client="c",
                          source="s", calling_station=None, nas=None, outcome="reject",
                          reason="bad_credentials", rule=None, latency_ms=1.0, txid=None,
                          device=None, joined=False)
    audit.record(event(0))
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    for i in range(1, 4):
        audit.record(event(i))  # the first of these fits only in part
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    audit.record(event(4))
    audit.close()
    print(json.dumps(counters.snapshot()))
""")


def test_a_partly_written_line_is_cut_off_counted_and_the_trail_resumes(tmp_path):
    path = tmp_path / "audit.jsonl"
    first = subprocess.run([sys.executable, "-c", CHILD, str(path), "100000"],
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    one_line = len(path.read_text().splitlines()[0]) + 1
    path.unlink()
    # room for the first line and half of the second
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(one_line * 3 // 2)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    counters = json.loads(done.stdout)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["user"] for line in lines] == ["user0", "user4"]
    assert counters["audit_write_errors"] == 3 and counters["audit_events"] == 2
    assert "audit.write_failed" in done.stderr
    assert json.loads(first.stdout)["audit_events"] == 5


def test_a_write_error_on_a_device_is_counted_not_raised():
    counters = Counters()
    audit = AuditLog("/dev/full", counters)  # every write: ENOSPC
    audit.record(AuditEvent(time="t", protocol="radius", user="u", client="c", source="s",
                            calling_station=None, nas=None, outcome="accept",
                            reason="policy_allow", rule=None, latency_ms=1.0, txid=None,
                            device=None, joined=False))
    assert counters.get("audit_write_errors") == 1 and counters.get("audit_events") == 0


def test_an_event_is_written_with_every_field_in_schema_order(tmp_path):
    """The trail's line is the event's fields in schema order, nested values as they
    are: the same JSON `dataclasses.asdict` gave (its deep copy is not needed)."""
    import dataclasses

    event = AuditEvent(time="2026-12-02T12:00:00.000Z", protocol="radius", user="alice",
                       client="vpn", source="192.0.2.1", calling_station="198.51.100.7",
                       nas="gw1", outcome="accept", reason="push_approved", rule="staff",
                       latency_ms=12.5, txid="tx1", device="dev1", joined=False,
                       sent_user="Alice", location={"country": "DE", "asn": 64500},
                       signals=["new_country", "odd_hour"], presence="verified")
    assert event.as_dict() == dataclasses.asdict(event)
    assert list(event.as_dict()) == [f.name for f in dataclasses.fields(AuditEvent)]
    path = tmp_path / "audit.jsonl"
    counters = Counters()
    audit = AuditLog(str(path), counters)
    audit.record(event)
    audit.close()
    assert path.read_text() == json.dumps(dataclasses.asdict(event), ensure_ascii=True,
                                          separators=(",", ":")) + "\n"


def test_stamps_are_right_across_seconds_and_milliseconds():
    """utc_stamp formats each second once and reuses it: every stamp must still be
    the instant given, also when instants go back and forth across seconds."""
    import time

    for epoch in (1_764_000_000.0, 1_764_000_000.999, 1_764_000_001.0005, 1_764_000_000.5,
                  0.25, 1_764_086_399.9994, 1_764_086_400.0):
        whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
        assert utc_stamp(epoch) == f"{whole}.{int((epoch % 1) * 1000):03d}Z"
    assert utc_stamp(1_764_086_399.9994) == "2025-11-25T15:59:59.999Z"
