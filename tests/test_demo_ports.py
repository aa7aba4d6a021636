"""`pushproxy demo` with a port taken, and stopped by a signal (issue 17).

The demo used to hang (signals ignored) when port 8080 was taken; now a taken
port ends it at once with the port and the way out, and SIGTERM or Ctrl-C
always ends it, even with a worker thread still blocked.
"""

import os
import select
import signal
import socket
import subprocess
import sys
import time


def demo(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "pushproxy.cli", "demo", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_taken_http_port_is_named_with_the_way_out(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = demo("--dir", str(tmp_path), "--radius-port", "0", "--http-port", str(port))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    assert f"TCP port {port} on 127.0.0.1 (--http-port) is not free" in err
    assert "pushproxy demo --http-port 0" in err
    assert "Traceback" not in err and not (tmp_path / "config.yaml").exists()


def test_the_default_port_8080_taken_ends_the_demo_before_the_heavy_imports(tmp_path):
    """Issue 17: `pushproxy demo` (defaults) with 8080 taken exits non-zero with the hint.

    The refusal comes before config, Twisted, the store or the directory are
    imported (`-X importtime` lists every import); these took ~1.5 s of CPU.
    """
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 8080))
            taken.listen(1)
        except OSError:
            pass  # another program holds 8080: taken all the same
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pushproxy.cli",
                               "demo", "--dir", str(tmp_path)], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "TCP port 8080 on 127.0.0.1 (--http-port) is not free" in proc.stderr
    assert "run `pushproxy demo --http-port 0` to take any free port" in proc.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    heavy = {"pushproxy.config", "pushproxy.demo_directory", "pushproxy.approval.store",
             "pushproxy.fdbudget", "pushproxy.rollout.commands", "twisted", "ldap3", "ldaptor"}
    assert "pushproxy.demo" in imported and not heavy & imported, heavy & imported
    assert not (tmp_path / "config.yaml").exists()


def test_a_taken_radius_port_is_named_too(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = demo("--dir", str(tmp_path), "--radius-port", str(port), "--http-port", "0")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err
    assert f"UDP port {port} on 127.0.0.1 (--radius-port) is not free" in err
    assert "--radius-port 0" in err


def read_until(proc, needle: str, deadline: float = 90) -> str:
    seen = ""
    end = time.monotonic() + deadline
    while needle not in seen and time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536).decode()
            if not chunk:
                break
            seen += chunk
    assert needle in seen, seen
    return seen


def test_sigterm_ends_a_serving_demo(tmp_path):
    proc = demo("--dir", str(tmp_path), "--radius-port", "0", "--http-port", "0",
                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        read_until(proc, "Now try it yourself")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_demo_radius_secret_never_starts_with_a_dash(tmp_path, monkeypatch):
    """The demo prints a radtest/radclient line with its secret: a leading "-" would be
    read as options there (one secret in 64 from token_urlsafe)."""
    from pushproxy import demo, initconfig

    made = iter(["-starts-with-a-dash-xxxxxxxxxxxxx", "fine-secret-xxxxxxxxxxxxxxxxxxxxx"])
    monkeypatch.setattr(initconfig.secrets_mod, "token_urlsafe", lambda n: next(made))
    demo.write_demo_config(tmp_path, "ldap://127.0.0.1:1", 11812, 18080)
    assert (tmp_path / "radius.secret").read_text() == "fine-secret-xxxxxxxxxxxxxxxxxxxxx\n"
