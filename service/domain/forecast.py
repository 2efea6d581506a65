"""The forecast: when the tier is next evaluated, what it would become, how far the penalty is.

It answers from an OA's state brought to `now` (`fold.advance` first) as if the
next evaluation ran on today's numbers, with the rules of docs/rules.md#tier-daily-quota: the
wait of 7 days after a tier change, the first evaluation on day D+8, one step
up or down by quality_7d and sent-OK, the penalty beyond T negatives today. It
changes nothing and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from service.domain.state import OAState, Policy
from service.domain.windows import day_start


@dataclass(frozen=True, slots=True)
class Forecast:
    next_evaluation_at: datetime | None
    """The day change at which the tier may next move; None before the OA's first send."""
    projected_daily_quota: int | None
    """The daily quota that evaluation would give on today's numbers (None: unlimited)."""
    negatives_today: int
    negatives_before_penalty: int | None
    """Negatives that may still arrive today before the penalty; None: no penalty (an
    unlimited tier)."""


def next_evaluation(state: OAState, now: datetime, policy: Policy) -> datetime | None:
    """When the next tier evaluation may run: a day change after the wait and D+8."""
    if state.first_send_day is None:
        return None
    t = policy.thresholds
    due = state.first_send_day + t.first_evaluation_days
    if state.tier_changed_day is not None:
        due = max(due, state.tier_changed_day + t.wait_days)
    due = max(due, policy.day(now) + 1)
    return day_start(date.fromordinal(due), policy.zone)


def forecast(state: OAState, now: datetime, policy: Policy) -> Forecast:
    """The OA's forecast at `now`."""
    today = policy.day(now)
    _, level = state.tier_level(now, policy.thresholds)
    move = state.tier_move(level, state.sent_ok.total(today - 6, today), policy.thresholds)
    threshold = state.penalty_threshold(policy)
    negatives = state.negatives_by_day.get(today)
    return Forecast(
        next_evaluation_at=next_evaluation(state, now, policy),
        projected_daily_quota=state.daily_quota if move is None else move[0],
        negatives_today=negatives,
        negatives_before_penalty=None if threshold is None else max(0, threshold - negatives),
    )
