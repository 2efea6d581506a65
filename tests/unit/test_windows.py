"""Calendar time in Asia/Ho_Chi_Minh and the bucketed counters of the windows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from service.domain.windows import (
    Buckets,
    DailyCounts,
    HourlyCounts,
    add_months,
    day_start,
    local_day,
    next_day_start,
)

VN = ZoneInfo("Asia/Ho_Chi_Minh")


def test_a_vietnam_day_and_month_start_on_the_previous_utc_day() -> None:
    # 17:30 UTC on 31 March is 00:30 on 1 April in Vietnam: a new day and a new month.
    moment = datetime(2026, 3, 31, 17, 30, tzinfo=UTC)
    assert local_day(moment, VN) == date(2026, 4, 1)
    assert local_day(moment - timedelta(hours=1), VN) == date(2026, 3, 31)
    assert day_start(date(2026, 4, 1), VN) == datetime(2026, 3, 31, 17, 0, tzinfo=UTC)
    assert next_day_start(moment, VN) == datetime(2026, 4, 1, 17, 0, tzinfo=UTC)


def test_add_months_across_years() -> None:
    assert add_months(date(2026, 12, 15), 1) == date(2027, 1, 1)
    assert add_months(date(2026, 1, 31), -1) == date(2025, 12, 1)
    assert add_months(date(2026, 3, 1), -2) == date(2026, 1, 1)


def test_hourly_window_counts_the_last_hours_only() -> None:
    counts = HourlyCounts()
    now = datetime(2026, 5, 10, 12, 30, tzinfo=UTC)
    counts.add_at(now)
    counts.add_at(now - timedelta(hours=47), 2)  # inside 48 h
    counts.add_at(now - timedelta(hours=48), 4)  # outside
    counts.add_at(now - timedelta(days=6, hours=23), 8)
    counts.add_at(now - timedelta(days=7), 16)
    assert counts.within(now, timedelta(hours=48)) == 3
    assert counts.within(now, timedelta(days=7)) == 1 + 2 + 4 + 8
    counts.forget_before(now - timedelta(days=6, hours=23))
    assert counts.within(now, timedelta(days=30)) == 15


def test_daily_counts_by_local_day_and_month() -> None:
    counts = DailyCounts()
    counts.add_on(date(2026, 3, 31), 5)
    counts.add_on(date(2026, 4, 1), 7)
    counts.add_on(date(2026, 4, 30), 1)
    assert counts.on(date(2026, 4, 1)) == 7
    assert counts.in_month(date(2026, 4, 17)) == 8
    assert counts.in_month(date(2026, 3, 1)) == 5
    assert counts.between(date(2026, 3, 31), date(2026, 4, 1)) == 12
    counts.forget_before(date(2026, 4, 1))
    assert counts.in_month(date(2026, 3, 1)) == 0


def test_buckets_stay_sparse() -> None:
    counts = Buckets()
    counts.add(5, 2)
    counts.add(5, -2)  # a returned grant empties its bucket
    assert not counts
    counts.add(1_000_000, 1)
    assert counts.total(0, 2_000_000) == 1  # sums the stored buckets, not the whole range
    assert counts == Buckets({1_000_000: 1})
