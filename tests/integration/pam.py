"""Drive a real Linux PAM login: Debian's ``pam_radius_auth`` through ``pamtester``.

Linux-PAM reads a service's stack from ``/etc/pam.d/SERVICE`` only (there is
no per-process override), yet the tests must not change the system's PAM.
Each login therefore runs in a private mount namespace::

    unshare --mount --propagation private sh -c 'mount --bind DIR /etc/pam.d && exec pamtester ...'

Inside it ``/etc/pam.d`` is the test's own directory holding one service
file; the bind mount dies with the namespace when pamtester exits, and the
host's ``/etc/pam.d`` is never touched. This needs root (CAP_SYS_ADMIN);
:func:`unavailable` says why a login cannot run here, for ``pytest.skip``.

What ``pam_radius_auth`` 2.0.0 (Debian bookworm) sends, seen on the wire:
User-Name, User-Password, NAS-IP-Address, NAS-Identifier (``client_id=``),
NAS-Port (the pid), NAS-Port-Type Virtual, Service-Type Authenticate-Only,
and Calling-Station-Id when PAM_RHOST is set (pamtester ``-I rhost=``). It
sends no Message-Authenticator, and only one packet unless ``retry=`` is
given: its per-server timeout (clamped to 3..60 s) must cover the push.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import threads

MODULE = "pam_radius_auth.so"
_MODULE_GLOBS = ("/lib/*/security/", "/usr/lib/*/security/", "/lib/security/",
                 "/usr/lib/security/", "/lib64/security/", "/usr/lib64/security/")

# Mount the private PAM directory over /etc/pam.d, then become the program ("$@").
_IN_NAMESPACE = 'mount --bind "$1" /etc/pam.d && shift && exec "$@"'


def module_path() -> str | None:
    """Where ``pam_radius_auth.so`` is installed, or None."""
    for pattern in _MODULE_GLOBS:
        found = glob.glob(pattern + MODULE)
        if found:
            return found[0]
    return None


@functools.lru_cache(maxsize=1)
def _namespace_problem() -> str | None:
    """Why a private mount namespace with /etc/pam.d replaced cannot be made (None: it can)."""
    with tempfile.TemporaryDirectory(prefix="pam-probe-") as probe:
        Path(probe, "probe-marker").write_text("")
        try:
            done = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_NAMESPACE,
                 "sh", probe, "test", "-e", "/etc/pam.d/probe-marker"],
                capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unshare failed: {exc}"
    if done.returncode != 0:
        return f"unshare/mount --bind refused: {done.stderr.strip() or done.returncode}"
    return None


def unavailable() -> str | None:
    """Why a real PAM login cannot run on this machine (None: it can)."""
    if module_path() is None:
        return f"{MODULE} not installed (apt-get install libpam-radius-auth)"
    for tool in ("pamtester", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install pamtester util-linux mount)"
    if os.geteuid() != 0:
        return "needs root: the private /etc/pam.d is a bind mount in a private mount namespace"
    problem = _namespace_problem()
    if problem:
        return ("no private mount namespace here, and the tests will not edit the host's "
                f"/etc/pam.d: {problem}")
    return None


@dataclass(frozen=True)
class PamResult:
    """One pamtester run: exit status, its combined output, and how long it took."""

    code: int
    output: str
    elapsed: float

    @property
    def succeeded(self) -> bool:
        """PAM said yes: exit 0 and pamtester's success line."""
        return self.code == 0 and "successfully authenticated" in self.output

    @property
    def auth_failed(self) -> bool:
        """PAM said no with PAM_AUTH_ERR, i.e. the RADIUS server answered Access-Reject.

        A RADIUS timeout is a different error ("cannot retrieve authentication info").
        """
        return self.code != 0 and "Authentication failure" in self.output


class PamLogin:
    """A private PAM service whose ``auth`` is pam_radius_auth against one RADIUS server.

    ``timeout`` is pam_radius_auth's wait for the one Access-Request it sends
    (3..60 s); ``client_id`` becomes NAS-Identifier.
    """

    def __init__(self, base: Path, server: str, secret: str, *, timeout: int = 10,
                 client_id: str = "gw-pam", service: str = "pushproxy-login"):
        for text in (str(base), secret, client_id, service):
            # PAM and pam_radius_auth split their lines on whitespace.
            if not text or any(ch.isspace() for ch in text):
                raise ValueError(f"no whitespace allowed in {text!r}")
        if not 3 <= timeout <= 60:
            raise ValueError("pam_radius_auth clamps its timeout to 3..60 s")
        self.service = service
        self.timeout = timeout
        self.pam_dir = base / "pam.d"
        self.pam_dir.mkdir(parents=True, exist_ok=True)
        self.conf = base / "pam_radius_auth.conf"
        # The module's file holds the shared secret: root-only, as its docs ask.
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# server[:port] secret timeout\n{server} {secret} {timeout}\n")
        os.chmod(self.conf, 0o600)
        (self.pam_dir / service).write_text(
            f"auth    required pam_radius_auth.so conf={self.conf} client_id={client_id}\n"
            "account required pam_permit.so\n")

    def command(self, user: str, rhost: str | None) -> list[str]:
        """The argv: pamtester in a private mount namespace that sees our /etc/pam.d."""
        items = ["-I", f"rhost={rhost}"] if rhost else []
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_NAMESPACE,
                "sh", str(self.pam_dir), "pamtester", "-v", *items, self.service, user,
                "authenticate"]

    def run(self, user: str, password: str, rhost: str | None = "198.51.100.7") -> PamResult:
        """One ``pamtester authenticate`` (blocking); the password answers the PAM prompt.

        pamtester reads the conversation's answer from stdin, so a pipe does
        (no tty needed). The C locale keeps PAM's messages in English.
        """
        env = dict(os.environ, LC_ALL="C", LANG="C")
        started = time.monotonic()
        try:
            done = subprocess.run(self.command(user, rhost), input=password + "\n",
                                  capture_output=True, text=True, env=env,
                                  timeout=self.timeout + 20)
        except subprocess.TimeoutExpired as exc:
            text = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                           for part in (exc.stdout, exc.stderr) if part)
            return PamResult(-1, text + "\n[killed: pamtester overran its bound]",
                             time.monotonic() - started)
        return PamResult(done.returncode, done.stdout + done.stderr, time.monotonic() - started)

    def authenticate(self, user: str, password: str, rhost: str | None = "198.51.100.7"):
        """:meth:`run` in a thread: a Deferred of the PamResult; the reactor keeps serving."""
        return threads.deferToThread(self.run, user, password, rhost)
