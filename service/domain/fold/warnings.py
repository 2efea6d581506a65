"""The warnings (docs/notifications.md): decisions of kind `warning` that say a penalty or
a step down is near, before Zalo's rules act, once per episode.

- `penalty_near`: today's negatives reach half of the penalty threshold T; once per OA
  and day (`OAState.warned_penalty_day`).
- `tier_down_likely`: the forecast projects a step down at the next evaluation; once
  until the projection is no longer a step down (`OAState.warned_tier_down`).

The episode memory is in the OA's core state, so a snapshot keeps it and a re-fold of the
same records repeats the same warnings with the same decision ids. No I/O.
"""

from __future__ import annotations

from service.domain.fold.context import Run, iso
from service.domain.forecast import forecast

NEAR_SHARE = 0.5
"""`penalty_near` fires when today's negatives reach this share of T."""


def check_warnings(run: Run) -> None:
    """The warnings a record made due, each looked at only when what it reads may have
    moved: today's negatives for `penalty_near`; for `tier_down_likely` a decision of
    the record (a level or the tier changed: only those turn a projection into a step
    down or back), since a forecast at every receipt would cost more than its fold."""
    if run.counts_changed:
        _penalty_near(run)
    if any(change.kind != "warning" for change in run.changes):
        _tier_down_likely(run)


def _penalty_near(run: Run) -> None:
    state = run.state
    today = state.today
    threshold = state.penalty_threshold(run.policy)
    if today is None or threshold is None or state.warned_penalty_day == today:
        return
    negatives = state.negatives_by_day.get(today)
    if negatives == 0 or negatives < NEAR_SHARE * threshold:
        return
    state.warned_penalty_day = today
    if state.penalty_day == today:
        return  # the penalty itself came first (or Zalo lowered the quota): no warning
    run.change(
        "warning",
        "penalty_near",
        state.daily_quota,
        state.rule_set().step_down(state.daily_quota),
        run.now,
        negatives_today=negatives,
        threshold=threshold,
        near_share=NEAR_SHARE,
        day_start_quota=state.day_start_quota,
    )


def _tier_down_likely(run: Run) -> None:
    state = run.state
    ahead = forecast(state, run.now, run.policy)
    daily, projected = state.daily_quota, ahead.projected_daily_quota
    # A step down: a finite quota below today's (unlimited counts as above any number).
    down = projected is not None and (daily is None or projected < daily)
    if not down:
        state.warned_tier_down = False  # the episode ends: a later step down warns again
        return
    if state.warned_tier_down:
        return
    state.warned_tier_down = True
    run.change(
        "warning",
        "tier_down_likely",
        daily,
        projected,
        run.now,
        daily_quota=daily,
        projected_daily_quota=projected,
        next_evaluation_at=None
        if ahead.next_evaluation_at is None
        else iso(ahead.next_evaluation_at.astimezone(run.policy.zone)),
        negatives_today=ahead.negatives_today,
    )
