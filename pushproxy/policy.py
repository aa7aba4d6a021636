"""Context-aware login policy: ordered YAML rules decide allow, push (and how) or deny.

A rule matches when every condition it names holds (clients, networks, groups,
users, days, hours); a condition it leaves out matches anything. The first
matching rule wins; no match means a push with the default verification.
Everything here is pure: `evaluate` takes the clock as ``LoginContext.now``, so
the engine, ``pushproxy policy explain`` and the tests all see the same answer.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import sys
import time
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

DEFAULT_CONFIG = "/etc/pushproxy/config.yaml"
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAYS = {**{d: i for i, d in enumerate(_DAY_NAMES)},
         **{d: i for i, d in enumerate(("monday", "tuesday", "wednesday", "thursday",
                                         "friday", "saturday", "sunday"))}}
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_CONDITIONS = ("clients", "networks", "groups", "users", "days", "hours")


class Action(enum.Enum):
    """What a matching rule does with a login whose password was right."""

    ALLOW = "allow"  # no push: a trusted network, an exempt service account
    PUSH = "push"
    DENY = "deny"  # reject without bothering the phone


class Verification(enum.Enum):
    """How a push is confirmed (see issue 5, item 1)."""

    NONE = "none"  # plain approve/deny
    NUMBER_MATCH = "number_match"
    CODE_TO_LOGIN = "code_to_login"


@dataclass(frozen=True)
class Rule:
    """One policy rule; a condition that is None matches every login.

    ``days`` and ``hours`` are each checked against the login's local time: with
    days [fri] and hours 22:00-06:00 a rule covers early Friday morning and
    Friday night, not the small hours of Saturday.
    """

    name: str
    action: Action
    clients: frozenset[str] | None = None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
    groups: frozenset[str] | None = None  # normalized DNs; the user must be in one
    users: frozenset[str] | None = None  # casefolded
    days: frozenset[int] | None = None  # 0 = Monday, in the policy's time zone
    hours: tuple[int, int] | None = None  # minutes [start, end); start > end wraps midnight
    verification: Verification | None = None  # PUSH only; None: the policy's default
    # PUSH only: presence (a passkey assertion with user verification, docs/presence.md)
    # required for an approval; None: the policy's require_user_verification
    user_verification: bool | None = None


#: What an Approve from a device without a passkey gets when presence is required.
UV_FALLBACKS = ("refuse", "allow")


@dataclass(frozen=True)
class Policy:
    """The validated ``policy:`` block; the default one pushes every login."""

    rules: tuple[Rule, ...] = ()
    default_verification: Verification = Verification.NONE
    timezone: str = "UTC"  # an IANA zoneinfo key
    remember_minutes: float = 0  # 0: remembered logins are off
    require_user_verification: bool = False  # the default of rules that do not say
    # a device that has no passkey (the CLI authenticator, a browser without a
    # platform authenticator): "refuse" its Approve, or "allow" it, audited as
    # presence not_verified
    user_verification_fallback: str = "refuse"


@dataclass(frozen=True)
class LoginContext:
    """What the policy may look at for one login (the password was already right).

    ``client_ip`` is the Calling-Station-Id, which gateways fill with an IP, a MAC
    address or anything at all: whatever is not an IP address matches no network.
    ``groups`` are normalized here, so DNs spelled as LDAP returned them still match.
    """

    username: str
    client_name: str
    client_ip: str | None
    groups: frozenset[str] = frozenset()
    now: float = field(default_factory=time.time)
    # The LDAP front end: ``client_ip`` is the application server's address, not
    # the user's. A ``networks`` condition then matches only in a rule whose
    # ``clients`` name this client, i.e. where the admin said which peer it is.
    peer_is_application: bool = False

    def __post_init__(self):
        # None (a directory layer that read no groups) is the same as no groups.
        object.__setattr__(self, "groups",
                           frozenset(_normalize(g) for g in self.groups or ()))


@dataclass(frozen=True)
class PolicyDecision:
    """The policy's answer; ``verification`` is None unless ``action`` is PUSH.

    ``rule`` is the matching rule's name (None: no rule matched, the default), and
    ``reasons`` says, for each earlier rule in order, why it did not match.
    ``rule_sets_verification`` tells whether the matching rule named its own
    verification (which then beats a RADIUS client's setting); ``names_client``
    whether its ``clients`` name the login's client.
    """

    action: Action
    verification: Verification | None
    rule: str | None
    reasons: tuple[str, ...] = ()
    rule_sets_verification: bool = False
    # The matching rule names the login's client in ``clients``: only then do
    # remembered logins apply to an application peer (the LDAP front end).
    names_client: bool = False
    user_verification: bool = False  # PUSH only: presence required (before the client's floor)


def _normalize(dn: str) -> str:
    # Imported late: config.py imports this module and ldapnames imports config.
    from pushproxy.ldapnames import normalize_dn
    return normalize_dn(dn)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _address(text: str | None):
    """The Calling-Station-Id as an IP address, or None when it is not one."""
    try:
        ip = ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack socket must still match 10.0.0.0/8.
    return getattr(ip, "ipv4_mapped", None) or ip


def _misses(rule: Rule, ctx: LoginContext, ip, local: datetime | None) -> list[str]:
    """Every condition of ``rule`` that this login fails (empty: the rule matches).

    ``local`` (the login's local time) and ``ip`` (its Calling-Station-Id as an
    address) are read only by the conditions on them; ``local`` is given
    whenever a rule has days or hours, ``ip`` whenever one has networks."""
    out = []
    if rule.clients is not None and ctx.client_name not in rule.clients:
        out.append(f"client {ctx.client_name!r} is not one of {', '.join(sorted(rule.clients))}")
    if rule.networks is not None:
        nets = ", ".join(map(str, rule.networks))
        if ctx.peer_is_application and (rule.clients is None
                                        or ctx.client_name not in rule.clients):
            out.append(f"the peer {ctx.client_ip or '?'} is an application server, not the "
                       f"user: networks apply to client {ctx.client_name!r} only in a rule "
                       "whose clients name it")
        elif ip is None:
            out.append(f"Calling-Station-Id {ctx.client_ip!r} is not an IP address"
                       if ctx.client_ip else "no Calling-Station-Id (client IP) was sent")
        elif not any(ip in net for net in rule.networks):
            out.append(f"client IP {ip} is not in {nets}")
    if rule.groups is not None and not rule.groups & ctx.groups:
        out.append(f"user is in none of the groups {'; '.join(sorted(rule.groups))}")
    if rule.users is not None and ctx.username.casefold() not in rule.users:
        out.append(f"user {ctx.username!r} is not one of {', '.join(sorted(rule.users))}")
    if rule.days is not None and local.weekday() not in rule.days:
        days = ", ".join(_DAY_NAMES[d] for d in sorted(rule.days))
        out.append(f"{_DAY_NAMES[local.weekday()]} is not one of {days}")
    if rule.hours is not None:
        start, end = rule.hours
        minute = local.hour * 60 + local.minute
        inside = start <= minute < end if start < end else minute >= start or minute < end
        if not inside:
            out.append(f"{_hhmm(minute)} is outside {_hhmm(start)}-{_hhmm(end)}")
    return out


def evaluate(policy: Policy, ctx: LoginContext) -> PolicyDecision:
    """The first rule whose conditions all hold decides; no match: push, default verification."""
    rules = policy.rules
    # The local time and the address only when a rule looks at them: every login
    # asks, and parsing both was a tenth of the policy's own cost (issue 16).
    local = datetime.fromtimestamp(ctx.now, zoneinfo.ZoneInfo(policy.timezone)) \
        if any(r.days is not None or r.hours is not None for r in rules) else None
    ip = _address(ctx.client_ip) if any(r.networks is not None for r in rules) else None
    reasons = []
    for rule in rules:
        misses = _misses(rule, ctx, ip, local)
        if not misses:
            verification = None
            presence = False
            if rule.action is Action.PUSH:
                verification = rule.verification or policy.default_verification
                presence = policy.require_user_verification if rule.user_verification is None \
                    else rule.user_verification
            return PolicyDecision(rule.action, verification, rule.name, tuple(reasons),
                                  rule_sets_verification=rule.verification is not None,
                                  names_client=bool(rule.clients
                                                    and ctx.client_name in rule.clients),
                                  user_verification=presence)
        reasons.append(f"{rule.name}: " + "; ".join(misses))
    return PolicyDecision(Action.PUSH, policy.default_verification, None, tuple(reasons),
                          user_verification=policy.require_user_verification)


def interesting_groups(policy: Policy) -> frozenset[str]:
    """Every (normalized) group DN a rule names: the LDAP layer checks these for the user."""
    return frozenset(g for rule in policy.rules for g in (rule.groups or ()))


def explain(policy: Policy, ctx: LoginContext, requires=None,
            client_verification: Verification | None = None) -> str:
    """A multi-line, human account of how ``ctx`` goes through ``policy``.

    ``requires`` is the client's `pushproxy.sensitivity.ClientRequirements`
    (None: nothing), ``client_verification`` its ``verification`` setting.
    """
    decision = evaluate(policy, ctx)
    local = datetime.fromtimestamp(ctx.now, zoneinfo.ZoneInfo(policy.timezone))
    groups = "; ".join(sorted(ctx.groups)) or "(none)"
    lines = [f"Login: user {ctx.username!r} via RADIUS client {ctx.client_name!r}, "
             f"Calling-Station-Id {ctx.client_ip or '(none)'}",
             f"Groups: {groups}",
             f"Local time: {_DAY_NAMES[local.weekday()]} {local:%Y-%m-%d %H:%M} "
             f"{policy.timezone} ({local:%Z})",
             "Rules (first match wins):" if policy.rules else "Rules: none"]
    for i, rule in enumerate(policy.rules):
        if i < len(decision.reasons):
            why = decision.reasons[i][len(rule.name) + 2:]  # drop "name: "
            lines.append(f"  {i + 1}. {rule.name}: no match: {why}")
        elif rule.name == decision.rule:
            how = f" ({decision.verification.value})" if decision.verification else ""
            lines.append(f"  {i + 1}. {rule.name}: MATCH -> {rule.action.value}{how}")
        else:
            lines.append(f"  {i + 1}. {rule.name}: not checked (an earlier rule matched)")
    where = f"rule {decision.rule!r}" if decision.rule else "no rule matched: the default"
    if decision.action is Action.PUSH:
        from pushproxy import sensitivity

        needs = sensitivity.needs_for(decision, requires or sensitivity.ClientRequirements(),
                                      client_verification)
        lines.append(f"Result: push with {needs.verification.value} verification ({where})")
        if needs.raised_by_client:
            lines.append(f"Client sensitivity: client {ctx.client_name!r} requires "
                         f"{needs.verification.value} (require_verification), whatever the "
                         "rules say")
        if needs.user_verification:
            who = (f"client {ctx.client_name!r} requires it (require_user_verification)"
                   if needs.presence_by_client else
                   f"{where} requires it (require_user_verification)")
            fallback = ("refused" if policy.user_verification_fallback == "refuse" else
                        "allowed, audited as presence not_verified")
            lines.append(f"Presence: Approve needs a passkey with user verification (face or "
                         f"fingerprint): {who}; a device without a passkey: {fallback} "
                         "(policy.user_verification_fallback)")
        else:
            lines.append("Presence: not required")
        if policy.remember_minutes and ctx.peer_is_application and not decision.names_client:
            lines.append("Remembered login: off for this client (its peer is an application "
                         "server; a rule whose clients name it turns it on)")
        elif policy.remember_minutes:
            lines.append(f"Remembered login: after an approved push, this user from the same "
                         f"Calling-Station-Id skips the push for {policy.remember_minutes:g} "
                         "minutes")
    else:
        done = "accepted without a push" if decision.action is Action.ALLOW \
            else "rejected without a push"
        lines.append(f"Result: {decision.action.value}: {done} ({where})")
    return "\n".join(lines)


# --- parsing ---------------------------------------------------------------------------


def parse_policy(checker, value, path: str = "policy", push_default: str = "none",
                 client_names: set[str] | None = None) -> Policy | None:
    """Validate the ``policy:`` block with ``checker`` (a `pushproxy.checker.Checker`).

    A missing block (None) gives the default policy. Every problem is recorded
    with its path; the result is None when there was any. ``push_default`` is
    the verification used when ``default_verification`` is absent, and rules'
    ``clients`` must be in ``client_names`` when that is given.
    """
    c, before = checker, len(checker.problems)
    if value is None:
        return Policy(default_verification=Verification(push_default))
    m = c.mapping(value, path, optional=("timezone", "default_verification",
                                         "remember_minutes", "rules",
                                         "require_user_verification",
                                         "user_verification_fallback"))
    if m is None:
        return None
    tz = c.string(m, "timezone", f"{path}.timezone", required=False) or "UTC"
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        c.problem(f"{path}.timezone", f"unknown time zone {tz!r} (use an IANA name such as "
                                      "UTC or Europe/Berlin)")
    default = c.choice(m, "default_verification", f"{path}.default_verification",
                       [v.value for v in Verification], push_default)
    remember = c.number(m, "remember_minutes", f"{path}.remember_minutes", 0,
                        minimum=0, maximum=1440)
    presence = c.boolean(m, "require_user_verification", f"{path}.require_user_verification",
                         False)
    fallback = c.choice(m, "user_verification_fallback", f"{path}.user_verification_fallback",
                        list(UV_FALLBACKS), "refuse")
    items = c.seq(m, "rules", f"{path}.rules", [])
    rules = [_rule(c, item, f"{path}.rules[{i}]", client_names) for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name in seen:
            c.problem(f"{path}.rules[{i}].name",
                      f"rule name {name!r} is already used by {path}.rules[{seen[name]}]")
        elif isinstance(name, str):
            seen[name] = i
        # Judged by the keys written, not the values parsed, so a rule whose only
        # condition is broken is not also called a catch-all.
        if isinstance(item, dict) and not set(item) & set(_CONDITIONS) and i < len(items) - 1:
            c.problem(f"{path}.rules[{i}]",
                      f"has no condition, so it matches every login: unreachable rules after "
                      f"a catch-all ({path}.rules[{i + 1}] onwards); make it the last rule")
    if len(c.problems) > before:
        return None
    return Policy(rules=tuple(rules), default_verification=Verification(default),
                  timezone=tz, remember_minutes=remember, require_user_verification=presence,
                  user_verification_fallback=fallback)


def _strings(c, m: dict, key: str, path: str) -> list[tuple[str, str]] | None:
    """(path, text) of each entry of an optional, non-empty list of strings."""
    if key not in m:
        return None
    out = []
    # Empty lists are refused: "matches nobody" and "matches anybody" are both plausible.
    for j, item in enumerate(c.seq(m, key, f"{path}.{key}", [], min_len=1)):
        text = c.string({key: item}, key, f"{path}.{key}[{j}]")
        if text is not None:
            out.append((f"{path}.{key}[{j}]", text.strip()))
    return out


def _rule(c, value, path: str, client_names: set[str] | None) -> Rule | None:
    m = c.mapping(value, path, required=("name", "action"),
                  optional=_CONDITIONS + ("verification", "require_user_verification"))
    if m is None:
        return None
    name = c.string(m, "name", f"{path}.name", required=False) or ""
    action = None
    if "action" in m:
        action = Action(c.choice(m, "action", f"{path}.action", [a.value for a in Action],
                                 "push"))
    verification = None
    if "verification" in m:
        verification = Verification(c.choice(m, "verification", f"{path}.verification",
                                             [v.value for v in Verification], "none"))
        if action is not None and action is not Action.PUSH:
            c.problem(f"{path}.verification", f"only applies to action push (an "
                                              f"{action.value} rule sends no push)")
    presence = None
    if "require_user_verification" in m:
        presence = c.boolean(m, "require_user_verification",
                             f"{path}.require_user_verification", False)
        if action is not None and action is not Action.PUSH:
            c.problem(f"{path}.require_user_verification",
                      f"only applies to action push (an {action.value} rule sends no push)")
    clients = _strings(c, m, "clients", path)
    for where, text in clients or ():
        if client_names is not None and text not in client_names:
            known = ", ".join(sorted(client_names)) or "none"
            c.problem(where, f"no RADIUS client is named {text!r} (configured: {known})")
    networks = None
    if "networks" in m:
        items = c.seq(m, "networks", f"{path}.networks", [], min_len=1)
        networks = tuple(c.network(item, f"{path}.networks[{j}]") for j, item in enumerate(items))
    groups = _strings(c, m, "groups", path)
    for where, text in groups or ():
        try:
            parse_dn(text, escape=False, strip=True)  # as normalize_dn reads it
        except (LDAPInvalidDnError, ValueError) as exc:
            c.problem(where, f"not a DN like cn=vpn-admins,ou=groups,dc=example,dc=com: {exc}")
    users = _strings(c, m, "users", path)
    days = None
    if "days" in m:
        days = set()
        for j, item in enumerate(c.seq(m, "days", f"{path}.days", [], min_len=1)):
            day = _DAYS.get(item.strip().lower()) if isinstance(item, str) else None
            if day is None:
                c.problem(f"{path}.days[{j}]",
                          f"unknown day {item!r} (use {', '.join(_DAY_NAMES)})")
            else:
                days.add(day)
    hours = _hours(c, m["hours"], f"{path}.hours") if "hours" in m else None
    return Rule(
        name=name, action=action or Action.PUSH, verification=verification,
        user_verification=presence,
        clients=None if clients is None else frozenset(t for _, t in clients),
        networks=networks,
        groups=None if groups is None else frozenset(_normalize(t) for _, t in groups),
        users=None if users is None else frozenset(t.casefold() for _, t in users),
        days=None if days is None else frozenset(days), hours=hours)


def _hours(c, value, path: str) -> tuple[int, int] | None:
    """``"HH:MM-HH:MM"`` as minutes since local midnight; end 24:00 is allowed."""
    match = _HOURS.match(value) if isinstance(value, str) else None
    if match is None:
        c.problem(path, f"must be a quoted \"HH:MM-HH:MM\" window like \"08:00-18:00\" "
                        f"(got {value!r})")
        return None
    h1, m1, h2, m2 = map(int, match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 1440:
        c.problem(path, f"{value!r} is not a time window between 00:00 and 24:00")
        return None
    if start == end % 1440:
        c.problem(path, "starts where it ends; to match the whole day leave hours out")
        return None
    return start, end


# --- command line ----------------------------------------------------------------------


def cmd_explain(args) -> int:
    """CLI handler: print how a sample login goes through the configured policy."""
    from pushproxy.config import load_config_or_report

    config = load_config_or_report(args.config)
    if config is None:
        return 1
    policy = config.policy
    now = time.time()
    if args.at:
        try:
            when = datetime.fromisoformat(args.at)
        except ValueError:
            print(f"--at: {args.at!r} is not a time like 2026-11-27T09:30", file=sys.stderr)
            return 2
        if when.tzinfo is None:
            when = when.replace(tzinfo=zoneinfo.ZoneInfo(policy.timezone))
        now = when.timestamp()
    names = {client.name for client in config.radius.clients}
    front = getattr(config, "ldap_front", None)
    # The LDAP front end's peer is the application server (see LoginContext).
    app = front is not None and args.client == front.name
    if app:
        names.add(front.name)
    if args.client not in names:
        print(f"note: no RADIUS client is named {args.client!r} (configured: "
              f"{', '.join(sorted(names))})", file=sys.stderr)
    ctx = LoginContext(args.user, args.client, args.ip, frozenset(args.group), now,
                       peer_is_application=app)
    everyone = getattr(config.radius, "all_clients", config.radius.clients)  # with RadSec's
    client = next((cl for cl in everyone if cl.name == args.client), None)
    requires = front.requires if app else getattr(client, "requires", None)
    print(explain(policy, ctx, requires, getattr(client, "verification", None)))
    if getattr(config, "context", None) is not None:  # location and risk signals (issue 21)
        from pushproxy.contextexplain import explain_context

        print(explain_context(config, ctx))
    return 0


def add_parser(sub) -> None:
    """Register ``policy explain`` on the CLI's subparsers."""
    policy = sub.add_parser("policy", help="inspect the context-aware login policy")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    p = psub.add_parser("explain", help="show which rule a sample login would hit, and why")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="default %(default)s")
    p.add_argument("--user", required=True, help="the RADIUS User-Name")
    p.add_argument("--client", required=True, help="the RADIUS client's name in the config")
    p.add_argument("--ip", help="the Calling-Station-Id (client IP); omit when none is sent")
    p.add_argument("--group", action="append", default=[], metavar="DN",
                   help="a group DN the user is in: the user's groups, as LDAP would report "
                        "them (repeatable; this command does not query LDAP)")
    p.add_argument("--at", metavar="TIME",
                   help="when the login happens, e.g. 2026-11-27T09:30, in the policy's "
                        "time zone unless an offset is given (default: now)")
    p.set_defaults(func=cmd_explain)
