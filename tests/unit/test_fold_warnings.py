"""The warnings of the fold (`penalty_near`, `tier_down_likely`): once per episode, from
the OA's core state, and the same again when the same records are folded again."""

from __future__ import annotations

from datetime import date, timedelta

from service.domain.rules import ZNS_2024
from service.domain.state import Change, OAState
from tests import feed
from tests.unit.test_fold import D, Oa, plus, receipts, vn


def ratings(count: int, first: int, day: date, prefix: str) -> list[feed.Raw]:
    """`count` one-star ratings (each a negative) on `day`, of messages `<prefix><first>`
    on."""
    return [
        feed.rating(f"{prefix}{n}", 1, vn(day, 9) + timedelta(seconds=n))
        for n in range(first, first + count)
    ]


def warnings(changes: list[Change], rule: str) -> list[Change]:
    return [c for c in changes if c.kind == "warning" and c.rule == rule]


def test_penalty_near_fires_once_a_day_when_negatives_reach_half_of_t() -> None:
    oa = Oa(rules=ZNS_2024)  # starts at 5,000 a day: T = 100
    assert warnings(oa.apply_all(ratings(49, 0, D, "a")), "penalty_near") == []
    fired = warnings(oa.apply_all(ratings(1, 49, D, "a")), "penalty_near")
    assert len(fired) == 1
    assert fired[0].inputs["negatives_today"] == 50
    assert fired[0].inputs["threshold"] == 100
    assert (fired[0].before, fired[0].after) == (5_000, 2_000)  # what the penalty would do
    assert warnings(oa.apply_all(ratings(30, 50, D, "a")), "penalty_near") == []
    assert oa.of("penalty") == []
    # The next day is a new episode.
    next_day = warnings(oa.apply_all(ratings(50, 0, plus(1), "b")), "penalty_near")
    assert len(next_day) == 1


def test_no_penalty_near_once_the_day_has_had_its_penalty() -> None:
    oa = Oa(rules=ZNS_2024)
    oa.apply(feed.daily_quota(2_000, vn(D, 8)))  # Zalo lowered it today: the day's penalty
    oa.apply_all(ratings(80, 0, D, "a"))
    assert warnings(oa.changes, "penalty_near") == []
    assert oa.of("penalty") == []


def test_tier_down_likely_fires_once_until_the_projection_changes_back() -> None:
    oa = Oa()
    oa.apply_all(receipts(4, vn(D, 9)))
    fired = warnings(oa.apply(feed.rating("m0", 1, vn(D, 9, 30))), "tier_down_likely")
    assert len(fired) == 1  # 1 negative of 4: quality_7d LOW, a step down is projected
    assert fired[0].before == 20_000
    assert fired[0].after == 10_000
    assert oa.state.warned_tier_down
    oa.apply(feed.rating("m1", 1, vn(D, 9, 31)))
    assert len(warnings(oa.changes, "tier_down_likely")) == 1  # still the same episode
    oa.apply_all(receipts(3000, vn(D, 10), prefix="ok"))  # the week is no longer LOW
    assert not oa.state.warned_tier_down
    assert len(warnings(oa.changes, "tier_down_likely")) == 1
    oa.apply_all(ratings(400, 0, D, "ok"))  # LOW again: a new episode
    assert len(warnings(oa.changes, "tier_down_likely")) == 2


def test_warnings_repeat_the_same_on_a_fold_of_the_same_records_and_survive_a_snapshot() -> None:
    records = [*receipts(4, vn(D, 9)), *ratings(60, 0, D, "m")]
    first, second = Oa(rules=ZNS_2024), Oa(rules=ZNS_2024)
    assert first.apply_all(records) == second.apply_all(records)
    restored = OAState.from_document(first.state.to_document())
    assert restored.warned_penalty_day == first.state.warned_penalty_day == D.toordinal()
    assert restored.warned_tier_down is first.state.warned_tier_down is True
