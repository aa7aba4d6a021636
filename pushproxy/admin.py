"""Admin commands on the approval store: ``enroll``, ``devices list``, ``devices revoke``.

They open the same SQLite database as the daemon (WAL mode, busy timeout), so
they work while the daemon is serving logins; the daemon reads devices from
the store for every login, so a revocation takes effect on the next login.
"""

from __future__ import annotations

import sys
import time

import segno

from pushproxy.approval.service import new_enrollment
from pushproxy.approval.store import SQLiteStore, StoreError
from pushproxy.audit import utc_stamp
from pushproxy.config import ConfigError, load_config

DEFAULT_CONFIG = "/etc/pushproxy/config.yaml"


def _store(args):
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return None, None
    try:
        return config, SQLiteStore(config.approval.database)
    except StoreError as exc:
        print(f"store {config.approval.database}: {exc}", file=sys.stderr)
        return config, None


def cmd_enroll(args) -> int:
    """Create a one-time enrollment link for a user and show it as a QR code."""
    config, store = _store(args)
    if store is None:
        return 1
    ttl = args.ttl or config.approval.enrollment_ttl
    try:
        link = new_enrollment(store, args.user, config.approval.public_url, ttl, time.time())
    finally:
        store.close()
    qr = segno.make(link, error="m")
    if not args.no_qr:
        qr.terminal(out=sys.stdout, compact=True)
    if args.png:
        qr.save(args.png, scale=8, border=4)
    print(f"Enrollment link for {args.user} (valid {ttl / 60:g} minutes, works once):")
    print(link)
    return 0


def cmd_devices_list(args) -> int:
    """List enrolled devices (all users, or one)."""
    config, store = _store(args)
    if store is None:
        return 1
    try:
        devices = store.devices(args.user, include_revoked=args.all)
    finally:
        store.close()
    if not devices:
        print("no devices")
        return 0
    print(f"{'ID':18} {'USER':16} {'NAME':24} {'ENROLLED':24} {'LAST SEEN':24} STATUS")
    for d in devices:
        seen = utc_stamp(d.last_seen) if d.last_seen else "-"
        status = f"revoked {utc_stamp(d.revoked)}" if d.revoked else (
            "web push" if d.push_subscription else "long-poll")
        print(f"{d.id:18} {d.username:16} {d.name[:24]:24} {utc_stamp(d.created):24} "
              f"{seen:24} {status}")
    return 0


def cmd_devices_revoke(args) -> int:
    """Revoke a device: it can no longer see or answer requests."""
    config, store = _store(args)
    if store is None:
        return 1
    try:
        device = store.device(args.device_id)
        revoked = store.revoke_device(args.device_id, time.time())
    finally:
        store.close()
    if not revoked:
        print(f"no active device {args.device_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {device.id} ({device.name}) of {device.username}")
    return 0


def add_parsers(sub) -> None:
    """Register ``enroll`` and ``devices`` on the CLI's subparsers."""
    p = sub.add_parser("enroll", help="create a one-time enrollment link (and QR code) for a user")
    p.add_argument("user")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.add_argument("--png", metavar="FILE", help="also write the QR code as a PNG image")
    p.add_argument("--ttl", type=float, help="seconds the link stays valid "
                                             "(default: approval.enrollment_ttl)")
    p.add_argument("--no-qr", action="store_true", help="print the link only")
    p.set_defaults(func=cmd_enroll)
    devices = sub.add_parser("devices", help="list or revoke enrolled devices")
    dsub = devices.add_subparsers(dest="devices_command", required=True)
    p = dsub.add_parser("list", help="list devices")
    p.add_argument("user", nargs="?")
    p.add_argument("--all", action="store_true", help="include revoked devices")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.set_defaults(func=cmd_devices_list)
    p = dsub.add_parser("revoke", help="revoke a device")
    p.add_argument("device_id")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.set_defaults(func=cmd_devices_revoke)
