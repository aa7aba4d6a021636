"""The README's first command: `pushproxy demo` shows an approved and a denied login end to end."""

import subprocess
import sys


def test_demo_walkthrough_approves_alice_and_denies_bob(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "demo", "--once",
                          "--dir", str(tmp_path), "--radius-port", "0", "--http-port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RADIUS answer: Access-Accept" in out.stdout
    assert "RADIUS answer: Access-Reject" in out.stdout
    assert "Walkthrough OK" in out.stdout
    assert "alert.push_denied" in out.stderr and "user=bob" in out.stderr
    audit = (tmp_path / "audit.jsonl").read_text()
    assert '"reason":"push_approved"' in audit and '"reason":"push_denied"' in audit
    assert "alice-pw" not in audit and "bob-pw" not in audit
