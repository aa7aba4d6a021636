"""check-config's warnings: an http:// public URL served on a non-loopback listener."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pushproxy.cli import exposure_warnings
from pushproxy.config import parse_config

ROOT = Path(__file__).resolve().parent.parent


def config_text(listen: str, public_url: str) -> str:
    return textwrap.dedent(f"""\
        radius:
          clients: [{{name: gw, address: 127.0.0.1, secret_file: gw.secret}}]
        ldap: {{servers: ["ldaps://dc.example.net"], user_base: "dc=x",
                bind_template: "uid={{username}},dc=x"}}
        approval:
          listen: "{listen}"
          public_url: "{public_url}"
          database: ":memory:"
        """)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "gw.secret").write_text("a-long-enough-secret\n")
    (tmp_path / "gw.secret").chmod(0o600)
    return tmp_path


@pytest.mark.parametrize("listen, public_url, warned", [
    ("0.0.0.0:8443", "http://mfa.example.net", True),
    ("192.0.2.10:80", "HTTP://mfa.example.net", True),
    ("[::]:8443", "http://[2001:db8::1]:8443", True),
    ("127.0.0.1:8443", "http://127.0.0.1:8443", False),  # the demo; a local proxy
    ("[::1]:8443", "http://mfa.example.net", False),
    ("0.0.0.0:8443", "https://mfa.example.net", False),
])
def test_http_public_url_with_a_non_loopback_listener_is_warned(folder, listen, public_url,
                                                                warned):
    config = parse_config(config_text(listen, public_url), base_dir=folder, env={})
    warnings = exposure_warnings(config)
    assert bool(warnings) is warned
    if warned:
        assert "in clear text" in warnings[0] and "approval.public_url" in warnings[0]


def test_check_config_prints_the_warning_and_still_exits_0(folder):
    path = folder / "config.yaml"
    path.write_text(config_text("0.0.0.0:8443", "http://mfa.example.net"))
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "check-config", str(path)],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert "warning: approval.public_url is http://" in out.stdout
