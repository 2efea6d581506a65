"""The monthly promotion quota, with the worked example of docs/rules.md#promotion-tag-3."""

from __future__ import annotations

from datetime import date

import pytest

from service.domain.promotion import promotion_quota
from service.domain.rules import Thresholds
from service.domain.windows import Buckets, month_index

T = Thresholds()


def volume(**by_month: int) -> Buckets:
    """Tag 1 + tag 2 sent OK per month, given as m2026_09=10000 and so on."""
    counts = Buckets()
    for name, amount in by_month.items():
        year, month = name.removeprefix("m").split("_")
        counts.add(month_index(date(int(year), int(month), 1)), amount)
    return counts


def test_zalos_worked_example() -> None:
    # September 10,000 + October 50,000 => the November quota is 10,000.
    sent = volume(m2026_09=10_000, m2026_10=50_000)
    quota = promotion_quota(
        sent, first_tag3_month=date(2026, 6, 1), today=date(2026, 11, 15), thresholds=T
    )
    assert quota.monthly_quota == 10_000
    assert not quota.bonus_applied


def test_only_the_two_previous_months_count_and_the_result_is_floored() -> None:
    sent = volume(m2026_08=999_999, m2026_09=7, m2026_10=10, m2026_11=1_000)
    quota = promotion_quota(sent, date(2026, 1, 1), date(2026, 11, 1), T)
    assert quota.monthly_quota == 17 // 6
    assert quota.estimated_next_month == (10 + 1_000) // 6


@pytest.mark.parametrize(
    ("first_tag3_month", "bonus"),
    [
        (None, True),  # never sent tag 3: the bonus lets the first one happen
        (date(2026, 11, 1), True),  # the first tag-3 month is this month
        (date(2026, 10, 1), False),  # tag 3 already happened in an earlier month
    ],
)
def test_the_first_tag3_month_gets_10000_more(first_tag3_month: date | None, bonus: bool) -> None:
    sent = volume(m2026_09=600, m2026_10=600)
    quota = promotion_quota(sent, first_tag3_month, date(2026, 11, 20), T)
    assert quota.bonus_applied is bonus
    assert quota.monthly_quota == 200 + (10_000 if bonus else 0)
    assert quota.estimated_next_month == 100  # the estimate never includes the bonus


def test_across_a_year_boundary() -> None:
    sent = volume(m2026_11=6_000, m2026_12=6_000, m2027_01=60)
    quota = promotion_quota(sent, date(2026, 5, 1), date(2027, 1, 2), T)
    assert quota.monthly_quota == 2_000
    assert quota.estimated_next_month == (6_000 + 60) // 6
