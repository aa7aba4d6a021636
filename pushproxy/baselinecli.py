"""``pushproxy baseline show|forget USER``: what the store learned of a user's logins.

``show`` prints the approved-login count, the learning progress and the
countries, networks and hours the risk signals compare against (docs/context.md);
``forget`` drops it all, for a user who moved for good or a baseline learned
from a compromised period (the next logins start a new learning period).
USER is the account logins key on, as for ``unlock``: a name is casefolded,
and with ``ldap.active_directory`` an AD spelling (``CORP\\alice``,
``alice@corp.example``) is looked up in the directory as a login would be
(`pushproxy.admin.account_key`).
"""

from __future__ import annotations

import time

DEFAULT_CONFIG = "/etc/pushproxy/config.yaml"


def cmd_show(args) -> int:
    """Print the user's baseline."""
    from pushproxy.admin import with_store

    return with_store(args, "baseline", _show, resolve_user=True)


def _show(config, store, args) -> int:
    from pushproxy.audit import utc_stamp
    from pushproxy.risk import RiskSettings

    b = store.user_baseline(args.user)
    if not b.approved:
        print(f"{args.user}: nothing learned yet (no approved login since baselines were on)")
        return 0
    risk = (config.context.risk if config.context else None) or RiskSettings()
    days = (time.time() - b.first_at) / 86400
    learned = b.approved >= risk.learning_logins and days >= risk.learning_days
    print(f"{args.user}: {b.approved} approved login(s), first {utc_stamp(b.first_at)}, "
          f"last {utc_stamp(b.last_at)}; "
          + ("learned" if learned else f"learning ({risk.learning_logins} logins, "
             f"{risk.learning_days:g} days)"))
    if b.located_at is not None:
        print(f"  last located: {b.located_country or '?'} ({b.latitude:.2f}, "
              f"{b.longitude:.2f}) at {utc_stamp(b.located_at)}")
    for name, values in (("countries", b.countries), ("ASNs", b.asns),
                         ("networks", b.networks), ("hours", b.hours)):
        print(f"  {name}: {', '.join(map(str, sorted(values))) or 'none'}")
    return 0


def cmd_forget(args) -> int:
    """Drop the user's baseline."""
    from pushproxy.admin import with_store

    return with_store(args, "baseline", _forget, resolve_user=True)


def _forget(config, store, args) -> int:
    rows = store.forget_baseline(args.user)
    print(f"forgot {args.user}'s baseline ({rows} row(s)); the next logins learn anew"
          if rows else f"{args.user}: nothing learned to forget")
    return 0


def add_parser(sub) -> None:
    """Register ``baseline show`` and ``baseline forget`` on the CLI's subparsers."""
    p = sub.add_parser("baseline", help="show or forget what was learned of a user's logins")
    bsub = p.add_subparsers(dest="baseline_command", required=True)
    for name, func, text in (("show", cmd_show, "print the user's login baseline"),
                             ("forget", cmd_forget, "drop the user's login baseline")):
        q = bsub.add_parser(name, help=text)
        q.add_argument("user", help="the account, or an AD spelling of it (DOMAIN\\user, "
                                    "user@domain) with ldap.active_directory")
        q.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
        q.set_defaults(func=func)
