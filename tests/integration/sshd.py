"""A real OpenSSH ``sshd`` on a loopback port whose PAM stack is pam_radius (issue 17).

Like tests/integration/pam.py, nothing of the host's configuration changes:
``sshd`` runs in a private mount namespace in which the test's own folders are
bind-mounted over ``/etc/pam.d`` (an ``sshd`` service: pam_radius, then
pam_permit for account and session) and over ``/etc/passwd`` and
``/etc/group`` (the host's entries plus the directory's test users, whose home
is a temporary folder). The one host change is ``/run/sshd``, the empty
privilege-separation folder sshd insists on (Debian's unit creates it too).

The client is the real ``ssh`` with ``sshpass`` typing the password at the
keyboard-interactive prompt that PAM (pam_radius) sends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.integration.pam import module_path, unavailable as pam_unavailable

SSHD = "/usr/sbin/sshd"
FIRST_UID = 42000  # test users' uid/gid inside the namespace; none is on the host


def unavailable() -> str | None:
    """Why a real ssh login through sshd cannot run here (None: it can)."""
    problem = pam_unavailable()
    if problem:
        return problem
    for tool, package in ((SSHD, "openssh-server"), ("ssh", "openssh-client"),
                          ("ssh-keygen", "openssh-client"), ("sshpass", "sshpass")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {package})"
    return None


@dataclass(frozen=True)
class SshResult:
    """One ssh run: exit status, what the remote command printed, ssh's messages."""

    code: int
    stdout: str
    stderr: str
    elapsed: float


class Sshd:
    """sshd on 127.0.0.1:``port``: keyboard-interactive through pam_radius to ``server``.

    ``timeout`` is pam_radius's wait for its one Access-Request (3-60 s);
    ``users`` become local accounts inside sshd's namespace.
    """

    def __init__(self, base: Path, port: int, server: str, secret: str, users: list[str], *,
                 timeout: int = 30, client_id: str = "sshd-host"):
        self.base = base
        self.port = port
        base.mkdir(parents=True, exist_ok=True)
        pam_dir = base / "pam.d"
        pam_dir.mkdir(exist_ok=True)
        conf = base / "pam_radius_auth.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{server} {secret} {timeout}\n")
        # As docs/gateways/linux-pam.md says: a Reject ends the login (die), an
        # Accept is enough (done); account and session need nothing local.
        (pam_dir / "sshd").write_text(
            f"auth [success=done new_authtok_reqd=done default=die] {module_path()} "
            f"conf={conf} client_id={client_id}\n"
            "account required pam_permit.so\n"
            "session required pam_permit.so\n")
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        for i, user in enumerate(users):
            home = base / "home" / user
            home.mkdir(parents=True, exist_ok=True)
            os.chown(home, FIRST_UID + i, FIRST_UID + i)
            passwd += f"{user}:x:{FIRST_UID + i}:{FIRST_UID + i}::{home}:/bin/sh\n"
            group += f"{user}:x:{FIRST_UID + i}:\n"
        (base / "passwd").write_text(passwd)
        (base / "group").write_text(group)
        key = base / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True, timeout=30)
        (base / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\n"
            f"PidFile {base / 'sshd.pid'}\n"
            "UsePAM yes\nKbdInteractiveAuthentication yes\nPasswordAuthentication no\n"
            "PubkeyAuthentication no\nAuthenticationMethods keyboard-interactive\n"
            "PermitRootLogin no\nStrictModes no\nLogLevel VERBOSE\n"
            # pushproxy's push wait fits into the grace time (the default, 120 s)
            "LoginGraceTime 120\nMaxStartups 10:30:20\n")
        self.log = base / "sshd.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Sshd":
        """Start sshd in the foreground in its namespace; wait until it accepts."""
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        script = ('mount --bind "$1" /etc/pam.d && mount --bind "$2" /etc/passwd && '
                  'mount --bind "$3" /etc/group && shift 3 && exec "$@"')
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(self.base / "pam.d"), str(self.base / "passwd"), str(self.base / "group"),
             SSHD, "-D", "-e", "-f", str(self.base / "sshd_config")],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()}")
            if "Server listening on 127.0.0.1" in self.log.read_text():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not listen: {self.log.read_text()}")

    def stop(self) -> None:
        """Stop sshd (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def ssh(self, user: str, password: str, command: str, timeout: float = 90) -> SshResult:
        """``ssh user@127.0.0.1 command`` with sshpass answering the password prompt."""
        env = dict(os.environ, LC_ALL="C", SSHPASS=password)
        started = time.monotonic()
        done = subprocess.run(
            ["sshpass", "-e", "-P", "assword", "ssh", "-p", str(self.port),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "PreferredAuthentications=keyboard-interactive",
             "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1",
             "-o", "BatchMode=no", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
             f"{user}@127.0.0.1", command],
            capture_output=True, text=True, env=env, timeout=timeout)
        return SshResult(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
