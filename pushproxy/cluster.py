"""Cluster mode: several nodes or worker processes sharing one approval store.

Cluster mode is on when the store is PostgreSQL (other nodes may share it) or
when ``daemon.workers`` runs several processes over one SQLite file. Then the
state that decides a login lives in the store, and a notification bus
(`pushproxy.approval.notify`) tells the other processes that something
changed. A single process on SQLite (the default) keeps today's in-memory
state: it is the fastest, and nothing else can see its store.
"""

from __future__ import annotations

from dataclasses import dataclass

from pushproxy.approval.backends import is_postgres_url


def workers(config) -> int:
    """``daemon.workers`` (1 where the config has no such key)."""
    return int(getattr(config.daemon, "workers", 1) or 1)


def cluster_mode(config) -> bool:
    """Whether ``config`` runs in cluster mode: a PostgreSQL store, or several workers."""
    return is_postgres_url(config.approval.database) or workers(config) > 1


def node_id(node_name: str, worker: int = 0) -> str:
    """The id of one worker of one node, stable across its restarts: "name/worker"."""
    if not node_name:
        from pushproxy.config import default_node_name

        node_name = default_node_name()
    return f"{node_name}/{int(worker)}"


@dataclass
class ClusterContext:
    """What a process needs to take part in a cluster (built in `pushproxy.wiring`).

    ``enabled``: cluster mode is on (see `cluster_mode`); off, ``bus`` is an
    in-process bus and the approval service keeps its in-memory fast paths.
    ``node_id``: this process's id ("node/worker"), the owner of its transactions.
    ``bus``: the notification bus (`pushproxy.approval.notify`).
    """

    node_id: str
    bus: object
    enabled: bool = False


def build_context(config, reactor, *, worker: int = 0, counters=None) -> ClusterContext:
    """The ClusterContext of worker ``worker`` for ``config``: a PostgreSQL bus on a
    PostgreSQL store, UNIX sockets between the workers of one SQLite store, else an
    in-process bus (cluster mode off)."""
    import os

    from pushproxy.approval import notify

    database = config.approval.database
    ident = node_id(getattr(config.daemon, "node_name", ""), worker)
    if not cluster_mode(config):
        return ClusterContext(ident, notify.LocalBus(reactor, counters), enabled=False)
    if is_postgres_url(database):
        bus = notify.PostgresBus(database, reactor, password=config.approval.database_password,
                                 counters=counters)
    else:
        folder = os.path.dirname(os.path.abspath(database))
        bus = notify.UnixBus(folder, worker, workers(config), reactor, counters)
    return ClusterContext(ident, bus, enabled=True)
