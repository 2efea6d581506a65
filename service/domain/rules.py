"""Zalo's published rules, as data: the quota ladders and the numbers that move an OA on them.

A change of Zalo's rules is a new `RuleSet` entry here, not a rewrite of the
code that applies them. The numbers and their Zalo sources are in
docs/rules.md (#tier-daily-quota, #promotion-tag-3). `Thresholds` holds the
numbers zns-gate chooses itself (the proxy quality levels, the governor);
they are settings with these defaults. This module does no I/O.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import timedelta

Quota = int | None
"""A daily quota in messages; None is unlimited (no daily number, no penalty)."""


@dataclass(frozen=True, slots=True)
class RuleSet:
    """One version of Zalo's quota rules."""

    name: str
    ladder: tuple[Quota, ...]
    """Daily quotas from the lowest tier up; the top may be None (unlimited)."""
    start_quota: int
    """The daily quota of an OA zns-gate has not seen before."""
    tag3_min_quota: int | None
    """Tag 3 (promotion) is allowed from this daily quota up; None: at every tier."""
    promotion_per_recipient_day: int | None
    """Tag-3 messages one recipient may get from the OA in a day; None: no daily cap."""
    promotion_per_recipient_month: int
    """Tag-3 messages one recipient may get from the OA in a calendar month."""

    def __post_init__(self) -> None:
        limited = [q for q in self.ladder if q is not None]
        if limited != sorted(set(limited)) or None in self.ladder[:-1]:
            raise ValueError(f"{self.name}: the ladder must rise, with unlimited only on top")
        if self.start_quota not in self.ladder:
            raise ValueError(f"{self.name}: the start quota must be on the ladder")

    @property
    def _limited(self) -> list[int]:
        return [q for q in self.ladder if q is not None]

    @property
    def has_unlimited(self) -> bool:
        return self.ladder[-1] is None

    def step_up(self, quota: Quota) -> Quota:
        """One tier up. A value off the ladder goes to the nearest ladder value above it."""
        if quota is None:
            return None
        limited = self._limited
        i = bisect.bisect_right(limited, quota)
        if i < len(limited):
            return limited[i]
        return None if self.has_unlimited else limited[-1]

    def step_down(self, quota: Quota) -> Quota:
        """One tier down. A value off the ladder goes to the nearest ladder value below it."""
        limited = self._limited
        if quota is None:
            return limited[-1]
        i = bisect.bisect_left(limited, quota)
        return limited[i - 1] if i > 0 else limited[0]

    def allows_tag3(self, quota: Quota) -> bool:
        if self.tag3_min_quota is None or quota is None:
            return True
        return quota >= self.tag3_min_quota


ZBS_2026 = RuleSet(
    name="zbs-2026",
    ladder=(1_000, 10_000, 20_000, 50_000, None),
    start_quota=20_000,
    tag3_min_quota=None,
    promotion_per_recipient_day=1,
    promotion_per_recipient_month=30,
)

ZNS_2024 = RuleSet(
    name="zns-2024",
    ladder=(500, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 500_000),
    start_quota=5_000,
    tag3_min_quota=20_000,
    promotion_per_recipient_day=None,
    promotion_per_recipient_month=4,
)

RULE_SETS: dict[str, RuleSet] = {rules.name: rules for rules in (ZBS_2026, ZNS_2024)}


@dataclass(frozen=True, slots=True)
class PauseLadder:
    """zns-gate's own template pauses (docs/rules.md#templates, after WhatsApp's): 3 h, 6 h, then
    off."""

    pauses: tuple[timedelta, ...] = (timedelta(hours=3), timedelta(hours=6))
    lookback: timedelta = timedelta(days=30)
    """Earlier pauses count towards the ladder for this long."""

    def next_pause(self, earlier_in_lookback: int) -> timedelta | None:
        """How long the next pause lasts; None means the template is disabled instead."""
        if earlier_in_lookback < len(self.pauses):
            return self.pauses[earlier_in_lookback]
        return None


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The numbers zns-gate chooses itself (docs/rules.md#thresholds), with their defaults."""

    quality_z: float = 1.96
    """z of the Wilson score interval."""
    rate_standard: float = 0.001
    """Zalo's "safe" negative rate: a lower bound above it is MEDIUM."""
    rate_limit: float = 0.005
    """A lower bound above it is LOW."""
    negative_rating_max: int = 2
    """A star rating at or below it is a negative signal."""
    positive_rating_min: int = 4
    penalty_rate: float = 0.02
    """Negatives today beyond this share of the daily quota cost one tier (Zalo's 2 %)."""
    wait_days: int = 7
    """After a tier change on day X, the next evaluation is on day X + 7 at the earliest."""
    first_evaluation_days: int = 8
    """An OA first seen sending on day D is first evaluated on day D + 8."""
    upgrade_volume_factor: int = 2
    """A step up needs sent-OK over 7 days of at least this times the daily quota."""
    zalo_quality_ttl: timedelta = timedelta(hours=2)
    governor_block_tag3_share: float = 0.5
    """Negatives today at this share of the penalty threshold block tag 3."""
    governor_block_tag2_share: float = 0.8
    """Negatives today at this share of the penalty threshold block tag 2 as well."""
    governor_medium_tag3_share: float = 0.10
    """With quality_48h MEDIUM, tag-3 grants today are capped at this share of the quota."""
    governor_low_tag2_share: float = 0.25
    """With quality_48h LOW, tag-2 grants today are capped at this share of the quota."""
    grant_ttl: timedelta = timedelta(hours=1)
    """Granted units no send has reported after this long go back."""
    promotion_bonus: int = 10_000
    """Promotion quota added in the month an OA first sends tag 3."""
    promotion_divisor: int = 6
    """Monthly promotion quota = tag 1 + tag 2 sent OK in the two previous months / this."""
    promotion_needs_tag12: bool = True
    """A tag-3 recipient must have had a tag 1/2 message from the OA in the last 6 months."""
    pause_ladder: PauseLadder = field(default_factory=PauseLadder)

    def penalty_threshold(self, daily_quota: Quota) -> int | None:
        """T of docs/rules.md#penalty: floor(2 % of the daily quota); None when unlimited."""
        if daily_quota is None:
            return None
        return int(daily_quota * self.penalty_rate)
