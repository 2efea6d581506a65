"""A sync: the values an operator or a poller read from Zalo (the daily quota and today's
remaining count, the OA's levels, its allowed tags, the month's promotion quota, the
templates' status, quality, tag and params). Zalo's values win over what zns-gate computed; a
sync also lifts the tags a -145 blocked.
"""

from __future__ import annotations

from datetime import date, datetime

from service.domain.fold.context import Run, to_ms
from service.domain.fold.templates import set_quality, set_status
from service.domain.fold.tier import set_quota, set_remaining
from service.domain.records import SyncRecord
from service.domain.windows import month_index


def sync(run: Run, record: SyncRecord, at: datetime) -> None:
    state = run.state
    given = record.model_fields_set
    if "daily_quota" in given:
        set_quota(run, record.daily_quota, at, "sync")
    if record.remaining_quota is not None:
        set_remaining(run, record.remaining_quota, at)
    if (record.quality_48h or record.quality_7d) and to_ms(at) >= state.zalo_quality_at:
        state.zalo_quality_48h = record.quality_48h or state.zalo_quality_48h
        state.zalo_quality_7d = record.quality_7d or state.zalo_quality_7d
        state.zalo_quality_at = to_ms(at)
    if record.allowed_tags is not None:
        state.allowed_tags = sorted(set(record.allowed_tags))
    state.tag_blocked.clear()
    month = month_index(date.fromordinal(run.policy.day(at)))
    if record.monthly_promotion_quota is not None or (
        record.remaining_monthly_promotion_quota is not None
    ):
        state.zalo_promo_month = month
        state.zalo_promo_quota = record.monthly_promotion_quota
        state.zalo_promo_remaining = record.remaining_monthly_promotion_quota
        state.zalo_promo_base = state.promo_used_month.get(month)
    for item in record.templates:
        template = state.template(item.template_id)
        if item.tag is not None:
            template.tag, template.zalo_tag = item.tag, True
        if item.status is not None:
            set_status(run, template, item.status, at, "sync")
        if item.quality is not None:
            set_quality(run, template, item.quality, at, "sync")
        if item.params is not None:
            template.params = [param.model_dump() for param in item.params]
