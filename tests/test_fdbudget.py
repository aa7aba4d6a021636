"""The descriptor budget (pushproxy/fdbudget.py): caps must fit under RLIMIT_NOFILE.

Issue 14, finding 3: ``ldap_front.max_connections`` 1000 under a 1,024
descriptor limit was no cap at all. `serve` now raises its soft limit to the
hard one and refuses a config whose caps do not fit, naming the paths.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from pushproxy import fdbudget
from pushproxy.config import parse_config

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """\
radius: {clients: [{name: a, address: 127.0.0.1, secret_file: s}]}
ldap: {servers: ['ldap://127.0.0.1:1'], user_base: 'dc=x', bind_template: '{username}@x'}
approval: {public_url: 'https://mfa', database: ':memory:', listen: '127.0.0.1:0'%s}
daemon: {metrics_listen: '127.0.0.1:0'}
ldap_front: {listen: ['127.0.0.1:0'], require_tls: false%s}
radius_dummy: 0
"""


def config_text(approval="", front="") -> str:
    return MINIMAL.replace("radius_dummy: 0\n", "") % (approval, front)


def load(tmp_path, **kw):
    (tmp_path / "s").write_text("a-long-enough-secret\n")
    return parse_config(config_text(**kw), base_dir=tmp_path, env={})


def test_budget_adds_every_listener_cap_and_the_reserve(tmp_path):
    config = load(tmp_path, approval=", max_connections: 400", front=", max_connections: 100")
    budget = fdbudget.check(config, limit=1024)
    assert budget.need == 400 + 2 * 100 + 64 + fdbudget.RESERVE + config.ldap.pool_size
    assert budget.fits


def test_caps_over_the_limit_are_a_problem_naming_the_paths(tmp_path):
    config = load(tmp_path)  # defaults: approval 4000, ldap_front 1000 (x2), metrics 64
    budget = fdbudget.check(config, limit=1024)
    assert not budget.fits
    text = fdbudget.problem(budget)
    for path in ("approval.max_connections", "ldap_front.max_connections",
                 "daemon.metrics_max_connections", "LimitNOFILE"):
        assert path in text, text


def _limit(soft, hard):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_serve_refuses_caps_over_its_descriptor_limit(tmp_path):
    (tmp_path / "s").write_text("a-long-enough-secret\n")
    path = tmp_path / "config.yaml"
    path.write_text(config_text())
    proc = subprocess.run([sys.executable, "-m", "pushproxy.cli", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=_limit(1024, 1024), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1, proc.stderr
    assert "descriptor budget" in proc.stderr and "approval.max_connections" in proc.stderr


def test_serve_raises_its_soft_limit_to_the_hard_one():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    code = ("from pushproxy import fdbudget; import resource; "
            "print(fdbudget.raise_soft_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, preexec_fn=_limit(256, target),
                         env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout.split()
    assert out[-1] == str(target), out


def test_check_config_prints_the_budget(tmp_path):
    (tmp_path / "s").write_text("a-long-enough-secret\n")
    path = tmp_path / "config.yaml"
    path.write_text(config_text())
    proc = subprocess.run([sys.executable, "-m", "pushproxy.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=_limit(1024, 1024), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: descriptor budget" in proc.stdout, proc.stdout


def test_budget_keys_are_validated_with_their_paths(tmp_path):
    from pushproxy.config import ConfigError

    (tmp_path / "s").write_text("a-long-enough-secret\n")
    text = config_text(approval=", max_connections: 0, max_connections_per_source: -1, "
                                "header_timeout: 0, body_timeout: .nan, keepalive_timeout: x",
                       front=", max_connections_per_source: 1.5, first_message_timeout: 0")
    text = text.replace("daemon: {", "daemon: {metrics_max_connections: 0, ")
    try:
        parse_config(text, base_dir=tmp_path, env={})
    except ConfigError as exc:
        problems = "\n".join(exc.problems)
    else:
        raise AssertionError("accepted")
    for path in ("approval.max_connections:", "approval.max_connections_per_source:",
                 "approval.header_timeout:", "approval.body_timeout:",
                 "approval.keepalive_timeout:", "ldap_front.max_connections_per_source:",
                 "ldap_front.first_message_timeout:", "daemon.metrics_max_connections:"):
        assert path in problems, (path, problems)
