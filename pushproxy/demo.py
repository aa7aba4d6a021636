"""``pushproxy demo``: the whole product on one machine, with no outside server.

It starts an in-process demo directory (ldaptor), the real daemon (RADIUS +
approval service) on loopback, enrolls a command-line authenticator for
``alice``, sends a real RADIUS login, shows the request the phone would show
and approves it; then a login for ``bob`` that his device denies. After the
walkthrough it keeps serving and prints the commands to try it by hand.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# Twisted, the directory, the store and the config are imported where they are
# used: a taken port must end the demo at once, before ~1 s of imports.


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_demo_config(folder: Path, ldap_url: str, radius_port: int, http_port: int) -> Path:
    """The demo's config.yaml (a real config, validated like any other)."""
    from pushproxy import demo_directory
    from pushproxy.initconfig import gateway_secret

    # Never a leading "-": the demo prints a radclient/radtest line with it.
    (folder / "radius.secret").write_text(gateway_secret() + "\n")
    (folder / "ldap.secret").write_text(demo_directory.DEMO_SERVICE_PASSWORD + "\n")
    for name in ("radius.secret", "ldap.secret"):
        os.chmod(folder / name, 0o600)
    text = textwrap.dedent(f"""\
        # Written by `pushproxy demo`; a real config, see config.example.yaml.
        radius:
          listen: ["127.0.0.1:{radius_port}"]
          clients:
            - name: demo-vpn
              address: 127.0.0.1
              secret_file: radius.secret
        ldap:
          servers: ["{ldap_url}"]
          bind_dn: "{demo_directory.DEMO_SERVICE_DN}"
          bind_password_file: ldap.secret
          user_base: "{demo_directory.DEMO_PEOPLE_BASE}"
          user_filter: "(&(objectClass=inetOrgPerson)(uid={{username}}))"
          required_groups: ["{demo_directory.demo_group_dn('vpn-users')}"]
          group_membership: group_search
        push:
          timeout: 60
        approval:
          listen: "127.0.0.1:{http_port}"
          public_url: "http://127.0.0.1:{http_port}"
          database: pushproxy.db
        audit:
          path: audit.jsonl
        log:
          level: warning
        """)
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def say(text: str = "") -> None:
    """Print one line of the walkthrough at once."""
    print(text, flush=True)


def walkthrough(reactor, folder: Path, config, server: str):
    """Enroll alice and bob, approve alice's login, deny bob's; fires True if all went right."""
    from twisted.internet import defer

    return defer.inlineCallbacks(_walkthrough)(reactor, folder, config, server)


def _walkthrough(reactor, folder: Path, config, server: str):
    """`walkthrough`'s steps (an inlineCallbacks generator)."""
    from twisted.internet import threads

    from pushproxy import demo_directory
    from pushproxy.approval import authenticator, authenticator_cli
    from pushproxy.approval.service import new_enrollment
    from pushproxy.approval.store import SQLiteStore
    from pushproxy.radtest import login as radius_login

    secret = config.radius.clients[0].secret
    store = SQLiteStore(config.approval.database)
    try:
        links = {user: new_enrollment(store, user, config.approval.public_url,
                                      config.approval.enrollment_ttl, time.time())
                 for user in ("alice", "bob")}
    finally:
        store.close()
    ok = True
    for user, decision in (("alice", "approve"), ("bob", "deny")):
        state = str(folder / f"{user}-phone")
        say(f"\n== {user}: enroll a device (pushproxy authenticator enroll LINK --state {state})")
        enrolled = yield threads.deferToThread(authenticator.enroll, links[user], state,
                                               f"{user}'s demo phone")
        say(f"   device {enrolled.get('device_id')} enrolled for {enrolled.get('username')}")
        say(f"== {user}: log in over RADIUS with the right password; the reply is held...")
        login = threads.deferToThread(radius_login, server, secret, user,
                                      demo_directory.DEMO_USERS[user],
                                      calling_station="203.0.113.50", timeout=30)
        request = yield threads.deferToThread(_first_request, state)
        if request is None:
            say("   the device never saw the request")
            ok = False
        else:
            shown = authenticator_cli.describe(request, time.time()).replace("\n", "\n     ")
            say(f"   the phone shows: {shown}")
            say(f"== {user}'s device answers: {decision}")
            yield threads.deferToThread(authenticator.answer, state, request["txid"], decision)
        code, message = yield login
        say(f"   RADIUS answer: {code}" + (f" ({message})" if message else ""))
        expected = "Access-Accept" if decision == "approve" else "Access-Reject"
        ok = ok and code == expected
    return ok


def _first_request(state: str, deadline: float = 20.0) -> dict | None:
    """Long-poll the device's pending list until the login's request shows up."""
    from pushproxy.approval import authenticator

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = authenticator.pending(state, wait=5)
        if found:
            return found[0]
    return None


def port_in_use(radius_port: int, http_port: int) -> str | None:
    """Why the demo cannot start on these loopback ports (None: both free now).

    Checked before the reactor starts, so a taken port ends the demo at once
    with a message that names it, instead of half a walkthrough.
    """
    for port, kind, flag, what in ((http_port, socket.SOCK_STREAM, "--http-port", "TCP"),
                                   (radius_port, socket.SOCK_DGRAM, "--radius-port", "UDP")):
        if not port:
            continue
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:  # as Twisted's listenTCP does
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                return (f"{what} port {port} on 127.0.0.1 ({flag}) is not free: "
                        f"{exc.strerror}. Another program (or another demo) uses it: run "
                        f"`pushproxy demo {flag} 0` to take any free port, or stop that "
                        f"program (ss -ltnup | grep :{port} shows which).")
    return None


def _exit_promptly(reactor, result: dict, grace: float = 5.0) -> None:
    """Ctrl-C or SIGTERM always ends the demo.

    Twisted's own handlers only ask the reactor to stop, and its shutdown
    waits for every worker thread; one blocked in a long-poll or a login
    would keep the process alive with signals ignored. The first signal
    stops the reactor; a second one, or ``grace`` seconds, exits for sure.
    """
    import signal
    import threading

    def handler(signum, _frame):
        if result.get("stopping"):
            os._exit(128 + signum)
        result["stopping"] = True
        timer = threading.Timer(grace, os._exit, (128 + signum,))
        timer.daemon = True
        timer.start()
        reactor.callFromThread(reactor.stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def cmd_demo(args) -> int:
    """Run the demo: walkthrough, then keep serving (or exit with --once)."""
    problem = port_in_use(args.radius_port, args.http_port)
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    from twisted.internet import defer, reactor

    from pushproxy import demo_directory, logs
    from pushproxy.approval.service import new_enrollment
    from pushproxy.approval.store import SQLiteStore
    from pushproxy.config import load_config
    from pushproxy.wiring import build_daemon

    folder = Path(args.dir or tempfile.mkdtemp(prefix="pushproxy-demo-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    logs.setup("warning")
    result = {"code": 0}

    @defer.inlineCallbacks
    def run():
        directory = yield demo_directory.start_demo_directory(reactor)
        radius_port = args.radius_port or _free_port(socket.SOCK_DGRAM)
        http_port = args.http_port or _free_port(socket.SOCK_STREAM)
        path = write_demo_config(folder, directory.url, radius_port, http_port)
        config = load_config(path)
        daemon = build_daemon(config, reactor)
        yield daemon.start()
        reactor.addSystemEventTrigger("before", "shutdown", daemon.stop)
        reactor.addSystemEventTrigger("before", "shutdown", directory.stop)
        server = f"127.0.0.1:{radius_port}"
        say(f"pushproxy demo in {folder}")
        say(f"  directory  {directory.url} (in-process; users: alice, bob in vpn-users; carol not)")
        say(f"  RADIUS     {server}, client 'demo-vpn', secret in {folder / 'radius.secret'}")
        say(f"  approval   {config.approval.public_url}")
        ok = yield walkthrough(reactor, folder, config, server)
        say("\n" + ("Walkthrough OK: approve -> Access-Accept, deny -> Access-Reject."
                    if ok else "Walkthrough FAILED (see above)."))
        result["code"] = 0 if ok else 1
        if args.once:
            reactor.stop()
            return
        store = SQLiteStore(config.approval.database)
        try:
            link = new_enrollment(store, "alice", config.approval.public_url, 900, time.time())
        finally:
            store.close()
        me = folder / "my-phone"
        say(textwrap.dedent(f"""
            Now try it yourself (Ctrl-C here stops the demo). In a second terminal:
              pushproxy authenticator enroll '{link}' --state {me}
              pushproxy authenticator watch --state {me}
            In a third terminal:
              pushproxy radius-test alice alice-pw --server {server} --secret-file {folder / 'radius.secret'}
            Answer y or n in the second terminal and watch the RADIUS answer in the third.
            (Or open the link in a browser on this machine to use the web authenticator.)
            Audit trail: {folder / 'audit.jsonl'}"""))

    def failed(failure):
        message = failure.getErrorMessage()
        if "already in use" in message:  # taken between the check and the listen
            message += " (run with --http-port 0 --radius-port 0 for any free ports)"
        print(f"demo failed: {message}", file=sys.stderr)
        result["code"] = 1
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(_exit_promptly, reactor, result)
    reactor.callWhenRunning(lambda: run().addErrback(failed))
    reactor.run(installSignalHandlers=False)
    return result["code"]


def add_parser(sub) -> None:
    """Register ``demo`` on the CLI's subparsers."""
    p = sub.add_parser("demo", help="run everything on loopback with a built-in directory")
    p.add_argument("--dir", help="folder for the demo's config, database and audit "
                                 "(default: a new temporary folder)")
    p.add_argument("--radius-port", type=int, default=18120, help="default %(default)s; 0: any")
    p.add_argument("--http-port", type=int, default=8080, help="default %(default)s; 0: any")
    p.add_argument("--once", action="store_true", help="exit after the walkthrough")
    p.set_defaults(func=cmd_demo)
