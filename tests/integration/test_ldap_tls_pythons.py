"""The LDAP TLS name checks (test_ldap_tls_names.py) on Python 3.12 and 3.13 too.

The suite itself runs on one interpreter (3.11 in CI), but what decides an
LDAP TLS connection used to depend on the Python version (ldap3 2.9.1 falls
back to its own name check on 3.12+). This runs that module under each other
supported interpreter found on the machine (``python3.12`` / ``python3.13`` on
PATH, or pyenv's versions), in a virtual environment with the project's
dependencies from the package index, kept between runs in
``$PUSHPROXY_PYTHONS_CACHE`` (default ``~/.cache/pushproxy/pythons``) and
rebuilt when pyproject.toml's dependencies change. A missing interpreter is a
skip that says so; anything else that goes wrong is a failure.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = "tests/integration/test_ldap_tls_names.py"
INSTALL_TIMEOUT = 420  # seconds; a first install measured about two minutes here
RUN_TIMEOUT = 300


def _requirements() -> list[str]:
    """pyproject.toml's runtime dependencies, and the test tools this module needs."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    tools = [r for r in project["optional-dependencies"]["test"]
             if re.match(r"pytest(-twisted)?\b", r)]
    return sorted(project["dependencies"]) + sorted(tools)


def _version_key(path: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", path.split("/versions/")[-1])[:3])


def _interpreter(version: str) -> str | None:
    """An interpreter of ``version`` (e.g. "3.12") that runs, or None."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"),
                        key=_version_key, reverse=True)
    on_path = shutil.which(f"python{version}")
    for candidate in candidates + ([on_path] if on_path else []):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % "
                                  "sys.version_info[:2])"], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


def _venv(python: str) -> Path:
    """A cached virtual environment of ``python`` with the requirements installed."""
    requirements = _requirements()
    full = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("PUSHPROXY_PYTHONS_CACHE")
                 or os.path.expanduser("~/.cache/pushproxy/pythons"))
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"venv-{full}-{digest}"
    with open(cache / f".lock-{full}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once build it once
        if (target / "ready").exists():
            return target
        building = cache / f"building-{full}-{digest}"
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(building)], check=True, timeout=120)
        try:
            subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", *requirements],
                           check=True, timeout=INSTALL_TIMEOUT, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"pip install for Python {full} failed:\n{exc.stderr[-3000:]}")
        (building / "ready").write_text("\n".join(requirements) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        # Only a complete environment gets the final name. (Its scripts name the
        # old folder; the interpreter is called directly, so that does not matter.)
        building.rename(target)
    return target


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_ldap_tls_name_checks_hold_on_another_python(version):
    """Every case of test_ldap_tls_names.py passes on ``version``, none skipped."""
    if "%d.%d" % sys.version_info[:2] == version:
        pytest.skip(f"the suite itself runs on Python {version}: test_ldap_tls_names.py ran")
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine (neither python{version} on PATH "
                    "nor a pyenv version); install one to run the LDAP TLS tests on it")
    venv = _venv(python)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-rs",
                          "-p", "no:cacheprovider", MODULE], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=RUN_TIMEOUT)
    tail = (run.stdout + run.stderr)[-6000:]
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    print(f"Python {version} ({python}): {summary}")
    assert run.returncode == 0, tail
    assert re.search(r"\b\d+ passed\b", summary), tail
    assert not re.search(r"skipped|failed|error", summary), tail
