"""``pushproxy policy explain``'s context part: the location, the baseline, the signals.

Reads the configured databases and the user's baseline from the configured
store (read only), then shows each signal with the setting that acts on it
and what the login would get in the end. The same pure functions as the
engine decide (`pushproxy.risk.assess`, `pushproxy.policy.evaluate`).
"""

from __future__ import annotations

import os

from pushproxy.approval.baselinestore import Baseline
from pushproxy.geoip import GeoIPError
from pushproxy.policy import Action, LoginContext, Verification, evaluate
from pushproxy.risk import RiskAction, assess


def _baseline(config, user: str) -> tuple[Baseline, str | None]:
    """The user's stored baseline, or an empty one and why it could not be read."""
    from pushproxy.approval.backends import open_store
    from pushproxy.approval.store import StoreError

    approval = config.approval
    if approval.database == ":memory:":
        return Baseline(user), "the store is in memory: no baseline outside the daemon"
    from pushproxy.approval.backends import is_postgres_url

    if not is_postgres_url(approval.database) and not os.path.exists(approval.database):
        # never create a store just to read it
        return Baseline(user), f"no store at {approval.database} yet"
    try:
        store = open_store(approval.database,
                           password=getattr(approval, "database_password", None))
    except (StoreError, OSError) as exc:
        return Baseline(user), f"cannot open the store: {exc}"
    try:
        return store.user_baseline(user), None
    except StoreError as exc:
        return Baseline(user), f"cannot read the store: {exc}"
    finally:
        store.close()


def _listing(values, limit: int = 8) -> str:
    values = sorted(values, key=str)
    more = f" (+{len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(map(str, values[:limit])) + more if values else "none"


def explain_context(config, ctx: LoginContext) -> str:
    """Lines that show where ``ctx``'s address is, its signals and the rule that used them."""
    from pushproxy.contextcheck import ContextChecks

    lines = []
    try:
        checks = ContextChecks(config.context, timezone=lambda: config.policy.timezone)
    except GeoIPError as exc:
        return f"Location: the database does not open: {exc}"
    location = checks.locate(ctx.client_ip)
    lines.append(f"Location: {location.address or ctx.client_ip or '(no address)'}: "
                 f"{location.label()}")
    risk = config.context.risk
    if risk is None:
        lines.append("Signals: off (no context.baselines / context.signals)")
        return "\n".join(lines)
    if ctx.peer_is_application:
        lines.append("Signals: not assessed (the peer is an application server, not the user)")
        return "\n".join(lines)
    baseline, problem = _baseline(config, ctx.username.casefold())
    if problem:
        lines.append(f"Baseline: {problem}")
    assessment = assess(risk, baseline, location, ctx.now, config.policy.timezone)
    lines.append(f"Baseline: {assessment.detail}; countries {_listing(baseline.countries)}; "
                 f"ASNs {_listing(baseline.asns)}; hours {_listing(baseline.hours)}")
    if not assessment.hits:
        lines.append("Signals: none")
    else:
        lines.append("Signals:")
        for hit in assessment.hits:
            lines.append(f"  {hit.signal.value}: {hit.message} -> {hit.action.value} "
                         f"(context.signals.{hit.signal.value})")
    decision = evaluate(config.policy, ctx)
    where = f"rule {decision.rule!r}" if decision.rule else "the default"
    deciding = assessment.deciding()
    setting = f"context.signals.{deciding.signal.value}" if deciding else ""
    if decision.action is not Action.PUSH:
        lines.append(f"Result with signals: unchanged ({decision.action.value} by {where}; "
                     "signals act on pushes only)")
    elif assessment.action is RiskAction.DENY:
        lines.append(f"Result with signals: deny and alert ({setting}; {where} would push)")
    elif assessment.action is RiskAction.STEP_UP:
        chosen = decision.verification
        if chosen is Verification.NONE:
            lines.append(f"Result with signals: push with number_match verification "
                         f"(stepped up by {setting}; {where} asked for none)")
        else:
            lines.append(f"Result with signals: push with {chosen.value} verification "
                         f"({where}; {setting} asks for no more), no remembered login")
    elif assessment.warnings:
        lines.append("Result with signals: unchanged; the prompt shows: "
                     + " / ".join(assessment.warnings))
    else:
        lines.append("Result with signals: unchanged")
    return "\n".join(lines)
