"""Proxy quality levels (docs/rules.md#quality-level): the Wilson lower bound against Zalo's
rates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.rules import Thresholds
from service.domain.scoring import Level, quality_level, score, wilson_lower_bound, worse

T = Thresholds()


@pytest.mark.parametrize(
    ("negatives", "delivered", "bound"),
    [(6, 2000, 0.001376), (20, 2000, 0.006483), (0, 2000, 0.0), (0, 1, 0.0)],
)
def test_check_values_of_the_documented_rule(negatives: int, delivered: int, bound: float) -> None:
    assert wilson_lower_bound(negatives, delivered, 1.96) == pytest.approx(bound, abs=5e-7)


# (delivered, most negatives still HIGH, most negatives still MEDIUM), found with the
# textbook form (2np + z² - z·sqrt(z² + 4np(1-p))) / (2(n + z²)).
BOUNDARIES = [(100, 0, 1), (2000, 4, 16), (10_000, 16, 63)]


@pytest.mark.parametrize(("delivered", "high_up_to", "medium_up_to"), BOUNDARIES)
def test_each_boundary_between_levels(delivered: int, high_up_to: int, medium_up_to: int) -> None:
    assert quality_level(high_up_to, delivered, T) is Level.HIGH
    assert quality_level(high_up_to + 1, delivered, T) is Level.MEDIUM
    assert quality_level(medium_up_to, delivered, T) is Level.MEDIUM
    assert quality_level(medium_up_to + 1, delivered, T) is Level.LOW


def test_nothing_delivered_is_undefined() -> None:
    assert quality_level(0, 0, T) is Level.UNDEFINED
    assert score(0, 0, T) is None


def test_a_few_complaints_on_small_volume_do_not_condemn() -> None:
    # 1 in 100 is twice the LOW rate, but a hundred messages prove little.
    assert T.rate_limit < 1 / 100
    assert quality_level(1, 100, T) is Level.MEDIUM
    assert quality_level(20, 2000, T) is Level.LOW  # the same rate at volume


def test_thresholds_are_settings() -> None:
    strict = Thresholds(rate_standard=0.0001, rate_limit=0.0005)
    assert quality_level(4, 2000, T) is Level.HIGH
    assert quality_level(4, 2000, strict) is Level.LOW


@pytest.mark.parametrize(
    ("negatives", "delivered", "expected"),
    [
        (0, 1000, 100),
        (5, 1000, 50),  # exactly at the LOW limit
        (10, 1000, 0),
        (50, 1000, 0),
        (1, 1600, 94),  # 93.75
        (3, 800, 63),  # 62.5 rounds half up, not to the even 62
    ],
)
def test_score(negatives: int, delivered: int, expected: int) -> None:
    assert score(negatives, delivered, T) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (Level.HIGH, Level.LOW, Level.LOW),
        (Level.MEDIUM, Level.HIGH, Level.MEDIUM),
        (Level.UNDEFINED, Level.MEDIUM, Level.MEDIUM),
        (Level.LOW, Level.UNDEFINED, Level.LOW),
        (Level.UNDEFINED, Level.UNDEFINED, Level.UNDEFINED),
    ],
)
def test_worse_ignores_undefined(a: Level, b: Level, expected: Level) -> None:
    assert worse(a, b) is expected
    assert worse(b, a) is expected


@given(st.integers(min_value=1, max_value=100_000), st.data())
def test_bound_is_below_the_rate_and_grows_with_negatives(
    delivered: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(min_value=0, max_value=delivered - 1))
    low, higher = (
        wilson_lower_bound(k, delivered, 1.96),
        wilson_lower_bound(k + 1, delivered, 1.96),
    )
    assert 0 <= low <= k / delivered
    assert higher > low


def test_negatives_beyond_delivered_are_refused() -> None:
    with pytest.raises(ValueError, match="negatives"):
        wilson_lower_bound(3, 2, 1.96)
