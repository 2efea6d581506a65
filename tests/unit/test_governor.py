"""The governor's rows (docs/rules.md#governor), each alone, with the clock passed in."""

from __future__ import annotations

import pytest

from service.domain.governor import governor
from service.domain.rules import Thresholds
from tests import feed
from tests.unit.test_fold import D, Oa, receipts, vn

# Proxy levels never reach MEDIUM or LOW with these thresholds, so that the rows of the
# negatives today and of Zalo's quality can be tried one at a time.
CALM = Thresholds(rate_standard=1.0, rate_limit=1.0)
NOON = vn(D, 12)


def oa_with_negatives(count: int) -> Oa:
    oa = Oa(thresholds=CALM)  # zbs-2026: 20,000 a day, T = 400
    oa.apply_all(receipts(count, vn(D, 9)))
    oa.apply_all(feed.rating(f"m{i}", 1, vn(D, 10)) for i in range(count))
    return oa


@pytest.mark.parametrize(
    ("negatives", "tag3", "tag2"),
    [
        (0, (None, None), (None, None)),
        (199, (None, None), (None, None)),
        (200, (0, "negatives_block3"), (None, None)),  # 50 % of T
        (319, (0, "negatives_block3"), (None, None)),
        (320, (0, "negatives_block3"), (0, "negatives_block2")),  # 80 % of T
    ],
)
def test_negatives_today_block_tag3_then_tag2(
    negatives: int, tag3: tuple[int | None, str | None], tag2: tuple[int | None, str | None]
) -> None:
    oa = oa_with_negatives(negatives)
    limits = governor(oa.state, NOON, oa.policy)
    assert (limits[3].remaining, limits[3].rule) == tag3
    assert (limits[2].remaining, limits[2].rule) == tag2
    assert limits[1].remaining is None


@pytest.mark.parametrize(
    ("quality", "tag3", "tag2"),
    [
        ("HIGH", (None, None), (None, None)),
        ("MEDIUM", (2_000 - 500, "quality_medium"), (None, None)),  # 10 % of 20,000
        ("LOW", (0, "quality_low"), (5_000 - 300, "quality_low")),  # 25 % of 20,000
    ],
)
def test_quality_48h_caps_the_days_grants(
    quality: str, tag3: tuple[int | None, str | None], tag2: tuple[int | None, str | None]
) -> None:
    oa = Oa(thresholds=CALM)
    oa.apply(feed.admission("p", "t3", 3, 500, vn(D, 11)))
    oa.apply(feed.admission("n", "t2", 2, 300, vn(D, 11)))
    oa.apply(feed.sync(vn(D, 11, 30), quality_48h=quality, quality_7d="HIGH"))
    limits = governor(oa.state, NOON, oa.policy)
    assert (limits[3].remaining, limits[3].rule) == tag3
    assert (limits[2].remaining, limits[2].rule) == tag2
    assert limits[1].remaining is None


def test_the_strictest_row_wins_and_tag1_is_never_throttled() -> None:
    oa = oa_with_negatives(320)
    oa.apply(feed.sync(vn(D, 11), quality_48h="LOW", quality_7d="LOW"))
    limits = governor(oa.state, NOON, oa.policy)
    assert limits[2].remaining == 0  # blocked beats the 25 % cap
    assert limits[2].rule == "negatives_block2"
    assert limits[1].remaining is None
    assert limits[3].inputs["negatives_today"] == 320


def test_a_stale_zalo_level_no_longer_counts() -> None:
    oa = Oa(thresholds=CALM)
    oa.apply(feed.sync(vn(D, 9), quality_48h="LOW", quality_7d="LOW"))
    assert governor(oa.state, vn(D, 10), oa.policy)[3].remaining == 0
    assert governor(oa.state, vn(D, 11, 1), oa.policy)[3].remaining is None  # 2 h later


def test_an_unlimited_quota_has_no_negative_rows_and_no_shares() -> None:
    oa = Oa(thresholds=CALM)
    oa.apply(feed.sync(vn(D, 9), daily_quota=None, quality_48h="LOW", quality_7d="LOW"))
    limits = governor(oa.state, vn(D, 10), oa.policy)
    assert (limits[3].remaining, limits[3].rule) == (0, "quality_low")
    assert limits[2].remaining is None
