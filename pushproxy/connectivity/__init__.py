"""``pushproxy test-connection``: check, step by step, everything the daemon talks to.

Each LDAP server is checked in order, one line per step -- DNS, TCP, StartTLS,
TLS, certificate, host name, service bind, searches -- with OK/WARN/FAIL, the
time it took and, when it fails, what usually causes that failure. A failing
step skips the steps that need it; the next server is still checked. Then the
approval store (read only: never created or migrated from here), the public
URL of the approval API, and the RADIUS timeout each gateway needs.

The TLS and bind steps connect the way the daemon does (`pushproxy.ldapauth`):
certificates always verified, against ``ldap.ca_file`` or else the system
store, the host name checked by ldap3, no SNI. So a pass here means the daemon
can connect too, and a failure names the step that would break its logins.

Exit status: 0 when nothing failed (warnings allowed), 1 when a check failed,
2 when the configuration does not load.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO


from pushproxy.config import Config, load_config_or_report
from pushproxy.connectivity.approvalcheck import check_public_url, check_store
from pushproxy.connectivity.ldapcheck import check_ldap_server
from pushproxy.connectivity.report import Report


DEFAULT_CONFIG = "/etc/pushproxy/config.yaml"


def run_checks(config: Config, *, sample_user: str | None, out: TextIO) -> bool:
    """Run every check, printing one line per step to ``out``; True when nothing failed."""
    report = Report(out)
    print(f"pushproxy test-connection: {config.source}", file=out, flush=True)
    for index in range(len(config.ldap.servers)):
        check_ldap_server(report, config, index, sample_user)
    check_store(report, config)
    check_public_url(report, config)
    report.section("RADIUS clients: the timeout each gateway needs")
    for advice in config.timeout_advice():
        report.step("INFO", "advice", advice)
    print(file=out)
    if report.failures:
        print(f"FAILED: {len(report.failures)} check(s) failed:", file=out)
        for failure in report.failures:
            print(f"  {failure}", file=out)
    else:
        print(f"OK: every check passed ({report.warnings} warning(s))", file=out)
    out.flush()
    return not report.failures


def _configure(p: argparse.ArgumentParser) -> None:
    """The options, shared by the subcommand and ``python -m pushproxy.connectivity``."""
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                   help="path to config.yaml (default %(default)s)")
    p.add_argument("--user", metavar="NAME",
                   help="also look this user up with ldap.user_filter and show its groups")
    p.set_defaults(func=cmd_test_connection)


def cmd_test_connection(args) -> int:
    """Load the config (2 if it does not load), run the checks, 0 if all passed else 1."""
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    return 0 if run_checks(config, sample_user=args.user, out=sys.stdout) else 1


def add_parser(sub) -> None:
    """Register ``test-connection`` on the CLI's subparsers."""
    p = sub.add_parser("test-connection",
                       help="check DNS, TCP, TLS, bind and search for every LDAP server, the "
                            "approval store and the public URL")
    _configure(p)


def main(argv: list[str] | None = None) -> int:
    """``python -m pushproxy.connectivity``: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog="pushproxy test-connection",
                                     description="Check every connection the daemon needs.")
    _configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


__all__ = ["DEFAULT_CONFIG", "add_parser", "cmd_test_connection", "main", "run_checks"]
