"""The descriptor budget: the listeners' connection caps must fit under RLIMIT_NOFILE.

A cap above the descriptor limit is no cap: at 1,024 descriptors the daemon
could no longer accept a device's connection, open an LDAP connection or
answer /healthz (issue 14, finding 3). At start `serve` raises its soft
limit toward the hard one (`raise_soft_limit`), then refuses a config whose
caps plus a reserve do not fit (`check`), naming the config paths to lower;
``check-config`` prints the same figures for the limit it runs under.

    need = approval.max_connections
         + 2 x ldap_front.max_connections   (each client holds one to the directory)
         + daemon.metrics_max_connections   (when metrics_listen is set)
         + RESERVE + ldap.pool_size         (listeners, RADIUS, store, logs, pushes)
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from pushproxy.config import Config

#: Descriptors kept free of every listener cap: listening and RADIUS sockets,
#: the SQLite database with its -wal/-shm files, audit and log files, Web Push
#: and alert deliveries in flight, upstream RADIUS sockets, stdio.
RESERVE = 256

#: Never ask for more than this, even when the hard limit is unlimited.
CEILING = 1 << 20


@dataclass(frozen=True)
class Budget:
    """Descriptors the config may use, by config path, against the process limit."""

    parts: tuple[tuple[str, int], ...]  # (config path or "reserve", descriptors)
    limit: int

    @property
    def need(self) -> int:
        """All parts together."""
        return sum(n for _, n in self.parts)

    @property
    def fits(self) -> bool:
        """Whether every cap can be reached without running out of descriptors."""
        return self.need <= self.limit

    def describe(self) -> str:
        """One line: the need, its parts, the limit."""
        parts = " + ".join(f"{path} {n}" for path, n in self.parts)
        return f"descriptor budget: {self.need} needed ({parts}), limit {self.limit}"


def parts(config: Config) -> tuple[tuple[str, int], ...]:
    """What each listener may hold at most, plus the reserve."""
    out = [("approval.max_connections", config.approval.max_connections)]
    if config.ldap_front is not None:
        out.append(("ldap_front.max_connections (x2: each holds a directory connection)",
                    2 * config.ldap_front.max_connections))
    if config.daemon.metrics_listen:
        out.append(("daemon.metrics_max_connections", config.daemon.metrics_max_connections))
    out.append(("reserve (RADIUS, store, logs, pushes, ldap.pool_size)",
                RESERVE + config.ldap.pool_size))
    return tuple(out)


def current_limit() -> int:
    """This process's soft RLIMIT_NOFILE (unlimited counts as `CEILING`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return CEILING if soft == resource.RLIM_INFINITY else soft


def raise_soft_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most `CEILING`); (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else min(hard, CEILING)
    before = CEILING if soft == resource.RLIM_INFINITY else soft
    if before < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # e.g. above fs.nr_open: keep what we have
            return before, before
        return before, target
    return before, before


def check(config: Config, limit: int | None = None) -> Budget:
    """The budget of ``config`` against ``limit`` (default: this process's soft limit)."""
    return Budget(parts=parts(config), limit=current_limit() if limit is None else limit)


def problem(budget: Budget) -> str:
    """What to change when the budget does not fit."""
    paths = ", ".join(path.split(" ")[0] for path, _ in budget.parts
                      if not path.startswith("reserve"))
    return (f"{budget.describe()}: the caps exceed the descriptor limit, so they cannot "
            f"protect the daemon; lower {paths}, or raise the limit (LimitNOFILE= in the "
            "systemd unit, ulimit -n)")
