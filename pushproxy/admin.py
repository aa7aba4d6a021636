"""Admin commands on the approval store: ``enroll``, ``devices list``, ``devices revoke``,
``bypass``, ``unlock``, ``locks``.

They open the same store as the daemon (a SQLite file in WAL mode with a busy
timeout, or the PostgreSQL database), so they work while the daemon is serving
logins; the daemon reads devices, bypass codes, locks and passcode failures from
the store for every login, so a change takes effect on the next login. (A denial pause is the daemon's own memory:
``unlock`` ends a fraud or guessing lock at once, and forgets the user's
passcode failures, but a push denial pause only ends when it runs out.)
"""

from __future__ import annotations

import sys
import time

import segno

from pushproxy import passcodes
from pushproxy.approval.service import new_enrollment
from pushproxy.argtypes import seconds, whole_number
from pushproxy.approval.backends import open_store
from pushproxy.approval.store import StoreError
from pushproxy.audit import utc_stamp
from pushproxy.config import load_config_or_report
from pushproxy.decision import PrimaryStatus

DEFAULT_CONFIG = "/etc/pushproxy/config.yaml"
BYPASS_TTL = 7 * 86400.0
MAX_BYPASS_CODES = 100  # each is hashed with scrypt: tens of milliseconds apiece


def _store(args):
    config = load_config_or_report(args.config)
    if config is None:
        return None, None
    try:
        return config, open_store(config.approval.database,
                                  password=config.approval.database_password)
    except StoreError as exc:
        print(f"store {config.approval.database}: {exc}", file=sys.stderr)
        return config, None


def resolve_account(config, name: str) -> tuple[str | None, str | None]:
    """(account, None) for the user ``name`` finds in the directory, or (None, why not).

    Devices are keyed on the account logins prove (the entry's stored
    ``ldap.username_attribute``, casefolded), so enrollment looks the name up
    the way a login does (service account search) and enrolls that account:
    a typo or a folded spelling can never create a second device set.
    """
    from pushproxy.ldapauth import LdapDirectory
    from pushproxy.metrics import Counters

    directory = LdapDirectory(config.ldap, reactor=None, counters=Counters())
    found = directory.lookup_blocking(name)
    if found.status is PrimaryStatus.OK and found.account:
        return found.account, None
    why = {PrimaryStatus.UNKNOWN_USER: f"no user {name!r} in the directory "
                                       "(ldap.user_base, ldap.user_filter)",
           PrimaryStatus.AMBIGUOUS_USER: f"{name!r} matches more than one directory entry",
           PrimaryStatus.NOT_IN_GROUP: f"{name!r} is in none of ldap.required_groups",
           PrimaryStatus.UNKNOWN_DOMAIN: f"{name!r} names a domain not in "
                                         "ldap.active_directory.domains"}
    return None, why.get(found.status, f"cannot look {name!r} up in the directory: "
                                       f"{found.detail or found.status.value}")


def ad_account(config, name: str | None) -> tuple[str | None, str | None]:
    """``name`` as an account key for the commands that take one (devices, bypass, unlock).

    With ``ldap.active_directory``, an AD spelling (``CORP\\alice``,
    ``alice@corp.example``) is looked up as a login would be, so the command
    acts on the account logins key on; any other name is the key itself.
    (None, why) when the lookup finds no single account.
    """
    if name is None or config.ldap.active_directory is None or not any(
            ch in name for ch in "\\@"):
        return name, None
    return resolve_account(config, name)


def account_key(config, name: str | None) -> tuple[str | None, str | None]:
    """``name`` as the key logins give the user's state (devices, locks, baselines):
    an AD spelling resolved (`ad_account`), any other name casefolded, as
    `pushproxy.engine.Engine.user_key` keys a login. (None, why) when an AD
    spelling finds no single account."""
    user, why = ad_account(config, name)
    return (user.casefold() if user is not None else None), why


def with_store(args, command: str, body, *, resolve_user: bool = False) -> int:
    """What every store command does around its own work: load the config, open the
    store, (``resolve_user``) replace ``args.user`` by its account key
    (`account_key`), run ``body(config, store, args)`` for the exit status, close the
    store. A StoreError, there or in ``body``, is printed with the database and
    gives 1; so does a name that resolves to no account."""
    config, store = _store(args)
    if store is None:
        return 1
    try:
        if resolve_user:
            user, why = account_key(config, args.user)
            if why is not None:
                print(f"{command}: {why}", file=sys.stderr)
                return 1
            args.user = user
        return body(config, store, args)
    except StoreError as exc:
        print(f"store {config.approval.database}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def cmd_enroll(args) -> int:
    """Create a one-time enrollment link for a user and show it as a QR code."""
    if args.group or args.mail or len(args.user) > 1:  # bulk, by mail: pushproxy.rollout
        from pushproxy.rollout.commands import cmd_enroll_mail

        return cmd_enroll_mail(args)
    if len(args.user) != 1:
        print("enroll: name a user (or --group DN to mail a whole group)", file=sys.stderr)
        return 2
    args.user = args.user[0]
    return with_store(args, "enroll", _enroll)


def _enroll(config, store, args) -> int:
    ttl = args.ttl or config.approval.enrollment_ttl
    user = args.user.casefold()
    if not args.no_directory_check:
        user, why = resolve_account(config, args.user)
        if user is None:
            print(f"enroll: {why}; nothing enrolled (--no-directory-check enrolls the "
                  "name as given, for users the directory cannot look up)", file=sys.stderr)
            return 1
    link = new_enrollment(store, user, config.approval.public_url, ttl, time.time())
    qr = segno.make(link, error="m")
    if not args.no_qr:
        qr.terminal(out=sys.stdout, compact=True)
    if args.png:
        qr.save(args.png, scale=8, border=4)
    print(f"Enrollment link for {user} (valid {ttl / 60:g} minutes, works once):")
    print(link)
    return 0


def cmd_devices_list(args) -> int:
    """List enrolled devices (all users, or one)."""
    return with_store(args, "devices", _devices_list, resolve_user=True)


def _devices_list(config, store, args) -> int:
    devices = store.devices(args.user, include_revoked=args.all)
    # presence (docs/presence.md): which devices can approve with a face or fingerprint
    with_passkey = {d.id for d in devices if store.passkeys(d.id)}
    if not devices:
        print("no devices")
        return 0
    print(f"{'ID':18} {'USER':16} {'NAME':24} {'ENROLLED':24} {'LAST SEEN':24} STATUS")
    for d in devices:
        seen = utc_stamp(d.last_seen) if d.last_seen else "-"
        status = f"revoked {utc_stamp(d.revoked)}" if d.revoked else (
            "web push" if d.push_subscription else "long-poll")
        if d.id in with_passkey and not d.revoked:
            status += ", passkey"
        print(f"{d.id:18} {d.username:16} {d.name[:24]:24} {utc_stamp(d.created):24} "
              f"{seen:24} {status}")
    return 0


def cmd_devices_revoke(args) -> int:
    """Revoke a device: it can no longer see or answer requests.

    The user's open enrollment links end with it: a lost phone may have made an
    "add a device" link (or the thief may read the mailbox a rollout link went
    to), and such a link would enroll a new device after the revocation. The
    admin hands out a fresh link afterwards."""
    return with_store(args, "devices", _devices_revoke)


def _devices_revoke(config, store, args) -> int:
    now = time.time()
    device = store.device(args.device_id)
    revoked = store.revoke_device(args.device_id, now)
    ended = store.end_open_enrollments(device.username, now, None) if revoked else 0
    if not revoked:
        print(f"no active device {args.device_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {device.id} ({device.name}) of {device.username}")
    if ended:
        print(f"ended {ended} open enrollment link(s) of {device.username}; "
              f"pushproxy enroll {device.username} makes a new one")
    return 0


def cmd_bypass(args) -> int:
    """Issue one-time bypass codes for a user; printed once, stored only hashed."""
    return with_store(args, "bypass", _bypass, resolve_user=True)


def _bypass(config, store, args) -> int:
    now = time.time()
    # Each code starts with a selector no unused code of the user has, so
    # a login checks a typed code against that one hash only.
    taken = set() if args.replace else store.bypass_selectors(args.user)
    codes = []
    try:
        for _ in range(args.count):
            codes.append(passcodes.new_bypass_code(taken))
            taken.add(passcodes.bypass_selector(codes[-1]))
    except ValueError as exc:
        print(f"{args.user}: {exc}; use --replace", file=sys.stderr)
        return 1
    hashes = [passcodes.hash_bypass_code(code) for code in codes]  # slow: before the write
    store.add_bypass_codes(args.user, hashes, now, now + args.ttl, replace=args.replace,
                           selectors=[passcodes.bypass_selector(code) for code in codes])
    remaining = len(store.bypass_candidates(args.user, now)) - len(codes)
    print(f"Bypass codes for {args.user}, each works once, valid until "
          f"{utc_stamp(now + args.ttl)}; type one after the password (password,CODE).")
    print("They are shown only now: the server keeps only their hashes.")
    for code in codes:
        print(f"  {code}")
    if remaining > 0:
        print(f"{remaining} earlier code(s) stay valid (--replace revokes them).")
    return 0


def cmd_unlock(args) -> int:
    """Lift a fraud or guessing lock: logins resume, and passcode failures start from zero."""
    return with_store(args, "unlock", _unlock, resolve_user=True)


def _unlock(config, store, args) -> int:
    lock = store.user_lock(args.user)
    unlocked = store.unlock_user(args.user)
    # The failures behind a guessing lock go too, or the next wrong code
    # would lock the user again at once.
    cleared = store.clear_passcode_failures(args.user)
    if not unlocked and cleared:
        print(f"{args.user} is not locked; forgot {cleared} passcode failure(s) "
              f"(a passcode pause ends now)")
        return 0
    if not unlocked:
        print(f"{args.user} is not locked", file=sys.stderr)
        return 1
    since = f" (locked {utc_stamp(lock.locked_at)}: {lock.reason})" if lock else ""
    print(f"unlocked {args.user}{since}")
    return 0


def cmd_locks(args) -> int:
    """List users locked after a fraud report or passcode guessing."""
    return with_store(args, "locks", _locks)


def _locks(config, store, args) -> int:
    locks = store.locked_users()
    if not locks:
        print("no locked users")
        return 0
    print(f"{'USER':16} {'LOCKED':24} {'TXID':24} REASON")
    for lock in locks:
        print(f"{lock.username:16} {utc_stamp(lock.locked_at):24} {lock.txid or '-':24} "
              f"{lock.reason}")
    return 0


def add_parsers(sub) -> None:
    """Register ``enroll``, ``devices``, ``bypass``, ``unlock`` and ``locks`` on the CLI's
    subparsers."""
    p = sub.add_parser("enroll", help="create a one-time enrollment link (and QR code) for a user")
    p.add_argument("user", nargs="*", help="looked up in the directory; the entry's stored "
                                           "name is enrolled (several names: by mail)")
    p.add_argument("--no-directory-check", action="store_true",
                   help="enroll the name as given (casefolded) without asking the directory: "
                        "only for users it cannot look up (primary: radius without LDAP)")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.add_argument("--png", metavar="FILE", help="also write the QR code as a PNG image")
    p.add_argument("--ttl", type=float, help="seconds the link stays valid (default: "
                                             "approval.enrollment_ttl; by mail: "
                                             "mail.link_validity_days)")
    p.add_argument("--no-qr", action="store_true", help="print the link only")
    from pushproxy.rollout.commands import add_enroll_arguments

    add_enroll_arguments(p)
    p.set_defaults(func=cmd_enroll)
    devices = sub.add_parser("devices", help="list or revoke enrolled devices")
    dsub = devices.add_subparsers(dest="devices_command", required=True)
    p = dsub.add_parser("list", help="list devices")
    p.add_argument("user", nargs="?", type=str.casefold)
    p.add_argument("--all", action="store_true", help="include revoked devices")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.set_defaults(func=cmd_devices_list)
    p = dsub.add_parser("revoke", help="revoke a device")
    p.add_argument("device_id")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.set_defaults(func=cmd_devices_revoke)
    p = sub.add_parser("bypass", help="issue one-time bypass codes for a user (shown once)")
    p.add_argument("user", type=str.casefold)
    p.add_argument("--count", "-n", type=whole_number(1, MAX_BYPASS_CODES), default=5,
                   help="how many codes (default %(default)s)")
    p.add_argument("--ttl", type=seconds(), default=BYPASS_TTL,
                   help="seconds the codes stay valid (default %(default)g, 7 days)")
    p.add_argument("--replace", action="store_true",
                   help="delete the user's earlier codes first")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.set_defaults(func=cmd_bypass)
    p = sub.add_parser("unlock", help="lift the lock a fraud report or passcode guessing "
                                      "put on a user")
    p.add_argument("user", type=str.casefold)
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.set_defaults(func=cmd_unlock)
    p = sub.add_parser("locks", help="list users locked after a fraud report or passcode "
                                     "guessing")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.set_defaults(func=cmd_locks)
