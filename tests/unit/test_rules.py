"""Rule sets as data (docs/rules.md): ladders, steps, tag 3, the penalty threshold."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.domain.rules import RULE_SETS, ZBS_2026, ZNS_2024, PauseLadder, RuleSet, Thresholds


def test_both_rule_sets_are_published_by_name() -> None:
    assert RULE_SETS == {"zbs-2026": ZBS_2026, "zns-2024": ZNS_2024}
    assert ZBS_2026.ladder == (1_000, 10_000, 20_000, 50_000, None)
    assert ZBS_2026.start_quota == 20_000
    assert ZNS_2024.ladder == (500, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 500_000)
    assert ZNS_2024.start_quota == 5_000


@pytest.mark.parametrize(
    ("rules", "quota", "up", "down"),
    [
        (ZBS_2026, 1_000, 10_000, 1_000),  # the bottom stays the bottom
        (ZBS_2026, 20_000, 50_000, 10_000),
        (ZBS_2026, 50_000, None, 20_000),  # the top step is unlimited
        (ZBS_2026, None, None, 50_000),
        (ZBS_2026, 15_000, 20_000, 10_000),  # off the ladder: to the nearest value beyond
        (ZBS_2026, 500, 1_000, 1_000),
        (ZNS_2024, 500_000, 500_000, 100_000),  # no unlimited tier
        (ZNS_2024, 5_000, 10_000, 2_000),
        (ZNS_2024, 7_500, 10_000, 5_000),
        (ZNS_2024, 900_000, 500_000, 500_000),
    ],
)
def test_steps(rules: RuleSet, quota: int | None, up: int | None, down: int | None) -> None:
    assert rules.step_up(quota) == up
    assert rules.step_down(quota) == down


@pytest.mark.parametrize(
    ("rules", "quota", "allowed"),
    [
        (ZBS_2026, 1_000, True),
        (ZBS_2026, None, True),
        (ZNS_2024, 10_000, False),
        (ZNS_2024, 20_000, True),
        (ZNS_2024, 500_000, True),
    ],
)
def test_tag3_by_tier(rules: RuleSet, quota: int | None, allowed: bool) -> None:
    assert rules.allows_tag3(quota) is allowed


def test_per_recipient_promotion_caps() -> None:
    assert (ZBS_2026.promotion_per_recipient_day, ZBS_2026.promotion_per_recipient_month) == (1, 30)
    assert (ZNS_2024.promotion_per_recipient_day, ZNS_2024.promotion_per_recipient_month) == (
        None,
        4,
    )


@pytest.mark.parametrize(
    ("quota", "threshold"), [(20_000, 400), (1_000, 20), (500, 10), (2_025, 40), (None, None)]
)
def test_penalty_threshold_is_two_percent_rounded_down(
    quota: int | None, threshold: int | None
) -> None:
    assert Thresholds().penalty_threshold(quota) == threshold


def test_pause_ladder_three_six_then_disabled() -> None:
    ladder = PauseLadder()
    assert ladder.next_pause(0) == timedelta(hours=3)
    assert ladder.next_pause(1) == timedelta(hours=6)
    assert ladder.next_pause(2) is None
    assert ladder.lookback == timedelta(days=30)


def test_a_malformed_rule_set_is_refused() -> None:
    with pytest.raises(ValueError, match="ladder"):
        RuleSet("bad", (1_000, None, 5_000), 1_000, None, None, 4)
    with pytest.raises(ValueError, match="start quota"):
        RuleSet("bad", (1_000, 5_000), 2_000, None, None, 4)


def test_the_settings_name_exactly_these_rule_sets() -> None:
    from typing import get_args

    from service.config import RuleSetName

    assert set(get_args(RuleSetName)) == set(RULE_SETS)
