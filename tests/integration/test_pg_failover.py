"""A PostgreSQL failover drill (issue 15): a primary and a streaming standby (pg_basebackup
-R, a replication slot, ``synchronous_standby_names`` naming the standby, loopback), and
pushproxy configured with libpq's multi-host URL
(``postgresql://u@h1:p1,h2:p2/db?target_session_attrs=read-write``).

The drill kills the primary (``pg_ctl stop -m immediate``) while logins wait for the
phone, promotes the standby a few seconds later (``pg_ctl promote``, as Patroni or a
managed service would) and shows, against two real ``pushproxy serve`` daemons: the
logins in flight end on a defined outcome within ``push.timeout`` (the answer, or a
timeout Reject; never a hang, never an Accept nobody approved), an answer committed just
before the crash is not lost, new logins succeed without restarting pushproxy, and the
LISTEN/NOTIFY bus reconnects to the new primary (an answer at node 2 releases node 1's
login again). The figures it measured are printed (``pytest -s``) and recorded in
docs/cluster.md. Real processes: PostgreSQL x2, pushproxy serve x2, slapd, radclient.
"""

from __future__ import annotations

import io
import threading
import time
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import requests

from pushproxy.approval import authenticator as auth
from pushproxy.approval.pgstore import PostgresStore
from pushproxy.approval.store import SQLiteStore
from pushproxy.connectivity.approvalcheck import check_store
from pushproxy.connectivity.report import Report
from tests.integration.cluster import Cluster, attrs, cli, status, wait_pending
from tests.pg import PASSWORD, PostgresServer, pg_bindir
from tests.test_config import ENV, GOOD, parse

PUSH_TIMEOUT = 20
# What docs/cluster.md recommends for no lost answers: commit waits until the standby
# has the WAL on disk (synchronous_commit=on, the default, with a named sync standby).
SYNC = {"synchronous_commit": "on", "synchronous_standby_names": "standby1"}


@pytest.fixture
def pair():
    """A primary with a synchronous streaming standby; both stopped at the end."""
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    primary = PostgresServer(settings=SYNC)
    servers = [primary]
    try:
        primary.init()
        primary.start()
        servers.append(primary.standby("standby1"))
        yield primary, servers[1]
    finally:
        for server in servers:
            server.cleanup()


def database_urls(primary: PostgresServer, standby: PostgresServer) -> tuple[str, str]:
    """A fresh schema (made on the primary, streamed to the standby); its multi-host URL
    with the primary first, and with the standby first."""
    query = urlsplit(primary.new_database()).query
    return (primary.multi_host_url(standby, "stores", query=query),
            standby.multi_host_url(primary, "stores", query=query))


def schema_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["options"][0].split("=", 1)[1]


def row_state(server: PostgresServer, url: str, username: str) -> list[str]:
    """The states of ``username``'s transactions, read on ``server`` itself."""
    with psycopg.connect(server.url("stores"), password=PASSWORD, autocommit=True,
                         connect_timeout=5) as conn:
        conn.execute(f'SET search_path = "{schema_of(url)}"')
        return [r[0] for r in conn.execute(
            "SELECT state FROM transactions WHERE username = %s ORDER BY created",
            (username,)).fetchall()]


def checked(tmp_path, url: str, key: str = "database_password_env") -> tuple[Report, str]:
    """``test-connection``'s store check on a config naming ``url``."""
    extra = "  database_password_env: DB_PW\n"
    if key == "database_password_file":
        (tmp_path / "db.pw").write_text(PASSWORD + "\n")
        extra = "  database_password_file: db.pw\n"
    text = GOOD.replace('  database: ":memory:"\n', f'  database: "{url}"\n{extra}')
    config = parse(text, tmp_path, dict(ENV, DB_PW=PASSWORD))
    out = io.StringIO()
    report = Report(out)
    check_store(report, config)
    return report, out.getvalue()


def test_multi_host_url_passes_test_connection_and_store_migrate(pair, tmp_path):
    """Whichever host the URL lists first, the check connects to the primary (the
    standby refuses a read-write session); ``store migrate --to`` the multi-host URL
    copies a SQLite store, password from --password-file; the standby alone fails the
    write check with the fix named."""
    primary, standby = pair
    primary_first, standby_first = database_urls(primary, standby)
    for url in (primary_first, standby_first):
        for key in ("database_password_env", "database_password_file"):
            report, text = checked(tmp_path, url, key)
            assert report.failures == [], text
            assert f"on 127.0.0.1:{primary.port}" in text, text
    source = str(tmp_path / "approval.db")
    sqlite = SQLiteStore(source)
    sqlite.create_enrollment("alice", "h" * 64, 1000.0, 4e9)
    sqlite.close()
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    moved = cli("store", "migrate", "--from", source, "--to", standby_first,
                "--password-file", str(tmp_path / "pw"))
    assert moved.returncode == 0, moved.stderr
    store = PostgresStore(standby_first, password=PASSWORD)
    try:
        assert store.enrollment("h" * 64).username == "alice"
    finally:
        store.close()
    report, text = checked(tmp_path, standby.url("stores") + "?" + urlsplit(
        primary_first).query.split("&", 1)[1])
    assert any("read-only standby" in f and "target_session_attrs=read-write" in f
               for f in report.failures), text


class HealthLog:
    """Polls every node's /healthz in a thread: (seconds since start, node, status)."""

    def __init__(self, nodes, every: float = 0.25):
        self.nodes = nodes
        self.every = every
        self.started = time.monotonic()
        self.seen: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for node in self.nodes:
                try:
                    got = requests.get(node.health, timeout=3).json().get("status", "?")
                except (requests.RequestException, ValueError):
                    got = "no answer"
                self.seen.append((time.monotonic() - self.started, node.name, got))
            self._stop.wait(self.every)

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    def first(self, node: str, state: str, after: float) -> float | None:
        """When ``node`` first showed ``state`` at or after ``after`` (seconds)."""
        return next((t for t, n, s in self.seen if n == node and s == state and t >= after),
                    None)

    def last(self, node: str, state: str) -> float | None:
        """When ``node`` last showed ``state``."""
        return next((t for t, n, s in reversed(self.seen) if n == node and s == state), None)


def test_failover_drill_logins_in_flight_end_defined_and_service_resumes(
        pair, slapd, tmp_path):
    primary, standby = pair
    url, _ = database_urls(primary, standby)
    c = Cluster(tmp_path, slapd, primary, count=2, database=url,
                push=f"timeout: {PUSH_TIMEOUT}\nlimits: {{max_pending: 10}}")
    try:
        c.start()
        devices = {user: c.enroll(user, c[1]) for user in ("alice", "bob", "carol")}
        at2 = {user: c.device_at(state, c[2]) for user, state in devices.items()}
        at1 = {user: c.device_at(state, c[1]) for user, state in devices.items()}
        # Logins held by node 1 at the moment of the crash, each pushed to the phone:
        # alice's is answered after the promotion, carol's never.
        alice = c.login(c[1], attrs("alice", station="198.51.100.101"), timeout=45)
        carol = c.login(c[1], attrs("carol", station="198.51.100.103"), timeout=45)
        alice_tx = wait_pending(at2["alice"])[0]["txid"]
        wait_pending(at2["carol"])
        # bob's push is approved at node 2 and committed; the primary dies right after.
        bob = c.login(c[1], attrs("bob", station="198.51.100.102"), timeout=45)
        bob_tx = wait_pending(at2["bob"])[0]["txid"]
        health = HealthLog(c.nodes)
        assert auth.answer(at2["bob"], bob_tx, "approve")["status"] == "recorded"
        crashed = time.monotonic()
        primary.stop("immediate")
        t_crash = crashed - health.started

        # The outage: a new login is decided by failmode (secure: Reject), at once.
        outage_login = c[2].login(attrs("alice", station="198.51.100.104"), timeout=20)
        outage_s = time.monotonic() - crashed
        assert outage_login.code == "Access-Reject", c.output()
        # The failover manager's detection time, then the promotion.
        time.sleep(max(0.0, 3.0 - (time.monotonic() - crashed)))
        promoting = time.monotonic()
        standby.promote()
        promoted = time.monotonic()
        t_promoted = promoted - health.started

        # Nothing restarted: the answer to alice's push, posted to node 2 (written on
        # the new primary), releases node 1's login through the new primary's bus.
        end = time.monotonic() + 30
        while True:
            try:
                answered = auth.answer(at2["alice"], alice_tx, "approve")
                break
            except Exception:  # noqa: BLE001 - refused until node 2 reaches the new primary
                assert time.monotonic() < end, c.output()
                time.sleep(0.25)
        answer_ok = time.monotonic()
        assert answered["status"] == "recorded"
        assert alice.result(timeout=30).code == "Access-Accept", c.output()
        alice_released = time.monotonic()
        # bob's answer, committed before the crash, was not lost.
        assert bob.result(timeout=30).code == "Access-Accept", c.output()
        assert row_state(standby, url, "bob") == ["approved"]
        assert not standby.in_recovery()
        # carol never answered: a timeout Reject within push.timeout, not a hang.
        assert carol.result(timeout=PUSH_TIMEOUT + 15).code == "Access-Reject", c.output()
        end = time.monotonic() + 10  # closed in the store by the next batch (EXPIRE_EVERY)
        while row_state(standby, url, "carol") != ["expired"] and time.monotonic() < end:
            time.sleep(0.25)
        assert row_state(standby, url, "carol") == ["expired"]
        # The bus of every node reconnected (one log line each, naming the new primary).
        for node in c.nodes:
            line = node.serve.wait_for("bus.reconnected", deadline=20)
            assert str(standby.port) in line, line
        # New logins after the promotion: one at node 2 answered at node 1 (cross-node
        # wake-up over the new primary's LISTEN/NOTIFY), one at node 1 answered at node 1.
        again = c.login(c[2], attrs("alice", station="198.51.100.105"), timeout=30)
        asked = time.monotonic()
        tx = wait_pending(at1["alice"], deadline=20)[0]["txid"]
        assert auth.answer(at1["alice"], tx, "approve")["status"] == "recorded"
        answered_at = time.monotonic()
        assert again.result(timeout=30).code == "Access-Accept", c.output()
        wakeup = time.monotonic() - answered_at
        for node in c.nodes:
            assert eventually_ok(node), node.name
        health.stop()

        # No Accept without an approval: exactly the three approved logins were accepted.
        reasons = sorted(e["reason"] for e in c.audit())
        assert reasons.count("push_approved") == 3, reasons
        assert [e["reason"] for e in c.audit("carol")] == ["push_timeout"], c.audit("carol")
        assert "Traceback" not in c.output()

        figures = {
            "outage login decided by failmode (s)": round(outage_s, 2),
            "promote took (s)": round(promoted - promoting, 2),
            "promote -> first answer accepted by the API (s)": round(answer_ok - promoted, 2),
            "answer -> alice's held login Accepted (s)": round(alice_released - answer_ok, 2),
            "cross-node wake-up after failover, answer -> Accept (s)": round(wakeup, 2),
            "login after promotion, request -> push seen (s)": round(answered_at - asked, 2),
        }
        for node in c.nodes:
            down = health.first(node.name, "down", t_crash)
            ok = health.first(node.name, "ok", t_promoted)
            figures[f"{node.name} /healthz crash -> 503 (s)"] = \
                None if down is None else round(down - t_crash, 2)
            figures[f"{node.name} /healthz promote -> 200 ok (s)"] = \
                None if ok is None else round(ok - t_promoted, 2)
            figures[f"{node.name} /healthz states"] = sorted(
                {s for t, n, s in health.seen if n == node.name and t >= t_crash})
        print("\nfailover drill:", *(f"  {k}: {v}" for k, v in figures.items()), sep="\n")
        for node in c.nodes:
            assert health.first(node.name, "down", t_crash) is not None, health.seen
    finally:
        c.close()


def eventually_ok(node, within: float = 20.0) -> bool:
    """Whether /healthz says 200 with status ok within ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if status(node.health) == 200 and \
                requests.get(node.health, timeout=5).json().get("status") == "ok":
            return True
        time.sleep(0.3)
    return False


def metric(node, name: str) -> float | None:
    """One unlabelled sample of ``name`` from the node's /metrics (None if absent)."""
    text = requests.get(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def health_of(node) -> tuple[int, dict]:
    got = requests.get(node.health, timeout=5)
    return got.status_code, got.json()


def noticed(nodes, needle: str, marks: dict):
    """The node that logged ``needle`` since its mark, or None."""
    for node in nodes:
        node.output()  # read what is waiting
        if any(needle in line for line in node.serve.lines[marks[node.name]:]):
            return node
    return None


def until(predicate, within: float = 20.0, every: float = 0.2):
    """Poll ``predicate`` until it returns something true; that value (or fail)."""
    end = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < end, "timed out"
        time.sleep(every)


def test_bus_health_across_a_restart_and_a_degraded_node_that_polls(postgres, slapd,
                                                                    tmp_path):
    """/healthz, /metrics and the log follow the bus. PostgreSQL restarted: 503 and
    ``pushproxy_bus_connected 0`` while it is down, one ``bus.disconnected`` however
    many retries fail; back: 200, gauge 1, one ``bus.reconnected``, the reconnect
    counted. Then a real split: the store's connection is up but the bus cannot connect
    (the role's CONNECTION LIMIT is reached): /healthz 200 ``degraded`` naming the
    polling fallback, and an answer posted to the other node still releases this
    node's login (by polling the store) well before push.timeout."""
    role = f"pp{int(time.time() * 1000) % 10**9}"
    query = urlsplit(postgres.new_database()).query
    schema = parse_qs(query)["options"][0].split("=", 1)[1]
    postgres.admin(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    postgres.admin(f'ALTER SCHEMA "{schema}" OWNER TO {role}', "stores")
    url = f"postgresql://{role}@127.0.0.1:{postgres.port}/stores?{query}"
    c = Cluster(tmp_path, slapd, postgres, count=2, database=url,
                push=f"timeout: {PUSH_TIMEOUT}\nlimits: {{max_pending: 10}}")
    try:
        c.start()
        state = c.enroll("alice", c[1])
        at2 = c.device_at(state, c[2])
        one = c[1]
        assert health_of(one)[1]["bus"] == {"ok": True, "reconnects": 0}
        assert metric(one, "pushproxy_bus_connected") == 1.0

        mark = len(one.serve.lines)
        postgres.stop("fast")
        try:
            until(lambda: health_of(one)[0] == 503)
            assert metric(one, "pushproxy_bus_connected") == 0.0
            code, body = health_of(one)
            assert body["status"] == "down" and body["bus"]["ok"] is False
            time.sleep(2.0)  # several failed retries: still one warning
        finally:
            postgres.start()
        until(lambda: health_of(one)[1]["status"] == "ok", within=30)
        assert health_of(one)[0] == 200
        assert metric(one, "pushproxy_bus_connected") == 1.0
        assert metric(one, "pushproxy_bus_reconnects_total") == 1.0
        one.output()  # read what is waiting
        lines = one.serve.lines[mark:]
        assert sum("bus.disconnected" in line for line in lines) == 1, lines
        assert sum("bus.reconnected" in line for line in lines) == 1, lines

        # The split: only node 1's bus is cut off; its store connection stays.
        for node in c.nodes:  # each node's store has reconnected since the restart
            until(lambda: health_of(node)[1]["status"] == "ok", within=30)
        with psycopg.connect(postgres.url("stores"), password=PASSWORD,
                             autocommit=True) as admin:
            # a store and a bus connection per node; the limit leaves out one bus
            count = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
            until(lambda: admin.execute(count, (role,)).fetchone()[0] == 4)
            admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT 3")
            marks = {n.name: len(n.serve.lines) for n in c.nodes}
            buses = admin.execute(
                "SELECT pid, client_port FROM pg_stat_activity WHERE usename = %s "
                "AND application_name = 'pushproxy-bus'", (role,)).fetchall()
            assert len(buses) == 2
            # which bus is node 1's: kill one, see which node notices
            admin.execute("SELECT pg_terminate_backend(%s)", (buses[0][0],))
            cut = until(lambda: noticed(c.nodes, "bus.disconnected", marks))
            other = c[2] if cut is c[1] else c[1]
            code, body = until(lambda: (lambda h: h if h[1]["status"] == "degraded"
                                        else None)(health_of(cut)))
            assert code == 200 and body["healthy"] is True
            assert body["bus"]["ok"] is False and "polling" in body["bus"]["fallback"]
            assert metric(cut, "pushproxy_bus_connected") == 0.0
            assert health_of(other)[1]["status"] == "ok"
            # A login held by the cut-off node, answered at the other one.
            device = c.device_at(state, other)
            login = c.login(cut, attrs("alice", station="198.51.100.110"), timeout=45)
            tx = wait_pending(device)[0]["txid"]
            answered = time.monotonic()
            assert auth.answer(device, tx, "approve")["status"] == "recorded"
            assert login.result(timeout=PUSH_TIMEOUT + 10).code == "Access-Accept"
            released = time.monotonic() - answered
            assert released < PUSH_TIMEOUT / 2, released  # by polling, not at the timeout
            print(f"\nbus down, store up: answer at the other node -> Accept in {released:.2f} s")
            admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT -1")
        until(lambda: health_of(cut)[1]["status"] == "ok", within=30)
        assert metric(cut, "pushproxy_bus_connected") == 1.0
        assert "Traceback" not in c.output()
    finally:
        c.close()


def test_synchronous_standby_lost_logins_end_in_bounded_time_and_resume(pair, slapd,
                                                                        tmp_path):
    """The price of synchronous replication: with its only synchronous standby gone, a
    commit waits for it and statement_timeout does not end that wait (PostgreSQL turns
    the timeout off before committing). The store's watchdog does: a login is decided by
    failmode within push.timeout, never hangs, and /healthz (which commits a test write)
    leaves "ok" (503 "down", or "busy" while the store thread is stuck). With the standby back, logins are approved again without a restart."""
    primary, standby = pair
    url, _ = database_urls(primary, standby)
    c = Cluster(tmp_path, slapd, primary, count=1, database=url,
                push=f"timeout: {PUSH_TIMEOUT}\nlimits: {{max_pending: 10}}")
    try:
        c.start()
        node = c[1]
        device = c.device_at(c.enroll("alice", node), node)
        standby.stop("immediate")
        started = time.monotonic()
        lost = node.login(attrs("alice", station="198.51.100.120"), timeout=45)
        decided = time.monotonic() - started
        assert lost.code == "Access-Reject", node.output()
        assert decided < PUSH_TIMEOUT, decided
        # /healthz leaves "ok": 503 once its test commit is cut off, or "busy" (200)
        # while admission control sees the store thread stuck behind such commits.
        seen = set()
        end = time.monotonic() + 20
        while time.monotonic() < end and "down" not in seen:
            seen.add(requests.get(node.health, timeout=15).json().get("status"))
            time.sleep(0.3)
        assert seen & {"down", "busy"}, seen
        print(f"\nsync standby down: login decided (failmode) in {decided:.2f} s; "
              f"/healthz states: {sorted(seen)}")
        standby.start()
        login = c.login(node, attrs("alice", station="198.51.100.121"), timeout=45)
        tx = wait_pending(device, deadline=30)[0]["txid"]
        assert auth.answer(device, tx, "approve")["status"] == "recorded"
        assert login.result(timeout=30).code == "Access-Accept", node.output()
        assert eventually_ok(node)
        assert "Traceback" not in c.output()
    finally:
        c.close()
