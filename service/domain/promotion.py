"""The monthly promotion (tag 3) quota of an OA, from its tag 1 and tag 2 volume
(docs/rules.md#promotion-tag-3).

quota(month) = floor((tag 1 + tag 2 sent OK in the two months before) / 6),
recomputed on the local 1st; an OA that never had a tag-3 grant or send in
an earlier month gets +10,000 in the current month, so that its first tag-3
message can happen at all. The estimate for next month applies the formula to
last month and this month so far, without the bonus. This module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from service.domain.rules import Thresholds
from service.domain.windows import Buckets, month_index


@dataclass(frozen=True, slots=True)
class PromotionQuota:
    monthly_quota: int
    """What Zalo allows this month (`monthlyPromotionQuota`)."""
    estimated_next_month: int
    """The formula applied to last month and this month so far (no bonus)."""
    bonus_applied: bool


def promotion_quota(
    tag12_sent_ok: Buckets,
    first_tag3_month: date | None,
    today: date,
    thresholds: Thresholds,
) -> PromotionQuota:
    """The promotion quota of the month of `today`.

    `tag12_sent_ok` counts tag 1 and tag 2 messages sent OK per month (keyed by
    `month_index`); `first_tag3_month` is the month of the OA's first tag-3
    grant or send, or None if it never had one.
    """
    this_month = month_index(today)
    two_before = tag12_sent_ok.total(this_month - 2, this_month - 1)
    quota = two_before // thresholds.promotion_divisor
    month_start = today.replace(day=1)
    bonus = first_tag3_month is None or first_tag3_month >= month_start
    if bonus:
        quota += thresholds.promotion_bonus
    estimate = tag12_sent_ok.total(this_month - 1, this_month) // thresholds.promotion_divisor
    return PromotionQuota(quota, estimate, bonus)
