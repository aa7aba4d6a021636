"""The in-process allow-path driver (bench/allowcost.py, issue 16) still runs: every
login it feeds through the daemon's real objects and a real slapd comes back as a
verified Access-Accept, decided by the policy's allow rule and audited once. It
measures nothing here (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.slapd import slapd_available

REPO = Path(__file__).resolve().parent.parent


def test_every_fed_login_is_accepted_allowed_and_audited():
    if not slapd_available():
        pytest.skip("OpenLDAP slapd/slapadd not installed (apt-get install slapd)")
    proc = subprocess.run([sys.executable, "-m", "bench.allowcost", "--logins", "60",
                           "--users", "25", "--window", "8"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[0])
    assert result["failed"] == 0 and result["accepted"] == 60, result
    warm = 40  # bench.allowcost.WARMUP
    assert result["allowed"] == result["audit_events"] == 60 + warm, result
    assert result["cpu_ms_per_login"] > 0
