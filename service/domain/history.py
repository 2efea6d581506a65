"""What an OA's recent past looks like: hourly counts of its windows, and a decision in words.

The dashboard shows an OA's last 7 days hour by hour and its last decisions,
each with a sentence an operator can read without knowing the rule names.
Both are answered here from plain values (the state's hourly buckets, a
decision record as JSON); nothing here reads the log or the clock. The
hourly series costs one look-up per hour of the span, whatever the state's
size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.domain.state import WINDOW_7D, OAState
from service.domain.windows import HOUR_S, hour_index

HISTORY_HOURS = int(WINDOW_7D.total_seconds()) // HOUR_S
"""The hours an OA's history covers: the 7-day window, to the current hour."""


@dataclass(frozen=True, slots=True)
class Hour:
    """One hour of an OA's history: delivered messages and negative signals (the proxy)."""

    start_s: int
    """The hour's start, seconds since the epoch."""
    delivered: int
    negatives: int


def hourly(state: OAState, now: datetime, hours: int = HISTORY_HOURS) -> list[Hour]:
    """The last `hours` hours up to `now` (the current hour last), empty hours included."""
    last = hour_index(now)
    return [
        Hour(key * HOUR_S, state.delivered.get(key), state.negatives.get(key))
        for key in range(last - hours + 1, last + 1)
    ]


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
    if kind == "token":
        return f"The OA's Zalo token is {decision.get('after')} ({rule}): store a new one."
    return f"{subject}: {kind} changed from {decision.get('before')} to {decision.get('after')}."
