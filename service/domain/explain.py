"""A decision of `zns.decisions` in one sentence, for people: the dashboard shows it
beside each decision, and a notification carries it (Slack's `text`).

A pure function of the record as JSON, so that an operator need not know the rule
names; the figures in the sentence are the decision's own `before`, `after` and
`inputs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _quota(value: Any) -> str:
    if value is None:
        return "unlimited"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


_QUOTA_SOURCES = {
    "zalo_change_oa_daily_quota": "Zalo's webhook changed",
    "zalo_send_quota": "Zalo's answer to a send showed a change of",
    "sync": "A sync of Zalo's values changed",
}
"""Who told zns-gate of a new daily quota, by the rule of the `tier` decision."""


def _tier(decision: Mapping[str, Any]) -> str:
    rule = str(decision.get("rule", ""))
    before, after = _quota(decision.get("before")), _quota(decision.get("after"))
    inputs = decision.get("inputs") or {}
    if rule.startswith("evaluation"):
        level = inputs.get("level_7d", "unknown")
        return (
            f"The weekly evaluation moved the daily quota from {before} to {after} "
            f"(7-day quality {level}, judged on {inputs.get('basis', 'the proxy')})."
        )
    source = _QUOTA_SOURCES.get(rule, f"A record ({rule}) changed")
    return f"{source} the daily quota from {before} to {after}."


def _penalty(decision: Mapping[str, Any]) -> str:
    inputs = decision.get("inputs") or {}
    return (
        f"{inputs.get('negatives_today', 'Too many')} negatives today went beyond the "
        f"threshold of {inputs.get('threshold', 'T')}: the daily quota dropped one step, from "
        f"{_quota(decision.get('before'))} to {_quota(decision.get('after'))}."
    )


def _quality(decision: Mapping[str, Any]) -> str:
    inputs = decision.get("inputs") or {}
    window = str(decision.get("rule", "")).removeprefix("proxy_").removeprefix("template_proxy_")
    counts = ""
    if "delivered" in inputs and "negatives" in inputs:
        counts = f" ({inputs['negatives']} negatives of {inputs['delivered']} delivered)"
    template = decision.get("template_id")
    whose = f"Template {template}'s" if template else "The OA's"
    return (
        f"{whose} proxy quality over {window} went from {decision.get('before')} to "
        f"{decision.get('after')}{counts}."
    )


def explain(decision: Mapping[str, Any]) -> str:
    """One sentence saying what a decision of `zns.decisions` changed and why."""
    kind = decision.get("kind")
    rule = str(decision.get("rule", ""))
    template = decision.get("template_id")
    subject = f"Template {template}" if template else "The OA"
    if kind == "tier":
        return _tier(decision)
    if kind == "penalty":
        return _penalty(decision)
    if kind == "quality":
        return _quality(decision)
    if kind == "suspension":
        if decision.get("after"):
            return f"The OA was suspended ({rule}): nothing is granted until it is resumed."
        return f"The OA's suspension was lifted ({rule})."
    if kind == "pause":
        return f"{subject} went from {decision.get('before')} to {decision.get('after')} ({rule})."
    if kind == "template":
        return (
            f"{subject} changed from {decision.get('before')} to {decision.get('after')} ({rule})."
        )
    if kind == "warning":
        return _warning(rule, decision.get("inputs") or {})
    if kind == "token":
        return f"The OA's Zalo token is {decision.get('after')} ({rule}): store a new one."
    return f"{subject}: {kind} changed from {decision.get('before')} to {decision.get('after')}."


def _warning(rule: str, inputs: Mapping[str, Any]) -> str:
    """A warning names what is coming before Zalo acts (docs/notifications.md#warnings)."""
    if rule == "penalty_near":
        return (
            f"Warning penalty_near: {inputs.get('negatives_today')} negatives today; above "
            f"{inputs.get('threshold')} the daily quota drops one step."
        )
    if rule == "tier_down_likely":
        return (
            f"Warning tier_down_likely: the next evaluation ({inputs.get('next_evaluation_at')}) "
            f"projects the daily quota going from {_quota(inputs.get('daily_quota'))} to "
            f"{_quota(inputs.get('projected_daily_quota'))}."
        )
    if rule == "token_expiring":
        return (
            f"Warning token_expiring: the Zalo refresh token expires at "
            f"{inputs.get('refresh_expires_at')}; connect the OA again before then."
        )
    return f"Warning {rule}."
