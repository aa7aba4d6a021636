"""systemd's notify protocol (sd_notify), without a dependency on libsystemd.

A service with ``Type=notify`` tells systemd READY=1 once it really serves,
STOPPING=1 when it begins to stop, RELOADING=1 around a reload, and WATCHDOG=1
regularly when ``WatchdogSec`` is set. Each message is one datagram to the
Unix socket named by $NOTIFY_SOCKET ('@' means the abstract namespace).
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("pushproxy.sdnotify")


def notify(message: str, env=None) -> bool:
    """Send ``message`` to systemd; False (and nothing sent) when not run by systemd."""
    env = os.environ if env is None else env
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        log.warning("sdnotify.failed error=%s", exc)
        return False
    return True


def reloading_message() -> str:
    """RELOADING=1 with the monotonic timestamp systemd >= 253 asks for."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def watchdog_interval(env=None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None
