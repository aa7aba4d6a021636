"""The descriptor budget: the listeners' connection caps must fit under RLIMIT_NOFILE.

A cap above the descriptor limit is no cap: at 1,024 descriptors the daemon
could no longer accept a device's connection, open an LDAP connection or
answer /healthz (issue 14, finding 3). At start `serve` raises its soft
limit toward the hard one (`raise_soft_limit`), then refuses a config whose
caps plus a reserve do not fit (`check`), naming the config paths to lower;
``check-config`` prints the same figures for the limit it runs under.

    need = approval.max_connections
         + 2 x ldap_front.max_connections   (each client holds one to the directory)
         + radius.radsec.max_connections
         + daemon.metrics_max_connections   (when metrics_listen is set)
         + RESERVE + ldap.pool_size         (listeners, RADIUS, store, logs, pushes)

With ``daemon.workers`` N > 1 the limit and the caps are per process: every
worker has its own approval and metrics budgets, worker 0 alone runs the LDAP
front end. So worker 0's need is the figure above, and the node as a whole
may hold up to N x approval.max_connections on the approval port (`node_note`).
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


def parts(config: Config, worker: int = 0) -> tuple[tuple[str, int], ...]:
    """What each listener may hold at most, plus the reserve (in worker ``worker``)."""
    out = [("approval.max_connections", config.approval.max_connections)]
    if config.radius.radsec is not None:
        out.append(("radius.radsec.max_connections", config.radius.radsec.max_connections))
    if config.ldap_front is not None and worker == 0:
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


def check(config: Config, limit: int | None = None, *, worker: int = 0) -> Budget:
    """The budget of ``config`` against ``limit`` (default: this process's soft limit)."""
    return Budget(parts=parts(config, worker),
                  limit=current_limit() if limit is None else limit)


def node_note(config: Config) -> str | None:
    """With several workers: the caps are per worker, so what the node may hold in all."""
    n = getattr(config.daemon, "workers", 1)
    if n <= 1:
        return None
    metrics = (f", /metrics {n} x {config.daemon.metrics_max_connections}"
               if config.daemon.metrics_listen else "")
    return (f"daemon.workers {n}: the budget above is per worker process; the node may "
            f"hold up to {n} x {config.approval.max_connections} approval connections"
            f"{metrics} (the per-source caps too are per worker)")


def problem(budget: Budget) -> str:
    """What to change when the budget does not fit."""
    paths = ", ".join(path.split(" ")[0] for path, _ in budget.parts
                      if not path.startswith("reserve"))
    return (f"{budget.describe()}: the caps exceed the descriptor limit, so they cannot "
            f"protect the daemon; lower {paths}, or raise the limit (LimitNOFILE= in the "
            "systemd unit, ulimit -n)")
