"""Cluster mode: several nodes or worker processes sharing one approval store.

Cluster mode is on when the store is PostgreSQL (other nodes may share it) or
when ``daemon.workers`` runs several processes over one SQLite file. Then the
state that decides a login lives in the store. A single process on SQLite (the
default) keeps today's in-memory state: it is the fastest, and nothing else
can see its store.
"""

from __future__ import annotations

from pushproxy.approval.backends import is_postgres_url


def workers(config) -> int:
    """``daemon.workers`` (1 where the config has no such key)."""
    return int(getattr(config.daemon, "workers", 1) or 1)


def cluster_mode(config) -> bool:
    """Whether ``config`` runs in cluster mode: a PostgreSQL store, or several workers."""
    return is_postgres_url(config.approval.database) or workers(config) > 1
