"""What the API answers about an OA, built from its state (docs/api.md). No I/O.

Every function takes a state already brought to `now` (`fold.advance`) and
returns plain JSON values with the field names clients are written against.
Times are ISO 8601 in the configured zone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from service.domain.admission import grantable
from service.domain.forecast import forecast, next_evaluation
from service.domain.governor import Limit, governor
from service.domain.history import hourly
from service.domain.scoring import Level, score
from service.domain.state import WINDOW_7D, WINDOW_48H, OAState, Policy, Template
from service.domain.windows import day_start, next_day_start

TAGS = (1, 2, 3)


def _iso_day(day: int | None, policy: Policy) -> str | None:
    if day is None:
        return None
    return day_start(date.fromordinal(day), policy.zone).isoformat()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def allowed_tags(state: OAState, now: datetime, policy: Policy) -> list[int]:
    """The tags the OA may send now, by Zalo's rules and its send errors."""
    today = policy.day(now)
    return [tag for tag in TAGS if state.tag_allowed(tag, today)]


def by_tag(
    state: OAState, now: datetime, policy: Policy, limits: Mapping[int, Limit]
) -> dict[str, int | None]:
    """What each tag may still be granted today, after the governor (None: no limit)."""
    return {str(tag): grantable(state, tag, now, policy, limits) for tag in TAGS}


def penalties(
    state: OAState, now: datetime, policy: Policy, limits: Mapping[int, Limit]
) -> list[dict[str, Any]]:
    """The limits in force now, each with its reason; `limits`: the governor's."""
    out: list[dict[str, Any]] = []
    if state.suspended:
        out.append({"kind": "suspension", "reason": state.suspended_reason})
    today = policy.day(now)
    if state.penalty_day == today:
        out.append({"kind": "penalty", "reason": "negatives_beyond_threshold_today"})
    for tag, limit in sorted(limits.items()):
        if limit.rule is not None:
            out.append(
                {"kind": "governor", "tag": tag, "reason": limit.rule, "remaining": limit.remaining}
            )
    now_ms = int(now.timestamp() * 1000)
    for template in state.templates.values():
        if template.gate_disabled:
            out.append(
                {
                    "kind": "template_disabled",
                    "template_id": template.template_id,
                    "reason": "paused_three_times_in_30_days",
                }
            )
        elif template.paused(now_ms):
            until = datetime.fromtimestamp((template.paused_until or 0) / 1000, tz=policy.zone)
            out.append(
                {
                    "kind": "template_paused",
                    "template_id": template.template_id,
                    "reason": "proxy_quality_7d_low",
                    "until": until.isoformat(),
                }
            )
    return out


def quota(state: OAState, now: datetime, policy: Policy) -> dict[str, Any]:
    """`GET /v1/oas/{oa_id}/quota`."""
    today = policy.day(now)
    promotion = state.promotion(date.fromordinal(today), policy.thresholds)
    evaluation = next_evaluation(state, now, policy)
    limits = governor(state, now, policy)
    return {
        "oa_id": state.oa_id,
        "rules": state.rules,
        "daily_quota": state.daily_quota,
        "remaining_today": state.remaining_today(today),
        "resets_at": next_day_start(now, policy.zone).isoformat(),
        "tier_changed_at": _iso_day(state.tier_changed_day, policy),
        "next_evaluation_at": _iso(evaluation),
        "allowed_tags": allowed_tags(state, now, policy),
        "by_tag": by_tag(state, now, policy, limits),
        "promotion": {
            "monthly_quota": promotion.monthly_quota,
            "remaining_month": state.promotion_remaining(
                date.fromordinal(today), policy.thresholds
            ),
            "estimated_next_month": promotion.estimated_next_month,
        },
        "suspended": state.suspended,
        "penalties": penalties(state, now, policy, limits),
    }


def zalo_quota(state: OAState, now: datetime, policy: Policy) -> dict[str, Any]:
    """`GET /v1/oas/{oa_id}/message/quota`: Zalo's own shape
    (docs/rules.md#quota-and-quality-reads)."""
    view = quota(state, now, policy)
    return {
        "error": 0,
        "message": "Success",
        "data": {
            "dailyQuota": view["daily_quota"],
            "remainingQuota": view["remaining_today"],
            # Zalo's daily promotion cap was discontinued on 2024-11-01: null.
            "dailyQuotaPromotion": None,
            "remainingQuotaPromotion": None,
            "monthlyPromotionQuota": view["promotion"]["monthly_quota"],
            "remainingMonthlyPromotionQuota": view["promotion"]["remaining_month"],
            "estimatedNextMonthPromotionQuota": view["promotion"]["estimated_next_month"],
        },
    }


def quality(state: OAState, now: datetime, policy: Policy) -> dict[str, Any]:
    """`GET /v1/oas/{oa_id}/quality`."""
    t = policy.thresholds
    proxy_48h, proxy_7d = state.proxy_levels(now, t)
    zalo = state.zalo_levels(now, t)
    effective_48h, effective_7d = state.effective_levels(now, t)
    counts = {
        "delivered_48h": state.delivered.within(now, WINDOW_48H),
        "negatives_48h": state.negatives.within(now, WINDOW_48H),
        "delivered_7d": state.delivered.within(now, WINDOW_7D),
        "negatives_7d": state.negatives.within(now, WINDOW_7D),
    }
    tier_basis, _ = state.tier_level(now, t)
    threshold = state.penalty_threshold(policy)
    ahead = forecast(state, now, policy)
    return {
        "oa_id": state.oa_id,
        "quality_48h": effective_48h.value,
        "quality_7d": effective_7d.value,
        "tier_basis": tier_basis,
        "score": score(counts["negatives_7d"], counts["delivered_7d"], t),
        "proxy": {**counts, "quality_48h": proxy_48h.value, "quality_7d": proxy_7d.value},
        "zalo": {**_zalo_levels(state, policy), "fresh": zalo is not None},
        "used": "worse_of_zalo_and_proxy" if zalo is not None else "proxy",
        "rates": {
            "48h": _rate(counts["negatives_48h"], counts["delivered_48h"]),
            "7d": _rate(counts["negatives_7d"], counts["delivered_7d"]),
        },
        "thresholds": {
            "z": t.quality_z,
            "rate_standard": t.rate_standard,
            "rate_limit": t.rate_limit,
            "penalty_threshold_today": threshold,
        },
        "explanation": _explain(state, counts, proxy_7d, threshold, ahead.negatives_today, policy),
        "forecast": {
            "next_evaluation_at": _iso(ahead.next_evaluation_at),
            "projected_daily_quota": ahead.projected_daily_quota,
            "negatives_today": ahead.negatives_today,
            "negatives_before_penalty": ahead.negatives_before_penalty,
        },
    }


def _rate(negatives: int, delivered: int) -> float | None:
    return None if delivered == 0 else negatives / delivered


def _explain(
    state: OAState,
    counts: dict[str, int],
    level_7d: Level,
    threshold: int | None,
    negatives_today: int,
    policy: Policy,
) -> list[str]:
    t = policy.thresholds
    lines = []
    delivered, negatives = counts["delivered_7d"], counts["negatives_7d"]
    if delivered == 0:
        lines.append("Nothing was delivered in the last 7 days, so the proxy quality is UNDEFINED.")
    else:
        lines.append(
            f"In the last 7 days {negatives} of {delivered} delivered messages drew a negative "
            f"signal ({negatives / delivered:.3%}); the proxy quality is {level_7d.value} "
            f"(LOW above {t.rate_limit:.1%}, MEDIUM above {t.rate_standard:.1%}, judged by "
            f"the lower bound of the Wilson interval)."
        )
    if threshold is None:
        lines.append("The daily quota is unlimited, so there is no daily penalty.")
    else:
        lines.append(
            f"Today {negatives_today} negatives arrived; the tier drops one step on the first "
            f"negative beyond {threshold} (2% of the day's starting quota)."
        )
    if state.first_send_day is None:
        lines.append("No send has been seen yet; the first evaluation comes 8 days after it.")
    return lines


def template(template_state: Template, now: datetime, policy: Policy) -> dict[str, Any]:
    """`GET /v1/oas/{oa_id}/templates/{template_id}`."""
    t = policy.thresholds
    now_ms = int(now.timestamp() * 1000)
    paused_until = template_state.paused_until
    return {
        "template_id": template_state.template_id,
        "tag": template_state.tag,
        "status": template_state.status,
        "zalo_quality": template_state.zalo_quality,
        "proxy_quality_7d": template_state.proxy_level(now, t).value,
        "paused": template_state.paused(now_ms),
        "paused_until": None
        if paused_until is None or paused_until <= now_ms
        else datetime.fromtimestamp(paused_until / 1000, tz=policy.zone).isoformat(),
        "disabled_by_gate": template_state.gate_disabled,
        "disabled_by_send_error": template_state.zalo_disabled,
        "night_restricted": template_state.night_restricted,
        "params": template_state.params,
        "counts": {
            "delivered_7d": template_state.delivered.within(now, WINDOW_7D),
            "negatives_7d": template_state.negatives.within(now, WINDOW_7D),
            "sent_ok_today": template_state.sent_ok.get(policy.day(now)),
        },
    }


def summary(state: OAState, now: datetime, policy: Policy) -> dict[str, Any]:
    """One line of `GET /v1/oas`."""
    today = policy.day(now)
    levels = state.effective_levels(now, policy.thresholds)
    return {
        "oa_id": state.oa_id,
        "rules": state.rules,
        "daily_quota": state.daily_quota,
        "remaining_today": state.remaining_today(today),
        "quality_48h": levels[0].value,
        "quality_7d": levels[1].value,
        "suspended": state.suspended,
        "templates": len(state.templates),
        "negatives_today": state.negatives_by_day.get(today),
        "penalty_threshold_today": state.penalty_threshold(policy),
    }


def history(state: OAState, now: datetime, policy: Policy) -> dict[str, Any]:
    """`GET /v1/oas/{oa_id}/history`: the last 7 days hour by hour (the proxy's counts),
    with Zalo's levels and the tier as they are now (the state keeps no older values:
    their changes are decisions)."""
    hours = hourly(state, now)
    return {
        "oa_id": state.oa_id,
        "hours": [
            {
                "at": datetime.fromtimestamp(hour.start_s, tz=policy.zone).isoformat(),
                "delivered": hour.delivered,
                "negatives": hour.negatives,
            }
            for hour in hours
        ],
        "zalo": _zalo_levels(state, policy),
        "daily_quota": state.daily_quota,
        "tier_changed_at": _iso_day(state.tier_changed_day, policy),
    }


def _zalo_levels(state: OAState, policy: Policy) -> dict[str, Any]:
    """Zalo's own quality levels as last read, and when (null: never read)."""
    at = state.zalo_quality_at
    return {
        "quality_48h": state.zalo_quality_48h,
        "quality_7d": state.zalo_quality_7d,
        "as_of": None if at == 0 else datetime.fromtimestamp(at / 1000, tz=policy.zone).isoformat(),
    }
