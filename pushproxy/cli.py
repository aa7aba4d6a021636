"""The ``pushproxy`` command line."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import signal
import sys

from pushproxy import __version__

log = logging.getLogger("pushproxy.cli")

#: The subcommands other modules define: (module, its registering function, the
#: top-level commands it registers), in the order of ``pushproxy --help``. Only
#: the module of the command that runs is imported (every one for help or an
#: unknown command): importing them all (config, Twisted, ldap3, ldaptor, the
#: store) took ~1.5 s of CPU before even a refusal like `pushproxy demo` with
#: port 8080 taken could be printed.
SUBCOMMANDS = (
    ("pushproxy.initconfig", "add_parser", ("init",)),
    ("pushproxy.demo", "add_parser", ("demo",)),
    ("pushproxy.radtest", "add_parser", ("radius-test",)),
    ("pushproxy.approval.authenticator_cli", "add_parser", ("authenticator",)),
    ("pushproxy.approval.migrate", "add_parser", ("store",)),
    ("pushproxy.admin", "add_parsers", ("enroll", "devices", "bypass", "unlock", "locks")),
    ("pushproxy.policy", "add_parser", ("policy",)),
    ("pushproxy.connectivity", "add_parser", ("test-connection",)),
    ("pushproxy.rollout.commands", "add_parser", ("rollout",)),
    ("pushproxy.baselinecli", "add_parser", ("baseline",)),
)


def cmd_check_config(args) -> int:
    """Validate a config file; print every problem, or the timeout advice."""
    from pushproxy import fdbudget, filemodes
    from pushproxy.config import load_config_or_report

    config = load_config_or_report(args.config)
    if config is None:
        return 1
    print(f"{args.config}: OK ({len(config.radius.clients)} RADIUS client(s), "
          f"{len(config.ldap.servers)} LDAP server(s), push timeout {config.push.timeout:g} s)")
    for advice in config.timeout_advice():
        print(f"  advice: {advice}")
    # Warnings, not failures: config.example.yaml's placeholder secrets come out of
    # git as 0644; serve refuses them (see pushproxy.filemodes).
    for warning in exposure_warnings(config):
        print(f"  warning: {warning}")
    for finding in filemodes.check_config_files(config):
        print(f"  warning: {finding.message}")
    budget = fdbudget.check(config)
    if budget.fits:
        print(f"  {budget.describe()} (this shell's soft limit; the service's is its "
              "LimitNOFILE=)")
    else:
        print(f"  warning: {fdbudget.problem(budget)}; `serve` refuses to start under "
              "this limit")
    note = fdbudget.node_note(config)
    if note:
        print(f"  {note}")
    return 0


def exposure_warnings(config) -> list[str]:
    """Settings that are valid but expose something; check-config and serve print them."""
    warnings = []
    host = config.approval.listen[0]
    if config.approval.public_url.lower().startswith("http://") and \
            not ipaddress.ip_address(host).is_loopback:
        warnings.append(
            f"approval.public_url is http:// while approval.listen ({host}) is not "
            "loopback: phones would send device keys and answers in clear text; use "
            "https:// (tls_cert/tls_key, or a TLS reverse proxy with listen on 127.0.0.1)")
    for i, client in enumerate(config.radius.clients):
        if len(client.secret) < 16:
            # draft-ietf-radext-deprecating-radius: at least 16 octets (32 random
            # ones best); short secrets fall to offline guessing from one packet.
            warnings.append(
                f"radius.clients[{i}] ({client.name}): the shared secret is "
                f"{len(client.secret)} octets; use at least 16, best 32 random ones "
                "(or RadSec, docs/radsec.md)")
    from pushproxy.approval.backends import is_postgres_url, postgres_tls_warning

    if is_postgres_url(config.approval.database):
        tls = postgres_tls_warning(config.approval.database)
        if tls:
            warnings.append(tls)
    from pushproxy.approval.presence import config_warnings

    warnings += config_warnings(config)
    return warnings


def report_file_modes(config, counters, stage: str) -> bool:
    """Log every too-open secret/key/database file; False if one must be refused."""
    from pushproxy import filemodes, logs

    ok = True
    for finding in filemodes.check_config_files(config):
        ok &= not finding.refuse
        level = logging.ERROR if finding.refuse else logging.WARNING
        logs.event(log, level, f"{stage}.insecure_file", path=finding.config_path,
                   file=finding.path, mode=f"{finding.mode:04o}", refused=finding.refuse,
                   problem=finding.message)
        if not finding.refuse and counters is not None:
            counters.inc("insecure_file_modes", kind=finding.kind)
    return ok


def _files_and_exposure_ok(config, counters) -> bool:
    """Refuse files open to other users (logged); warn about a public http:// URL."""
    from pushproxy import logs

    if not report_file_modes(config, counters, "startup"):
        logs.event(log, logging.ERROR, "startup.failed",
                   error="secret, key or database files are open to other users "
                         "(see startup.insecure_file)")
        return False
    for warning in exposure_warnings(config):
        logs.event(log, logging.WARNING, "startup.exposed", problem=warning)
    return True


def cmd_serve(args) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT; SIGHUP reloads the config."""
    from pushproxy import fdbudget, logs
    from pushproxy.config import ConfigError, load_config, load_config_or_report

    config = load_config_or_report(args.config)
    if config is None:
        return 1
    logs.setup(config.log.level, fmt=config.log.format, use_syslog=config.log.syslog)
    from pushproxy import sdnotify, workers

    notify = sdnotify.notify
    if args.worker is not None:  # one of daemon.workers processes (pushproxy.workers)
        workers.die_with_parent()
        workers.tag_logs(args.worker)
        notify = workers.worker_notifier()
    before, after = fdbudget.raise_soft_limit()
    budget = fdbudget.check(config, after, worker=args.worker or 0)
    if not budget.fits:
        logs.event(log, logging.ERROR, "startup.failed", error=fdbudget.problem(budget))
        return 1
    logs.event(log, logging.INFO, "daemon.descriptors", limit=after, raised_from=(
        before if before != after else None), need=budget.need)
    if args.worker is None and config.daemon.workers > 1:
        if not _files_and_exposure_ok(config, None):
            return 1
        return workers.supervise(args.config, config)
    from twisted.internet import reactor, task

    from pushproxy import gcwatch
    from pushproxy.metrics import Counters
    from pushproxy.wiring import build_daemon

    counters = Counters()
    if not _files_and_exposure_ok(config, counters):
        return 1
    try:
        daemon = build_daemon(config, reactor, counters=counters, worker_index=args.worker or 0)
    except Exception as exc:  # startup failures: say what, exit non-zero
        logs.event(log, logging.ERROR, "startup.failed", error=str(exc))
        return 1
    exit_code = [0]

    def failed(failure):
        logs.event(log, logging.ERROR, "startup.failed", error=failure.getErrorMessage())
        exit_code[0] = 1
        workers.stop_reactor(reactor)  # the supervisor's SIGTERM may be on its way

    def ready(_):
        # Every listener is bound and the store is open: only now may systemd
        # (and whatever is ordered after us) send traffic.
        notify("READY=1\nSTATUS=serving")
        logs.event(log, logging.INFO, "daemon.ready", config=args.config)
        # Start-up objects (modules, config, keys) live for the whole run: keep
        # them out of every later full collection. (The ~140 ms stall measured
        # with 20,000 logins pending comes from the pending objects themselves;
        # see docs/benchmarks.md.) Then the thresholds: fewer full collections
        # while thousands of logins are held (gcwatch.tune, issue 22).
        gc.freeze()
        gcwatch.tune()
        # Held logins' objects out of later full collections once one is slow.
        gcwatch.FREEZER.start(reactor, lambda: daemon.engine.pending)
        interval = sdnotify.watchdog_interval()
        if interval:
            task.LoopingCall(notify, "WATCHDOG=1").start(interval)

    def reload():
        notify(sdnotify.reloading_message())
        try:
            new = load_config(args.config)
        except ConfigError as exc:
            for problem in exc.problems:
                logs.event(log, logging.ERROR, "reload.refused", problem=problem)
            logs.event(log, logging.ERROR, "reload.kept_old_config", problems=len(exc.problems))
        else:
            if not report_file_modes(new, daemon.counters, "reload"):
                logs.event(log, logging.ERROR, "reload.kept_old_config", problems="file modes")
                notify("READY=1\nSTATUS=serving")
                return
            budget = fdbudget.check(new)
            if not budget.fits:
                logs.event(log, logging.ERROR, "reload.refused", problem=fdbudget.problem(budget))
                logs.event(log, logging.ERROR, "reload.kept_old_config", problems=1)
                notify("READY=1\nSTATUS=serving")
                return
            for note in daemon.reload(new):
                logs.event(log, logging.WARNING, "reload.needs_restart", what=note)
            logs.event(log, logging.INFO, "reload.applied", config=args.config)
        notify("READY=1\nSTATUS=serving")

    def stopping():
        notify("STOPPING=1")
        return daemon.stop()

    reactor.callWhenRunning(lambda: daemon.start().addCallbacks(ready, failed))
    reactor.addSystemEventTrigger("before", "shutdown", stopping)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))
    reactor.run()
    return exit_code[0]


def chosen_command(argv: list[str] | None) -> str | None:
    """The subcommand argv names, if it is a known one (None: help, --version, a typo)."""
    # The top-level options (-h, --version) print the top-level help or version:
    # anything before the command gets the full parser, so that help is unchanged.
    first = argv[0] if argv else None
    known = {"serve", "check-config"} | {name for _module, _adder, names in SUBCOMMANDS
                                         for name in names}
    return first if first in known else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser: every subcommand, or with argv only the one argv runs.

    With argv naming a command of SUBCOMMANDS, the other modules are not
    imported; that command's parser (and its help) is the same either way.
    """
    parser = argparse.ArgumentParser(prog="pushproxy",
                                     description="Push-MFA proxy for RADIUS and LDAP.")
    parser.add_argument("--version", action="version", version=f"pushproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the daemon in the foreground")
    p.add_argument("--config", "-c", required=True, help="path to config.yaml")
    # set by the supervisor of daemon.workers processes (pushproxy.workers), not by hand
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check-config", help="validate a config file and print advice")
    p.add_argument("config", help="path to config.yaml")
    p.set_defaults(func=cmd_check_config)
    chosen = chosen_command(argv)
    for module, adder, names in SUBCOMMANDS:
        if chosen is None or chosen in names:
            # __import__ (not importlib.import_module): -X importtime lists it
            getattr(__import__(module, fromlist=[adder]), adder)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
