"""Tier and penalty: the day changes (each runs the tier evaluation if it is due, then
forgets what the windows and indexes no longer keep), Zalo's own quota values, which win
over the evaluation, and the penalty of one step down when today's negatives pass 2 % of
the day's quota.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import date, datetime, timedelta

from service.domain.fold.context import Run, iso, to_ms
from service.domain.rules import Quota
from service.domain.state import HOUR_MS, MESSAGE_DAYS, WINDOW_7D, Template
from service.domain.windows import day_start, hour_index, month_index

QUIET_DAYS = 10
"""Days after an OA's last record beyond which a day change only prunes. By then the
windows a tier evaluation reads (the 7 days before midnight) are empty, so it moves
nothing, Zalo's levels are stale, and each prune removes a superset of what the prunes
before it removed: the last day's prune alone leaves the state that walking every day
would. (The reach grows with `zalo_quality_ttl` when that is set to days.) A read of an
idle OA advances a copy over the same gap every time, so the walk must stay short."""


def change_days(run: Run) -> None:
    """Every day change from the state's day to the day of `now`, stamped at its midnight."""
    state = run.state
    day = run.policy.day(run.now)
    if state.today is None:
        state.today = day
        state.day_start_quota = state.daily_quota
    # No record came since `state.today` (a record advances its state first), so the
    # days of a long gap after the first QUIET_DAYS change nothing the last one does
    # not: the walk over years (a far-future clock) stays a bounded number of days.
    reach = max(QUIET_DAYS, run.thresholds.zalo_quality_ttl.days + WINDOW_7D.days + 1)
    quiet_from = state.today + reach
    while state.today < day:
        if state.today >= quiet_from:
            state.today = day - 1
        state.today += 1
        day_change(run, state.today)


def day_change(run: Run, day: int) -> None:
    """00:00 of `day`: the tier evaluation if due, then what resets with the day."""
    stamp = day_start(date.fromordinal(day), run.policy.zone)
    evaluate_tier(run, day, stamp)
    state = run.state
    state.day_start_quota = state.daily_quota
    prune(run, day, stamp)


def evaluate_tier(run: Run, day: int, stamp: datetime) -> None:
    """One step up after a HIGH week with twice the quota sent OK, one down after a LOW
    one; first on the 8th day after the first send, then 7 days after each tier change."""
    state, t = run.state, run.thresholds
    if state.first_send_day is None or day < state.first_send_day + t.first_evaluation_days:
        return
    if state.tier_changed_day is not None and day < state.tier_changed_day + t.wait_days:
        return
    moment = stamp - timedelta(milliseconds=1)  # the 7 days before midnight
    basis, level = state.tier_level(moment, t)
    sent_ok = state.sent_ok.total(day - 7, day - 1)
    quota = state.daily_quota
    move = state.tier_move(level, sent_ok, t)
    if move is None or move[0] == quota:
        return
    new, rule = move
    state.daily_quota = new
    state.tier_changed_day = day
    run.change(
        "tier",
        rule,
        quota,
        new,
        stamp,
        level_7d=level.value,
        basis=basis,
        sent_ok_7d=sent_ok,
        delivered_7d=state.delivered.within(moment, WINDOW_7D),
        negatives_7d=state.negatives.within(moment, WINDOW_7D),
        window_start=iso(stamp - WINDOW_7D),
        window_end=iso(stamp),
        upgrade_needs=None if quota is None else t.upgrade_volume_factor * quota,
    )


def prune(run: Run, day: int, stamp: datetime) -> None:
    state = run.state
    oldest_hour = stamp - timedelta(days=MESSAGE_DAYS)
    oldest_day = date.fromordinal(day - MESSAGE_DAYS)
    for hourly in (state.delivered, state.negatives, state.positives):
        hourly.forget_before(oldest_hour)
    for daily in (
        state.negatives_by_day,
        state.sent_ok,
        state.consumed,
        *state.granted.values(),
    ):
        daily.forget_before(oldest_day)
    month = month_index(date.fromordinal(day))
    state.tag12_ok_month.prune(month - 2)
    state.promo_used_month.prune(month - 1)
    prune_templates(run, day, stamp)
    state.messages.expire_before(day)  # kept MESSAGE_DAYS days
    state.grants = {k: g for k, g in state.grants.items() if g.day > day - MESSAGE_DAYS}
    state.open_grants = [k for k in state.open_grants if k in state.grants]
    state.recipients.expire_before(day)  # kept RECIPIENT_DAYS after they were last seen
    # Older than the TTL by the clock and by the OA's own records: a wall clock
    # stepped forward (and back) must not forget a key the sender may still repeat.
    # The keys are bucketed by the hour of their time, so the hours before the cutoff's
    # go whole and only the cutoff's own hour is looked at key by key.
    cutoff = min(to_ms(stamp), state.event_ms) - int(run.policy.dedup_ttl.total_seconds() * 1000)
    first_kept_hour = -(-cutoff // HOUR_MS)
    state.dedup.expire_before(first_kept_hour, keep_from=cutoff)
    state.idempotency.expire_before(first_kept_hour, keep_from=cutoff)


def prune_templates(run: Run, day: int, stamp: datetime) -> None:
    """Forget what the templates' windows no longer count, and the templates no record
    named for `MESSAGE_DAYS` that hold nothing Zalo or zns-gate set: an OA whose
    senders name ever new template ids stays bounded. A template is replaced, never
    changed, because a copy of the state shares its templates with the live state."""
    state = run.state
    oldest_hour = hour_index(stamp - timedelta(days=MESSAGE_DAYS))
    oldest_day = day - MESSAGE_DAYS
    lookback = run.thresholds.pause_ladder.lookback
    ladder_from = to_ms(stamp) - int(lookback.total_seconds() * 1000)
    forgotten: list[str] = []
    for template_id, template in state.templates.items():
        if (
            template.delivered.oldest() < oldest_hour
            or template.negatives.oldest() < oldest_hour
            or template.sent_ok.oldest() < oldest_day
        ):
            template = state.templates[template_id] = _pruned(template, oldest_hour, oldest_day)
        if template.seen_day <= oldest_day and _forgettable(template, day, ladder_from):
            forgotten.append(template_id)
    for template_id in forgotten:
        del state.templates[template_id]


def _pruned(template: Template, oldest_hour: int, oldest_day: int) -> Template:
    """A copy of `template` without the window buckets before those."""
    delivered, negatives = copy.deepcopy(template.delivered), copy.deepcopy(template.negatives)
    sent_ok = copy.deepcopy(template.sent_ok)
    delivered.prune(oldest_hour)
    negatives.prune(oldest_hour)
    sent_ok.prune(oldest_day)
    return dataclasses.replace(template, delivered=delivered, negatives=negatives, sent_ok=sent_ok)


def _forgettable(template: Template, day: int, ladder_from_ms: int) -> bool:
    """Nothing in `template` that Zalo or zns-gate set, nor counts: a new one is the same."""
    return (
        template.status is None
        and template.zalo_quality is None
        and not template.zalo_tag
        and not template.zalo_disabled
        and not template.night_restricted
        and not template.gate_disabled
        and template.paused_until is None
        and (template.exhausted_day is None or template.exhausted_day < day)
        and all(paused <= ladder_from_ms for paused in template.pauses)
        and not (template.delivered or template.negatives or template.sent_ok)
    )


def first_send(run: Run, day: int) -> None:
    """The day of the OA's first send or grant, from which its first evaluation is counted."""
    if run.state.first_send_day is None:
        run.state.first_send_day = day


def set_quota(run: Run, value: Quota, at: datetime, rule: str) -> None:
    """Zalo's own daily quota: the latest event time wins."""
    zalo_counted(run, at)
    state = run.state
    at_ms = to_ms(at)
    if at_ms < state.quota_at:
        return
    state.quota_at = at_ms
    before = state.daily_quota
    if value == before:
        return
    state.daily_quota = value
    day = run.policy.day(at)
    state.tier_changed_day = day
    lowered = before is None or (value is not None and value < before)
    if lowered and day == state.today:
        state.penalty_day = day  # Zalo lowered it today: that is the day's penalty
    run.change("tier", rule, before, value, at)


def set_remaining(run: Run, value: int, at: datetime) -> None:
    """Zalo's own remaining count for the day of `at`: the latest event time wins."""
    zalo_counted(run, at)
    state = run.state
    at_ms = to_ms(at)
    if at_ms < state.zalo_remaining_at:
        return
    day = run.policy.day(at)
    state.zalo_remaining_at = at_ms
    state.zalo_remaining = value
    state.zalo_remaining_day = day
    state.zalo_remaining_base = state.consumed.get(day)


def zalo_counted(run: Run, at: datetime) -> None:
    """A value of the quota from Zalo, later than today's -144 and for that day, ends the
    -144's 0: Zalo's own count is newer than the refusal."""
    state = run.state
    if state.exhausted_day == run.policy.day(at) and to_ms(at) > state.exhausted_at:
        state.exhausted_day = None


def check_penalty(run: Run, at: datetime, cause: str) -> None:
    """One step down, at most once a day and regardless of the wait, as soon as today's
    negatives exceed the penalty threshold."""
    state = run.state
    threshold = state.penalty_threshold(run.policy)
    if threshold is None or state.penalty_day == state.today or state.today is None:
        return
    negatives = state.negatives_by_day.get(state.today)
    if negatives <= threshold:
        return
    state.penalty_day = state.today
    before = state.daily_quota
    after = state.rule_set().step_down(before)
    if after == before:
        return
    state.daily_quota = after
    state.tier_changed_day = state.today
    run.change(
        "penalty",
        "penalty",
        before,
        after,
        at,
        negatives_today=negatives,
        threshold=threshold,
        day_start_quota=state.day_start_quota,
        penalty_rate=run.thresholds.penalty_rate,
        last_signal=cause,
    )
