"""``pushproxy enroll --group/--mail`` (bulk enrollment by mail) and ``pushproxy rollout status``.

Exit status of the bulk command: 0 when every user named or in the group has a
device, an open link, or was just sent one; 1 when any mail was not sent, a
name was refused (unknown, ambiguous, not allowed), an entry has no mail address
or the directory could not answer for someone; 2 when nothing could start
(config, store, directory, templates).
"""

from __future__ import annotations

import sys
import time

from pushproxy.approval.backends import open_store
from pushproxy.approval.store import StoreError
from pushproxy.argtypes import whole_number
from pushproxy.config import load_config_or_report
from pushproxy.rollout import bulk, status
from pushproxy.rollout.directory import DirectoryError, RolloutDirectory
from pushproxy.rollout.mailer import SmtpSender, TemplateError, Templates

DEFAULT_CONFIG = "/etc/pushproxy/config.yaml"


def _names(args, directory, err) -> list[str] | None:
    names = list(args.user)
    for group in args.group or ():
        try:
            members = directory.members(group)
        except DirectoryError as exc:
            print(f"enroll: group {group}: {exc}", file=err)
            return None
        print(f"group {group}: {len(members)} member(s)")
        names.extend(members)
    return names


def cmd_enroll_mail(args, out=None, err=None) -> int:
    """Mail a personal enrollment link to each named user and group member."""
    out, err = out or sys.stdout, err or sys.stderr
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    if config.mail is None and not args.dry_run:
        print(f"enroll: {args.config} has no mail: section (SMTP server, sender); see "
              "docs/rollout.md", file=err)
        return 2
    mail_attribute = config.mail.mail_attribute if config.mail else "mail"
    try:
        templates = Templates.load(config.mail.templates if config.mail else None)
        templates.check()
    except TemplateError as exc:
        print(f"enroll: {exc}", file=err)
        return 2
    directory = RolloutDirectory(config.ldap, mail_attribute)
    try:
        names = _names(args, directory, err)
        if names is None:
            return 2
        if not names:
            print("enroll: nobody to enroll (name users, or --group DN)", file=err)
            return 2
        users = [directory.user(name) for name in names]
    finally:
        directory.close()
    try:
        store = open_store(config.approval.database, password=config.approval.database_password)
    except StoreError as exc:
        print(f"store {config.approval.database}: {exc}", file=err)
        return 2
    sender = None
    try:
        planned = bulk.plan(users, store.rollout_overview(time.time()), resend=args.resend,
                            include_enrolled=args.include_enrolled)
        if args.dry_run:
            for p in planned:
                print(f"{p.user.account or p.user.name}: {p.action.value}"
                      + (f" ({p.user.mail})" if p.action in bulk.SENDS else ""), file=out)
            return 0
        sender = SmtpSender(config.mail)
        validity = args.ttl or config.mail.link_validity

        def progress(i, n, outcome):
            user = outcome.planned.user
            what = f"mailed to {user.mail}" if outcome.sent else f"NOT SENT: {outcome.error}"
            print(f"[{i}/{n}] {user.account}: {what}", file=out, flush=True)

        gap = 60.0 / args.per_minute if args.per_minute else 0.0
        outcomes = bulk.run(planned, store=store, sender=sender, mail_config=config.mail,
                            templates=templates, public_url=config.approval.public_url,
                            validity=validity, clock=time.time, progress=progress,
                            pause=lambda: time.sleep(gap))
    except KeyboardInterrupt:
        print("interrupted: the mails reported above are sent and recorded; run the same "
              "command again to mail the rest", file=err)
        return 130
    except StoreError as exc:
        print(f"store {config.approval.database}: {exc}", file=err)
        return 2
    finally:
        if sender is not None:
            sender.close()
        store.close()
    return _summary(outcomes, out)


def _summary(outcomes: list[bulk.Outcome], out) -> int:
    counts: dict[str, list[str]] = {}
    for o in outcomes:
        name = o.planned.user.account or o.planned.user.name
        if o.planned.action in bulk.SENDS:
            key = "sent" if o.sent else "NOT SENT"
        else:
            key = o.planned.action.value
        counts.setdefault(key, []).append(f"{name} ({o.error})" if o.error else name)
    print("summary:", file=out)
    order = ["sent", "NOT SENT"] + [a.value for a in bulk.Action if a not in bulk.SENDS]
    for key in order:
        if key in counts:
            shown = counts[key]
            quiet = key.startswith("skipped") or key == "sent"
            listing = "" if quiet and len(shown) > 20 else ": " + ", ".join(shown)
            print(f"  {key}: {len(shown)}{listing}", file=out)
    bad = {"NOT SENT", bulk.Action.NO_MAIL.value, bulk.Action.REFUSED.value,
           bulk.Action.UNAVAILABLE.value}
    failed = any(o.sent and o.error for o in outcomes)
    return 1 if failed or bad & set(counts) else 0


def cmd_status(args, out=None, err=None) -> int:
    """Print who in the group (or everyone the store knows) has a device, a link, nothing."""
    out, err = out or sys.stdout, err or sys.stderr
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    users = None
    if args.group:
        directory = RolloutDirectory(config.ldap, config.mail.mail_attribute
                                     if config.mail else "mail")
        try:
            names = []
            for group in args.group:
                names.extend(directory.members(group))
            users = [directory.user(name) for name in dict.fromkeys(names)]
        except DirectoryError as exc:
            print(f"rollout status: {exc}", file=err)
            return 2
        finally:
            directory.close()
    try:
        store = open_store(config.approval.database, password=config.approval.database_password)
    except StoreError as exc:
        print(f"store {config.approval.database}: {exc}", file=err)
        return 2
    now = time.time()
    try:
        overview = store.rollout_overview(now)
    except StoreError as exc:
        print(f"store {config.approval.database}: {exc}", file=err)
        return 2
    finally:
        store.close()
    rows = status.rows(users, overview)
    status.write(rows, args.format, out)
    return 0


def add_enroll_arguments(p) -> None:
    """The bulk options of ``pushproxy enroll`` (the parser itself is pushproxy.admin's)."""
    p.add_argument("--group", action="append", metavar="DN",
                   help="mail every member of this directory group (nested groups "
                        "followed); repeatable; implies --mail")
    p.add_argument("--mail", action="store_true",
                   help="mail each user a personal link (mail: config section) instead of "
                        "printing it; implied by --group and by several names")
    p.add_argument("--resend", action="store_true",
                   help="also mail users who have an open link (their older links end)")
    p.add_argument("--include-enrolled", action="store_true",
                   help="also mail users who already have a device (a second device)")
    p.add_argument("--per-minute", type=whole_number(1, 100_000), metavar="N",
                   help="send at most N mails a minute (a provider's sending limit, e.g. "
                        "30 for Microsoft 365)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --mail/--group: show what would be sent, send nothing")


def add_parser(sub) -> None:
    """Register ``rollout status`` on the CLI's subparsers."""
    rollout = sub.add_parser("rollout", help="rollout progress: who has a device, a link, none")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True)
    p = rsub.add_parser("status", help="who has a device, an open enrollment link, or none")
    p.add_argument("--group", action="append", metavar="DN",
                   help="the directory group(s) to report on (default: every user the "
                        "store knows)")
    p.add_argument("--format", choices=("text", "csv", "json"), default="text")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.set_defaults(func=cmd_status)
