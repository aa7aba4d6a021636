"""daemon.node_name (validated, default the host's name), cluster_mode and node ids
(pushproxy.cluster)."""

import socket
from types import SimpleNamespace

from pushproxy import cluster
from pushproxy.config import default_node_name
from tests.test_config import ENV, GOOD, parse, problems


def test_node_name_defaults_to_the_hostname(tmp_path):
    config = parse(GOOD, tmp_path, ENV)
    assert config.daemon.node_name == default_node_name()
    host = socket.gethostname()
    if all(c.isalnum() or c in "._-" for c in host) and len(host) <= 63:
        assert default_node_name() == host.lstrip("._-")


def test_an_odd_hostname_becomes_a_valid_node_name(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "_my host!" + "x" * 80)
    assert default_node_name() == "my-host-" + "x" * 54


def test_node_name_is_kept_and_a_bad_one_is_named(tmp_path):
    config = parse(GOOD + "daemon:\n  node_name: vpn-mfa-1\n", tmp_path, ENV)
    assert config.daemon.node_name == "vpn-mfa-1"
    for bad in ('"a/b"', '""', '"-x"', "12", '"' + "x" * 64 + '"'):
        found = problems(GOOD + f"daemon:\n  node_name: {bad}\n", tmp_path, ENV)
        assert any(p.startswith("daemon.node_name: must be") for p in found), (bad, found)


def _config(database, workers=None):
    daemon = SimpleNamespace(node_name="n1")
    if workers is not None:
        daemon.workers = workers
    return SimpleNamespace(approval=SimpleNamespace(database=database), daemon=daemon)


def test_cluster_mode_is_postgresql_or_several_workers():
    assert not cluster.cluster_mode(_config("/var/lib/pushproxy/approval.db"))
    assert not cluster.cluster_mode(_config("/var/lib/pushproxy/approval.db", workers=1))
    assert cluster.cluster_mode(_config("/var/lib/pushproxy/approval.db", workers=2))
    assert cluster.cluster_mode(_config("postgresql://p@db/p"))


def test_node_id_is_name_and_worker():
    assert cluster.node_id("n1", 0) == "n1/0"
    assert cluster.node_id("n1", 3) == "n1/3"
    assert cluster.node_id("", 1) == default_node_name() + "/1"


def test_build_context_picks_the_bus(tmp_path):
    from twisted.internet.task import Clock

    from pushproxy.approval import notify

    single = cluster.build_context(_config(str(tmp_path / "a.db")), Clock())
    assert not single.enabled and isinstance(single.bus, notify.LocalBus)
    assert single.node_id == "n1/0"
    workers = cluster.build_context(_config(str(tmp_path / "a.db"), workers=2), Clock(),
                                    worker=1)
    assert workers.enabled and isinstance(workers.bus, notify.UnixBus)
    assert workers.bus.folder == str(tmp_path) and workers.node_id == "n1/1"
    pg = _config("postgresql://p@db/p")
    pg.approval.database_password = "pw"
    assert isinstance(cluster.build_context(pg, Clock()).bus, notify.PostgresBus)
