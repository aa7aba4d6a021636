"""What the benchmark needs from the machine, installed if missing (as root).

Debian packages: ``freeradius`` + ``freeradius-ldap`` (the reference server
and its LDAP module, which Debian ships separately), ``freeradius-utils``
(radclient, the cross-check generator), ``slapd`` + ``ldap-utils`` (the
directory both servers use). From PyPI: ``py-spy`` for the profile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

PACKAGES = ("freeradius", "freeradius-ldap", "freeradius-utils", "slapd", "ldap-utils")


def installed(package: str) -> bool:
    """``dpkg -s`` says the package is installed."""
    try:
        out = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "Status: install ok installed" in out.stdout


def ensure(install: bool, profile: bool, log=print) -> list[str]:
    """Install what is missing when allowed; returns what is still missing."""
    missing = [p for p in PACKAGES if not installed(p)]
    if missing and install:
        if os.geteuid() != 0:
            log(f"missing Debian packages {' '.join(missing)}; run as root to install them")
        else:
            log(f"installing {' '.join(missing)} (apt-get)")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env,
                           check=False, timeout=1800)
            missing = [p for p in PACKAGES if not installed(p)]
    if profile and shutil.which("py-spy") is None:
        if install:
            log("installing py-spy (pip)")
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"],
                           check=False, timeout=600)
        if shutil.which("py-spy") is None:
            missing.append("py-spy")
    return missing
