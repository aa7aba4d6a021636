"""A pushproxy cluster on loopback for the acceptance tests: several ``pushproxy serve``
daemons (real child processes) sharing one PostgreSQL database and one slapd, each with
its own RADIUS port, approval port, metrics port, audit log and ``daemon.node_name``.

A device is enrolled once (through one node) and can then talk to any node: ``Cluster.
device_at`` copies its state with the base URL of another node, as a phone behind one
HTTPS name reaches whichever node the load balancer picks.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from pushproxy.approval import authenticator as auth
from tests.integration.harness import SECRET, ServeProcess, write_config
from tests.integration.radclient import RadclientResult, radclient_sync
from tests.pg import PASSWORD, PostgresServer

REPO = Path(__file__).resolve().parents[2]
MA = ("Message-Authenticator", "0x00")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port of ``kind`` nobody holds right now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``pushproxy ARGS`` with this checkout's code."""
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *args], capture_output=True,
                          text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


_NODE_NAMES: bool | None = None


def node_names_supported() -> bool:
    """Whether this pushproxy knows ``daemon.node_name`` (the cluster's node identity).

    Without it every node on one host is named after the host; the tests still run, so
    they show what fails for that reason rather than failing on the config.
    """
    global _NODE_NAMES
    if _NODE_NAMES is None:
        from pushproxy import config as config_module

        try:
            config_module.parse_config("daemon:\n  node_name: probe\n", base_dir=Path("."),
                                       env={}, source="probe")
            _NODE_NAMES = True
        except Exception as exc:  # noqa: BLE001 - any refusal naming the key means unknown
            _NODE_NAMES = "node_name" not in str(exc)
    return _NODE_NAMES


def attrs(user: str = "alice", password: str | None = None, *, station: str | None = None,
          nas: str = "gw-1", port: int | None = None, state: str | None = None) -> list:
    """RADIUS attributes of one login (a Message-Authenticator is added by radclient)."""
    out: list = [("User-Name", user), ("User-Password", password or f"{user}-pw"),
                 ("NAS-Identifier", nas)]
    if port is not None:
        out.append(("NAS-Port", port))
    if station is not None:
        out.append(("Calling-Station-Id", station))
    if state is not None:
        out.append(("State", state))
    return out + [MA]


@dataclass
class Node:
    """One daemon of the cluster: its folder, ports and (while running) its process."""

    name: str
    folder: Path
    radius_port: int
    http_port: int
    metrics_port: int
    serve: ServeProcess | None = field(default=None, repr=False)

    @property
    def config(self) -> Path:
        return self.folder / "config.yaml"

    @property
    def radius(self) -> str:
        return f"127.0.0.1:{self.radius_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def health(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/healthz"

    workers: int = 1

    def start(self) -> None:
        # A session of its own: the node (a supervisor and its workers) is one
        # process group, killed as a whole like a crashed machine.
        self.serve = ServeProcess(self.config, preexec_fn=os.setsid)

    def ready(self, deadline: float = 30.0) -> None:
        assert self.serve is not None
        self.serve.wait_for("workers.ready" if self.workers > 1 else "daemon.ready", deadline)

    def _killpg(self) -> None:
        try:
            os.killpg(self.serve.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL to every process of the node: no drain, no clean-up, as a crashed machine."""
        assert self.serve is not None
        self._killpg()
        self.serve.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then wait for a clean exit (kill if it hangs)."""
        if self.serve is None:
            return
        if self.serve.proc.poll() is None:
            self.serve.proc.send_signal(signal.SIGTERM)
            try:
                self.serve.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self._killpg()  # whatever is left of the node (a worker that did not stop)
        self.serve.close()

    def login(self, attributes: list, timeout: float = 25, retries: int = 1) -> RadclientResult:
        """One radclient login at this node (blocking)."""
        return radclient_sync(self.radius, SECRET, attributes, retries=retries, timeout=timeout)

    def audit(self) -> list[dict]:
        """This node's audit events so far."""
        path = self.folder / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def output(self) -> str:
        return self.serve.output() if self.serve is not None else ""


class Cluster:
    """``count`` nodes over one PostgreSQL database (a fresh schema per cluster)."""

    def __init__(self, tmp_path: Path, slapd, postgres: PostgresServer, *, count: int = 3,
                 push: str = "timeout: 20\nlimits: {max_pending: 10}", clients: str | None = None,
                 workers: int = 1, database: str | None = None, approval: str = ""):
        self.tmp_path = tmp_path
        self.approval_extra = approval  # more ``approval:`` lines, e.g. "  max_failures: 4\n"
        self.postgres = postgres
        # ``database``: a URL of the caller's (the failover drill's multi-host URL)
        self.database = database or postgres.new_database()
        self.pool = concurrent.futures.ThreadPoolExecutor(32)
        self.nodes: list[Node] = []
        self._settings = (slapd, push, clients)
        for index in range(1, count + 1):
            folder = tmp_path / f"node{index}"
            folder.mkdir()
            node = Node(f"node{index}", folder, free_port(socket.SOCK_DGRAM), free_port(),
                        free_port(), workers=workers)
            self._configure(node, slapd, push, clients)
            self.nodes.append(node)

    def _configure(self, node: Node, slapd, push: str, clients: str | None) -> None:
        approval = (f'approval:\n  listen: "127.0.0.1:{node.http_port}"\n'
                    f'  public_url: "{node.url}"\n  database: "{self.database}"\n'
                    "  database_password_file: db.pw\n" + self.approval_extra)
        path = write_config(node.folder, slapd, approval=approval, push=push, clients=clients)
        (node.folder / "db.pw").write_text(PASSWORD + "\n")
        (node.folder / "db.pw").chmod(0o600)
        daemon = f'daemon:\n  metrics_listen: "127.0.0.1:{node.metrics_port}"\n'
        if node_names_supported():
            daemon += f"  node_name: {node.name}\n"
        if node.workers > 1:  # worker I serves /metrics on metrics_listen's port + I
            daemon += f"  workers: {node.workers}\n"
        text = path.read_text().replace('listen: ["127.0.0.1:0"]',
                                        f'listen: ["127.0.0.1:{node.radius_port}"]')
        # Every seeded user may log in (alice, bob, carol, dave): the tests need several.
        text = re.sub(r"required_groups: \[.*\]", "required_groups: []", text)
        path.write_text(text.replace("daemon:\n", daemon))

    def __getitem__(self, index: int) -> Node:
        """Node 1, 2, 3 as in the issue (1-based)."""
        return self.nodes[index - 1]

    def start(self) -> Cluster:
        # The first node applies the migrations alone; the others then start together.
        self.nodes[0].start()
        self._ready(self.nodes[0])
        for node in self.nodes[1:]:
            node.start()
        for node in self.nodes[1:]:
            self._ready(node)
        return self

    def _ready(self, node: Node, attempts: int = 3) -> None:
        """Wait for ``node``; if a port picked as free was taken meanwhile (other tests
        run on this machine too), pick new ports and start it again."""
        for attempt in range(attempts):
            try:
                node.ready()
                return
            except AssertionError:
                if "Address already in use" not in node.output() or attempt == attempts - 1:
                    raise
            node.stop()
            node.radius_port, node.http_port = free_port(socket.SOCK_DGRAM), free_port()
            node.metrics_port = free_port()
            self._configure(node, *self._settings)
            node.start()

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def output(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.output()}" for n in self.nodes)

    # -- devices

    def enroll(self, user: str, node: Node) -> str:
        """Enroll a device of ``user`` through ``node`` (link made there, redeemed there)."""
        made = cli("enroll", user, "--no-qr", "--config", str(node.config))
        assert made.returncode == 0, made.stderr
        state = str(self.tmp_path / f"{user}-device")
        auth.enroll(made.stdout.strip().splitlines()[-1], state, f"{user}-phone")
        return state

    def device_at(self, state: str, node: Node) -> str:
        """The same device (same key) talking to ``node``: a copy with its base URL."""
        copy = f"{state}-{node.name}"
        if not os.path.exists(copy):
            shutil.copytree(state, copy)
            path = os.path.join(copy, auth.STATE_FILE)
            data = json.loads(Path(path).read_text())
            data["base_url"] = node.url
            Path(path).write_text(json.dumps(data))
        return copy

    def login(self, node: Node, attributes: list, timeout: float = 25,
              retries: int = 1) -> concurrent.futures.Future:
        """A login at ``node`` in the background; the future's result is radclient's."""
        return self.pool.submit(node.login, attributes, timeout, retries)

    def audit(self, user: str | None = None) -> list[dict]:
        """Every node's audit events (of ``user``), oldest first."""
        events = [e for n in self.nodes for e in n.audit()
                  if user is None or e.get("user") == user]
        return sorted(events, key=lambda e: str(e.get("time", "")))


def wait_pending(state: str, count: int = 1, deadline: float = 15.0) -> list[dict]:
    """Long-poll until the device sees at least ``count`` open requests; returns them."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = auth.pending(state, wait=min(5.0, max(0.5, end - time.monotonic())))
        if len(found) >= count:
            return found
    raise AssertionError(f"fewer than {count} requests reached the device within {deadline} s")


def number_of(reply_message: str | None) -> str:
    """The number a number-matching challenge shows."""
    return "".join(re.findall(r"\d", reply_message or ""))


def status(url: str) -> int | None:
    """GET ``url``'s status code (None when nothing answers)."""
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return None


def eventually_status(url: str, code: int, within: float = 10.0) -> bool:
    """Whether GET ``url`` answers ``code`` within ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if status(url) == code:
            return True
        time.sleep(0.3)
    return False
