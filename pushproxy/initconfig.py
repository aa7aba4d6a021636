"""``pushproxy init``: a minimal config that starts, from a few answers or flags.

An admin's first hour should not be spent trimming the full reference
(config.example.yaml). ``init`` asks for (or takes as flags) the directory,
its base DN and service account, the first gateway and the public URL; it
writes ``config.yaml``, the service account's password and a generated RADIUS
secret (files of mode 0600), checks the result the way ``serve`` would, and
prints the next three commands. It never overwrites a file without --force.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import pwd
import re
import secrets as secrets_mod
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_DIR = "/etc/pushproxy"
SERVICE_USER = "pushproxy"  # systemd/pushproxy.sysusers
FILTERS = {
    "openldap": "(&(objectClass=person)(uid={username}))",
    "ad": "(&(objectClass=user)(sAMAccountName={username}))",
}


class InitError(Exception):
    """An answer is unusable; the message says which and why."""


@dataclass(frozen=True)
class Answers:
    """Everything init needs, checked."""

    ldap_url: str
    base_dn: str
    bind_dn: str
    bind_password: str
    gateway: str  # an address or CIDR network
    gateway_name: str
    public_url: str
    directory: str  # openldap | ad
    ca_file: str | None
    radius_listen: str
    approval_listen: str
    database: str
    audit: str


# (field, flag, question, check) in the order they are asked
QUESTIONS = (
    ("ldap_url", "--ldap-url", "Directory server URL (ldaps://dc1.example.com)", "_url"),
    ("base_dn", "--base-dn", "Base DN where users live (ou=people,dc=example,dc=com)", "_text"),
    ("bind_dn", "--bind-dn", "Service account DN that searches (cn=svc-pushproxy,...)", "_text"),
    ("gateway", "--gateway", "First gateway's (VPN/NAS) IP address or network", "_network"),
    ("public_url", "--public-url", "URL phones reach the approval API at "
                                   "(https://mfa.example.com)", "_public_url"),
)


def _text(value: str) -> str:
    if not value.strip():
        raise InitError("must not be empty")
    if '"' in value or "\n" in value:
        raise InitError("must not contain quotes or line breaks")
    return value.strip()


def _url(value: str) -> str:
    value = _text(value)
    parts = urlsplit(value)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise InitError(f"{value!r} is not an ldap:// or ldaps:// URL")
    return value


def _network(value: str) -> str:
    value = _text(value)
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise InitError(f"{value!r} is not an IP address or network") from None
    return value


def _public_url(value: str) -> str:
    value = _text(value).rstrip("/")
    if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname:
        raise InitError(f"{value!r} is not an https:// URL")
    return value


def gateway_secret() -> str:
    """A new RADIUS shared secret: 32 URL-safe characters (192 bits), never a leading "-".

    Admins paste it into command lines (``radclient ... auth SECRET``, radtest):
    one starting with "-" is taken for options there (getopt permutes), and the
    request is never sent -- one secret in 64 did that."""
    while True:
        secret = secrets_mod.token_urlsafe(24)
        if not secret.startswith("-"):
            return secret


def gather(args, ask=input, ask_secret=getpass.getpass, interactive=None) -> Answers:
    """The answers from the flags, asking for the missing ones when interactive."""
    interactive = sys.stdin.isatty() if interactive is None else interactive
    values, problems = {}, []
    for name, flag, question, check in QUESTIONS:
        raw = getattr(args, name)
        checker = globals()[check]
        while True:
            if raw is None and interactive:
                raw = ask(f"{question}: ")
            if raw is None:
                problems.append(f"{flag}: missing (no terminal to ask on)")
                break
            try:
                values[name] = checker(raw)
                break
            except InitError as exc:
                if not interactive or getattr(args, name) is not None:
                    problems.append(f"{flag}: {exc}")
                    break
                print(f"  {exc}", file=sys.stderr)
                raw = None
    password = None
    if args.bind_password_env:
        password = os.environ.get(args.bind_password_env)
        if not password:
            problems.append(f"--bind-password-env: ${args.bind_password_env} is not set")
    elif args.bind_password_file:
        try:
            password = Path(args.bind_password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            problems.append(f"--bind-password-file: cannot read {args.bind_password_file}: "
                            f"{exc.strerror}")
    elif interactive:
        password = ask_secret("Service account password (not shown): ")
    else:
        problems.append("--bind-password-env or --bind-password-file: missing (the service "
                        "account's password; never on the command line)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", args.gateway_name):
        problems.append("--gateway-name: letters, digits, '.', '_', '-' only (it names a file)")
    ca_file = os.path.abspath(args.ca_file) if args.ca_file else None
    if password is not None and not password:
        problems.append("the service account's password is empty")
    if problems:
        raise InitError("\n".join(problems))
    return Answers(
        ldap_url=values["ldap_url"], base_dn=values["base_dn"], bind_dn=values["bind_dn"],
        bind_password=password, gateway=values["gateway"], gateway_name=args.gateway_name,
        public_url=values["public_url"], directory=args.directory, ca_file=ca_file,
        radius_listen=args.radius_listen, approval_listen=args.approval_listen,
        database=args.database, audit=args.audit_path)


def render(a: Answers) -> str:
    """The config text: only what differs from the defaults, with why in comments."""
    ca = f'  ca_file: "{a.ca_file}"\n' if a.ca_file else \
        "  # ca_file: /etc/pushproxy/ca.pem   # the directory's CA (default: system store)\n"
    return f"""\
# Written by `pushproxy init`. Every other setting has its default; the full
# reference with every key is config.example.yaml. Check with:
#   pushproxy check-config config.yaml
radius:
  listen: ["{a.radius_listen}"]
  clients:
    - name: {a.gateway_name}
      address: {a.gateway}
      secret_file: secrets/{a.gateway_name}.secret
      # Set the same secret on the gateway, and its RADIUS timeout x (retries
      # + 1) above 65 s (check-config prints the figure): see docs/gateways/.

ldap:
  servers: ["{a.ldap_url}"]
{ca}  bind_dn: "{a.bind_dn}"
  bind_password_file: secrets/ldap-bind.secret
  user_base: "{a.base_dn}"
  user_filter: "{FILTERS[a.directory]}"

push:
  timeout: 60

approval:
  listen: "{a.approval_listen}"
  # Phones reach this URL; put a TLS reverse proxy in front (docs/publishing.md).
  public_url: "{a.public_url}"
  database: {a.database}

audit:
  path: {a.audit}
"""


def _loopback(host: str | None) -> bool:
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return host == "localhost"


def _owner() -> tuple[int, int] | None:
    """The service user's uid/gid when we are root and it exists (files it must read)."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid


def _write(path: Path, text: str, mode: int, owner) -> None:
    """Create ``path`` with ``mode`` from the start (never briefly readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def cmd_init(args) -> int:
    """Write config.yaml and its two secret files, check them, print the next steps."""
    folder = Path(args.dir)
    config = folder / "config.yaml"
    secret_dir = folder / "secrets"
    targets = [config, secret_dir / f"{args.gateway_name}.secret",
               secret_dir / "ldap-bind.secret"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.force:
        print("init: refusing to overwrite " + ", ".join(existing) + " (use --force)",
              file=sys.stderr)
        return 1
    try:
        answers = gather(args)
    except InitError as exc:
        print("init: cannot write a config:", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 1
    owner = _owner()
    folder.mkdir(parents=True, exist_ok=True)
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    if owner is not None:
        os.chown(secret_dir, *owner)
    radius_secret = gateway_secret()
    _write(targets[1], radius_secret + "\n", 0o600, owner)
    _write(targets[2], answers.bind_password + "\n", 0o600, owner)
    # The config holds no secret; the service reads it through its group.
    group = (0, owner[1]) if owner is not None else None
    _write(config, render(answers), 0o640 if group else 0o600, group)
    from pushproxy.config import load_config_or_report

    loaded = load_config_or_report(config)
    print(f"Wrote {config} and, mode 0600, {targets[2]} and {targets[1]}.")
    print(f"The RADIUS secret for {answers.gateway_name} ({answers.gateway}) is in "
          f"{targets[1]}:\n  {radius_secret}\nEnter it on the gateway, with a RADIUS timeout "
          "x (retries + 1) above 65 s (docs/gateways/).")
    parts = urlsplit(answers.ldap_url)
    if parts.scheme == "ldap" and not _loopback(parts.hostname):
        print(f"Note: {answers.ldap_url} is plain LDAP: user passwords would cross the network "
              "in clear text. Use ldaps:// or add `start_tls: true` under ldap:.")
    if loaded is None:
        print("The config has problems (above): fix them, then run the steps below.")
    print(f"""
Next:
  1. pushproxy test-connection --config {config}
       (directory, TLS, service account, store and public URL, step by step)
  2. pushproxy serve --config {config}
       (or under systemd: docs/systemd.md, then systemctl enable --now pushproxy)
  3. pushproxy enroll USER --config {config}
       (a one-time link and QR code for USER's phone)""")
    return 0 if loaded is not None else 1


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``init`` on the CLI's subparsers."""
    p = sub.add_parser(
        "init", help="write a minimal config.yaml and its secret files (asks, or takes flags)",
        description="Write a minimal config that starts: asks for what is not given as a "
                    "flag (when run on a terminal). Secrets go to files of mode 0600, never "
                    "on the command line.")
    p.add_argument("--dir", default=DEFAULT_DIR,
                   help="folder for config.yaml and secrets/ (default %(default)s)")
    for name, flag, question, _ in QUESTIONS:
        p.add_argument(flag, dest=name, help=question)
    p.add_argument("--directory", choices=sorted(FILTERS), default="openldap",
                   help="how users are found: uid (openldap) or sAMAccountName (ad); "
                        "default %(default)s")
    p.add_argument("--ca-file", help="CA certificate(s) of the directory (default: the "
                                     "system's trust store)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--bind-password-env", metavar="VAR",
                        help="read the service account's password from this variable")
    secret.add_argument("--bind-password-file", metavar="FILE",
                        help="read the service account's password from this file")
    p.add_argument("--gateway-name", default="vpn-gw-1",
                   help="the gateway's name (shown on the phone); default %(default)s")
    p.add_argument("--radius-listen", default="0.0.0.0:1812", help="default %(default)s")
    p.add_argument("--approval-listen", default="127.0.0.1:8443",
                   help="default %(default)s (behind a reverse proxy)")
    p.add_argument("--database", default="/var/lib/pushproxy/pushproxy.db",
                   help="default %(default)s (the unit's StateDirectory)")
    p.add_argument("--audit-path", default="/var/log/pushproxy/audit.jsonl",
                   help="default %(default)s (the unit's LogsDirectory)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=cmd_init)
    return p
