"""Calendar time in the configured zone, and the bucketed counters that windows are made of.

Zalo's days and months are calendar days in Vietnam (`Asia/Ho_Chi_Minh` by
default, a setting): a quota resets at local midnight, a promotion quota on
the local 1st. Rolling windows (48 h, 7 days) are counted in one-hour buckets,
calendar windows (today, a month) in day or month buckets. Buckets are sparse
and pruned, so an idle OA costs almost nothing. This module does no I/O and
never reads the clock: every function takes the moment it is about.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

HOUR_S = 3600


def local_day(moment: datetime, zone: ZoneInfo) -> date:
    """The calendar day in `zone` that `moment` (aware) falls on."""
    return moment.astimezone(zone).date()


def day_start(day: date, zone: ZoneInfo) -> datetime:
    """00:00 of `day` in `zone`, as an aware datetime."""
    return datetime.combine(day, time.min, tzinfo=zone)


def next_day_start(moment: datetime, zone: ZoneInfo) -> datetime:
    """The next local midnight after `moment`: when today's quota resets."""
    return day_start(local_day(moment, zone) + timedelta(days=1), zone)


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(month: date, count: int) -> date:
    """The first day of the month `count` months after (or before) the month of `month`."""
    index = month.year * 12 + (month.month - 1) + count
    return date(index // 12, index % 12 + 1, 1)


def hour_index(moment: datetime) -> int:
    """Hours since the epoch: the key of an hourly bucket (zones do not matter here)."""
    return int(moment.timestamp()) // HOUR_S


def month_index(day: date) -> int:
    """Months since year 0: the key of a monthly bucket."""
    return day.year * 12 + day.month - 1


class Buckets:
    """Sparse counts keyed by an integer (an hour, a day ordinal or a month index)."""

    __slots__ = ("_counts",)

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self._counts: dict[int, int] = dict(counts or {})

    def add(self, key: int, amount: int = 1) -> None:
        value = self._counts.get(key, 0) + amount
        if value:
            self._counts[key] = value
        else:
            self._counts.pop(key, None)

    def get(self, key: int) -> int:
        return self._counts.get(key, 0)

    def total(self, first: int, last: int) -> int:
        """The sum of the buckets with `first` <= key <= `last`."""
        if last - first < len(self._counts):
            return sum(self._counts.get(k, 0) for k in range(first, last + 1))
        return sum(v for k, v in self._counts.items() if first <= k <= last)

    def prune(self, before: int) -> None:
        """Forget the buckets with key < `before`."""
        for key in [k for k in self._counts if k < before]:
            del self._counts[key]

    def oldest(self) -> float:
        """The smallest key (infinity when empty)."""
        return min(self._counts, default=math.inf)

    def items(self) -> Iterable[tuple[int, int]]:
        return sorted(self._counts.items())

    def __bool__(self) -> bool:
        return bool(self._counts)

    def __deepcopy__(self, memo: dict[int, Any]) -> Buckets:
        # Integer keys and values: a copy of the dict is a deep copy, without deepcopy's
        # walk over every item (the API copies an OA's state for every answer).
        clone = copy.copy(self)
        clone._counts = dict(self._counts)
        return clone

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Buckets) and self._counts == other._counts

    def __repr__(self) -> str:
        return f"Buckets({dict(self.items())})"


class HourlyCounts(Buckets):
    """Counts in one-hour buckets, for the rolling windows (48 h, 7 days).

    A window's total is asked for after nearly every record, so the total of
    each span is kept beside the buckets for the hour it was computed in and
    moved along by `add_at`; it is summed again only when the hour changes.
    """

    __slots__ = ("_totals",)

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        super().__init__(counts)
        self._totals: dict[int, tuple[int, int]] = {}
        """span in hours -> (the last hour of the window, its total)."""

    def add(self, key: int, amount: int = 1) -> None:
        super().add(key, amount)
        for span, (last, total) in self._totals.items():
            if last - span < key <= last:
                self._totals[span] = (last, total + amount)

    def add_at(self, moment: datetime, amount: int = 1) -> None:
        self.add(hour_index(moment), amount)

    def within(self, now: datetime, span: timedelta) -> int:
        """The count of the `span` up to `now`, to the hour: the current hour's bucket and
        the buckets before it, `span` hours in all."""
        last = hour_index(now)
        hours = int(span.total_seconds()) // HOUR_S
        cached = self._totals.get(hours)
        if cached is not None and cached[0] == last:
            return cached[1]
        total = self.total(last - hours + 1, last)
        self._totals[hours] = (last, total)
        return total

    def prune(self, before: int) -> None:
        super().prune(before)
        self._totals.clear()

    def __deepcopy__(self, memo: dict[int, Any]) -> HourlyCounts:
        clone = copy.copy(self)
        clone._counts = dict(self._counts)
        clone._totals = dict(self._totals)  # tuples of integers
        return clone

    def forget_before(self, moment: datetime) -> None:
        self.prune(hour_index(moment))


class DailyCounts(Buckets):
    """Counts per calendar day (keyed by the day's ordinal), for "today" and day ranges."""

    __slots__ = ()

    def add_on(self, day: date, amount: int = 1) -> None:
        self.add(day.toordinal(), amount)

    def on(self, day: date) -> int:
        return self.get(day.toordinal())

    def between(self, first: date, last: date) -> int:
        """The count of the days `first` to `last`, both included."""
        return self.total(first.toordinal(), last.toordinal())

    def in_month(self, month: date) -> int:
        first = month_start(month)
        return self.between(first, add_months(first, 1) - timedelta(days=1))

    def forget_before(self, day: date) -> None:
        self.prune(day.toordinal())
